//! The `huddle` binary: parses the command line and hands off to the library.

// House rule: no unwrap outside tests (clippy.toml allows it in tests).
#![warn(clippy::unwrap_used)]

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use huddle::signaling::{
    self, access, protocol,
    server::{self, RateLimit},
};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "huddle", version, about = "Native desktop video chat")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// An invite link (`huddle://HOST:PORT/ROOM`) to open straight into that room.
    link: Option<String>,
    /// Signaling server for this run (default: the saved one, or the app's own).
    #[arg(long, global = false)]
    server: Option<String>,
    /// Join this room as soon as connected.
    #[arg(long)]
    room: Option<String>,
    /// Nickname for this run.
    #[arg(long)]
    nickname: Option<String>,
    /// Settings file (default: the platform's config directory).
    #[arg(long)]
    settings: Option<std::path::PathBuf>,
    /// A PEM certificate to trust for wss:// besides the system's roots (self-hosted servers).
    #[arg(long)]
    trust_cert: Option<std::path::PathBuf>,
    /// Print what reached the screen once a second as JSON lines on stdout: per remote picture,
    /// frames decoded, uploaded and painted, and capture stamp → paint latency (benchmarks).
    #[arg(long)]
    display_stats: bool,
    /// How to paint the window: gl, or software (the CPU; the default where GL would be Mesa's
    /// software rasteriser anyway: no GPU render node, or LIBGL_ALWAYS_SOFTWARE). Also
    /// HUDDLE_RENDERER.
    #[arg(long)]
    renderer: Option<huddle::ui::Renderer>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the signaling server.
    Serve(ServeArgs),
    /// Join a room as a peer without a window.
    Join(JoinArgs),
    /// Measure join time, latency, CPU, memory, file transfer and signaling load.
    Bench(BenchArgs),
    /// Mint a join token for a server started with --token-secret.
    Token(TokenArgs),
}

#[derive(Args)]
struct TokenArgs {
    /// The room the token admits to.
    #[arg(long)]
    room: String,
    /// How long the token is valid: 90s, 30m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = access::parse_ttl)]
    ttl: Duration,
    /// The server's token secret.
    #[arg(long, env = "HUDDLE_TOKEN_SECRET", hide_env_values = true)]
    secret: String,
}

#[derive(Args)]
struct BenchArgs {
    /// Sections to run, comma-separated: join, video, audio, mesh, transfer, big-transfer,
    /// signaling, network, churn, app, screen (default: all of these), and soak and sfu (only when
    /// named; sfu needs `janus`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How many joins to time.
    #[arg(long, default_value_t = 10)]
    joins: usize,
    /// Seconds each measured call lasts.
    #[arg(long, default_value_t = 10.0)]
    call_seconds: f64,
    /// Simulated signaling clients (10000 for the full load test).
    #[arg(long, default_value_t = 2000)]
    clients: usize,
    /// Size of the transferred file in MiB.
    #[arg(long, default_value_t = 256)]
    transfer_mib: u64,
    /// Also write the JSON report here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Scratch folder for test files.
    #[arg(long, default_value = "/tmp/huddle-bench")]
    work_dir: std::path::PathBuf,
    /// Link profiles for the network section, comma-separated (default: clean, lossy, bursty,
    /// slow-uplink, capacity-drop, outage, 4g; long-outage and udp-outage only when named).
    /// Needs root (network namespaces).
    #[arg(long, value_delimiter = ',')]
    profiles: Vec<String>,
    /// Seconds per network profile (default: each profile's own, 25-40 s).
    #[arg(long)]
    network_seconds: Option<f64>,
    /// In the network section, peer A also shares the synthetic 1080p text page at this frame
    /// rate, beside its camera (default: no share).
    #[arg(long)]
    network_screen_fps: Option<u32>,
    /// Seed of the link emulator's loss and jitter draws, to repeat a run exactly (default: a
    /// new seed per profile, printed in the report: a fixed seed loses the same packets of the
    /// call's start-up every run).
    #[arg(long)]
    link_seed: Option<u64>,
    /// Connections that come and go in the churn section (the figure is for 200).
    #[arg(long, default_value_t = 200)]
    churn_connections: usize,
    /// How long each churn guest stays in the call after its first picture, in ms (the issue's
    /// measurement held each for 2 s).
    #[arg(long, default_value_t = 0)]
    churn_stay_ms: u64,
    /// Length of the soak section's 1:1 call, in minutes.
    #[arg(long, default_value_t = 30.0)]
    soak_minutes: f64,
}

#[derive(Args)]
struct JoinArgs {
    /// Run without a window, with synthetic camera and microphone (required for now).
    #[arg(long)]
    headless: bool,
    /// Signaling server URL.
    #[arg(long, default_value = "ws://127.0.0.1:8787")]
    server: String,
    #[arg(long)]
    room: String,
    /// Nickname.
    #[arg(long)]
    name: String,
    /// Video source: `test`, `test:WxH` (e.g. test:1280x720), `scene`, `scene:WxH` (a synthetic
    /// camera that encodes as expensively as a real one) or `none`.
    #[arg(long, default_value = "test")]
    video: String,
    /// Number stamped into the test pattern, to tell streams apart.
    #[arg(long, default_value_t = 0)]
    source_id: u8,
    /// Share a screen from the start: `test` (a synthetic 1920x1080 page of text and lines),
    /// `test:WxH`, `x11` (the X display in DISPLAY), `x11:MONITOR` (one of its monitors, e.g.
    /// x11:DP-1), or `portal` (Wayland: the desktop portal's
    /// dialog chooses, the picture comes through PipeWire).
    #[arg(long)]
    screen: Option<String>,
    /// Frames per second of the screen share at most (15 by default; 30 for smooth motion).
    #[arg(long, default_value_t = huddle::engine::DEFAULT_SHARE_FPS)]
    screen_fps: u32,
    /// Share what the computer plays with the screen (the default speaker's monitor).
    #[arg(long)]
    screen_sound: bool,
    /// Compare the screen shares received with the synthetic page a `--screen test` peer shares
    /// (the default 1920x1080 one, not `test:WxH`) and log how close they are
    /// (`screen.psnr_db`, luma PSNR below the stamp), for benchmarks.
    #[arg(long)]
    compare_screen: bool,
    /// Audio source: `tone`, `tone:HZ`, `clicks`, a WAV file, or `none`.
    #[arg(long, default_value = "tone")]
    audio: String,
    /// Accept incoming files into this folder. Without it, every offered file is declined: a
    /// peer anyone can join must not write into its working directory on a stranger's word.
    #[arg(long)]
    recv_dir: Option<std::path::PathBuf>,
    /// File to send to everyone once connected. Repeatable.
    #[arg(long)]
    send: Vec<std::path::PathBuf>,
    /// A chat message to send after joining.
    #[arg(long)]
    chat: Option<String>,
    /// Seconds to stay in the room (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Local address for peer connections. Repeatable.
    #[arg(long, default_value = "0.0.0.0:0")]
    bind: Vec<String>,
    /// Seconds between stats lines.
    #[arg(long, default_value_t = 1.0)]
    stats_interval: f64,
    /// Decline incoming files even when --recv-dir is given (declining is the default).
    #[arg(long)]
    decline_files: bool,
    /// Seconds after joining before latency samples count.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Record when a peer's clicks reach the speaker (mouth-to-ear latency).
    #[arg(long)]
    detect_clicks: bool,
    /// Find the room on the local network (mDNS) instead of using --server.
    #[arg(long)]
    discover: bool,
    /// The room's password (sets it when this peer creates the room).
    #[arg(long, env = "HUDDLE_ROOM_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// A join token from `huddle token`.
    #[arg(long)]
    token: Option<String>,
    /// Create the room large: on the server's SFU from the start, for up to its large-room
    /// capacity (ignored by a server without an SFU).
    #[arg(long)]
    large: bool,
    /// Create the room private (not in the public list).
    #[arg(long)]
    private: bool,
    /// A PEM certificate to trust for wss:// besides the system's roots.
    #[arg(long)]
    trust_cert: Option<std::path::PathBuf>,
    /// Connect to peers only through the TURN relays the server hands out.
    #[arg(long)]
    relay_only: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8787")]
    bind: SocketAddr,
    /// ICE server announced to clients: `stun:HOST:PORT` or `turn:USER:PASS@HOST:PORT`. Repeatable.
    #[arg(long = "ice-server", value_parser = protocol::parse_ice_server)]
    ice_servers: Vec<protocol::IceServer>,
    /// Most people in one room.
    #[arg(long, default_value_t = 6)]
    max_room_size: usize,
    /// Most people in a room created large (with --sfu: on the SFU from the start).
    #[arg(long, default_value_t = 50)]
    max_large_room_size: usize,
    /// Most rooms on this server.
    #[arg(long, default_value_t = 1000)]
    max_rooms: usize,
    /// Most simultaneous connections.
    #[arg(long, default_value_t = 20_000)]
    max_connections: usize,
    /// Seconds between heartbeats; a client silent for three is dropped.
    #[arg(long, default_value_t = 10.0)]
    heartbeat_secs: f64,
    /// Sustained messages per second allowed from one connection.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Burst of messages allowed from one connection.
    #[arg(long, default_value_t = 200.0)]
    burst: f64,
    /// Sustained chat messages per second from one connection.
    #[arg(long, default_value_t = 2.0)]
    chat_rate: f64,
    /// Burst of chat messages from one connection.
    #[arg(long, default_value_t = 10.0)]
    chat_burst: f64,
    /// Most simultaneous connections from one IP address.
    #[arg(long, default_value_t = 64)]
    max_connections_per_ip: usize,
    /// Most join attempts per minute from one connection.
    #[arg(long, default_value_t = 10)]
    joins_per_minute: u32,
    /// Messages queued for one client before it is dropped as too slow to read.
    #[arg(long, default_value_t = 256)]
    outbox_len: usize,
    /// Origin a browser may connect from (`https://chat.example.org`, or `*`). Repeatable.
    /// Requests carrying any other Origin are refused with HTTP 403.
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Announce this server and its rooms on the local network (mDNS) under this name.
    #[arg(long)]
    announce: Option<String>,
    /// PEM certificate chain: serve wss:// (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Allow plain ws:// on a public address (TLS terminated by a proxy in front).
    #[arg(long)]
    insecure: bool,
    /// Require a signed join token (`huddle token`) for every join.
    #[arg(long, env = "HUDDLE_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Signs the rejoin tokens clients hold, which also let them keep their peer ids (and their
    /// calls) across a restart of this server. Default: a random secret kept in
    /// `$XDG_STATE_HOME/huddle/rejoin-secret`, created on first start. (With --redis the
    /// cluster keeps its own in Redis.)
    #[arg(long, env = "HUDDLE_REJOIN_SECRET", hide_env_values = true)]
    rejoin_secret: Option<String>,
    /// Share rooms with other `huddle serve` processes through this Redis (redis://HOST:PORT).
    #[arg(long)]
    redis: Option<String>,
    /// TURN server to hand out with per-client credentials (`turn:HOST:PORT`). Repeatable;
    /// needs --turn-secret.
    #[arg(long = "turn-url", requires = "turn_secret")]
    turn_urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret` with
    /// `use-auth-secret`).
    #[arg(
        long,
        env = "HUDDLE_TURN_SECRET",
        hide_env_values = true,
        requires = "turn_urls"
    )]
    turn_secret: Option<String>,
    /// How long handed-out TURN credentials stay valid: 90s, 30m, 12h, 1d.
    #[arg(long, default_value = "12h", value_parser = access::parse_ttl)]
    turn_ttl: Duration,
    /// POST each room event (room started or finished, participant joined or left) as signed
    /// JSON to this URL. Repeatable; needs --webhook-secret.
    #[arg(long = "webhook", requires = "webhook_secret")]
    webhooks: Vec<String>,
    /// Key for the webhooks' HMAC-SHA256 signature (the `Huddle-Signature` header).
    #[arg(
        long,
        env = "HUDDLE_WEBHOOK_SECRET",
        hide_env_values = true,
        requires = "webhooks"
    )]
    webhook_secret: Option<String>,
    /// A Janus gateway (its WebSocket API, `ws://HOST:8188`) to put big rooms on: a room with
    /// more than --sfu-above people moves onto it. Repeatable: each room goes on the instance
    /// carrying the fewest people. Not with --redis (yet).
    #[arg(long)]
    sfu: Vec<String>,
    /// The Janus VideoRoom plugin's `admin_key`, which lets only this server create rooms there.
    #[arg(
        long,
        env = "HUDDLE_SFU_SECRET",
        hide_env_values = true,
        requires = "sfu"
    )]
    sfu_secret: Option<String>,
    /// Rooms move onto the SFU once they have more people than this (0: every room).
    #[arg(long, default_value_t = 4, requires = "sfu")]
    sfu_above: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The desktop app also keeps a log file a user can attach to a bug report; the server, the
    // headless peer and the benchmark log to stderr only.
    let log_file = if cli.command.is_none() {
        huddle::settings::open_log_file()
    } else {
        None
    };
    init_tracing(log_file);
    match cli.command {
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Join(args)) => join(args),
        Some(Command::Bench(args)) => bench(args),
        Some(Command::Token(args)) => token(args),
        None => {
            let mut options = huddle::ui::LaunchOptions {
                server: cli.server,
                room: cli.room,
                nickname: cli.nickname,
                settings_path: cli.settings,
                trusted_cert: cli.trust_cert,
                token: None,
                display_stats: cli.display_stats,
                renderer: cli.renderer,
            };
            if let Some(link) = &cli.link {
                // A malformed link is a clear message, not a crash.
                let invite = huddle::invite::Invite::parse(link)
                    .with_context(|| format!("cannot open {link:?}"))?;
                options.server = Some(invite.server_url());
                options.room = Some(invite.room);
                options.token = invite.token;
            }
            huddle::ui::run(options)?;
            Ok(())
        }
    }
}

fn init_tracing(log_file: Option<std::fs::File>) {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("huddle=info,winit=error,warn"))
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let file = log_file.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .with_filter(filter())
    });
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
}

/// The secret given, else the one in the state folder (created on first start), else (no
/// state folder) a random one for this run only, with a warning: clients then lose their peer
/// ids when the server restarts.
fn rejoin_secret(given: Option<String>) -> anyhow::Result<access::Secret> {
    if let Some(given) = given {
        return access::Secret::new(given).context("--rejoin-secret");
    }
    let Some(path) = huddle::settings::default_rejoin_secret_path() else {
        tracing::warn!("no state folder: rejoin tokens will not survive a restart");
        return Ok(access::Secret::random());
    };
    match huddle::settings::load_or_create_secret(&path) {
        Ok(secret) => access::Secret::new(secret).context("the rejoin secret file"),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the rejoin secret; rejoin tokens will not survive a restart");
            Ok(access::Secret::random())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.heartbeat_secs > 0.0,
        "--heartbeat-secs must be positive"
    );
    anyhow::ensure!(
        args.max_room_size >= 2,
        "--max-room-size must be at least 2"
    );
    anyhow::ensure!(args.outbox_len > 0, "--outbox-len must be positive");
    let heartbeat = Duration::from_secs_f64(args.heartbeat_secs);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(server::TlsIdentity::from_pem_files(cert, key)?),
        _ => None,
    };
    let token_secret = args
        .token_secret
        .map(access::Secret::new)
        .transpose()
        .context("--token-secret")?;
    let rejoin_secret = rejoin_secret(args.rejoin_secret)?;
    let config = signaling::ServerConfig {
        bind: args.bind,
        ice_servers: args.ice_servers,
        hub: signaling::hub::HubConfig {
            max_room_size: args.max_room_size,
            max_large_room_size: args.max_large_room_size.max(args.max_room_size),
            max_rooms: args.max_rooms,
            access: access::AccessConfig {
                token_secret,
                rejoin_secret,
                joins_per_minute: args.joins_per_minute,
            },
            sfu_above: (!args.sfu.is_empty()).then_some(args.sfu_above),
            ..Default::default()
        },
        max_connections: args.max_connections,
        heartbeat_interval: heartbeat,
        heartbeat_timeout: heartbeat * 3,
        rate_limit: RateLimit {
            per_second: args.rate,
            burst: args.burst,
            ..Default::default()
        },
        chat_rate_limit: RateLimit {
            per_second: args.chat_rate,
            burst: args.chat_burst,
            ..RateLimit::chat_default()
        },
        outbox_len: args.outbox_len,
        max_connections_per_ip: args.max_connections_per_ip,
        allowed_origins: args.allowed_origins,
        tls,
        allow_plain_public: args.insecure,
        redis_url: args.redis,
        turn: match &args.turn_secret {
            Some(secret) => Some(signaling::turn::TurnConfig::new(
                args.turn_urls.clone(),
                secret.as_bytes(),
                args.turn_ttl,
            )?),
            None => None,
        },
        sfu: (!args.sfu.is_empty()).then(|| signaling::sfu::SfuConfig {
            janus: args
                .sfu
                .iter()
                .map(|url| signaling::janus::JanusConfig {
                    url: url.clone(),
                    admin_key: args.sfu_secret.clone(),
                    api_secret: None,
                })
                .collect(),
            publishers: args.max_room_size.max(args.max_large_room_size),
        }),
        webhooks: args.webhook_secret.as_ref().map(|secret| {
            signaling::webhook::WebhookConfig::new(args.webhooks.clone(), secret.clone())
        }),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let server = signaling::server::start(config).await?;
        println!("huddle signaling server on {}", server.url());
        let _announcing = match &args.announce {
            Some(name) => {
                let port = server.local_addr().port();
                let scheme = if server.url().starts_with("wss:") {
                    "wss"
                } else {
                    "ws"
                };
                let url = format!("{scheme}://127.0.0.1:{port}");
                Some(huddle::lan::announce_server(name, &url, port)?)
            }
            None => None,
        };
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        tracing::info!("Ctrl-C: shutting down");
        server.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

fn join(args: JoinArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.headless,
        "`huddle join` needs --headless for now; run `huddle` for the app"
    );
    anyhow::ensure!(
        args.stats_interval > 0.0,
        "--stats-interval must be positive"
    );
    let options = huddle::headless::HeadlessOptions {
        server: args.server,
        room: args.room,
        name: args.name,
        video: args.video,
        source_id: args.source_id,
        screen: args.screen,
        screen_fps: args.screen_fps,
        screen_sound: args.screen_sound,
        compare_screen: args.compare_screen,
        audio: args.audio,
        accept_files: args.recv_dir.is_some() && !args.decline_files,
        recv_dir: args.recv_dir.unwrap_or_else(|| ".".into()),
        send: args.send,
        chat: args.chat,
        duration: args
            .duration
            .map(|d| Duration::try_from_secs_f64(d).context("bad --duration"))
            .transpose()?,
        bind: args.bind,
        stats_interval: Duration::from_secs_f64(args.stats_interval),
        warmup: Duration::try_from_secs_f64(args.warmup).context("bad --warmup")?,
        detect_clicks: args.detect_clicks,
        discover: args.discover,
        access: huddle::engine::JoinAccess {
            password: args.password,
            token: args.token,
            rejoin_token: None,
            private: args.private,
            large: args.large,
            ..Default::default()
        },
        trusted_cert: args.trust_cert,
        relay_only: args.relay_only,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    runtime.block_on(async {
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        huddle::headless::run(options, std::io::stdout().lock(), stop).await
    })?;
    Ok(())
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let room = protocol::validate_room_name(&args.room)
        .map_err(anyhow::Error::msg)
        .context("--room")?;
    let secret = access::Secret::new(args.secret).context("--secret")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_millis() as u64;
    let token = access::mint(
        &secret,
        &access::room_key(&room),
        access::TokenKind::Join,
        args.ttl,
        now_ms,
    )?;
    println!("{token}");
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use huddle::bench::{self, Section};
    let sections = if args.only.is_empty() {
        Section::ALL.to_vec()
    } else {
        args.only
            .iter()
            .map(|s| Section::parse(s).with_context(|| format!("unknown section {s:?}")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let options = bench::BenchOptions {
        exe: std::env::current_exe().context("finding this executable")?,
        sections,
        joins: args.joins.max(1),
        call_seconds: args.call_seconds.max(3.0),
        clients: args.clients.max(5),
        transfer_mib: args.transfer_mib.max(1),
        work_dir: args.work_dir,
        profiles: args.profiles,
        network_seconds: args.network_seconds,
        network_screen_fps: args.network_screen_fps,
        link_seed: args.link_seed,
        churn_connections: args.churn_connections.max(1),
        churn_stay: std::time::Duration::from_millis(args.churn_stay_ms),
        soak_minutes: args.soak_minutes,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let report = runtime.block_on(bench::run(options))?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    println!("{}", bench::table(&report));
    Ok(())
}

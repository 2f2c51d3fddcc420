//! `huddle bench`: the figures users compare, measured in one command. It starts a real
//! signaling server and real headless peers (child processes of this binary) on loopback, reads
//! their JSON logs and their own CPU and memory accounting, and prints a readable table plus a
//! JSON summary. Every figure carries its sample count; nothing is estimated.

mod app;
mod network;
mod screen;
mod sfu;
mod soak;

use crate::procstat;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Failed(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

fn fail(msg: impl Into<String>) -> BenchError {
    BenchError::Failed(msg.into())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Join,
    Video,
    Audio,
    Mesh,
    Transfer,
    BigTransfer,
    Signaling,
    Network,
    Churn,
    /// The desktop app under Xvfb.
    App,
    /// A screen share at 5 and 15 fps.
    Screen,
    /// Opt-in: not in `ALL`.
    Soak,
    /// Mesh against the Janus SFU. Opt-in (needs `janus`): not in `ALL`.
    Sfu,
}

impl Section {
    pub const ALL: [Section; 11] = [
        Section::Join,
        Section::Video,
        Section::Audio,
        Section::Mesh,
        Section::Transfer,
        Section::BigTransfer,
        Section::Signaling,
        Section::Network,
        Section::Churn,
        Section::App,
        Section::Screen,
    ];

    pub fn parse(s: &str) -> Option<Section> {
        Some(match s {
            "join" => Section::Join,
            "video" => Section::Video,
            "audio" => Section::Audio,
            "mesh" => Section::Mesh,
            "transfer" => Section::Transfer,
            "big-transfer" => Section::BigTransfer,
            "signaling" => Section::Signaling,
            "network" => Section::Network,
            "churn" => Section::Churn,
            "app" => Section::App,
            "screen" => Section::Screen,
            "soak" => Section::Soak,
            "sfu" => Section::Sfu,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub exe: PathBuf,
    pub sections: Vec<Section>,
    pub joins: usize,
    pub call_seconds: f64,
    pub clients: usize,
    pub transfer_mib: u64,
    pub work_dir: PathBuf,
    /// Link profiles for the network section (empty: every named profile).
    pub profiles: Vec<String>,
    /// Seconds per profile (`None`: each profile's own length).
    pub network_seconds: Option<f64>,
    /// Peer A of the network section also shares the synthetic screen at this frame rate.
    pub network_screen_fps: Option<u32>,
    /// Seed for the link emulator (`None`: a new one per profile, reported).
    pub link_seed: Option<u64>,
    /// Connections that come and go in the churn section.
    pub churn_connections: usize,
    /// How long each churn guest stays in the call after its first picture.
    pub churn_stay: Duration,
    /// Length of the soak section's call.
    pub soak_minutes: f64,
}

/// A child process of this binary with its JSON-lines stdout.
struct Proc {
    child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    log: Vec<(Instant, Value)>,
    name: String,
}

impl Proc {
    fn spawn(exe: &Path, args: &[String], name: &str) -> Result<Proc, BenchError> {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Proc::spawn_command(cmd, name, Stdio::null())
    }

    /// Starts a prepared command (e.g. inside a network namespace) and reads its JSON lines.
    fn spawn_command(mut cmd: Command, name: &str, stderr: Stdio) -> Result<Proc, BenchError> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("child has no stdout"))?;
        Ok(Proc {
            child,
            lines: BufReader::new(stdout).lines(),
            log: Vec::new(),
            name: name.to_owned(),
        })
    }

    /// Reads lines until `f` accepts one (returned with the time it was read).
    async fn until(
        &mut self,
        within: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value), BenchError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .map_err(|_| {
                    fail(format!(
                        "{}: no expected event within {within:?}",
                        self.name
                    ))
                })??
                .ok_or_else(|| fail(format!("{}: exited early", self.name)))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let now = Instant::now();
            self.log.push((now, v.clone()));
            if f(&v) {
                return Ok((now, v));
            }
        }
    }

    /// Reads lines into the log for `within`, so the child's pipe never fills while we wait.
    async fn read_for(&mut self, within: Duration) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(line) = tokio::time::timeout_at(deadline, self.lines.next_line()).await {
            let line = line?.ok_or_else(|| fail(format!("{}: exited early", self.name)))?;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                self.log.push((Instant::now(), v));
            }
        }
        Ok(())
    }

    async fn event(
        &mut self,
        within: Duration,
        name: &str,
    ) -> Result<(Instant, Value), BenchError> {
        self.until(within, |v| v["event"] == name).await
    }

    /// Asks the peer to leave (SIGINT, as Ctrl-C).
    fn interrupt(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGINT);
            }
        }
    }

    /// Asks the peer to leave and returns its summary line.
    async fn finish(&mut self) -> Result<Value, BenchError> {
        self.interrupt();
        self.summary().await
    }

    /// Waits for the summary of a peer already asked to leave.
    async fn summary(&mut self) -> Result<Value, BenchError> {
        let (_, summary) = self.event(Duration::from_secs(20), "summary").await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        Ok(summary)
    }
}

struct Server {
    proc: Proc,
    url: String,
}

async fn start_server(exe: &Path, extra: &[&str]) -> Result<Server, BenchError> {
    let mut cmd = Command::new(exe);
    cmd.args(["serve", "--bind", "127.0.0.1:0"]).args(extra);
    start_server_command(cmd).await
}

/// Starts a prepared `huddle serve` command and waits for the URL it prints.
async fn start_server_command(mut cmd: Command) -> Result<Server, BenchError> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| fail("server has no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| fail("server did not start"))??
        .ok_or_else(|| fail("server exited"))?;
    let url = first
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("ws://"))
        .ok_or_else(|| fail(format!("unexpected server output {first:?}")))?
        .to_owned();
    Ok(Server {
        proc: Proc {
            child,
            lines,
            log: Vec::new(),
            name: "server".into(),
        },
        url,
    })
}

fn peer_args(url: &str, room: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "join",
        "--headless",
        "--server",
        url,
        "--room",
        room,
        "--name",
        name,
        "--bind",
        "127.0.0.1:0",
        "--duration",
        "600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Min, median, 95th and 99th percentile and max of a sample, in its own unit.
fn stats(mut v: Vec<f64>) -> Value {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return json!({"count": 0});
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    let round = |x: f64| (x * 100.0).round() / 100.0;
    json!({"count": v.len(), "min": round(v[0]), "p50": round(pick(0.5)), "p95": round(pick(0.95)), "p99": round(pick(0.99)), "max": round(v[v.len() - 1])})
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| (k / 1024.0 / 1024.0 * 10.0).round() / 10.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": mem_gib,
        "kernel": kernel.trim(),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

pub async fn run(opts: BenchOptions) -> Result<Value, BenchError> {
    procstat::raise_fd_limit();
    std::fs::create_dir_all(&opts.work_dir)?;
    let mut report = json!({
        "machine": machine(),
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    });
    let started = Instant::now();
    for section in &opts.sections {
        let t = Instant::now();
        let result = match section {
            Section::Join => join_times(&opts).await,
            Section::Video => video(&opts).await,
            Section::Audio => audio(&opts).await,
            Section::Mesh => mesh(&opts).await,
            Section::Transfer => transfer(&opts, opts.transfer_mib, true).await,
            Section::BigTransfer => transfer(&opts, 1024, false).await,
            Section::Signaling => signaling(&opts).await,
            Section::Network => network::run(&opts).await,
            Section::Churn => churn(&opts).await,
            Section::App => app::run(&opts).await,
            Section::Screen => screen::run(&opts).await,
            Section::Soak => soak::run(&opts).await,
            Section::Sfu => sfu::run(&opts).await,
        };
        let key = format!("{section:?}").to_lowercase();
        let mut value = result.unwrap_or_else(|e| json!({"error": e.to_string()}));
        value["section_seconds"] = json!((t.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        eprintln!("bench: {key} done in {:.1} s", t.elapsed().as_secs_f64());
        report[key] = value;
    }
    report["total_seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    Ok(report)
}

/// Join time: a peer already in the room; a new peer joins, repeatedly.
async fn join_times(opts: &BenchOptions) -> Result<Value, BenchError> {
    let server = start_server(&opts.exe, &[]).await?;
    let mut host = Proc::spawn(
        &opts.exe,
        &peer_args(&server.url, "join", "host", &["--source-id", "1"]),
        "host",
    )?;
    host.event(Duration::from_secs(10), "joined").await?;
    let (mut to_joined, mut to_frame, mut offer_ice, mut offer_conn, mut total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut from_process_start = Vec::new();
    for i in 0..opts.joins {
        let name = format!("guest{i}");
        let mut guest = Proc::spawn(
            &opts.exe,
            &peer_args(
                &server.url,
                "join",
                &name,
                &["--source-id", "2", "--audio", "none"],
            ),
            &name,
        )?;
        let (_, joined) = guest.event(Duration::from_secs(10), "joined").await?;
        let (_, connected) = guest.event(Duration::from_secs(10), "connected").await?;
        let (_, first) = guest.event(Duration::from_secs(10), "first_frame").await?;
        let j = num(&joined["since_start_ms"]);
        let f = num(&first["since_join_ms"]);
        to_joined.push(j);
        to_frame.push(f);
        total.push(j + f);
        if let Some(p) = first["since_process_start_ms"].as_f64() {
            from_process_start.push(p);
        }
        offer_ice.push(num(&connected["offer_to_ice_ms"]));
        offer_conn.push(num(&connected["offer_to_connected_ms"]));
        guest.finish().await?;
        // The host must see the guest leave before the next one comes.
        host.event(Duration::from_secs(10), "peer_left").await?;
    }
    host.finish().await?;
    drop(server);
    Ok(json!({
        "what": "a peer joins a room with one peer in it; times from the headless process's start (exec, from /proc, good to about 20 ms), from the join command (engine start) and from the offer",
        "process_start_to_first_frame_ms": stats(from_process_start),
        "join_command_to_first_frame_ms": stats(total),
        "join_command_to_joined_ms": stats(to_joined),
        "joined_to_first_frame_ms": stats(to_frame),
        "offer_to_ice_connected_ms": stats(offer_ice),
        "offer_to_connected_ms": stats(offer_conn),
    }))
}

/// Connections after which the churn section takes its baseline: allocator arenas, codec
/// tables and thread pools have reached their working size by then.
const CHURN_WARMUP: usize = 20;

/// Memory of a peer that stays in a room while others come and go, one at a time: each guest
/// joins, shows the host's first frame (the connection is up and media flowed), stays in the
/// call for `churn_stay` (jitter buffers and retransmission history fill, as in a real visit),
/// leaves, and the host sees it go. The host's RSS is read from /proc after the warm-up and
/// every 20 connections.
async fn churn(opts: &BenchOptions) -> Result<Value, BenchError> {
    let server = start_server(&opts.exe, &[]).await?;
    let mut host = Proc::spawn(
        &opts.exe,
        &peer_args(&server.url, "churn", "host", &["--source-id", "1"]),
        "host",
    )?;
    host.event(Duration::from_secs(10), "joined").await?;
    let host_pid = host.child.id();
    let rss_mb = || {
        host_pid
            .and_then(|p| procstat::usage(Some(p)))
            .map(|u| u.rss_mb)
    };
    let at_start = rss_mb();
    let mut after_warmup = None;
    let mut samples = Vec::new();
    let started = Instant::now();
    for i in 0..opts.churn_connections {
        let name = format!("guest{i}");
        let mut guest = Proc::spawn(
            &opts.exe,
            &peer_args(
                &server.url,
                "churn",
                &name,
                &["--source-id", "2", "--audio", "none"],
            ),
            &name,
        )?;
        guest.event(Duration::from_secs(15), "first_frame").await?;
        // The visit itself: a call of this length, not a wait for anything.
        tokio::time::sleep(opts.churn_stay).await;
        guest.finish().await?;
        host.event(Duration::from_secs(15), "peer_left").await?;
        let done = i + 1;
        if done == CHURN_WARMUP {
            after_warmup = rss_mb();
        }
        if done % 20 == 0 || done == opts.churn_connections {
            samples.push(json!({"connections": done, "rss_mb": rss_mb()}));
        }
    }
    let at_end = rss_mb();
    let seconds = started.elapsed().as_secs_f64();
    host.finish().await?;
    drop(server);
    let round1 = network::round1;
    let growth = |from: Option<f64>| from.zip(at_end).map(|(a, b)| round1(b - a));
    let after = opts.churn_connections.saturating_sub(CHURN_WARMUP);
    Ok(json!({
        "what": format!("RSS of a headless peer that stays in a room while {} others join one at a time, exchange video until the newcomer shows the host's first frame, stay {} ms more, and leave; read from /proc", opts.churn_connections, opts.churn_stay.as_millis()),
        "connections": opts.churn_connections,
        "stay_after_first_frame_ms": opts.churn_stay.as_millis() as u64,
        "seconds": round1(seconds),
        "rss_mb_at_start": at_start,
        "rss_mb_after_warmup": after_warmup,
        "rss_mb_at_end": at_end,
        "warmup_connections": CHURN_WARMUP,
        "rss_growth_mb_after_warmup": growth(after_warmup),
        "rss_growth_kb_per_connection_after_warmup": growth(after_warmup).filter(|_| after > 0).map(|g| round1(g * 1024.0 / after as f64)),
        "rss_mb_every_20": samples,
    }))
}

/// Starts `n` peers in one room with the given extra arguments, runs for `seconds` after all
/// have seen everyone's first frame, and returns their summary lines.
async fn call(
    opts: &BenchOptions,
    room: &str,
    n: usize,
    extra: impl Fn(usize) -> Vec<String>,
    seconds: f64,
) -> Result<Vec<Value>, BenchError> {
    let server = start_server(&opts.exe, &[]).await?;
    let mut peers = Vec::new();
    for i in 0..n {
        let args: Vec<String> = extra(i);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let name = format!("p{i}");
        let mut p = Proc::spawn(
            &opts.exe,
            &peer_args(&server.url, room, &name, &args),
            &name,
        )?;
        p.event(Duration::from_secs(10), "joined").await?;
        peers.push(p);
    }
    let wait = Duration::from_secs_f64(seconds);
    tokio::time::sleep(wait).await;
    // All leave at once, so each summary still covers every peer.
    for p in &peers {
        p.interrupt();
    }
    let mut summaries = Vec::new();
    for p in peers.iter_mut() {
        summaries.push(p.summary().await?);
    }
    drop(server);
    Ok(summaries)
}

fn cpu_per_second(summary: &Value) -> f64 {
    num(&summary["cpu_seconds_in_room"]) / num(&summary["seconds_in_room"])
}

async fn video(opts: &BenchOptions) -> Result<Value, BenchError> {
    let mut out = json!({"what": "capture stamp in the frame to the decoded picture handed to the display on the other side (encode, network, decode and playout delay included; texture upload, paint and any camera left out), both directions of a 1:1 call, after 2 s warm-up"});
    for (label, size) in [("640x480", "test"), ("1280x720", "test:1280x720")] {
        let summaries = call(
            opts,
            &format!("video-{label}"),
            2,
            |i| {
                vec![
                    "--video".into(),
                    size.into(),
                    "--source-id".into(),
                    (i + 1).to_string(),
                    "--warmup".into(),
                    "2".into(),
                    "--audio".into(),
                    format!("tone:{}", 440 + 220 * i),
                ]
            },
            opts.call_seconds,
        )
        .await?;
        let mut directions = Vec::new();
        let mut cpu = Vec::new();
        let mut peak = Vec::new();
        let mut steady = Vec::new();
        let mut encode = Vec::new();
        let mut decode = Vec::new();
        for s in &summaries {
            cpu.push(cpu_per_second(s));
            peak.push(num(&s["peak_rss_mb"]));
            steady.push(num(&s["rss_mb"]));
            encode.push(s["encoder"]["encode_ms"].clone());
            for p in s["peers"].as_array().cloned().unwrap_or_default() {
                directions.push(json!({"latency_ms": p["latency_ms"], "frames_decoded": p["frames_decoded"], "decode_ms": p["decode_ms"]}));
                decode.push(p["decode_ms"].clone());
            }
        }
        out[label] = json!({
            "directions": directions,
            "encode_ms_per_peer": encode,
            "decode_ms": decode,
            "cpu_seconds_per_second_per_peer": cpu,
            "peak_rss_mb_per_peer": peak,
            "steady_rss_mb_per_peer": steady,
            "call_seconds": opts.call_seconds,
        });
    }
    Ok(out)
}

async fn audio(opts: &BenchOptions) -> Result<Value, BenchError> {
    let summaries = call(
        opts,
        "audio",
        2,
        |i| {
            if i == 0 {
                vec![
                    "--audio".into(),
                    "clicks".into(),
                    "--video".into(),
                    "none".into(),
                ]
            } else {
                vec![
                    "--audio".into(),
                    "none".into(),
                    "--video".into(),
                    "none".into(),
                    "--detect-clicks".into(),
                ]
            }
        },
        opts.call_seconds,
    )
    .await?;
    let clicks: Vec<i64> =
        serde_json::from_value(summaries[0]["click_times_us"].clone()).unwrap_or_default();
    let onsets: Vec<i64> =
        serde_json::from_value(summaries[1]["onset_times_us"].clone()).unwrap_or_default();
    // Each onset belongs to the latest click before it (clicks are 500 ms apart).
    let mut latencies = Vec::new();
    for onset in &onsets {
        if let Some(click) = clicks.iter().filter(|c| *c <= onset).max()
            && onset - click < 400_000
        {
            latencies.push((onset - click) as f64 / 1000.0);
        }
    }
    Ok(json!({
        "what": "mouth-to-ear: a click's capture in the sender's synthetic microphone to its onset in the receiver's speaker output (the sink's write; a real device adds its own buffer)",
        "clicks_sent": clicks.len(),
        "onsets_heard": onsets.len(),
        "mouth_to_ear_ms": stats(latencies),
    }))
}

async fn mesh(opts: &BenchOptions) -> Result<Value, BenchError> {
    let summaries = call(
        opts,
        "mesh",
        4,
        |i| {
            vec![
                "--source-id".into(),
                (i + 1).to_string(),
                "--warmup".into(),
                "2".into(),
                "--audio".into(),
                format!("tone:{}", 300 + 150 * i),
            ]
        },
        opts.call_seconds,
    )
    .await?;
    let mut latency = Vec::new();
    for s in &summaries {
        for p in s["peers"].as_array().cloned().unwrap_or_default() {
            latency.push(p["latency_ms"].clone());
        }
    }
    Ok(json!({
        "what": "4-peer mesh at 640x480@30: each peer encodes once and decodes three streams; all four processes share this machine",
        "cpu_seconds_per_second_per_peer": summaries.iter().map(cpu_per_second).collect::<Vec<_>>(),
        "peak_rss_mb_per_peer": summaries.iter().map(|s| num(&s["peak_rss_mb"])).collect::<Vec<_>>(),
        "steady_rss_mb_per_peer": summaries.iter().map(|s| num(&s["rss_mb"])).collect::<Vec<_>>(),
        "latency_ms_per_stream": latency,
    }))
}

/// Writes `mib` MiB of pseudo-random bytes to `path` and returns their SHA-256 (hex).
fn write_file(path: &Path, mib: u64) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Write;
    let mut hash = Sha256::new();
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        hash.update(&block);
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(hex::encode(hash.finalize()))
}

/// SHA-256 (hex) of a file's contents as they are on disk now.
fn hash_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hash.finalize()));
        }
        hash.update(&buf[..n]);
    }
}

async fn tcp_ceiling(bytes: u64) -> Result<f64, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0u64;
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(total);
            }
            total += n as u64;
        }
    });
    let started = Instant::now();
    let mut sock = tokio::net::TcpStream::connect(addr).await?;
    let buf = vec![7u8; 1 << 16];
    let mut sent = 0u64;
    while sent < bytes {
        sock.write_all(&buf).await?;
        sent += buf.len() as u64;
    }
    sock.shutdown().await?;
    let got = reader.await.map_err(|e| fail(e.to_string()))??;
    let secs = started.elapsed().as_secs_f64();
    Ok(got as f64 / 1e6 / secs)
}

async fn transfer(opts: &BenchOptions, mib: u64, with_ceiling: bool) -> Result<Value, BenchError> {
    let dir = opts.work_dir.join(format!("transfer-{mib}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("in"))?;
    let file = dir.join("payload.bin");
    let sent_sha256 = write_file(&file, mib)?;
    let server = start_server(&opts.exe, &[]).await?;
    let quiet = ["--video", "none", "--audio", "none"];
    let recv_dir = dir.join("in");
    let mut receiver_args: Vec<String> = quiet.iter().map(|s| s.to_string()).collect();
    receiver_args.extend(["--recv-dir".to_string(), recv_dir.display().to_string()]);
    let receiver_args: Vec<&str> = receiver_args.iter().map(String::as_str).collect();
    let mut receiver = Proc::spawn(
        &opts.exe,
        &peer_args(&server.url, "transfer", "receiver", &receiver_args),
        "receiver",
    )?;
    receiver.event(Duration::from_secs(10), "joined").await?;
    let file_arg = file.display().to_string();
    let mut sender_args: Vec<&str> = quiet.to_vec();
    sender_args.extend(["--send", &file_arg]);
    let mut sender = Proc::spawn(
        &opts.exe,
        &peer_args(&server.url, "transfer", "sender", &sender_args),
        "sender",
    )?;
    let (connected_at, _) = sender.event(Duration::from_secs(10), "connected").await?;
    let budget = Duration::from_secs(30 + mib / 10);
    let (done_at, received) = receiver.event(budget, "file_received").await?;
    let secs = done_at.duration_since(connected_at).as_secs_f64();
    let bytes = (mib << 20) as f64;
    let rs = receiver.finish().await?;
    let ss = sender.finish().await?;
    drop(server);
    // The receiver's own hash, and the bytes it saved, both against what was written.
    let reported = received["sha256"].as_str();
    let saved = received["path"]
        .as_str()
        .map(|p| hash_file(Path::new(p)))
        .transpose()?;
    let _ = std::fs::remove_dir_all(&dir);
    let reported_matches = reported == Some(sent_sha256.as_str());
    let saved_matches = saved.as_deref() == Some(sent_sha256.as_str());
    let mut out = json!({
        "what": format!("one {mib} MiB file over the data channel, loopback; time from the connection being up to the receiver having verified (SHA-256) and saved it"),
        "file_mib": mib,
        "seconds": (secs * 100.0).round() / 100.0,
        "mb_per_s": (bytes / 1e6 / secs * 10.0).round() / 10.0,
        "sha256_of_written_file": sent_sha256,
        "receiver_reported_sha256_matches": reported_matches,
        "saved_file_sha256_matches": saved_matches,
        "sender": {"cpu_seconds_per_mb": num(&ss["cpu_seconds_in_room"]) / (bytes / 1e6), "peak_rss_mb": ss["peak_rss_mb"]},
        "receiver": {"cpu_seconds_per_mb": num(&rs["cpu_seconds_in_room"]) / (bytes / 1e6), "peak_rss_mb": rs["peak_rss_mb"]},
    });
    if with_ceiling {
        out["tcp_loopback_mb_per_s"] = json!((tcp_ceiling(mib << 20).await? * 10.0).round() / 10.0);
    }
    Ok(out)
}

/// N WebSocket clients in rooms of five; each sends chat messages stamped with the send time;
/// every member records how long each took to arrive.
async fn signaling(opts: &BenchOptions) -> Result<Value, BenchError> {
    use crate::signaling::protocol::{self, ClientMessage, ServerMessage};
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let n = opts.clients;
    let server = start_server(
        &opts.exe,
        &[
            "--max-connections",
            &(n + 100).to_string(),
            // Every load client comes from 127.0.0.1.
            "--max-connections-per-ip",
            &(n + 100).to_string(),
            "--max-rooms",
            &(n / 5 + 10).to_string(),
            "--rate",
            "1000",
            "--burst",
            "1000",
        ],
    )
    .await?;
    let server_pid = server.proc.child.id();
    let url = server.url.clone();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let go = std::sync::Arc::new(tokio::sync::Notify::new());
    let go_flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let messages_each = 5u32;
    let spacing = Duration::from_secs(2);
    let mut tasks = tokio::task::JoinSet::new();
    let connect_started = Instant::now();
    for i in 0..n {
        let url = url.clone();
        let ready = ready_tx.clone();
        let go = go.clone();
        let go_flag = go_flag.clone();
        tasks.spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.map_err(|e| e.to_string())?;
            let send = |m: &ClientMessage| Message::Text(protocol::encode(m).into());
            ws.send(send(&ClientMessage::Hello { version: protocol::PROTOCOL_VERSION, client: None, resume: None })).await.map_err(|e| e.to_string())?;
            ws.send(send(&ClientMessage::Join { room: format!("load-{}", i / 5), nickname: format!("c{i}"), access: Default::default() }))
                .await
                .map_err(|e| e.to_string())?;
            // Wait until joined.
            while let Some(frame) = ws.next().await {
                if let Ok(Message::Text(t)) = frame
                    && let Ok(ServerMessage::Joined { .. }) = protocol::decode_server(&t)
                {
                    break;
                }
            }
            let _ = ready.send(()).await;
            if !go_flag.load(std::sync::atomic::Ordering::Acquire) {
                go.notified().await;
            }
            let mut latencies = Vec::new();
            // Spread the senders over the spacing interval.
            let offset = spacing.mul_f64((i % 97) as f64 / 97.0);
            let mut next = tokio::time::Instant::now() + offset;
            let mut sent = 0u32;
            let expected = messages_each as usize * 5;
            let deadline = tokio::time::Instant::now() + spacing * (messages_each + 3);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next), if sent < messages_each => {
                        let text = format!("t{}", crate::media::now_us());
                        ws.send(send(&ClientMessage::Chat { text })).await.map_err(|e| e.to_string())?;
                        sent += 1;
                        next += spacing;
                    }
                    frame = ws.next() => {
                        let Some(Ok(Message::Text(t))) = frame else {
                            if frame.is_none() { break; }
                            continue;
                        };
                        let now = crate::media::now_us();
                        if let Ok(ServerMessage::Chat { message }) = protocol::decode_server(&t)
                            && let Some(us) = message.text.strip_prefix('t').and_then(|s| s.parse::<u64>().ok())
                        {
                            latencies.push(now.saturating_sub(us) as f64 / 1000.0);
                            if latencies.len() >= expected && sent >= messages_each {
                                break;
                            }
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let _ = ws.close(None).await;
            Ok::<Vec<f64>, String>(latencies)
        });
        // Pace connection attempts so the accept queue is not overrun.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(ready_tx);
    let mut ready = 0;
    let connect_deadline = Instant::now() + Duration::from_secs(120);
    while ready < n {
        match tokio::time::timeout_at(connect_deadline.into(), ready_rx.recv()).await {
            Ok(Some(())) => ready += 1,
            _ => break,
        }
    }
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let before = server_pid.and_then(|p| procstat::usage(Some(p)));
    let measure_started = Instant::now();
    go_flag.store(true, std::sync::atomic::Ordering::Release);
    go.notify_waiters();
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut steady_rss = None;
    while let Some(result) = tasks.join_next().await {
        if steady_rss.is_none() {
            steady_rss = server_pid.and_then(|p| procstat::usage(Some(p)));
        }
        match result {
            Ok(Ok(l)) => latencies.extend(l),
            _ => failed += 1,
        }
    }
    let wall = measure_started.elapsed();
    let after = server_pid.and_then(|p| procstat::usage(Some(p)));
    let expected = n as u64 * messages_each as u64 * 5;
    let delivered = latencies.len();
    Ok(json!({
        "what": format!("{n} WebSocket clients in rooms of 5, each sending {messages_each} chat messages {}s apart; latency from send to arrival at every member (sender included), measured by the clients on this same machine", spacing.as_secs()),
        "clients": n,
        "clients_ready": ready,
        "clients_failed": failed,
        "connect_and_join_seconds": (connect_secs * 10.0).round() / 10.0,
        "deliveries_expected": expected,
        "deliveries_seen": delivered,
        "fanout_latency_ms": stats(latencies),
        "server_rss_mb_steady": steady_rss.map(|u| (u.rss_mb * 10.0).round() / 10.0),
        "server_rss_mb_peak": after.map(|u| (u.peak_rss_mb * 10.0).round() / 10.0),
        "server_cpu_seconds_per_second": before.zip(after).map(|(b, a)| (procstat::cpu_share(&b, &a, wall) * 1000.0).round() / 1000.0),
    }))
}

/// A readable table of the report.
pub fn table(report: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, k: &str, v: String| out.push_str(&format!("  {k:<48} {v}\n"));
    let st = |v: &Value| -> String {
        if v["count"].as_u64().unwrap_or(0) == 0 {
            return "no samples".into();
        }
        format!(
            "p50 {} / p95 {} / max {}  (n={})",
            v["p50"], v["p95"], v["max"], v["count"]
        )
    };
    let m = &report["machine"];
    out.push_str(&format!(
        "Machine: {} cores, {}, {} GiB, kernel {}, {} build\n",
        m["cores"],
        m["cpu_model"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        m["build"].as_str().unwrap_or("?")
    ));
    if let Some(j) = report.get("join") {
        out.push_str("Join\n");
        line(
            &mut out,
            "process start → first remote frame (ms)",
            st(&j["process_start_to_first_frame_ms"]),
        );
        line(
            &mut out,
            "join command → first remote frame (ms)",
            st(&j["join_command_to_first_frame_ms"]),
        );
        line(
            &mut out,
            "offer → ICE connected (ms)",
            st(&j["offer_to_ice_connected_ms"]),
        );
        line(
            &mut out,
            "offer → connected, DTLS done (ms)",
            st(&j["offer_to_connected_ms"]),
        );
    }
    if let Some(v) = report.get("video") {
        out.push_str("Video (capture stamp to picture handed to the display, no paint, 1:1)\n");
        for label in ["640x480", "1280x720"] {
            for (i, d) in v[label]["directions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                line(
                    &mut out,
                    &format!("{label} direction {i} latency (ms)"),
                    st(&d["latency_ms"]),
                );
            }
            let enc: Vec<String> = v[label]["encode_ms_per_peer"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|e| format!("{}", e["p50"]))
                .collect();
            line(
                &mut out,
                &format!("{label} encode ms p50 per peer"),
                enc.join(", "),
            );
            line(
                &mut out,
                &format!("{label} CPU s/s per peer"),
                format!("{}", v[label]["cpu_seconds_per_second_per_peer"]),
            );
            line(
                &mut out,
                &format!("{label} RSS MB peak / steady per peer"),
                format!(
                    "{} / {}",
                    v[label]["peak_rss_mb_per_peer"], v[label]["steady_rss_mb_per_peer"]
                ),
            );
        }
    }
    if let Some(a) = report.get("audio") {
        out.push_str("Audio\n");
        line(&mut out, "mouth-to-ear (ms)", st(&a["mouth_to_ear_ms"]));
    }
    if let Some(m) = report.get("mesh") {
        out.push_str("4-peer mesh (640x480)\n");
        line(
            &mut out,
            "CPU s/s per peer",
            format!("{}", m["cpu_seconds_per_second_per_peer"]),
        );
        line(
            &mut out,
            "RSS MB peak per peer",
            format!("{}", m["peak_rss_mb_per_peer"]),
        );
    }
    if let Some(c) = report.get("churn") {
        out.push_str(
            "Churn (one peer stays, others come and go)
",
        );
        line(
            &mut out,
            "host RSS MB: start / after warm-up / end",
            format!(
                "{} / {} / {}",
                c["rss_mb_at_start"], c["rss_mb_after_warmup"], c["rss_mb_at_end"]
            ),
        );
        line(
            &mut out,
            "growth after warm-up",
            format!(
                "{} MB over {} connections ({} KB each)",
                c["rss_growth_mb_after_warmup"],
                num(&c["connections"]) - num(&c["warmup_connections"]),
                c["rss_growth_kb_per_connection_after_warmup"]
            ),
        );
    }
    if let Some(app) = report.get("app") {
        out.push_str("Desktop app under Xvfb, 1:1 call (see `what` in the JSON)\n");
        let lobby = &app["process_start_to_first_lobby_paint"];
        line(
            &mut out,
            "process start → first lobby pass painted, p50 / max (ms)",
            format!(
                "{} / {} of {}",
                lobby["ms"]["p50"], lobby["ms"]["max"], lobby["ms"]["count"]
            ),
        );
        for (renderer, a) in [
            ("software renderer (its choice here)", app),
            (
                "GL renderer (Mesa llvmpipe), for comparison",
                &app["gl_for_comparison"],
            ),
        ] {
            out.push_str(&format!("  {renderer}\n"));
            line(
                &mut out,
                "CPU (cores), Xvfb's / RSS, peak (MB)",
                format!(
                    "{}, {} / {}, {}",
                    a["cpu_cores"], a["xvfb_cpu_cores"], a["rss_mb"], a["peak_rss_mb"]
                ),
            );
            let files: Vec<String> = a["rss_largest_files_mb"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    let path = f["file"].as_str().unwrap_or("?");
                    let name = path.rsplit('/').next().unwrap_or(path);
                    format!("{name} {}", f["mb"])
                })
                .collect();
            line(
                &mut out,
                "RSS: anonymous / file-backed / shared memory (MB)",
                format!(
                    "{} / {} / {} (largest files: {})",
                    a["rss_anonymous_mb"],
                    a["rss_file_backed_mb"],
                    a["rss_shared_memory_mb"],
                    files.join(", ")
                ),
            );
            line(
                &mut out,
                "process start → first remote picture in a texture (ms)",
                format!("{}", a["process_start_to_first_remote_picture_uploaded_ms"]),
            );
            line(
                &mut out,
                "passes run / painted per s",
                format!("{} / {}", a["passes_run_per_s"], a["passes_painted_per_s"]),
            );
            line(
                &mut out,
                "CPU per painted pass / UI thread per pass (ms)",
                format!(
                    "{} / {}",
                    a["cpu_ms_per_painted_pass"], a["ui_thread_ms_per_pass_mean"]
                ),
            );
            for s in a["streams"].as_array().into_iter().flatten() {
                line(
                    &mut out,
                    "remote frames decoded / painted per s, never painted",
                    format!(
                        "{} / {}, {} of {}",
                        s["decoded_per_s"],
                        s["painted_per_s"],
                        s["decoded_never_painted"],
                        s["decoded"]
                    ),
                );
            }
            line(
                &mut out,
                "capture stamp → painted (ms)",
                st(&a["capture_to_paint_latency_ms"]),
            );
        }
    }
    if let Some(k) = report.get("soak") {
        out.push_str(&format!(
            "Soak ({} min 1:1 call, {} samples, {} missing a figure)\n",
            k["minutes"], k["samples"], k["samples_missing_a_figure"]
        ));
        for (i, p) in k["per_peer"].as_array().into_iter().flatten().enumerate() {
            line(
                &mut out,
                &format!("peer {i}: RSS growth after 60 s / fps mean, lowest / CPU mean, highest"),
                format!(
                    "{} MB / {}, {} / {}, {}",
                    p["rss_growth_mb_after_warmup"],
                    p["fps_mean"],
                    p["fps_lowest_interval"],
                    p["cpu_cores_mean"],
                    p["cpu_cores_highest_interval"]
                ),
            );
        }
    }
    for key in ["transfer", "bigtransfer"] {
        if let Some(t) = report.get(key) {
            out.push_str(&format!("File transfer ({} MiB)\n", t["file_mib"]));
            line(&mut out, "throughput (MB/s)", format!("{}", t["mb_per_s"]));
            line(
                &mut out,
                "SHA-256 = written file's: receiver's / saved",
                format!(
                    "{} / {}",
                    t["receiver_reported_sha256_matches"], t["saved_file_sha256_matches"]
                ),
            );
            if let Some(c) = t.get("tcp_loopback_mb_per_s") {
                line(
                    &mut out,
                    "plain TCP loopback copy, same run (MB/s)",
                    format!("{c}"),
                );
            }
            line(
                &mut out,
                "sender / receiver peak RSS (MB)",
                format!(
                    "{} / {}",
                    t["sender"]["peak_rss_mb"], t["receiver"]["peak_rss_mb"]
                ),
            );
            line(
                &mut out,
                "sender / receiver CPU s per MB",
                format!(
                    "{:.5} / {:.5}",
                    num(&t["sender"]["cpu_seconds_per_mb"]),
                    num(&t["receiver"]["cpu_seconds_per_mb"])
                ),
            );
        }
    }
    if let Some(s) = report.get("signaling") {
        out.push_str(&format!("Signaling ({} clients)\n", s["clients"]));
        line(
            &mut out,
            "chat fan-out latency (ms)",
            format!(
                "{}  p99 {}",
                st(&s["fanout_latency_ms"]),
                s["fanout_latency_ms"]["p99"]
            ),
        );
        line(
            &mut out,
            "server RSS steady / peak (MB)",
            format!(
                "{} / {}",
                s["server_rss_mb_steady"], s["server_rss_mb_peak"]
            ),
        );
        line(
            &mut out,
            "server CPU s/s",
            format!("{}", s["server_cpu_seconds_per_second"]),
        );
    }
    if let Some(n) = report.get("network") {
        out.push_str(&network::table(n));
    }
    if let Some(s) = report.get("screen") {
        out.push_str(&screen::table(s));
    }
    for (k, v) in report.as_object().into_iter().flatten() {
        if let Some(e) = v.get("error") {
            out.push_str(&format!("{k}: FAILED: {e}\n"));
        }
    }
    out
}

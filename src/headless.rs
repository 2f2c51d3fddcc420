//! The headless peer (`huddle join --headless`): joins a room with synthetic sources through the
//! same engine the app uses and writes one JSON object per line to stdout for every event worth
//! knowing (joined, peers, connections, first frame with its latency, periodic video/audio
//! figures, chat, files). Tests, benchmarks and bots use it. Depends on `engine` and `media`.

use crate::engine::{self, AudioInput, Command, EngineConfig, EngineHandle, Event, JoinAccess};
use crate::ids::PeerId;
use crate::media::audio::{self, RecordingSink};
use crate::media::video::{EncoderStats, RemoteVideo, VideoSourceSpec};
use crate::transfer::{Direction, TransferCommand, TransferEvent, TransferState, TransferUpdate};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HeadlessError {
    #[error("bad option: {0}")]
    Option(String),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    Media(#[from] crate::media::MediaError),
    #[error("cannot write the event log: {0}")]
    Output(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct HeadlessOptions {
    pub server: String,
    pub room: String,
    pub name: String,
    /// `test`, `test:WxH`, `scene`, `scene:WxH`, or `none`.
    pub video: String,
    /// Stamp source id for the test pattern (tells streams apart).
    pub source_id: u8,
    /// `tone`, `tone:HZ`, `clicks`, a WAV path, or `none`.
    pub audio: String,
    pub recv_dir: PathBuf,
    pub send: Vec<PathBuf>,
    pub chat: Option<String>,
    /// Stop after this long in the room; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Addresses for peer connections (`0.0.0.0:0`, or `127.0.0.1:0` to stay on loopback).
    pub bind: Vec<String>,
    pub stats_interval: Duration,
    pub accept_files: bool,
    /// Latency samples taken before this much time in the room are discarded.
    pub warmup: Duration,
    /// Record when clicks (from a peer's `clicks` source) reach our speaker.
    pub detect_clicks: bool,
    /// Find the room's server on the local network (mDNS) instead of using `server`.
    pub discover: bool,
    /// Password, join token, privacy of a new room.
    pub access: JoinAccess,
    /// A PEM certificate to trust for `wss://` besides the system's roots.
    pub trusted_cert: Option<PathBuf>,
    /// ICE through TURN relays only.
    pub relay_only: bool,
    /// Share a screen from the start: `test`, `test:WxH`, `x11` (the display in `DISPLAY`) or
    /// `portal` (the desktop portal, on Wayland).
    pub screen: Option<String>,
    /// Frames per second of that share at most.
    pub screen_fps: u32,
    /// Share what the computer plays with it (the default speaker's monitor).
    pub screen_sound: bool,
    /// Compare the screen shares received with the default synthetic page (`--screen test`,
    /// 1920x1080) and log their PSNR (benchmarks of sharpness on a slow link).
    pub compare_screen: bool,
}

/// `--screen`: `test` (1920x1080), `test:WxH`, `x11`, `x11:MONITOR` (one RandR monitor, e.g.
/// `x11:DP-1`), or `portal` (the desktop portal's dialog, through PipeWire: Wayland).
pub fn parse_screen(
    arg: &str,
    source_id: u8,
) -> Result<crate::engine::ScreenSource, HeadlessError> {
    use crate::engine::ScreenSource;
    match arg {
        "x11" => Ok(ScreenSource::X11 {
            display: None,
            window: None,
        }),
        "portal" => Ok(ScreenSource::Portal { bus: None }),
        _ if arg.starts_with("x11:") => Ok(ScreenSource::X11Monitor {
            display: None,
            monitor: arg["x11:".len()..].to_owned(),
        }),
        "test" => Ok(ScreenSource::Test {
            width: 1920,
            height: 1080,
            source_id,
        }),
        _ => {
            let (w, h) = arg
                .strip_prefix("test:")
                .and_then(|size| size.split_once('x'))
                .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
                .filter(|(w, h)| (64..=7680).contains(w) && (64..=4320).contains(h))
                .ok_or_else(|| {
                    HeadlessError::Option(format!(
                        "unknown screen source {arg:?} (test, test:WxH, x11, x11:MONITOR or portal)"
                    ))
                })?;
            Ok(ScreenSource::Test {
                width: w,
                height: h,
                source_id,
            })
        }
    }
}

pub fn parse_video(arg: &str, source_id: u8) -> Result<Option<VideoSourceSpec>, HeadlessError> {
    match arg {
        "none" => Ok(None),
        "test" => Ok(Some(VideoSourceSpec::test_pattern(source_id))),
        "scene" => Ok(Some(VideoSourceSpec::Scene {
            width: 640,
            height: 480,
            fps: 30,
            source_id,
        })),
        _ => {
            let (kind, size) = arg
                .split_once(':')
                .filter(|(k, _)| *k == "test" || *k == "scene")
                .ok_or_else(|| HeadlessError::Option(format!("unknown video source {arg:?}")))?;
            let (w, h) = size
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<usize>().ok()?, h.parse::<usize>().ok()?)))
                .filter(|(w, h)| (64..=3840).contains(w) && (64..=2160).contains(h))
                .ok_or_else(|| {
                    HeadlessError::Option(format!("bad video size {size:?} (e.g. 1280x720)"))
                })?;
            Ok(Some(if kind == "scene" {
                VideoSourceSpec::Scene {
                    width: w,
                    height: h,
                    fps: 30,
                    source_id,
                }
            } else {
                VideoSourceSpec::TestPattern {
                    width: w,
                    height: h,
                    fps: 30,
                    source_id,
                }
            }))
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i])
}

/// One received video stream and what of it was already reported.
#[derive(Default)]
struct StreamView {
    video: Option<Arc<RemoteVideo>>,
    first_frame_logged: bool,
    last_frames: u64,
    /// Latency samples already reported in a window.
    last_latency_count: u64,
}

impl StreamView {
    fn set(&mut self, video: Arc<RemoteVideo>) {
        *self = StreamView {
            video: Some(video),
            first_frame_logged: self.first_frame_logged,
            ..Default::default()
        };
    }
}

struct PeerView {
    nickname: String,
    /// The peer's camera and its screen share.
    camera: StreamView,
    screen: StreamView,
    /// The peer says it is sharing its screen.
    sharing: bool,
    /// With `compare_screen`: the share's last picture compared, and how close it was (dB).
    share_psnr: Option<(u64, f64)>,
    files_sent: bool,
    /// The connection's latest figures.
    network: Option<crate::engine::PeerStats>,
    /// When this peer learned the other was in the room: at its own join for those already
    /// there, at their arrival for those who came later.
    known_at: Instant,
}

impl PeerView {
    fn new(nickname: String) -> Self {
        PeerView {
            nickname,
            camera: StreamView::default(),
            screen: StreamView::default(),
            sharing: false,
            share_psnr: None,
            files_sent: false,
            network: None,
            known_at: Instant::now(),
        }
    }
}

/// A connection's figures for the JSON log.
fn network_json(n: &crate::engine::PeerStats) -> serde_json::Value {
    let round = |v: f64| (v * 10.0).round() / 10.0;
    json!({
        "estimate_kbps": round(n.estimate_kbps), "video_budget_kbps": round(n.video_budget_kbps),
        "send_kbps": round(n.send_kbps), "receive_kbps": round(n.receive_kbps),
        "bytes_sent": n.bytes_sent, "bytes_received": n.bytes_received,
        "rtt_ms": n.rtt_ms.map(round), "jitter_ms": n.jitter_ms.map(round),
        "packets_received": n.packets_received, "packets_lost": n.packets_lost,
        "loss_reported": n.loss_reported, "loss_estimated": n.loss_estimated,
        "nacks_sent": n.nacks_sent, "retransmissions_received": n.retransmissions_received,
        "nacked_by_peer": n.nacked_by_peer, "retransmissions_sent": n.retransmissions_sent,
        "retransmissions_withheld": n.retransmissions_withheld,
        "retransmissions_repeat_skipped": n.retransmissions_repeat_skipped,
        "retransmission_copies_sent": n.retransmission_copies_sent,
        "retransmission_copies_withheld": n.retransmission_copies_withheld,
        "dtls_handshake_copies_sent": n.dtls_handshake_copies_sent,
        "video_packets_abandoned": n.video_packets_abandoned,
        "video_frames_assembled": n.video_frames_assembled,
        "frames_skipped_for_keyframe": n.frames_skipped_for_keyframe,
        "keyframe_requests_sent": n.keyframe_requests_sent,
        "keyframe_requests_received": n.keyframe_requests_received,
        "backoffs": {"delay": n.estimator.delay_backoffs, "queue": n.estimator.queue_backoffs, "loss": n.estimator.loss_backoffs, "dispersion": n.estimator.dispersion_backoffs},
        "queue_delay_ms": n.estimator.queue_delay_ms,
        "ceiling_kbps": n.estimator.ceiling_kbps,
        "path": n.path.as_ref().map(|(l, r)| json!({"local": l, "remote": r})),
        "sending": n.sending.map(|t| json!({"width": t.width, "height": t.height, "fps": t.fps, "bitrate_kbps": t.bitrate_bps / 1000})),
        "quality": n.quality,
    })
}

/// Runs the headless peer until the duration ends (or `stop` resolves), logging to `out`.
pub async fn run(
    mut opts: HeadlessOptions,
    mut out: impl Write,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), HeadlessError> {
    if opts.discover {
        opts.server = discover_server(&opts.room, &mut out).await?;
    }
    let sink = RecordingSink::new(48_000 * 2);
    let screen = opts
        .screen
        .as_deref()
        .map(|arg| parse_screen(arg, opts.source_id))
        .transpose()?;
    let (engine, mut events) = engine::spawn(engine_config(&opts, &sink)?, Arc::new(|| {}))?;
    if let Some(source) = screen {
        engine.send(Command::StartScreenShare {
            source,
            fps: opts.screen_fps,
            sound: opts.screen_sound,
        })?;
    }
    engine.send(Command::Join {
        room: opts.room.clone(),
        nickname: opts.name.clone(),
        access: opts.access.clone(),
    })?;
    let mut ticker = tokio::time::interval(opts.stats_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peer = HeadlessPeer::new(opts, out, engine);
    tokio::pin!(stop);
    loop {
        let deadline = match (peer.joined_at, peer.opts.duration) {
            (Some(t), Some(d)) => Some(t + d),
            _ => None,
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => break,
            _ = sleep => break,
            _ = ticker.tick() => peer.on_tick()?,
            event = events.recv() => {
                let Some(event) = event else { break };
                peer.on_event(event)?;
            }
        }
    }
    peer.log_summary(&sink)?;
    peer.engine.send(Command::Leave)?;
    peer.engine.shutdown().await;
    Ok(())
}

/// `--discover`: the signaling server of the room announced on the local network.
async fn discover_server(room: &str, out: &mut impl Write) -> Result<String, HeadlessError> {
    let found = crate::lan::find_room(room, Duration::from_secs(20))
        .await
        .map_err(|e| HeadlessError::Option(e.to_string()))?
        .ok_or_else(|| {
            HeadlessError::Option(format!("no room {room:?} found on the local network"))
        })?;
    writeln!(
        out,
        "{}",
        json!({"event": "discovered", "room": found.room, "host": found.host, "server": found.server_url})
    )?;
    Ok(found.server_url)
}

fn engine_config(
    opts: &HeadlessOptions,
    sink: &RecordingSink,
) -> Result<EngineConfig, HeadlessError> {
    let video = parse_video(&opts.video, opts.source_id)?;
    let audio = audio::source_from_arg(&opts.audio)?;
    let mut config = EngineConfig::new(
        opts.server.clone(),
        Box::new(sink.clone()),
        opts.recv_dir.clone(),
    );
    config.bind_addrs = opts.bind.clone();
    config.trusted_cert = opts.trusted_cert.clone();
    config.relay_only = opts.relay_only;
    config.video = video;
    config.audio = match audio {
        Some(a) => AudioInput::Source(a),
        None => AudioInput::None,
    };
    config.read_stamps = true;
    config.detect_clicks = opts.detect_clicks;
    config.transfers.machine.auto_accept = opts.accept_files;
    Ok(config)
}

/// The headless peer between events: who is in the room and what has been logged, one JSON
/// object per line to `out`.
struct HeadlessPeer<W: Write> {
    opts: HeadlessOptions,
    out: W,
    engine: EngineHandle,
    started: Instant,
    joined_at: Option<Instant>,
    peers: HashMap<PeerId, PeerView>,
    chat_sent: bool,
    files_received: u32,
    /// The figures of our publishing connection while the room runs on the SFU.
    sfu_publisher: Option<crate::engine::PeerStats>,
    /// Peers whose connection is up and who are still to be sent `--send` files.
    pending_send: HashSet<PeerId>,
    warmed_up: bool,
    usage_at_join: Option<crate::procstat::Usage>,
    /// The synthetic page at the size last compared (`compare_screen`).
    share_reference: Option<crate::media::frame::RgbaFrame>,
}

impl<W: Write> HeadlessPeer<W> {
    fn new(opts: HeadlessOptions, out: W, engine: EngineHandle) -> Self {
        HeadlessPeer {
            warmed_up: opts.warmup.is_zero(),
            opts,
            out,
            engine,
            started: Instant::now(),
            joined_at: None,
            peers: HashMap::new(),
            chat_sent: false,
            files_received: 0,
            sfu_publisher: None,
            pending_send: HashSet::new(),
            usage_at_join: None,
            share_reference: None,
        }
    }

    fn log(&mut self, value: serde_json::Value) -> Result<(), HeadlessError> {
        let mut line = value.to_string();
        line.push('\n');
        self.out.write_all(line.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    /// Every stats interval: one `stats` line per peer.
    fn on_tick(&mut self) -> Result<(), HeadlessError> {
        if !self.warmed_up
            && self
                .joined_at
                .is_some_and(|t| t.elapsed() >= self.opts.warmup)
        {
            self.warmed_up = true;
            for view in self.peers.values() {
                for v in [&view.camera.video, &view.screen.video]
                    .into_iter()
                    .flatten()
                {
                    v.reset_samples();
                }
            }
            self.log(json!({"event": "warmed_up"}))?;
        }
        let interval = self.opts.stats_interval.as_secs_f64();
        let mut records = Vec::with_capacity(self.peers.len());
        for (peer, view) in self.peers.iter_mut() {
            let mut record =
                json!({"event": "stats", "peer": peer.as_str(), "nickname": view.nickname});
            if let Some(video) = video_stats_json(&mut view.camera, interval) {
                record["video"] = video;
            }
            // The share's own figures, apart from the camera's, while the peer shares.
            if view.sharing
                && let Some(mut screen) = video_stats_json(&mut view.screen, interval)
            {
                screen["sharing"] = json!(view.sharing);
                if self.opts.compare_screen
                    && let Some(psnr) = share_psnr(view, &mut self.share_reference)
                {
                    screen["psnr_db"] = json!((psnr * 10.0).round() / 10.0);
                }
                record["screen"] = screen;
            }
            if let Some(n) = &view.network {
                record["network"] = network_json(n);
            }
            if let Some(e) = self.engine.media().encoder_stats() {
                record["encoder"] =
                    json!({"frames": e.frames, "keyframes": e.keyframes, "encodings": e.encodings});
            }
            if let Some(e) = self.engine.media().screen_encoder_stats() {
                record["screen_encoder"] = json!({"frames": e.frames, "keyframes": e.keyframes,
                    "bytes": e.bytes, "width": e.width, "height": e.height,
                    "reveal_pending_rows": e.reveal_pending_rows});
            }
            if let Some(a) = self.engine.media().remote_audio(peer) {
                record["audio"] = json!({
                    "level_dbfs": (a.level_dbfs * 10.0).round() / 10.0,
                    "frequency_hz": a.frequency.map(|f| (f * 10.0).round() / 10.0),
                    "frames_played": a.frames_played,
                    "concealed": a.jitter.concealed,
                    "fec_decoded": a.jitter.fec_decoded,
                    "received": a.jitter.received,
                    "late": a.jitter.late,
                    "underruns": a.jitter.underruns,
                    "dropped_for_latency": a.jitter.dropped_for_latency,
                    "target_delay_ms": a.target_delay_ms,
                });
            }
            records.push(record);
        }
        for record in records {
            self.log(record)?;
        }
        Ok(())
    }

    fn on_event(&mut self, event: Event) -> Result<(), HeadlessError> {
        match event {
            Event::ServerConnected { peer_id } => self.log(json!({"event": "server_connected", "peer_id": peer_id.as_str()}))?,
            Event::ServerDisconnected { reason, retry_in } => self.log(json!({"event": "server_disconnected", "reason": reason, "retry_in_ms": retry_in.map(ms)}))?,
            Event::Joined { room, you, peers: present, history } => {
                self.joined_at = Some(Instant::now());
                self.usage_at_join = crate::procstat::usage(None);
                for p in &present {
                    self.peers.insert(p.id.clone(), PeerView::new(p.nickname.clone()));
                }
                self.log(json!({
                    "event": "joined", "room": room, "peer_id": you.id.as_str(),
                    "peers": present.iter().map(|p| json!({"id": p.id.as_str(), "nickname": p.nickname})).collect::<Vec<_>>(),
                    "history": history.len(), "since_start_ms": ms(self.started.elapsed()),
                }))?;
                if let (Some(text), false) = (&self.opts.chat, self.chat_sent) {
                    self.engine.send(Command::SendChat(text.clone()))?;
                    self.chat_sent = true;
                }
            }
            Event::Resumed { room, you } => self.log(json!({"event": "resumed", "room": room, "peer_id": you.id.as_str()}))?,
            Event::ServerError { code, message } => self.log(json!({"event": "error", "code": code.as_str(), "message": message}))?,
            Event::PeerJoined(p) => {
                self.peers.insert(p.id.clone(), PeerView::new(p.nickname.clone()));
                self.log(json!({"event": "peer_joined", "peer": p.id.as_str(), "nickname": p.nickname}))?;
            }
            Event::PeerLeft { peer, reason } => {
                self.peers.remove(&peer);
                self.log(json!({"event": "peer_left", "peer": peer.as_str(), "reason": format!("{reason:?}").to_lowercase()}))?;
            }
            Event::PeerConnected { peer, setup, offer_to_ice, offer_to_connected } => {
                self.log(json!({"event": "connected", "peer": peer.as_str(), "setup_ms": ms(setup),
                    "offer_to_ice_ms": offer_to_ice.map(ms), "offer_to_connected_ms": offer_to_connected.map(ms)}))?;
                if let Some(view) = self.peers.get_mut(&peer)
                    && !view.files_sent
                    && !self.opts.send.is_empty()
                {
                    view.files_sent = true;
                    self.pending_send.insert(peer.clone());
                }
            }
            Event::PeerConnectionClosed { peer, reason } => self.log(json!({"event": "connection_closed", "peer": peer.as_str(), "reason": reason}))?,
            Event::PeerVideo { peer, video } => {
                if let Some(view) = self.peers.get_mut(&peer) {
                    view.camera.set(video);
                }
            }
            Event::PeerScreen { peer, video } => {
                if let Some(view) = self.peers.get_mut(&peer) {
                    view.screen.set(video);
                }
            }
            Event::LocalMedia(state) => self.log(json!({"event": "local_media", "audio_muted": state.audio_muted,
                "video_enabled": state.video_enabled, "screen_share": state.screen_share}))?,
            Event::PeerStats { peer, stats } => {
                if peer.as_str() == crate::engine::SFU_PUBLISHER {
                    self.sfu_publisher = Some(*stats);
                } else if let Some(view) = self.peers.get_mut(&peer) {
                    view.network = Some(*stats);
                }
            }
            Event::PeerMediaState { peer, audio, video, screen } => {
                if let Some(view) = self.peers.get_mut(&peer) {
                    view.sharing = screen;
                }
                self.log(json!({"event": "media_state", "peer": peer.as_str(), "audio": audio, "video": video, "screen": screen}))?
            }
            Event::Chat(m) => self.log(json!({"event": "chat", "from": m.from.as_str(), "nickname": m.nickname, "text": m.text, "time_ms": m.time_ms}))?,
            Event::Transfer(TransferEvent::Update { peer, update }) => self.on_transfer(peer, update)?,
            Event::Transfer(TransferEvent::Problem(p)) | Event::Problem(p) => self.log(json!({"event": "problem", "message": p}))?,
            _ => {}
        }
        // Transfers can only start once the file channel is open; the engine queues
        // offers until then, so sending right after "connected" is safe.
        for peer in std::mem::take(&mut self.pending_send) {
            self.engine
                .send(Command::Transfer(TransferCommand::SendFiles {
                    paths: self.opts.send.clone(),
                    to: Some(peer),
                }))?;
        }
        self.log_first_frames()
    }

    fn on_transfer(&mut self, peer: PeerId, update: TransferUpdate) -> Result<(), HeadlessError> {
        // Nobody is there to ask: without a receive folder, every offer is declined at once,
        // so the sender is not left waiting.
        if update.state == TransferState::AwaitingConsent && !self.opts.accept_files {
            self.log(json!({"event": "file_declined", "peer": peer.as_str(), "name": update.name, "size": update.size}))?;
            self.engine
                .send(Command::Transfer(TransferCommand::Decline {
                    peer: peer.clone(),
                    id: update.id,
                }))?;
        }
        if update.state == TransferState::Completed && update.direction == Direction::Incoming {
            self.files_received += 1;
            self.log(json!({"event": "file_received", "peer": peer.as_str(), "name": update.name, "size": update.size,
                "path": update.path.as_ref().map(|p| p.display().to_string()), "sha256": update.sha256}))?;
        } else if update.state == TransferState::Completed {
            self.log(json!({"event": "file_sent", "peer": peer.as_str(), "name": update.name, "size": update.size, "sha256": update.sha256}))?;
        } else if update.state.is_final() || matches!(update.state, TransferState::Paused(_)) {
            self.log(json!({"event": "transfer", "peer": peer.as_str(), "name": update.name, "direction": update.direction, "state": update.state}))?;
        }
        Ok(())
    }

    /// First decoded frame per peer and stream, with its capture-to-decoded latency.
    fn log_first_frames(&mut self) -> Result<(), HeadlessError> {
        let mut firsts = Vec::new();
        for (peer, view) in self.peers.iter_mut() {
            for (event, stream) in [
                ("first_frame", &mut view.camera),
                ("first_screen_frame", &mut view.screen),
            ] {
                if stream.first_frame_logged {
                    continue;
                }
                let Some(v) = &stream.video else { continue };
                let s = v.stats();
                if let Some(first_at) = s.first_frame_at {
                    stream.first_frame_logged = true;
                    // The decoder recorded when and how late the first frame was.
                    let latency = s.latency_us.values().first().map(|u| *u as f64 / 1000.0);
                    // From this process's start (exec), good to about 20 ms.
                    let since_process_start = crate::procstat::process_age()
                        .map(|age| age.saturating_sub(first_at.elapsed()));
                    firsts.push(json!({"event": event, "peer": peer.as_str(), "latency_ms": latency,
                    "width": s.width, "height": s.height,
                    "since_join_ms": self.joined_at.map(|t| ms(first_at.saturating_duration_since(t))),
                    "since_peer_known_ms": ms(first_at.saturating_duration_since(view.known_at)),
                    "since_process_start_ms": since_process_start.map(ms)}));
                }
            }
        }
        for first in firsts {
            self.log(first)?;
        }
        Ok(())
    }

    /// The whole run in one line, for benchmarks: latency over the run (after warm-up), encode
    /// and decode times, clicks sent and heard, and this process's own CPU and memory.
    fn log_summary(&mut self, sink: &RecordingSink) -> Result<(), HeadlessError> {
        let in_room = self.joined_at.map(|t| t.elapsed()).unwrap_or_default();
        let usage = crate::procstat::usage(None);
        let mut peer_summaries = Vec::new();
        for (peer, view) in &self.peers {
            let camera = view.camera.video.as_ref().map(|v| v.stats());
            let screen = view
                .screen
                .video
                .as_ref()
                .map(|v| v.stats())
                .filter(|s| s.frames_decoded > 0)
                .map(|s| {
                    let mut lat = s.latency_us.values();
                    lat.sort_unstable();
                    json!({"frames_decoded": s.frames_decoded, "width": s.width, "height": s.height,
                    "freezes": s.freezes, "frozen_ms": s.frozen_us / 1000,
                    "latency_ms": ms_summary(&lat)})
                });
            if camera.is_none() && screen.is_none() {
                continue;
            }
            let mut summary = json!({
                "screen": screen,
                "peer": peer.as_str(), "nickname": view.nickname,
                "network": view.network.as_ref().map(network_json),
            });
            // A peer whose camera is off has no camera figures, only its share's.
            if let Some(s) = camera {
                let mut lat = s.latency_us.values();
                lat.sort_unstable();
                let mut dec = s.decode_us.values();
                dec.sort_unstable();
                let fields = json!({
                    "frames_decoded": s.frames_decoded, "units_dropped": s.units_dropped, "out_of_order": s.out_of_order,
                    "freezes": s.freezes, "frozen_ms": s.frozen_us / 1000,
                    "width": s.width, "height": s.height,
                    "latency_ms": ms_summary(&lat),
                    "decode_ms": {"p50": to_ms(percentile(&dec, 0.5)), "p95": to_ms(percentile(&dec, 0.95))},
                });
                if let (Some(out), Some(fields)) = (summary.as_object_mut(), fields.as_object()) {
                    out.extend(fields.clone());
                }
            }
            peer_summaries.push(summary);
        }
        let encoder_json = |e: EncoderStats| {
            let mut enc = e.encode_us.values();
            enc.sort_unstable();
            json!({"frames": e.frames, "keyframes": e.keyframes, "bytes": e.bytes, "width": e.width, "height": e.height,
                "encode_ms": {"p50": to_ms(percentile(&enc, 0.5)), "p95": to_ms(percentile(&enc, 0.95)), "max": to_ms(enc.last().copied())}})
        };
        let encoder = self.engine.media().encoder_stats().map(encoder_json);
        let screen_encoder = self.engine.media().screen_encoder_stats().map(encoder_json);
        let summary = json!({
            "event": "summary",
            "seconds_in_room": in_room.as_secs_f64(),
            "cpu_seconds": usage.map(|u| u.cpu_seconds),
            "cpu_seconds_in_room": usage.zip(self.usage_at_join).map(|(u, j)| u.cpu_seconds - j.cpu_seconds),
            "rss_mb": usage.map(|u| u.rss_mb), "peak_rss_mb": usage.map(|u| u.peak_rss_mb),
            "encoder": encoder, "screen_encoder": screen_encoder, "peers": peer_summaries,
            "sfu_publisher": self.sfu_publisher.as_ref().map(network_json),
            "click_times_us": self.engine.click_times(), "onset_times_us": self.engine.media().click_onsets(),
        });
        self.log(summary)?;
        let leaving = json!({"event": "leaving", "files_received": self.files_received, "audio_samples_played": sink.played()});
        self.log(leaving)
    }
}

fn to_ms(us: Option<i64>) -> Option<f64> {
    us.map(|u| u as f64 / 1000.0)
}

/// Count, p50, p95 and max in ms of sorted µs samples (a summary's `latency_ms`).
fn ms_summary(sorted_us: &[i64]) -> serde_json::Value {
    json!({"count": sorted_us.len(), "p50": to_ms(percentile(sorted_us, 0.5)),
        "p95": to_ms(percentile(sorted_us, 0.95)), "max": to_ms(sorted_us.last().copied())})
}

/// The PSNR of the peer's latest share picture against the synthetic page, computed again only
/// when a new picture has been decoded since.
fn share_psnr(
    view: &mut PeerView,
    reference: &mut Option<crate::media::frame::RgbaFrame>,
) -> Option<f64> {
    let video = view.screen.video.as_ref()?;
    let decoded = video.latest.put_count();
    if let Some((at, psnr)) = view.share_psnr
        && at == decoded
    {
        return Some(psnr);
    }
    let picture = video.latest.peek()?;
    let psnr = crate::media::screen::synthetic_share_psnr(&picture, reference)?;
    view.share_psnr = Some((decoded, psnr));
    Some(psnr)
}

/// A stream's stats object (`video` for the camera, `screen` for a share): frames, fps over the
/// last interval, latency over the run and over the interval, freezes.
fn video_stats_json(view: &mut StreamView, interval_secs: f64) -> Option<serde_json::Value> {
    let v = view.video.as_ref()?;
    let s = v.stats();
    let mut lat = s.latency_us.values();
    lat.sort_unstable();
    // A new connection's decoder starts counting from zero again.
    let fps = s.frames_decoded.saturating_sub(view.last_frames) as f64 / interval_secs;
    view.last_frames = s.frames_decoded;
    // Latency of the frames decoded since the previous line alone.
    let mut window = s.latency_us.since(view.last_latency_count);
    view.last_latency_count = s.latency_us.pushed();
    window.sort_unstable();
    Some(json!({
        "frames_decoded": s.frames_decoded,
        "fps": (fps * 10.0).round() / 10.0,
        "width": s.width, "height": s.height,
        "last_frame_number": s.last_stamp.map(|t| t.number),
        "out_of_order": s.out_of_order,
        "latency_p50_ms": to_ms(percentile(&lat, 0.5)),
        "latency_p95_ms": to_ms(percentile(&lat, 0.95)),
        "window_latency_p50_ms": to_ms(percentile(&window, 0.5)),
        "window_latency_max_ms": to_ms(window.last().copied()),
        "freezes": s.freezes, "frozen_ms": s.frozen_us / 1000,
        "playout_delay_ms": (s.playout_delay_ms * 10.0).round() / 10.0,
        "decode_errors": s.decode_errors, "units_dropped": s.units_dropped,
        "units_received": s.units_received,
    }))
}

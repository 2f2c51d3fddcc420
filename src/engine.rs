//! The engine bridge: one actor that owns the signaling client, the mesh of peer sessions, the
//! local media pipelines and the file transfers. Front ends (the desktop app, the headless peer)
//! send `Command`s and receive `Event`s; video frames and levels are read through `MediaView`
//! without going through the event queue. Depends on `rtc`, `signaling`, `transfer`, `media`.

use crate::media::MediaError;
use crate::media::audio::{AudioSink, AudioSource};
use crate::media::audio_pipeline::{AudioPlayout, AudioSender, RemoteAudioStats};
use crate::media::frame::RgbaFrame;
use crate::media::own_playout::OwnPlayoutRemover;
pub use crate::media::screen::{DEFAULT_SHARE_FPS, SMOOTH_SHARE_FPS, ScreenChoice, ScreenSource};
use crate::media::slot::LatestSlot;
use crate::media::video::{Callback, EncoderStats, RemoteVideo, VideoSender, VideoSourceSpec};
use crate::rtc::Envelope;
use crate::rtc::negotiation::Signal;
pub use crate::rtc::quality::LinkQuality;
pub use crate::rtc::session::PeerStats;
use crate::rtc::session::{
    self, CloseReason, SessionConfig, SessionEvent, SessionHandle, SessionMedia,
};
use crate::signaling::access::room_key;
use crate::signaling::client::{ClientCommand, ClientConfig, ClientEvent, SignalingClient};
use crate::signaling::protocol::{ClientMessage, IceServer, ServerMessage, SfuStream, SfuTarget};
// The types front ends need, so they never import `signaling` or `rtc` themselves.
pub use crate::signaling::protocol::{
    ChatMessage, ErrorCode, JoinAccess, LeaveReason, PeerId, PeerInfo, REACTIONS, RoomInfo,
};
pub use crate::transfer::manager::{TransferCommand, TransferEvent};
use crate::transfer::manager::{TransferConfig, TransferManager};
pub use crate::transfer::{Direction, TransferId, TransferState, TransferUpdate};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine has stopped")]
    Stopped,
    #[error("the engine is busy; try again")]
    Busy,
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// Where local audio comes from.
pub enum AudioInput {
    None,
    Source(Box<dyn AudioSource>),
    /// A real microphone by id (`None`: the default one); opened off the caller's thread.
    Device(Option<String>),
}

/// Where remote audio goes.
pub enum AudioOutput {
    Sink(Box<dyn AudioSink>),
    /// A real speaker by id (`None`: the default one); opened off the caller's thread.
    Device(Option<String>),
}

/// Devices the user can pick, as found on this machine.
#[derive(Debug, Clone, Default)]
pub struct DeviceList {
    pub cameras: Vec<crate::media::camera::CameraInfo>,
    pub microphones: Vec<crate::media::sound::SoundDevice>,
    pub speakers: Vec<crate::media::sound::SoundDevice>,
}

pub struct EngineConfig {
    pub server_url: String,
    /// A PEM certificate to trust for a `wss://` server besides the system's roots.
    pub trusted_cert: Option<PathBuf>,
    /// UDP addresses PeerConnections bind (`127.0.0.1:0` keeps tests on loopback).
    pub bind_addrs: Vec<String>,
    /// ICE through TURN relays only (the server's TURN credentials are needed).
    pub relay_only: bool,
    pub video: Option<VideoSourceSpec>,
    pub video_bitrate: Option<u32>,
    pub audio: AudioInput,
    pub audio_sink: Box<dyn AudioSink>,
    /// Keep an RGBA copy of each local frame for the self-view.
    pub self_view: bool,
    /// Read stamps from decoded remote video (headless peers, tests, benchmarks).
    pub read_stamps: bool,
    /// Record click onsets in the played audio (latency benchmark).
    pub detect_clicks: bool,
    /// Echo cancellation, noise suppression and gain control for real microphones (`None`:
    /// no processing at all).
    pub processing: Option<crate::media::apm::ProcessingSettings>,
    pub transfers: TransferConfig,
    /// Slots in the event queue to the front end. A quarter is kept for events that must
    /// arrive; droppable ones (statistics, transfer progress) are dropped instead of waiting
    /// once only that quarter is left, so a front end that stops draining (a minimised window)
    /// never stalls the engine.
    pub event_queue: usize,
    /// How long a peer the server stops listing (after a server restart) keeps its place and
    /// its connection before it counts as gone.
    pub missing_peer_grace: Duration,
}

/// The event queue's default size: over an hour of per-second statistics for a few peers.
pub const EVENT_QUEUE: usize = 4096;

impl EngineConfig {
    pub fn new(
        server_url: impl Into<String>,
        audio_sink: Box<dyn AudioSink>,
        download_dir: PathBuf,
    ) -> Self {
        EngineConfig {
            server_url: server_url.into(),
            trusted_cert: None,
            bind_addrs: vec!["0.0.0.0:0".into()],
            relay_only: false,
            video: Some(VideoSourceSpec::test_pattern(0)),
            video_bitrate: None,
            audio: AudioInput::None,
            audio_sink,
            self_view: false,
            read_stamps: false,
            detect_clicks: false,
            processing: None,
            transfers: TransferConfig::new(download_dir),
            event_queue: EVENT_QUEUE,
            missing_peer_grace: MISSING_PEER_GRACE,
        }
    }
}

/// What the front end asks for.
pub enum Command {
    SubscribeRooms,
    UnsubscribeRooms,
    /// Join a room; `access` carries a password, token, or privacy for a new room.
    Join {
        room: String,
        nickname: String,
        access: JoinAccess,
    },
    Leave,
    SendChat(String),
    SetNickname(String),
    /// Raise or lower our hand in the room (kept up across reconnects).
    SetHandRaised(bool),
    /// Send a reaction to the room: one of `signaling::protocol::REACTIONS`.
    React(String),
    SetAudioMuted(bool),
    SetVideoEnabled(bool),
    SetVideoSource(VideoSourceSpec),
    SetAudioSource(AudioInput),
    SetAudioOutput(AudioOutput),
    /// Shares a screen or window at most `fps` frames a second, next to the camera (answered
    /// with `LocalMedia`, or a `Problem` when capture cannot start).
    StartScreenShare {
        source: ScreenSource,
        fps: u32,
        /// Also share what the computer plays (the default speaker's monitor).
        sound: bool,
    },
    StopScreenShare,
    /// Lists what can be shared on an X display (`None`: `DISPLAY`) with thumbnails (answered
    /// with `Event::Screens`, or a `Problem`).
    ListScreens {
        display: Option<String>,
    },
    /// Plays a short chime through the speaker (the device check).
    PlayTestSound,
    /// Echo cancellation, noise suppression and gain control on or off.
    SetProcessing(crate::media::apm::ProcessingSettings),
    /// Finds cameras, microphones and speakers (answered with `Event::Devices`).
    ListDevices,
    Transfer(TransferCommand),
    /// Renegotiate ICE with a peer (also exercised by tests).
    RestartIce(PeerId),
    /// Tears down the connection to a peer as if the network had failed; it is rebuilt.
    DropConnection(PeerId),
    /// How wide each peer's tile is drawn, in physical pixels (rooms on the SFU receive the
    /// simulcast layer a tile needs). Peers not listed have no tile size: the largest layer.
    SetTileWidths(HashMap<PeerId, u32>),
}

/// What the front end is told.
#[derive(Debug, Clone)]
pub enum Event {
    ServerConnected {
        peer_id: PeerId,
    },
    ServerDisconnected {
        reason: String,
        retry_in: Option<Duration>,
    },
    Rooms(Vec<RoomInfo>),
    RoomUpdated(RoomInfo),
    RoomClosed(String),
    Joined {
        room: String,
        you: PeerInfo,
        peers: Vec<PeerInfo>,
        history: Vec<ChatMessage>,
    },
    /// Back in the room after a reconnect with our old id: the call went on; peers the server
    /// now lists that were new come as `PeerJoined`, peers that do not come back as `PeerLeft`.
    Resumed {
        room: String,
        you: PeerInfo,
    },
    /// Join refused, or another request failed, with the server's code and words.
    ServerError {
        code: ErrorCode,
        message: String,
    },
    Left,
    PeerJoined(PeerInfo),
    PeerLeft {
        peer: PeerId,
        reason: LeaveReason,
    },
    NicknameChanged {
        peer: PeerId,
        nickname: String,
    },
    /// A hand (ours too) went up or down; raised hands are taken in `raised_at_ms` order.
    HandChanged {
        peer: PeerId,
        raised_at_ms: Option<u64>,
    },
    /// Someone in the room (we too) reacted.
    Reaction {
        peer: PeerId,
        emoji: String,
    },
    PeerConnecting {
        peer: PeerId,
    },
    PeerConnected {
        peer: PeerId,
        setup: Duration,
        offer_to_ice: Option<Duration>,
        offer_to_connected: Option<Duration>,
    },
    PeerDisconnected {
        peer: PeerId,
    },
    /// The connection ended; it is rebuilt while the peer stays in the room.
    PeerConnectionClosed {
        peer: PeerId,
        reason: String,
    },
    PeerVideo {
        peer: PeerId,
        video: Arc<RemoteVideo>,
    },
    /// The peer's screen-share track: its pictures come while `PeerMediaState.screen` is on.
    PeerScreen {
        peer: PeerId,
        video: Arc<RemoteVideo>,
    },
    PeerMediaState {
        peer: PeerId,
        audio: bool,
        video: bool,
        /// The peer is sharing a screen.
        screen: bool,
    },
    PeerStats {
        peer: PeerId,
        stats: Box<PeerStats>,
    },
    Chat(ChatMessage),
    /// A chat could not be sent (not connected).
    ChatNotSent(String),
    LocalMedia(LocalMediaState),
    Devices(DeviceList),
    /// What can be shared (`Command::ListScreens`): the screen first, then windows.
    Screens(Vec<ScreenChoice>),
    /// A real camera's state changed ("no camera", "camera disconnected", running...).
    Camera(crate::media::camera::CameraState),
    Transfer(TransferEvent),
    /// Something went wrong that the user should see.
    Problem(String),
}

impl Event {
    /// Events a newer one supersedes: per-second statistics and a transfer's progress. Losing
    /// one costs nothing; waiting to deliver one can stall the engine.
    pub fn is_droppable(&self) -> bool {
        match self {
            Event::PeerStats { .. } => true,
            Event::Transfer(TransferEvent::Update { update, .. }) => {
                update.state == TransferState::Transferring
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LocalMediaState {
    pub audio_muted: bool,
    pub video_enabled: bool,
    pub video_source: String,
    pub audio_source: String,
    pub audio_sink: String,
    /// What we are sharing, if we are.
    pub screen_share: Option<String>,
}

/// Read-only access to media data that changes every frame.
#[derive(Clone)]
pub struct MediaView {
    self_view: Arc<LatestSlot<Arc<RgbaFrame>>>,
    playout: Arc<AudioPlayout>,
    local_level: Arc<std::sync::atomic::AtomicU32>,
    encoder_stats: Arc<std::sync::Mutex<SenderStats>>,
}

/// The encoders' counters as of the engine's last tick.
#[derive(Default)]
struct SenderStats {
    camera: Option<EncoderStats>,
    /// The current share's, or the last one's after it stopped.
    screen: Option<EncoderStats>,
}

impl MediaView {
    /// The newest local frame (for the self-view), if the camera is on.
    pub fn self_view(&self) -> Option<Arc<RgbaFrame>> {
        self.self_view.peek()
    }

    pub fn remote_audio(&self, peer: &PeerId) -> Option<RemoteAudioStats> {
        self.playout.stream_stats(peer.as_str())
    }

    /// Local microphone level in dBFS (measured even while muted, for the meter).
    pub fn local_level_dbfs(&self) -> f32 {
        f32::from_bits(self.local_level.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn click_onsets(&self) -> Vec<i64> {
        self.playout.click_onset_times()
    }

    pub fn encoder_stats(&self) -> Option<EncoderStats> {
        self.encoder_stats
            .lock()
            .ok()
            .and_then(|s| s.camera.clone())
    }

    /// The screen share's encoder: the current share's, or the last one's after it stopped.
    pub fn screen_encoder_stats(&self) -> Option<EncoderStats> {
        self.encoder_stats
            .lock()
            .ok()
            .and_then(|s| s.screen.clone())
    }
}

/// The front end's side of the engine. Dropping it stops the engine.
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    media: MediaView,
    task: Option<tokio::task::JoinHandle<()>>,
    click_times: Arc<std::sync::Mutex<Vec<i64>>>,
}

impl EngineHandle {
    /// Queues a command without waiting (safe from a UI thread).
    pub fn send(&self, command: Command) -> Result<(), EngineError> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EngineError::Busy,
            mpsc::error::TrySendError::Closed(_) => EngineError::Stopped,
        })
    }

    pub fn media(&self) -> &MediaView {
        &self.media
    }

    /// Capture times (µs) of the clicks this engine has sent (latency benchmark).
    pub fn click_times(&self) -> Vec<i64> {
        self.click_times
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Stops the engine: leaves the room, closes every connection, stops media threads.
    pub async fn shutdown(mut self) {
        let (tx, _) = mpsc::channel(1);
        // Replacing the sender closes the actor's command channel.
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the engine on the current tokio runtime. `wake` is called whenever there is something
/// new for the front end (an event or a video frame); a UI passes `request_repaint` here.
pub fn spawn(
    config: EngineConfig,
    wake: Callback,
) -> Result<(EngineHandle, mpsc::Receiver<Event>), EngineError> {
    let self_view = Arc::new(LatestSlot::new());
    let video = match &config.video {
        Some(spec) => Some(VideoSender::start(
            spec.clone(),
            config.video_bitrate,
            config.self_view.then(|| self_view.clone()),
        )?),
        None => None,
    };
    let processor = config
        .processing
        .map(|s| Arc::new(crate::media::apm::AudioProcessor::new(s)));
    // A real device opens in the actor, off the caller's (the UI's) thread.
    let (audio_source, open_mic) = match config.audio {
        AudioInput::None => (None, None),
        AudioInput::Source(s) => (Some(s), None),
        AudioInput::Device(id) => (None, Some(id)),
    };
    let audio = AudioSender::start(audio_source, processor.clone())?;
    let playout = Arc::new(AudioPlayout::start(
        config.audio_sink,
        config.detect_clicks,
        processor.clone(),
    )?);
    let local_level = Arc::new(std::sync::atomic::AtomicU32::new((-100.0f32).to_bits()));
    let encoder_stats = Arc::new(std::sync::Mutex::new(SenderStats::default()));
    let click_times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let media = MediaView {
        self_view: self_view.clone(),
        playout: playout.clone(),
        local_level: local_level.clone(),
        encoder_stats: encoder_stats.clone(),
    };
    let mut client_config = ClientConfig::new(config.server_url.clone());
    client_config.trusted_cert = config.trusted_cert.clone();
    let (signaling, signaling_events) = SignalingClient::spawn(client_config);
    let (commands, command_rx) = mpsc::channel(256);
    let event_queue = config.event_queue.max(4);
    let (events_tx, events) = mpsc::channel(event_queue);
    let (session_tx, session_rx) = mpsc::channel(1024);
    let (transfers, transfer_events) = TransferManager::spawn(config.transfers.clone());
    let actor = Engine {
        signaling,
        events: events_tx,
        essential_reserve: event_queue / 4,
        dropped_events: std::sync::atomic::AtomicU64::new(0),
        wake,
        session_tx,
        bind_addrs: config.bind_addrs,
        read_stamps: config.read_stamps,
        relay_only: config.relay_only,
        video,
        screen: None,
        screen_sound: false,
        audio,
        playout,
        local_level,
        encoder_stats,
        click_times: click_times.clone(),
        self_view,
        my_id: None,
        ice_servers: Vec::new(),
        room: None,
        joined_as: None,
        missing_peer_grace: config.missing_peer_grace,
        peers: HashMap::new(),
        tile_widths: HashMap::new(),
        sfu: None,
        sfu_restart_at: None,
        sfu_failures: 0,
        transfers,
        audio_muted: false,
        processor,
        notices: crate::media::sound::Notices::default(),
        camera_state: crate::media::camera::CameraState::Off,
        open_mic,
    };
    let task = tokio::spawn(actor.run(command_rx, signaling_events, session_rx, transfer_events));
    Ok((
        EngineHandle {
            commands,
            media,
            task: Some(task),
            click_times,
        },
        events,
    ))
}

struct PeerEntry {
    info: PeerInfo,
    session: Option<SessionHandle>,
    connected: bool,
    /// When to rebuild a connection that failed (only the side that re-offers keeps this).
    rebuild_at: Option<Instant>,
    failures: u32,
    /// Sessions we closed: a late offer for one of them must not start a connection.
    closed_sessions: Vec<u32>,
    /// The connection's latest figures.
    last_stats: Option<PeerStats>,
    /// Since when the server has not listed this peer in our room (after our signaling session
    /// resumed): it may come back within `MISSING_PEER_GRACE`, else it is gone.
    missing_since: Option<Instant>,
}

/// How long a peer the server no longer lists (after a server restart) keeps its place and its
/// connection before it counts as gone: long enough for its own signaling client to come back
/// through a few reconnect backoffs.
pub const MISSING_PEER_GRACE: Duration = Duration::from_secs(20);

impl PeerEntry {
    fn new(info: PeerInfo) -> Self {
        PeerEntry {
            info,
            session: None,
            connected: false,
            rebuild_at: None,
            failures: 0,
            closed_sessions: Vec::new(),
            last_stats: None,
            missing_since: None,
        }
    }

    /// Takes the session out, remembering its id as closed.
    fn take_session(&mut self) -> Option<SessionHandle> {
        let session = self.session.take()?;
        self.connected = false;
        self.closed_sessions.push(session.session_id());
        if self.closed_sessions.len() > 16 {
            self.closed_sessions.remove(0);
        }
        Some(session)
    }
}

struct Engine {
    signaling: SignalingClient,
    events: mpsc::Sender<Event>,
    /// Queue slots droppable events leave free (see `EngineConfig::event_queue`).
    essential_reserve: usize,
    /// Droppable events dropped because the front end was not draining.
    dropped_events: std::sync::atomic::AtomicU64,
    wake: Callback,
    session_tx: mpsc::Sender<(PeerId, u32, SessionEvent)>,
    bind_addrs: Vec<String>,
    read_stamps: bool,
    relay_only: bool,
    video: Option<VideoSender>,
    /// Our screen share, while we share, and whether computer sound goes with it.
    screen: Option<VideoSender>,
    screen_sound: bool,
    audio: AudioSender,
    playout: Arc<AudioPlayout>,
    local_level: Arc<std::sync::atomic::AtomicU32>,
    encoder_stats: Arc<std::sync::Mutex<SenderStats>>,
    click_times: Arc<std::sync::Mutex<Vec<i64>>>,
    self_view: Arc<LatestSlot<Arc<RgbaFrame>>>,
    my_id: Option<PeerId>,
    ice_servers: Vec<IceServer>,
    room: Option<String>,
    /// Our id in `room`: a `joined` with the same room and id after a reconnect is the
    /// signaling session resumed, and the connections to the others stay up.
    joined_as: Option<PeerId>,
    missing_peer_grace: Duration,
    peers: HashMap<PeerId, PeerEntry>,
    /// The front end's tile widths, physical pixels (`Command::SetTileWidths`).
    tile_widths: HashMap<PeerId, u32>,
    /// While the room runs on the server's SFU: our connections with it (no peer sessions).
    sfu: Option<SfuLink>,
    /// Our SFU connections failed: when to ask the server to start our membership over, and
    /// how many times they failed since they last came up (the wait doubles with each).
    sfu_restart_at: Option<Instant>,
    sfu_failures: u32,
    transfers: TransferManager,
    audio_muted: bool,
    processor: Option<Arc<crate::media::apm::AudioProcessor>>,
    /// Device problems reported by microphone and speaker, shown to the user.
    notices: crate::media::sound::Notices,
    camera_state: crate::media::camera::CameraState,
    /// A microphone to open once the actor runs.
    open_mic: Option<Option<String>>,
}

/// Our two connections with the server's SFU while the room runs on it: one publishes our
/// camera and microphone, one receives everyone else's.
struct SfuLink {
    publisher: Option<SessionHandle>,
    subscriber: Option<SessionHandle>,
    /// Whose each track on the subscribing connection is, by its mid (from `sfu_offer`).
    owners: tokio::sync::watch::Sender<HashMap<String, session::StreamOwner>>,
    /// Which simulcast layer of each peer to receive.
    layers: crate::media::simulcast::LayerChooser<PeerId>,
    /// The publishing connection's last estimate (bits per second) and loss, for the audio.
    uplink: Option<(u64, f64)>,
    /// When we last asked the server for a keyframe of each peer's camera.
    keyframes_asked: HashMap<PeerId, Instant>,
    /// Each peer's camera as received, and the layer change we wait to see in it.
    videos: HashMap<PeerId, Arc<crate::media::video::RemoteVideo>>,
    switches: HashMap<PeerId, LayerSwitch>,
    /// Offers from the SFU so far on this link.
    offers: u64,
}

/// A layer change asked of the SFU and not yet seen in the picture: the SFU switches at the
/// new layer's next keyframe, and a camera sends none unasked, so one asked for before the
/// connection was up (or lost on the way) would leave the old layer in place.
struct LayerSwitch {
    /// Towards a smaller picture.
    down: bool,
    /// The picture's width when it was asked for.
    from_width: usize,
    since: Instant,
    /// Keyframes asked for it so far.
    tries: u8,
}

/// How long a layer change may take before a keyframe is asked for it, and how many are asked
/// (the publisher may not send that layer at all: its uplink paused it, or a browser skipped it).
const LAYER_SWITCH_WAIT: Duration = Duration::from_secs(3);
const LAYER_SWITCH_TRIES: u8 = 3;

/// After an SFU connection fails, the first wait before asking the server to start our
/// membership over, and the longest.
const SFU_RESTART_FIRST: Duration = Duration::from_secs(1);
const SFU_RESTART_MAX: Duration = Duration::from_secs(30);

/// Keyframe requests through the server, per peer, at most this often (Janus itself sends a
/// publisher at most one a second).
const SFU_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

/// The names the two SFU connections go by among sessions (never a peer id: those are
/// letters and digits). The publishing connection's figures come as `PeerStats` for
/// `SFU_PUBLISHER`.
pub const SFU_PUBLISHER: &str = "~sfu-publisher";
/// The `session` of a `media_state` relayed in a room on the SFU, where peers share no
/// connection.
const SFU_MEDIA_STATE_SESSION: u32 = 0;
const SFU_SUBSCRIBER: &str = "~sfu-subscriber";

/// Results of blocking device work done off the actor.
enum Opened {
    Microphone(Result<crate::media::sound::MicSource, MediaError>),
    Speaker(Result<crate::media::sound::SpeakerSink, MediaError>),
    Devices(DeviceList),
    Screen(Box<ScreenOpened>),
    Screens(Result<Vec<ScreenChoice>, MediaError>),
}

/// A screen share opened off the actor, and its computer sound if asked for.
struct ScreenOpened {
    share: Result<VideoSender, MediaError>,
    sound: Option<Result<crate::media::sound::MicSource, MediaError>>,
}

impl Engine {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut signaling: mpsc::Receiver<ClientEvent>,
        mut sessions: mpsc::Receiver<(PeerId, u32, SessionEvent)>,
        mut transfers: mpsc::Receiver<TransferEvent>,
    ) {
        self.emit_local_media().await;
        let (opened_tx, mut opened) = mpsc::channel(8);
        if let Some(id) = self.open_mic.take() {
            self.open_microphone(id, &opened_tx);
        }
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd, &opened_tx).await,
                    None => break,
                },
                Some(done) = opened.recv() => self.on_opened(done).await,
                Some(ev) = signaling.recv() => self.on_signaling(ev).await,
                Some((peer, id, ev)) = sessions.recv() => self.on_session(peer, id, ev).await,
                Some(ev) = transfers.recv() => self.emit(Event::Transfer(ev)).await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
        // Shut down: leave politely, close every connection (bounded), stop media.
        let _ = self.signaling.send(ClientCommand::Leave);
        for (_, entry) in self.peers.drain() {
            if let Some(s) = entry.session {
                s.close().await;
            }
        }
        self.transfers.shutdown().await;
    }

    async fn emit(&self, event: Event) {
        if event.is_droppable() {
            // Newer figures follow shortly; never wait for a front end that is not reading.
            if self.events.capacity() <= self.essential_reserve
                || self.events.try_send(event).is_err()
            {
                self.dropped_events
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (self.wake)();
            return;
        }
        if self.events.send(event).await.is_ok() {
            (self.wake)();
        }
    }

    fn local_media(&self) -> LocalMediaState {
        LocalMediaState {
            audio_muted: self.audio_muted,
            video_enabled: self.video.as_ref().is_some_and(|v| v.is_enabled()),
            video_source: self
                .video
                .as_ref()
                .map(|v| v.spec().describe())
                .unwrap_or_else(|| "none".into()),
            audio_source: self.audio.source_description(),
            audio_sink: self.playout.sink_description(),
            screen_share: self.screen.as_ref().map(|s| {
                let what = s.spec().describe();
                if self.screen_sound {
                    format!("{what} with computer sound")
                } else {
                    what
                }
            }),
        }
    }

    async fn emit_local_media(&self) {
        self.emit(Event::LocalMedia(self.local_media())).await;
    }

    /// Tells every peer (or one) whether our microphone and camera are on.
    fn announce_media_state(&self, only: Option<&PeerId>) {
        let state = self.local_media();
        let signal = Signal::MediaState {
            audio: !state.audio_muted,
            video: state.video_enabled,
            screen: state.screen_share.is_some(),
        };
        for (peer, entry) in &self.peers {
            if only.is_some_and(|o| o != peer) {
                continue;
            }
            if self.sfu.is_some() {
                // No connection to name in a room on the SFU: session 0.
                self.relay(
                    peer,
                    &Envelope {
                        session: SFU_MEDIA_STATE_SESSION,
                        signal: signal.clone(),
                    },
                );
            } else if let Some(session) = &entry.session {
                self.relay(
                    peer,
                    &Envelope {
                        session: session.session_id(),
                        signal: signal.clone(),
                    },
                );
            }
        }
    }

    fn relay(&self, to: &PeerId, envelope: &Envelope) {
        let Ok(payload) = serde_json::to_value(envelope) else {
            return;
        };
        let _ = self.signaling.send(ClientCommand::Relay {
            to: to.clone(),
            payload,
        });
    }

    fn bye(&self, to: &PeerId, session: u32) {
        self.relay(
            to,
            &Envelope {
                session,
                signal: Signal::Bye,
            },
        );
    }

    fn open_microphone(&self, id: Option<String>, done: &mpsc::Sender<Opened>) {
        let notices = self.notices.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mic = tokio::task::spawn_blocking(move || {
                crate::media::sound::MicSource::open(id.as_deref(), notices)
            })
            .await
            .unwrap_or_else(|e| Err(MediaError::Thread(e.to_string())));
            let _ = done.send(Opened::Microphone(mic)).await;
        });
    }

    fn open_speaker(&self, id: Option<String>, done: &mpsc::Sender<Opened>) {
        let notices = self.notices.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let speaker = tokio::task::spawn_blocking(move || {
                crate::media::sound::SpeakerSink::open(id.as_deref(), notices)
            })
            .await
            .unwrap_or_else(|e| Err(MediaError::Thread(e.to_string())));
            let _ = done.send(Opened::Speaker(speaker)).await;
        });
    }

    async fn on_opened(&mut self, done: Opened) {
        match done {
            Opened::Microphone(Ok(mic)) => {
                self.audio.set_source(Some(Box::new(mic)));
                self.emit_local_media().await;
            }
            Opened::Speaker(Ok(speaker)) => {
                self.playout.set_sink(Box::new(speaker));
                self.emit_local_media().await;
            }
            Opened::Microphone(Err(e)) => {
                self.emit(Event::Problem(format!("Microphone: {e}"))).await;
            }
            Opened::Speaker(Err(e)) => self.emit(Event::Problem(format!("Speaker: {e}"))).await,
            Opened::Devices(list) => self.emit(Event::Devices(list)).await,
            Opened::Screens(Ok(choices)) => self.emit(Event::Screens(choices)).await,
            Opened::Screens(Err(e)) => {
                self.emit(Event::Problem(format!("Screen sharing: {e}")))
                    .await;
            }
            Opened::Screen(opened) => {
                let ScreenOpened { share, sound } = *opened;
                match share {
                    Ok(share) => self.screen_share_started(share, sound).await,
                    Err(e) => {
                        self.emit(Event::Problem(format!("Screen sharing: {e}")))
                            .await;
                    }
                }
            }
        }
    }

    /// Sends a share that just opened to every peer (replacing one already running), with its
    /// computer sound when that opened too.
    async fn screen_share_started(
        &mut self,
        share: VideoSender,
        sound: Option<Result<crate::media::sound::MicSource, MediaError>>,
    ) {
        self.set_system_sound(None);
        match sound {
            Some(Ok(monitor)) => self.set_system_sound(Some(monitor)),
            Some(Err(e)) => {
                self.emit(Event::Problem(format!("Computer sound: {e}")))
                    .await;
            }
            None => {}
        }
        let budget = session::video_budget_bps(crate::rtc::estimator::INITIAL_BPS as u64);
        for session in self.media_sessions() {
            session.attach_screen(Some(share.subscribe(session::screen_share_bps(budget))));
        }
        self.screen = Some(share);
        self.announce_media_state(None);
        self.emit_local_media().await;
    }

    /// Mixes the speaker's monitor, without our own playout, into what we send (`None`: stops).
    /// It is mixed in after the microphone's processing, so the microphone's echo canceller
    /// does not take it out.
    fn set_system_sound(&mut self, monitor: Option<crate::media::sound::MicSource>) {
        self.screen_sound = monitor.is_some();
        self.audio
            .set_system_sound(monitor.map(|m| crate::media::audio_pipeline::SystemSound {
                source: Box::new(m),
                // The monitor hears our own playout too: the others' voices are taken out.
                remover: Some(OwnPlayoutRemover::new(self.playout.history())),
            }));
    }

    /// The connections our media goes out on: one per peer, or the one publishing to the SFU.
    fn media_sessions(&self) -> Vec<&SessionHandle> {
        match &self.sfu {
            Some(link) => link.publisher.iter().collect(),
            None => self
                .peers
                .values()
                .filter_map(|e| e.session.as_ref())
                .collect(),
        }
    }

    /// Ends our screen share: its capture and encoder stop, and peers are told.
    async fn stop_screen_share(&mut self) {
        if self.screen.take().is_none() {
            return;
        }
        self.set_system_sound(None);
        for session in self.media_sessions() {
            session.attach_screen(None);
        }
        self.announce_media_state(None);
        self.emit_local_media().await;
    }

    async fn on_command(&mut self, cmd: Command, opened: &mpsc::Sender<Opened>) {
        match cmd {
            Command::SubscribeRooms => {
                let _ = self.signaling.send(ClientCommand::SubscribeRooms);
            }
            Command::UnsubscribeRooms => {
                let _ = self.signaling.send(ClientCommand::UnsubscribeRooms);
            }
            Command::Join {
                room,
                nickname,
                access,
            } => {
                let _ = self.signaling.send(ClientCommand::Join {
                    room,
                    nickname,
                    access,
                });
            }
            Command::Leave => {
                let _ = self.signaling.send(ClientCommand::Leave);
                self.leave_room().await;
            }
            Command::SendChat(text) => {
                if self
                    .signaling
                    .send(ClientCommand::Chat(text.clone()))
                    .is_err()
                {
                    self.emit(Event::ChatNotSent(text)).await;
                }
            }
            Command::SetNickname(n) => {
                let _ = self.signaling.send(ClientCommand::SetNickname(n));
            }
            Command::StartScreenShare { source, fps, sound } => {
                // Opening a display or a sound device can block: off the actor.
                let done = opened.clone();
                let notices = self.notices.clone();
                tokio::spawn(async move {
                    let spec = VideoSourceSpec::Screen { source, fps };
                    let opened = tokio::task::spawn_blocking(move || {
                        let share = VideoSender::start(spec, None, None)?;
                        let monitor = sound.then(|| {
                            let id =
                                crate::media::sound::default_output_monitor().ok_or_else(|| {
                                    MediaError::Source(
                                        "no monitor of the speaker to share from (needs a \
                                         PulseAudio or PipeWire sound server)"
                                            .into(),
                                    )
                                })?;
                            crate::media::sound::MicSource::open(Some(&id), notices)
                        });
                        Ok((share, monitor))
                    })
                    .await
                    .unwrap_or_else(|e| Err(MediaError::Thread(e.to_string())));
                    let message = Opened::Screen(Box::new(match opened {
                        Ok((share, sound)) => ScreenOpened {
                            share: Ok(share),
                            sound,
                        },
                        Err(e) => ScreenOpened {
                            share: Err(e),
                            sound: None,
                        },
                    }));
                    let _ = done.send(message).await;
                });
            }
            Command::StopScreenShare => self.stop_screen_share().await,
            Command::ListScreens { display } => {
                let done = opened.clone();
                tokio::spawn(async move {
                    let list = tokio::task::spawn_blocking(move || {
                        crate::media::screen::list_choices(display.as_deref())
                    })
                    .await
                    .unwrap_or_else(|e| Err(MediaError::Thread(e.to_string())));
                    let _ = done.send(Opened::Screens(list)).await;
                });
            }
            Command::PlayTestSound => self
                .playout
                .play_local(crate::media::audio_pipeline::test_chime()),
            Command::SetHandRaised(raised) => {
                let _ = self.signaling.send(ClientCommand::SetHand(raised));
            }
            Command::React(emoji) => {
                let _ = self.signaling.send(ClientCommand::React(emoji));
            }
            Command::SetAudioMuted(muted) => {
                self.audio_muted = muted;
                self.audio.set_muted(muted);
                self.announce_media_state(None);
                self.emit_local_media().await;
            }
            Command::SetVideoEnabled(enabled) => {
                if let Some(video) = self.video.as_mut()
                    && let Err(e) = video.set_enabled(enabled)
                {
                    self.emit(Event::Problem(format!("camera: {e}"))).await;
                }
                self.announce_media_state(None);
                self.emit_local_media().await;
            }
            Command::SetVideoSource(spec) => {
                let first_camera = self.video.is_none();
                let result = match self.video.as_mut() {
                    Some(video) => video.set_source(spec),
                    None => VideoSender::start(spec, None, Some(self.self_view.clone())).map(|v| {
                        // Peers already connected started without our video: give each its feed.
                        let budget =
                            session::video_budget_bps(crate::rtc::estimator::INITIAL_BPS as u64);
                        if self.sfu.is_none() {
                            for session in self.peers.values().filter_map(|e| e.session.as_ref()) {
                                session.attach_video(v.subscribe(budget));
                            }
                        }
                        self.video = Some(v);
                    }),
                };
                match result {
                    Err(e) => self.emit(Event::Problem(format!("camera: {e}"))).await,
                    // On the SFU the publication was made without a camera: publish again,
                    // now with its layers.
                    Ok(()) if first_camera && self.sfu.is_some() => {
                        self.publish_to_sfu_again().await
                    }
                    Ok(()) => {}
                }
                self.emit_local_media().await;
            }
            Command::SetAudioSource(input) => match input {
                AudioInput::None => {
                    self.audio.set_source(None);
                    self.emit_local_media().await;
                }
                AudioInput::Source(s) => {
                    self.audio.set_source(Some(s));
                    self.emit_local_media().await;
                }
                AudioInput::Device(id) => self.open_microphone(id, opened),
            },
            Command::SetAudioOutput(output) => match output {
                AudioOutput::Sink(sink) => {
                    self.playout.set_sink(sink);
                    self.emit_local_media().await;
                }
                AudioOutput::Device(id) => self.open_speaker(id, opened),
            },
            Command::SetProcessing(settings) => {
                if let Some(p) = &self.processor {
                    p.set(settings);
                }
            }
            Command::ListDevices => {
                let done = opened.clone();
                tokio::spawn(async move {
                    let list = tokio::task::spawn_blocking(|| DeviceList {
                        cameras: crate::media::camera::list_cameras(),
                        microphones: crate::media::sound::list_inputs(),
                        speakers: crate::media::sound::list_outputs(),
                    })
                    .await
                    .unwrap_or_default();
                    let _ = done.send(Opened::Devices(list)).await;
                });
            }
            // "Everyone" means everyone in the room now, file channel open or not: an offer to a
            // peer whose channel is still opening waits for it (the manager alone knows only
            // open channels, and a file sent in a call's first seconds went nowhere).
            Command::Transfer(TransferCommand::SendFiles { paths, to: None })
                if !self.peers.is_empty() =>
            {
                let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
                for peer in peers {
                    self.ensure_file_connection(&peer);
                    self.transfers.send(TransferCommand::SendFiles {
                        paths: paths.clone(),
                        to: Some(peer),
                    });
                }
            }
            Command::Transfer(cmd) => {
                // In a room on the SFU the connection for files is made when needed.
                match &cmd {
                    TransferCommand::SendFiles { to: Some(peer), .. }
                    | TransferCommand::Retry { peer, .. } => {
                        let peer = peer.clone();
                        self.ensure_file_connection(&peer);
                    }
                    _ => {}
                }
                self.transfers.send(cmd);
            }
            Command::RestartIce(peer) => {
                if let Some(s) = self.peers.get(&peer).and_then(|e| e.session.as_ref()) {
                    s.restart_ice();
                }
            }
            Command::SetTileWidths(widths) => {
                if let Some(link) = self.sfu.as_mut() {
                    for (peer, width) in &widths {
                        link.layers.set_tile(peer.clone(), Some(*width));
                    }
                }
                self.tile_widths = widths;
                self.ask_for_layers();
            }
            Command::DropConnection(peer) => {
                let Some(entry) = self.peers.get_mut(&peer) else {
                    return;
                };
                if let Some(s) = entry.take_session() {
                    let id = s.session_id();
                    s.close().await;
                    self.bye(&peer, id);
                    self.transfers
                        .send(TransferCommand::PeerDisconnected(peer.clone()));
                    self.emit(Event::PeerConnectionClosed {
                        peer: peer.clone(),
                        reason: "dropped on request".into(),
                    })
                    .await;
                    self.schedule_rebuild(&peer);
                }
            }
        }
    }

    async fn on_signaling(&mut self, ev: ClientEvent) {
        match ev {
            ClientEvent::Connected {
                peer_id,
                ice_servers,
                ..
            } => {
                self.my_id = Some(peer_id.clone());
                self.ice_servers = ice_servers;
                self.emit(Event::ServerConnected { peer_id }).await;
            }
            ClientEvent::Disconnected { reason, retry_in } => {
                // Peer-to-peer media keeps flowing meanwhile. On reconnect the client asks for
                // our old id back (`hello.resume`): given it, the `joined` that follows resumes
                // the room and keeps the connections; given a new one, they are rebuilt.
                self.emit(Event::ServerDisconnected { reason, retry_in })
                    .await;
            }
            ClientEvent::NotSent(ClientCommand::Chat(text)) => {
                self.emit(Event::ChatNotSent(text)).await;
            }
            ClientEvent::NotSent(_) => {}
            ClientEvent::Server(msg) => self.on_server(msg).await,
        }
    }

    async fn on_server(&mut self, msg: ServerMessage) {
        match msg {
            ServerMessage::RoomList { rooms } => self.emit(Event::Rooms(rooms)).await,
            // The signaling client keeps it for the next reconnect.
            ServerMessage::RejoinToken { .. } => {}
            ServerMessage::RoomUpdated { room } => self.emit(Event::RoomUpdated(room)).await,
            ServerMessage::RoomClosed { name } => self.emit(Event::RoomClosed(name)).await,
            ServerMessage::Joined {
                room,
                you,
                peers,
                history,
                sfu,
                ..
            } => {
                let resumed = self.joined_as.as_ref() == Some(&you.id)
                    && self
                        .room
                        .as_deref()
                        .is_some_and(|r| room_key(r) == room_key(&room));
                if resumed {
                    // The server ended our SFU membership with the old connection: its
                    // connections are dead. If the room is still on the SFU they are made
                    // again (connections for files stay); if it went back to a mesh meanwhile,
                    // the resumed room connects to each peer.
                    match (sfu, self.sfu.is_some()) {
                        (true, true) => self.restart_sfu().await,
                        (true, false) => self.enter_sfu().await,
                        (false, true) => self.leave_sfu().await,
                        (false, false) => {}
                    }
                    // Hands may have changed while we were away.
                    let hands: Vec<_> = peers
                        .iter()
                        .map(|p| (p.id.clone(), p.hand_raised_at_ms))
                        .collect();
                    self.resume_room(room, you, peers).await;
                    for (peer, raised_at_ms) in hands {
                        self.emit(Event::HandChanged { peer, raised_at_ms }).await;
                    }
                    return;
                }
                // A rejoin under a new id: old connections belong to our previous identity.
                self.leave_room().await;
                self.my_id = Some(you.id.clone());
                self.joined_as = Some(you.id.clone());
                self.room = Some(room.clone());
                for peer in &peers {
                    self.peers
                        .insert(peer.id.clone(), PeerEntry::new(peer.clone()));
                    // The newcomer offers to everyone already there (in a mesh).
                    if !sfu {
                        self.start_session(&peer.id, rand::random(), true);
                    }
                }
                if sfu {
                    self.enter_sfu().await;
                }
                self.emit(Event::Joined {
                    room,
                    you,
                    peers,
                    history,
                })
                .await;
            }
            ServerMessage::Left { .. } => {
                self.leave_sfu().await;
                self.emit(Event::Left).await;
            }
            ServerMessage::PeerJoined { peer, .. } => {
                if let Some(entry) = self.peers.get_mut(&peer.id) {
                    // Back after a server restart, with the id and the connection it had (if
                    // that connection was lost, the newcomer offers a new one).
                    entry.missing_since = None;
                    let renamed = entry.info.nickname != peer.nickname;
                    entry.info = peer.clone();
                    if renamed {
                        self.emit(Event::NicknameChanged {
                            peer: peer.id,
                            nickname: peer.nickname,
                        })
                        .await;
                    }
                    return;
                }
                self.peers
                    .insert(peer.id.clone(), PeerEntry::new(peer.clone()));
                if self.sfu.is_some() {
                    self.announce_media_state(Some(&peer.id));
                }
                self.emit(Event::PeerJoined(peer)).await;
            }
            ServerMessage::PeerLeft {
                peer_id, reason, ..
            } => self.remove_peer(peer_id, reason).await,
            ServerMessage::NicknameChanged { peer_id, nickname } => {
                if let Some(e) = self.peers.get_mut(&peer_id) {
                    e.info.nickname = nickname.clone();
                }
                self.emit(Event::NicknameChanged {
                    peer: peer_id,
                    nickname,
                })
                .await;
            }
            ServerMessage::HandChanged {
                peer_id,
                raised_at_ms,
            } => {
                if let Some(e) = self.peers.get_mut(&peer_id) {
                    e.info.hand_raised_at_ms = raised_at_ms;
                }
                self.emit(Event::HandChanged {
                    peer: peer_id,
                    raised_at_ms,
                })
                .await;
            }
            ServerMessage::Reaction { peer_id, emoji } => {
                self.emit(Event::Reaction {
                    peer: peer_id,
                    emoji,
                })
                .await;
            }
            ServerMessage::Chat { message } => self.emit(Event::Chat(message)).await,
            ServerMessage::RoomMode { sfu: true } => self.enter_sfu().await,
            ServerMessage::RoomMode { sfu: false } => self.leave_sfu_for_mesh().await,
            ServerMessage::SfuMoved => self.restart_sfu().await,
            ServerMessage::SfuPublished { sdp } => {
                if let Some(p) = self.sfu.as_ref().and_then(|l| l.publisher.as_ref()) {
                    p.signal(Signal::Answer { sdp });
                }
            }
            ServerMessage::SfuOffer { sdp, streams } => self.sfu_offer(sdp, streams),
            ServerMessage::Relay { from, payload } => self.on_relay(from, payload).await,
            ServerMessage::Error { code, message, .. } => {
                self.emit(Event::ServerError { code, message }).await;
            }
            ServerMessage::Welcome { .. } | ServerMessage::Pong { .. } => {}
        }
    }

    async fn on_relay(&mut self, from: PeerId, payload: serde_json::Value) {
        let envelope: Envelope = match serde_json::from_value(payload) {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(%from, error = %e, "ignoring an unreadable signal");
                return;
            }
        };
        // In a room on the SFU media states travel with session 0; other signals are for the
        // connections two peers make for files (below, as in a mesh).
        if self.sfu.is_some() && envelope.session == SFU_MEDIA_STATE_SESSION {
            if let Signal::MediaState {
                audio,
                video,
                screen,
            } = envelope.signal
                && self.peers.contains_key(&from)
            {
                if let Some(link) = self.sfu.as_mut() {
                    link.layers.set_sending(from.clone(), video);
                }
                self.ask_for_layers();
                self.emit(Event::PeerMediaState {
                    peer: from,
                    audio,
                    video,
                    screen,
                })
                .await;
            }
            return;
        }
        let Some(entry) = self.peers.get_mut(&from) else {
            return;
        };
        let current = entry.session.as_ref().map(|s| s.session_id());
        if current == Some(envelope.session) {
            if envelope.signal == Signal::Bye {
                // The other side closed this connection: close ours and rebuild.
                entry.failures += 1;
                self.drop_session(&from).await;
                self.emit(Event::PeerConnectionClosed {
                    peer: from.clone(),
                    reason: "closed by the other side".into(),
                })
                .await;
                self.schedule_rebuild(&from);
            } else if let Some(s) = &entry.session {
                s.signal(envelope.signal);
            }
            return;
        }
        if !matches!(envelope.signal, Signal::Offer { .. }) {
            return;
        }
        if entry.closed_sessions.contains(&envelope.session) {
            // An offer within a connection we already closed (e.g. its ICE restart): that
            // connection cannot come back; tell the peer so it starts a new one.
            self.bye(&from, envelope.session);
            return;
        }
        // The peer started a fresh connection: answer it, dropping any old one.
        self.drop_session(&from).await;
        self.start_session(&from, envelope.session, false);
        if let Some(s) = self.peers.get(&from).and_then(|e| e.session.as_ref()) {
            s.signal(envelope.signal);
        }
    }

    /// A connection to `peer`: for our media in a mesh; in a room on the SFU, whose media goes
    /// through the SFU, only for files.
    fn start_session(&mut self, peer: &PeerId, session_id: u32, initiator: bool) {
        let Some(me) = self.my_id.clone() else { return };
        let mut config = SessionConfig::new(me, peer.clone(), session_id, initiator);
        config.ice_servers = self.ice_servers.clone();
        config.bind_addrs = self.bind_addrs.clone();
        config.read_stamps = self.read_stamps;
        config.relay_only = self.relay_only;
        config.data_only = self.sfu.is_some();
        let initial_budget = session::video_budget_bps(crate::rtc::estimator::INITIAL_BPS as u64);
        let media = if config.data_only {
            self.nothing_to_send()
        } else {
            self.mesh_media(initial_budget)
        };
        let handle = session::spawn(config, media, self.session_tx.clone());
        if let Some(entry) = self.peers.get_mut(peer) {
            entry.session = Some(handle);
            entry.rebuild_at = None;
        }
    }

    /// In a room on the SFU: a file connection to `peer` unless there is one.
    fn ensure_file_connection(&mut self, peer: &PeerId) {
        let needed =
            self.sfu.is_some() && self.peers.get(peer).is_some_and(|e| e.session.is_none());
        if needed {
            self.start_session(peer, rand::random(), true);
        }
    }

    /// A connection that sends no media (receiving from the SFU, or only files).
    fn nothing_to_send(&self) -> SessionMedia {
        SessionMedia {
            video: None,
            video_layers: Vec::new(),
            screen: None,
            audio: None,
            playout: self.playout.clone(),
            on_video_frame: self.wake.clone(),
        }
    }

    /// What a mesh connection sends: our camera, screen and microphone.
    fn mesh_media(&self, initial_budget: u32) -> SessionMedia {
        SessionMedia {
            video: self.video.as_ref().map(|v| v.subscribe(initial_budget)),
            video_layers: Vec::new(),
            screen: self
                .screen
                .as_ref()
                .map(|s| s.subscribe(session::screen_share_bps(initial_budget))),
            audio: Some(self.audio.subscribe()),
            playout: self.playout.clone(),
            on_video_frame: self.wake.clone(),
        }
    }

    /// The room moved onto the SFU: the peer-to-peer connections give way to one publishing
    /// connection now and one subscribing connection when the first `sfu_offer` comes.
    async fn enter_sfu(&mut self) {
        if self.sfu.is_some() {
            return;
        }
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for peer in &peers {
            self.drop_session(peer).await;
            if let Some(entry) = self.peers.get_mut(peer) {
                entry.rebuild_at = None;
            }
        }
        self.open_sfu_link();
    }

    /// The room's media moved to another SFU, or our membership started over: both SFU
    /// connections start over. The connections made for files stay.
    async fn restart_sfu(&mut self) {
        if self.sfu.is_none() {
            return;
        }
        self.sfu_restart_at = None;
        tracing::info!("the server moved or restarted our SFU membership: connecting again");
        self.leave_sfu().await;
        self.open_sfu_link();
    }

    /// A fresh link with the SFU, starting with the publishing connection.
    fn open_sfu_link(&mut self) {
        let (owners, _) = tokio::sync::watch::channel(HashMap::new());
        self.sfu = Some(SfuLink {
            publisher: None,
            subscriber: None,
            owners,
            layers: Default::default(),
            uplink: None,
            keyframes_asked: HashMap::new(),
            videos: HashMap::new(),
            switches: HashMap::new(),
            offers: 0,
        });
        self.publish_to_sfu();
    }

    /// Our publishing connection with the SFU, and our media state to everyone.
    fn publish_to_sfu(&mut self) {
        let publisher = self.start_sfu_session(true);
        if let Some(link) = self.sfu.as_mut() {
            link.publisher = publisher;
        }
        self.announce_media_state(None);
    }

    /// The room shrank back to a mesh: the SFU connections close and each pair of peers
    /// connects again, offered by the side whose id sorts first (as after a failure).
    async fn leave_sfu_for_mesh(&mut self) {
        if self.sfu.is_none() {
            return;
        }
        self.leave_sfu().await;
        // Connections made for files give way to full ones.
        let peers: Vec<PeerId> = self.peers.keys().cloned().collect();
        for peer in &peers {
            self.drop_session(peer).await;
        }
        let Some(me) = self.my_id.clone() else {
            return;
        };
        let peers: Vec<PeerId> = self.peers.keys().filter(|p| me < **p).cloned().collect();
        for peer in peers {
            self.start_session(&peer, rand::random(), true);
        }
    }

    /// Replaces our publishing connection with the SFU (the server ends the old publication).
    async fn publish_to_sfu_again(&mut self) {
        let old = self.sfu.as_mut().and_then(|l| l.publisher.take());
        if let Some(old) = old {
            old.close().await;
        }
        self.publish_to_sfu();
    }

    async fn leave_sfu(&mut self) {
        self.sfu_restart_at = None;
        if let Some(link) = self.sfu.take() {
            for session in [link.publisher, link.subscriber].into_iter().flatten() {
                session.close().await;
            }
        }
    }

    fn start_sfu_session(&mut self, publisher: bool) -> Option<SessionHandle> {
        let me = self.my_id.clone()?;
        let name = if publisher {
            SFU_PUBLISHER
        } else {
            SFU_SUBSCRIBER
        };
        let mut config = SessionConfig::new(me, PeerId(name.into()), rand::random(), publisher);
        config.ice_servers = self.ice_servers.clone();
        config.bind_addrs = self.bind_addrs.clone();
        config.read_stamps = self.read_stamps;
        config.relay_only = self.relay_only;
        let media = if publisher {
            // The SFU forwards one of three layers to each receiver, as its tile and link call
            // for.
            SessionMedia {
                video: None,
                video_layers: self
                    .video
                    .as_ref()
                    .map(|v| v.subscribe_layers())
                    .unwrap_or_default(),
                screen: self.screen.as_ref().map(|s| {
                    let initial =
                        session::video_budget_bps(crate::rtc::estimator::INITIAL_BPS as u64);
                    s.subscribe(session::screen_share_bps(initial))
                }),
                audio: Some(self.audio.subscribe()),
                playout: self.playout.clone(),
                on_video_frame: self.wake.clone(),
            }
        } else {
            config.stream_owners = self.sfu.as_ref().map(|l| l.owners.subscribe());
            self.nothing_to_send()
        };
        Some(session::spawn(config, media, self.session_tx.clone()))
    }

    /// The SFU offers the others' media (first, or again as publishers come and go).
    fn sfu_offer(&mut self, sdp: String, streams: Vec<SfuStream>) {
        let Some(link) = self.sfu.as_mut() else {
            return;
        };
        tracing::debug!(
            streams = ?streams.iter().map(|s| (&s.mid, &s.kind, s.peer_id.as_str())).collect::<Vec<_>>(),
            "an offer from the SFU"
        );
        for s in streams.iter().filter(|s| s.kind == "video") {
            link.layers.add(s.peer_id.clone());
            if let Some(width) = self.tile_widths.get(&s.peer_id) {
                link.layers.set_tile(s.peer_id.clone(), Some(*width));
            }
        }
        // The offer lists every active stream: one that was not active in the last offer is
        // new (maybe in a media section an ended stream had; see `StreamOwner::since`).
        link.offers += 1;
        let offer = link.offers;
        link.owners.send_modify(|owners| {
            let before = std::mem::take(owners);
            for s in streams {
                let screen = s.kind == "screen";
                let since = before
                    .get(&s.mid)
                    .filter(|o| o.peer == s.peer_id && o.screen == screen)
                    .map_or(offer, |o| o.since);
                let owner = session::StreamOwner {
                    peer: s.peer_id,
                    screen,
                    since,
                };
                owners.insert(s.mid, owner);
            }
        });
        if link.subscriber.is_none() {
            let subscriber = self.start_sfu_session(false);
            if let Some(link) = self.sfu.as_mut() {
                link.subscriber = subscriber;
            }
        }
        if let Some(s) = self.sfu.as_ref().and_then(|l| l.subscriber.as_ref()) {
            s.signal(Signal::Offer { sdp });
        }
        self.ask_for_layers();
    }

    async fn on_sfu_session(&mut self, name: &PeerId, session_id: u32, ev: SessionEvent) {
        let publisher = name.as_str() == SFU_PUBLISHER;
        let Some(link) = self.sfu.as_mut() else {
            return;
        };
        let slot = if publisher {
            &mut link.publisher
        } else {
            &mut link.subscriber
        };
        if slot.as_ref().map(|s| s.session_id()) != Some(session_id) {
            return;
        }
        let target = if publisher {
            SfuTarget::Publisher
        } else {
            SfuTarget::Subscriber
        };
        match ev {
            SessionEvent::Signal(envelope) => {
                let msg = match envelope.signal {
                    Signal::Offer { sdp } if publisher => ClientMessage::SfuPublish { sdp },
                    Signal::Answer { sdp } if !publisher => ClientMessage::SfuAnswer { sdp },
                    Signal::Candidate(c) => ClientMessage::SfuCandidate {
                        target,
                        candidate: c.candidate,
                        sdp_mid: c.sdp_mid,
                        sdp_mline_index: c.sdp_mline_index,
                    },
                    _ => return,
                };
                let _ = self.signaling.send(ClientCommand::Sfu(msg));
            }
            SessionEvent::RemoteVideoOf { peer, video } => {
                link.videos.insert(peer.clone(), video.clone());
                self.emit(Event::PeerVideo { peer, video }).await;
            }
            SessionEvent::RemoteScreenOf { peer, video } => {
                self.emit(Event::PeerScreen { peer, video }).await;
            }
            SessionEvent::Connected { setup, .. } => {
                tracing::info!(publisher, ?setup, "connected to the SFU");
                self.sfu_failures = 0;
            }
            SessionEvent::KeyframeWanted { peer } => {
                let now = Instant::now();
                let recent = link
                    .keyframes_asked
                    .get(&peer)
                    .is_some_and(|at| now.duration_since(*at) < SFU_KEYFRAME_INTERVAL);
                if !recent {
                    link.keyframes_asked.insert(peer.clone(), now);
                    let _ = self
                        .signaling
                        .send(ClientCommand::Sfu(ClientMessage::SfuKeyframe {
                            peer_id: peer,
                        }));
                }
            }
            // What we send the SFU, as a peer's figures under the publishing connection's name.
            SessionEvent::Stats(stats) if publisher => {
                link.uplink = Some(((stats.estimate_kbps * 1000.0) as u64, stats.loss_estimated));
                self.adapt_audio();
                self.emit(Event::PeerStats {
                    peer: name.clone(),
                    stats,
                })
                .await;
            }
            // What arrives tells how much the downlink carries: the layers follow.
            SessionEvent::Stats(stats) => {
                // Loss on every stream is our downlink's; loss on one publisher's streams
                // happened before the SFU and is none of our layers' doing.
                if let Some(loss) = stats.least_stream_loss {
                    link.layers
                        .observe(Instant::now(), loss, stats.receive_kbps * 1000.0);
                    tracing::debug!(
                        loss,
                        receive_kbps = stats.receive_kbps,
                        ceiling_kbps = link.layers.ceiling_bps() / 1000.0,
                        "the SFU downlink"
                    );
                    self.ask_for_layers();
                }
            }
            SessionEvent::Closed(reason) => {
                slot.take();
                let reason = match reason {
                    CloseReason::Closed => "closed".to_owned(),
                    CloseReason::Failed(r) | CloseReason::SetupFailed(r) => r,
                };
                // The path stopped carrying media: the server starts our membership over
                // (both connections), after a wait that doubles with each failure in a row.
                if self.sfu_restart_at.is_none() {
                    let wait = SFU_RESTART_FIRST * 2u32.pow(self.sfu_failures.min(5));
                    let wait = wait.min(SFU_RESTART_MAX);
                    self.sfu_failures += 1;
                    self.sfu_restart_at = Some(Instant::now() + wait);
                    tracing::info!(?wait, %reason, "an SFU connection failed: connecting again");
                }
                self.emit(Event::Problem(format!(
                    "The connection to the server's SFU ended ({reason}); connecting again"
                )))
                .await;
            }
            _ => {}
        }
    }

    async fn on_session(&mut self, peer: PeerId, session_id: u32, ev: SessionEvent) {
        if matches!(peer.as_str(), SFU_PUBLISHER | SFU_SUBSCRIBER) {
            return self.on_sfu_session(&peer, session_id, ev).await;
        }
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        // Events from a session we already replaced are stale.
        if entry.session.as_ref().map(|s| s.session_id()) != Some(session_id) {
            return;
        }
        match ev {
            SessionEvent::Signal(envelope) => self.relay(&peer, &envelope),
            SessionEvent::Connected {
                setup,
                offer_to_ice,
                offer_to_connected,
            } => {
                entry.connected = true;
                entry.failures = 0;
                self.emit(Event::PeerConnected {
                    peer: peer.clone(),
                    setup,
                    offer_to_ice,
                    offer_to_connected,
                })
                .await;
                self.announce_media_state(Some(&peer));
            }
            SessionEvent::Disconnected => {
                self.emit(Event::PeerDisconnected { peer }).await;
            }
            SessionEvent::RemoteVideo(video) => {
                self.emit(Event::PeerVideo { peer, video }).await;
            }
            // Only connections with the SFU carry other peers' tracks.
            SessionEvent::RemoteVideoOf { .. }
            | SessionEvent::RemoteScreenOf { .. }
            | SessionEvent::KeyframeWanted { .. } => {}
            SessionEvent::FileChannel(channel) => {
                self.transfers.send(TransferCommand::PeerConnected {
                    peer: peer.clone(),
                    channel,
                });
            }
            SessionEvent::RemoteScreen(video) => {
                self.emit(Event::PeerScreen { peer, video }).await;
            }
            SessionEvent::RemoteMediaState {
                audio,
                video,
                screen,
            } => {
                self.emit(Event::PeerMediaState {
                    peer,
                    audio,
                    video,
                    screen,
                })
                .await;
            }
            SessionEvent::Stats(stats) => {
                entry.last_stats = Some((*stats).clone());
                self.adapt_audio();
                self.emit(Event::PeerStats { peer, stats }).await;
            }
            SessionEvent::Closed(reason) => {
                // The actor has ended already; this only releases the handle.
                drop(entry.take_session());
                entry.failures += 1;
                // Tell the peer, so its side does not wait for ICE to time out.
                self.bye(&peer, session_id);
                self.transfers
                    .send(TransferCommand::PeerDisconnected(peer.clone()));
                let reason = match reason {
                    CloseReason::Closed => "closed".to_owned(),
                    CloseReason::Failed(r) | CloseReason::SetupFailed(r) => r,
                };
                self.emit(Event::PeerConnectionClosed {
                    peer: peer.clone(),
                    reason,
                })
                .await;
                self.schedule_rebuild(&peer);
            }
        }
    }

    /// One Opus encoding serves every peer: it follows the slowest link's estimate and the
    /// lossiest link's loss, so audio stays clear for everyone.
    fn adapt_audio(&self) {
        let links = self.peers.values().filter_map(|e| e.last_stats.as_ref());
        let (mut slowest, mut lossiest) = (u64::MAX, 0.0f64);
        for stats in links {
            slowest = slowest.min((stats.estimate_kbps * 1000.0) as u64);
            lossiest = lossiest.max(stats.loss_estimated);
        }
        // On the SFU: one uplink, and receivers whose links we cannot see.
        let on_sfu = self.sfu.is_some();
        if let Some(link) = &self.sfu {
            (slowest, lossiest) = link.uplink.unwrap_or((u64::MAX, 0.0));
        }
        if slowest == u64::MAX {
            return;
        }
        use crate::media::audio_pipeline::{
            DEFAULT_EXPECTED_LOSS, VoiceNetwork, voice_bitrate_for, voice_packet_samples_for,
        };
        let sending_video =
            self.video.as_ref().is_some_and(|v| v.is_enabled()) || self.screen.is_some();
        self.audio.set_network(VoiceNetwork {
            bitrate_bps: voice_bitrate_for(slowest),
            // Opus sizes its in-band FEC for this loss; a floor keeps some protection on clean
            // links.
            expected_loss_percent: ((lossiest * 100.0).ceil() as i32)
                .clamp(DEFAULT_EXPECTED_LOSS, 30),
            // Through the SFU every packet reaches every receiver, the slowest downlink
            // among them unknown to us: 20 ms packets, half the headers of 10 ms ones.
            packet_samples: if on_sfu {
                crate::media::codec::FRAME_SAMPLES
            } else {
                voice_packet_samples_for(slowest, sending_video)
            },
        });
    }

    /// While the peer stays in the room, the side with the smaller id offers a new connection
    /// after a backoff; the other side waits for that offer.
    fn schedule_rebuild(&mut self, peer: &PeerId) {
        let Some(me) = self.my_id.as_ref() else {
            return;
        };
        if self.sfu.is_some() {
            // A connection for files is made again when a file needs it.
            return;
        }
        if me >= peer {
            return;
        }
        if let Some(entry) = self.peers.get_mut(peer) {
            // The first retry comes quickly (a stalled handshake on a working path needs no
            // wait), later ones back off up to 10 s.
            let backoff =
                Duration::from_millis(250) * 2u32.pow(entry.failures.saturating_sub(1).min(6));
            entry.rebuild_at = Some(Instant::now() + backoff.min(Duration::from_secs(10)));
        }
    }

    /// A step up in the layers whose picture stalls is undone at once: the new layer does not
    /// get through, and the loss it causes would show only in the next second's figures.
    fn check_layer_probe(&mut self) {
        let Some(link) = self.sfu.as_mut() else {
            return;
        };
        let Some((since, raised)) = link.layers.probe() else {
            return;
        };
        let now = Instant::now();
        let stalled = raised.iter().find(|peer| {
            link.videos
                .get(*peer)
                .and_then(|v| v.last_frame_at())
                .is_some_and(|last| {
                    now.duration_since(last.max(since)) >= crate::media::simulcast::PROBE_STALL
                })
        });
        if let Some(peer_id) = stalled {
            tracing::debug!(%peer_id, "a step up in layers stalled the picture: undone");
            link.layers.probe_failed(now);
            self.ask_for_layers();
        }
    }

    /// Layer changes not seen in the picture after a while get a keyframe asked for.
    fn check_layer_switches(&mut self) {
        let Some(link) = self.sfu.as_mut() else {
            return;
        };
        let now = Instant::now();
        let mut ask = Vec::new();
        let videos = &link.videos;
        link.switches.retain(|peer, switch| {
            if now.duration_since(switch.since) < LAYER_SWITCH_WAIT {
                return true;
            }
            let width = videos.get(peer).map_or(0, |v| v.stats().width);
            let switched = if switch.down {
                width < switch.from_width
            } else {
                width > switch.from_width
            };
            if switched || switch.tries >= LAYER_SWITCH_TRIES {
                return false;
            }
            switch.tries += 1;
            switch.since = now;
            ask.push(peer.clone());
            true
        });
        for peer_id in ask {
            tracing::debug!(%peer_id, "a layer change has not arrived: asking for a keyframe");
            link.keyframes_asked.insert(peer_id.clone(), now);
            let _ = self
                .signaling
                .send(ClientCommand::Sfu(ClientMessage::SfuKeyframe { peer_id }));
        }
    }

    async fn on_tick(&mut self) {
        self.drop_missing_peers().await;
        if self.sfu_restart_at.is_some_and(|at| at <= Instant::now()) {
            self.sfu_restart_at = None;
            if self.sfu.is_some() {
                let _ = self
                    .signaling
                    .send(ClientCommand::Sfu(ClientMessage::SfuRestart));
            }
        }
        self.check_layer_probe();
        self.check_layer_switches();
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| {
                e.session.is_none() && e.rebuild_at.is_some_and(|t| t <= Instant::now())
            })
            .map(|(p, _)| p.clone())
            .collect();
        for peer in due {
            self.emit(Event::PeerConnecting { peer: peer.clone() })
                .await;
            self.start_session(&peer, rand::random(), true);
        }
        self.local_level.store(
            self.audio.level_dbfs().to_bits(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Ok(mut s) = self.encoder_stats.lock() {
            if let Some(v) = &self.video {
                s.camera = Some(v.stats());
            }
            if let Some(screen) = &self.screen {
                s.screen = Some(screen.stats());
            }
        }
        if let Ok(mut c) = self.click_times.lock() {
            *c = self.audio.click_times();
        }
        for notice in self.notices.drain() {
            self.emit(Event::Problem(notice)).await;
        }
        // A shared window closed or the display went away: the share is over.
        if self.screen.as_ref().is_some_and(|s| !s.is_capturing()) {
            self.stop_screen_share().await;
            self.emit(Event::Problem(
                "Screen sharing stopped: the screen or window can no longer be captured".into(),
            ))
            .await;
        }
        if let Some(v) = &self.video {
            let state = v.camera_state();
            if state != self.camera_state {
                self.camera_state = state.clone();
                self.emit(Event::Camera(state)).await;
            }
        }
    }

    async fn leave_room(&mut self) {
        for (peer, entry) in self.peers.drain() {
            if let Some(s) = entry.session {
                s.close().await;
            }
            self.transfers.send(TransferCommand::PeerGone(peer));
        }
        self.room = None;
        self.joined_as = None;
    }

    /// Our signaling session came back with the same id (after a server restart or a lost
    /// link): live connections stay. To peers the server lists that we did not know, or whose
    /// connection we lost meanwhile, we offer as any newcomer does (they were there first, so
    /// they wait for our offer; no two sides offer at once). Peers we know that it does not
    /// list are not back yet, or gone: they keep their place for `missing_peer_grace`.
    async fn resume_room(&mut self, room: String, you: PeerInfo, listed: Vec<PeerInfo>) {
        let now = Instant::now();
        let listed_ids: HashSet<PeerId> = listed.iter().map(|p| p.id.clone()).collect();
        for entry in self
            .peers
            .iter_mut()
            .filter(|(id, _)| !listed_ids.contains(*id))
            .map(|(_, e)| e)
        {
            entry.missing_since.get_or_insert(now);
        }
        for peer in listed {
            if let Some(entry) = self.peers.get_mut(&peer.id) {
                entry.missing_since = None;
                entry.info = peer.clone();
                // On the SFU nobody connects to anybody (but for files, on demand).
                if entry.connected || self.sfu.is_some() {
                    continue;
                }
                // Our connection to it did not survive (a long outage on our side): it may have
                // seen us leave and forgotten us, and waits for our offer as for any newcomer.
                self.drop_session(&peer.id).await;
                self.emit(Event::PeerConnecting {
                    peer: peer.id.clone(),
                })
                .await;
                self.start_session(&peer.id, rand::random(), true);
                continue;
            }
            self.peers
                .insert(peer.id.clone(), PeerEntry::new(peer.clone()));
            if self.sfu.is_none() {
                self.start_session(&peer.id, rand::random(), true);
            }
            self.emit(Event::PeerJoined(peer)).await;
        }
        self.room = Some(room.clone());
        self.emit(Event::Resumed { room, you }).await;
    }

    /// Peers still missing after the grace: gone. Told as having left.
    async fn drop_missing_peers(&mut self) {
        let grace = self.missing_peer_grace;
        let gone: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.missing_since.is_some_and(|t| t.elapsed() >= grace))
            .map(|(id, _)| id.clone())
            .collect();
        for peer in gone {
            self.remove_peer(peer, LeaveReason::Disconnected).await;
        }
    }

    /// In a room on the SFU: asks for the layers that changed.
    fn ask_for_layers(&mut self) {
        let Some(link) = self.sfu.as_mut() else {
            return;
        };
        for (peer_id, layer) in link.layers.changes() {
            tracing::debug!(%peer_id, layer, "asking the SFU for a layer");
            let width = link.videos.get(&peer_id).map_or(0, |v| v.stats().width);
            match link.layers.asked_before(&peer_id) {
                // The first layer asked for is whatever comes.
                Some(before) if width > 0 => {
                    link.switches.insert(
                        peer_id.clone(),
                        LayerSwitch {
                            down: layer < before,
                            from_width: width,
                            since: Instant::now(),
                            tries: 0,
                        },
                    );
                }
                _ => {
                    link.switches.remove(&peer_id);
                }
            }
            let _ = self
                .signaling
                .send(ClientCommand::Sfu(ClientMessage::SfuLayer {
                    peer_id,
                    layer,
                }));
        }
    }

    /// `peer` left the room: its connection closes, its transfers end, the front end is told.
    async fn remove_peer(&mut self, peer: PeerId, reason: LeaveReason) {
        if let Some(link) = self.sfu.as_mut() {
            link.layers.remove(&peer);
        }
        if let Some(entry) = self.peers.remove(&peer)
            && let Some(s) = entry.session
        {
            s.close().await;
        }
        self.transfers.send(TransferCommand::PeerGone(peer.clone()));
        self.emit(Event::PeerLeft { peer, reason }).await;
    }

    /// Closes the connection to `peer` (if any), which stays in the room; its transfers pause.
    async fn drop_session(&mut self, peer: &PeerId) {
        let Some(old) = self.peers.get_mut(peer).and_then(|e| e.take_session()) else {
            return;
        };
        old.close().await;
        self.transfers
            .send(TransferCommand::PeerDisconnected(peer.clone()));
    }
}

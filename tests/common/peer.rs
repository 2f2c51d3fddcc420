//! An in-process Huddle engine for tests: synthetic camera and tone, a recording sink, peer
//! connections bound to 127.0.0.1, and helpers that wait on engine events with timeouts.

use huddle::engine::{self, AudioInput, Command, EngineConfig, EngineHandle, Event};
use huddle::media::audio::{RecordingSink, ToneSource};
use huddle::media::video::{RemoteVideo, VideoSourceSpec};
use huddle::signaling::protocol::PeerId;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct PeerOptions {
    pub video: Option<VideoSourceSpec>,
    pub tone_hz: Option<f32>,
    pub auto_accept: bool,
    pub download_dir: PathBuf,
    pub tamper: Option<huddle::transfer::manager::Tamper>,
    /// Size of the engine's event queue (`None`: the default).
    pub event_queue: Option<usize>,
    /// How long a peer the server stops listing keeps its place (`None`: the default).
    pub missing_peer_grace: Option<Duration>,
    /// A certificate to trust for a `wss://` server (a self-signed test server).
    pub trusted_cert: Option<PathBuf>,
    /// Local addresses for peer connections (`None`: 127.0.0.1 only).
    pub bind_addrs: Option<Vec<String>>,
}

impl PeerOptions {
    pub fn new(source_id: u8, tone_hz: f32, download_dir: PathBuf) -> Self {
        PeerOptions {
            video: Some(VideoSourceSpec::test_pattern(source_id)),
            tone_hz: Some(tone_hz),
            auto_accept: true,
            download_dir,
            tamper: None,
            event_queue: None,
            missing_peer_grace: None,
            trusted_cert: None,
            bind_addrs: None,
        }
    }
}

pub struct TestPeer {
    pub engine: EngineHandle,
    pub events: mpsc::Receiver<Event>,
    pub sink: RecordingSink,
    pub id: Option<PeerId>,
    /// Remote video outputs by peer, as announced.
    pub videos: HashMap<PeerId, Arc<RemoteVideo>>,
    /// Remote screen shares by peer, as announced.
    pub screens: HashMap<PeerId, Arc<RemoteVideo>>,
    /// Every event seen so far, for later assertions.
    pub seen: Vec<Event>,
    /// Signalled by the engine whenever there is a new event or decoded frame.
    pub woken: Arc<tokio::sync::Notify>,
}

impl TestPeer {
    pub fn start(server_url: &str, opts: PeerOptions) -> TestPeer {
        let sink = RecordingSink::new(48_000 * 10);
        let mut config = EngineConfig::new(server_url, Box::new(sink.clone()), opts.download_dir);
        config.bind_addrs = opts
            .bind_addrs
            .clone()
            .unwrap_or_else(|| vec!["127.0.0.1:0".into()]);
        config.video = opts.video;
        config.audio = match opts.tone_hz {
            Some(hz) => AudioInput::Source(Box::new(ToneSource::new(hz, 0.5))),
            None => AudioInput::None,
        };
        config.read_stamps = true;
        config.transfers.machine.auto_accept = opts.auto_accept;
        config.transfers.tamper = opts.tamper;
        if let Some(n) = opts.event_queue {
            config.event_queue = n;
        }
        config.trusted_cert = opts.trusted_cert;
        if let Some(grace) = opts.missing_peer_grace {
            config.missing_peer_grace = grace;
        }
        let woken = Arc::new(tokio::sync::Notify::new());
        let wake = {
            let woken = woken.clone();
            Arc::new(move || woken.notify_one())
        };
        let (engine, events) = engine::spawn(config, wake).expect("engine starts");
        TestPeer {
            engine,
            events,
            sink,
            id: None,
            videos: HashMap::new(),
            screens: HashMap::new(),
            seen: Vec::new(),
            woken,
        }
    }

    pub fn send(&self, command: Command) {
        self.engine
            .send(command)
            .expect("engine accepts the command");
    }

    /// Waits for an event matching `f`, recording everything seen on the way.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => panic!("engine stopped"),
                Err(_) => panic!(
                    "timed out; recent events other than stats: {:#?}",
                    self.seen
                        .iter()
                        .rev()
                        .filter(|e| !matches!(e, Event::PeerStats { .. }))
                        .take(15)
                        .collect::<Vec<_>>()
                ),
            };
            self.note(&event);
            let found = f(&event);
            self.seen.push(event);
            if let Some(t) = found {
                return t;
            }
        }
    }

    /// Handles whatever events are queued now, without waiting.
    pub fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.note(&event);
            self.seen.push(event);
        }
    }

    fn note(&mut self, event: &Event) {
        match event {
            Event::ServerConnected { peer_id } => self.id = Some(peer_id.clone()),
            Event::PeerVideo { peer, video } => {
                self.videos.insert(peer.clone(), video.clone());
            }
            Event::PeerScreen { peer, video } => {
                self.screens.insert(peer.clone(), video.clone());
            }
            _ => {}
        }
    }

    pub async fn join(&mut self, room: &str, nickname: &str) {
        self.send(Command::Join {
            room: room.into(),
            nickname: nickname.into(),
            access: Default::default(),
        });
        self.wait_for(Duration::from_secs(10), |e| match e {
            Event::Joined { .. } => Some(()),
            Event::ServerError { code, message } => panic!("join failed: {code} {message}"),
            _ => None,
        })
        .await;
    }

    /// Waits until the media connection to `peer` is up.
    pub async fn connected_to(&mut self, peer: &PeerId) -> Duration {
        let peer = peer.clone();
        self.wait_for(Duration::from_secs(15), |e| match e {
            Event::PeerConnected { peer: p, setup, .. } if *p == peer => Some(*setup),
            _ => None,
        })
        .await
    }

    /// Waits until video from `peer` has decoded at least `frames` frames.
    pub async fn video_frames(
        &mut self,
        peer: &PeerId,
        frames: u64,
        within: Duration,
    ) -> Arc<RemoteVideo> {
        self.until(within, |p| {
            p.videos
                .get(peer)
                .filter(|v| v.stats().frames_decoded >= frames)
                .cloned()
        })
        .await
    }

    /// Re-checks `f` each time the engine signals something new, until it holds or time is up.
    pub async fn until<T>(
        &mut self,
        within: Duration,
        mut f: impl FnMut(&mut TestPeer) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let woken = self.woken.clone();
            let notified = woken.notified();
            self.drain();
            if let Some(t) = f(self) {
                return t;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.drain();
                if let Some(t) = f(self) {
                    return t;
                }
                panic!(
                    "condition not met in {within:?}; recent events: {:#?}",
                    self.seen.iter().rev().take(10).collect::<Vec<_>>()
                );
            }
        }
    }
}

impl TestPeer {
    /// Waits for a transfer update that satisfies `f`.
    pub async fn transfer_update(
        &mut self,
        within: Duration,
        mut f: impl FnMut(&huddle::transfer::TransferUpdate) -> bool,
    ) -> huddle::transfer::TransferUpdate {
        self.wait_for(within, |e| match e {
            Event::Transfer(huddle::transfer::TransferEvent::Update { update, .. })
                if f(update) =>
            {
                Some(update.clone())
            }
            _ => None,
        })
        .await
    }
}

//! One remote peer: the `PeerSession` actor around a webrtc 0.21 PeerConnection. It owns the
//! connection, the negotiator, and the tasks that move media (local encoded frames out, remote
//! RTP into decoders and the audio playout) and hands the file data channel to its owner once
//! open. Events go out tagged with the remote peer's id; dropping the handle closes everything.

use super::assembler::{Assembled, FrameAssembler};
use super::keyframe::{KeyframeRequestForwarder, is_keyframe_request};
use super::negotiation::{CandidateInit, NegotiationAction, Negotiator, Signal, is_polite};
use super::{Envelope, RtcError};
use crate::media::audio_pipeline::AudioPlayout;
use crate::media::codec::{EncodedAudio, EncodedVideo};
use crate::media::video::{AccessUnit, Callback, RemoteVideo, VideoReceiver};
use crate::signaling::protocol::{IceServer, PeerId};
use bytes::BytesMut;
use rtc::interceptor::Slot;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinSet;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceConnectionState, RTCIceServer,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder, StatsSelector, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// Label of the file-transfer data channel. The initiator creates it in-band (DCEP): a
/// pre-negotiated id races in webrtc 0.21 (data arriving before the local side opens the same
/// stream id makes the open fail with "stream already exists" and the channel never works).
pub const FILE_CHANNEL_LABEL: &str = "huddle-files";
/// Most bytes handed to the data channel and not yet acknowledged, per channel. `send` waits
/// above this, which is what keeps memory flat for any file size.
pub const DATA_CHANNEL_SEND_LIMIT: usize = 128 * 1024;

#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub local: PeerId,
    pub remote: PeerId,
    /// Identifies this session in signals; chosen by the side that offers first.
    pub session_id: u32,
    /// True when this side makes the first offer.
    pub initiator: bool,
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to bind, e.g. `127.0.0.1:0` in tests, `0.0.0.0:0` for real calls.
    pub bind_addrs: Vec<String>,
    /// Read frame stamps from decoded video (tests, benchmarks, headless peers).
    pub read_stamps: bool,
    /// ICE connectivity-check interval. webrtc's default of 200 ms costs 200-600 ms per join.
    pub ice_check_interval: Duration,
}

impl SessionConfig {
    pub fn new(local: PeerId, remote: PeerId, session_id: u32, initiator: bool) -> Self {
        SessionConfig {
            local,
            remote,
            session_id,
            initiator,
            ice_servers: Vec::new(),
            bind_addrs: vec!["0.0.0.0:0".into()],
            read_stamps: false,
            ice_check_interval: Duration::from_millis(20),
        }
    }
}

/// What a session needs from the local media pipelines.
pub struct SessionMedia {
    pub video: Option<broadcast::Receiver<Arc<EncodedVideo>>>,
    pub keyframe: Arc<AtomicBool>,
    pub audio: Option<broadcast::Receiver<Arc<EncodedAudio>>>,
    pub playout: Arc<AudioPlayout>,
    /// Runs on the decoder thread after each new remote frame (wakes the UI).
    pub on_video_frame: Callback,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStats {
    pub rtt_ms: Option<f64>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub receive_kbps: f64,
    pub send_kbps: f64,
    pub packets_lost: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The owner closed the session (peer left, we left, replaced by a new session).
    Closed,
    /// ICE or DTLS failed: the network path is gone.
    Failed(String),
    /// The connection could not be set up at all.
    SetupFailed(String),
}

pub enum SessionEvent {
    /// A signal for the remote peer, to send through the server.
    Signal(Envelope),
    Connected {
        /// From session start to the connection being up (DTLS done).
        setup: Duration,
        /// From the first offer (sent or received) to ICE connected, and to connected.
        offer_to_ice: Option<Duration>,
        offer_to_connected: Option<Duration>,
    },
    /// Connectivity lost; it may come back (ICE restart) or end in `Closed`.
    Disconnected,
    RemoteVideo(Arc<RemoteVideo>),
    /// The file data channel is open; the receiver of this event owns it from now on.
    FileChannel(Arc<dyn DataChannel>),
    RemoteMediaState {
        audio: bool,
        video: bool,
    },
    Stats(PeerStats),
    Closed(CloseReason),
}

enum SessionCommand {
    Signal(Signal),
    RestartIce,
}

/// The owner's side of a session. Dropping it closes the connection and stops every task.
pub struct SessionHandle {
    commands: mpsc::Sender<SessionCommand>,
    session_id: u32,
    task: tokio::task::JoinHandle<()>,
}

impl SessionHandle {
    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    /// Delivers a signal from the remote peer. Returns false if the session has ended.
    pub fn signal(&self, signal: Signal) -> bool {
        self.commands
            .try_send(SessionCommand::Signal(signal))
            .is_ok()
    }

    pub fn restart_ice(&self) {
        let _ = self.commands.try_send(SessionCommand::RestartIce);
    }

    /// Closes the connection and waits (bounded) for the actor to finish.
    pub async fn close(self) {
        let SessionHandle { commands, task, .. } = self;
        drop(commands);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}

/// Starts a session actor on the current runtime. Events arrive on `events` as
/// `(remote peer, session id, event)`.
pub fn spawn(
    config: SessionConfig,
    media: SessionMedia,
    events: mpsc::Sender<(PeerId, u32, SessionEvent)>,
) -> SessionHandle {
    let (commands, command_rx) = mpsc::channel(256);
    let session_id = config.session_id;
    let task = tokio::spawn(run(config, media, command_rx, events));
    SessionHandle {
        commands,
        session_id,
        task,
    }
}

/// Events from webrtc's handler; forwarded without awaiting, as the driver runs the handler.
enum PcEvent {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    IceConnected,
    Track(Arc<dyn TrackRemote>),
    DataChannel(Arc<dyn DataChannel>),
}

struct Forwarder {
    tx: mpsc::Sender<PcEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Forwarder {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.tx.try_send(PcEvent::Candidate(init));
        }
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.try_send(PcEvent::State(state));
    }
    async fn on_ice_connection_state_change(&self, state: RTCIceConnectionState) {
        if state == RTCIceConnectionState::Connected {
            let _ = self.tx.try_send(PcEvent::IceConnected);
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let _ = self.tx.try_send(PcEvent::Track(track));
    }
    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        let _ = self.tx.try_send(PcEvent::DataChannel(channel));
    }
}

fn h264_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_H264.to_owned(),
        clock_rate: 90_000,
        channels: 0,
        sdp_fmtp_line: "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
            .into(),
        rtcp_feedback: vec![],
    }
}

fn opus_codec() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".into(),
        rtcp_feedback: vec![],
    }
}

fn media_engine() -> Result<(MediaEngine, Registry), RtcError> {
    let mut me = MediaEngine::default();
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: h264_codec(),
            payload_type: 102,
        },
        RtpCodecKind::Video,
    )
    .map_err(|e| RtcError::Setup(format!("H.264 codec: {e}")))?;
    me.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_codec(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )
    .map_err(|e| RtcError::Setup(format!("Opus codec: {e}")))?;
    let registry = register_default_interceptors(Registry::new(), &mut me)
        .map_err(|e| RtcError::Setup(format!("interceptors: {e}")))?
        // Last in the chain, so it only sees what the others let through.
        .with(Slot::from(14_000), KeyframeRequestForwarder::default());
    Ok((me, registry))
}

fn local_track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> Result<Arc<TrackLocalStaticSample>, RtcError> {
    let name = if kind == RtpCodecKind::Video {
        "video"
    } else {
        "audio"
    };
    let track = MediaStreamTrack::new(
        "huddle".to_owned(),
        name.to_owned(),
        name.to_owned(),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    );
    TrackLocalStaticSample::new(Instant::now(), track)
        .map(Arc::new)
        .map_err(|e| RtcError::Setup(format!("{name} track: {e}")))
}

struct Actor {
    config: SessionConfig,
    pc: Arc<dyn PeerConnection>,
    negotiator: Negotiator,
    /// Remote candidates that arrived before the remote description.
    pending_candidates: Vec<CandidateInit>,
    have_remote_description: bool,
    events: mpsc::Sender<(PeerId, u32, SessionEvent)>,
    started: Instant,
    /// When the first offer went out or came in, and when ICE connected after it.
    first_offer_at: Option<Instant>,
    ice_connected_at: Option<Instant>,
    connected: watch::Sender<bool>,
    tasks: JoinSet<()>,
    playout: Arc<AudioPlayout>,
    on_video_frame: Callback,
    last_stats: Option<(Instant, u64, u64)>,
}

async fn run(
    config: SessionConfig,
    media: SessionMedia,
    mut commands: mpsc::Receiver<SessionCommand>,
    events: mpsc::Sender<(PeerId, u32, SessionEvent)>,
) {
    let remote = config.remote.clone();
    let session_id = config.session_id;
    let (pc_tx, mut pc_events) = mpsc::channel(1024);
    let mut actor = match Actor::build(config, media, pc_tx, events.clone()).await {
        Ok(a) => a,
        Err(e) => {
            let _ = events
                .send((
                    remote,
                    session_id,
                    SessionEvent::Closed(CloseReason::SetupFailed(e.to_string())),
                ))
                .await;
            return;
        }
    };
    if actor.config.initiator {
        let actions = actor.negotiator.negotiation_needed(false);
        actor.execute(actions).await;
    }
    let mut stats_tick = tokio::time::interval(Duration::from_secs(1));
    stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut disconnected_since: Option<Instant> = None;
    let reason = loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break CloseReason::Closed,
                // The owner handles bye (it replaces the session); nothing to do here.
                Some(SessionCommand::Signal(Signal::Bye)) => {}
                Some(SessionCommand::Signal(Signal::MediaState { audio, video })) => {
                    actor.emit(SessionEvent::RemoteMediaState { audio, video }).await;
                }
                Some(SessionCommand::Signal(signal)) => {
                    let actions = actor.negotiator.on_signal(signal);
                    actor.execute(actions).await;
                }
                Some(SessionCommand::RestartIce) => {
                    let actions = actor.negotiator.negotiation_needed(true);
                    actor.execute(actions).await;
                }
            },
            ev = pc_events.recv() => match ev {
                None => break CloseReason::Failed("connection driver stopped".into()),
                Some(PcEvent::Candidate(init)) => {
                    let signal = Signal::Candidate(CandidateInit {
                        candidate: init.candidate,
                        sdp_mid: init.sdp_mid,
                        sdp_mline_index: init.sdp_mline_index,
                        username_fragment: init.username_fragment,
                    });
                    actor.send_signal(signal).await;
                }
                Some(PcEvent::IceConnected) => {
                    actor.ice_connected_at.get_or_insert_with(Instant::now);
                }
                Some(PcEvent::Track(track)) => actor.receive_track(track).await,
                Some(PcEvent::DataChannel(channel)) => {
                    if channel.label().await.is_ok_and(|l| l == FILE_CHANNEL_LABEL) {
                        actor.watch_file_channel(channel);
                    }
                }
                Some(PcEvent::State(state)) => match state {
                    RTCPeerConnectionState::Connected => {
                        disconnected_since = None;
                        let _ = actor.connected.send(true);
                        let setup = actor.started.elapsed();
                        let offer = actor.first_offer_at;
                        let offer_to_ice = offer.zip(actor.ice_connected_at).map(|(o, i)| i.saturating_duration_since(o));
                        let offer_to_connected = offer.map(|o| o.elapsed());
                        actor.emit(SessionEvent::Connected { setup, offer_to_ice, offer_to_connected }).await;
                    }
                    RTCPeerConnectionState::Disconnected => {
                        disconnected_since.get_or_insert_with(Instant::now);
                        actor.emit(SessionEvent::Disconnected).await;
                    }
                    RTCPeerConnectionState::Failed => {
                        break CloseReason::Failed("ICE/DTLS connection failed".into());
                    }
                    RTCPeerConnectionState::Closed => {
                        break CloseReason::Failed("closed by the remote side".into());
                    }
                    _ => {}
                },
            },
            _ = stats_tick.tick() => {
                // A path that stays down gets one ICE restart from the side that offered first.
                if let Some(since) = disconnected_since
                    && since.elapsed() > Duration::from_secs(2)
                    && actor.config.initiator
                {
                    disconnected_since = None;
                    let actions = actor.negotiator.negotiation_needed(true);
                    actor.execute(actions).await;
                }
                actor.report_stats().await;
            }
        }
    };
    actor.tasks.abort_all();
    let _ = actor.pc.close().await;
    let _ = events
        .send((remote, session_id, SessionEvent::Closed(reason)))
        .await;
}

impl Actor {
    async fn build(
        config: SessionConfig,
        media: SessionMedia,
        pc_tx: mpsc::Sender<PcEvent>,
        events: mpsc::Sender<(PeerId, u32, SessionEvent)>,
    ) -> Result<Actor, RtcError> {
        let (me, registry) = media_engine()?;
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            // Faster checks; allow many more of them so a pair does not fail sooner.
            .with_ice_connection_attempts(Some(config.ice_check_interval), Some(150))
            .with_ice_timeouts(
                Some(Duration::from_secs(3)),
                Some(Duration::from_secs(10)),
                Some(Duration::from_secs(1)),
            )
            .with_srflx_acceptance_min_wait(Some(Duration::ZERO))
            .with_prflx_acceptance_min_wait(Some(Duration::ZERO))
            .build();
        let ice_servers = config
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let rtc_config = RTCConfigurationBuilder::new()
            .with_ice_servers(ice_servers)
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_configuration(rtc_config)
            .with_media_engine(me)
            .with_interceptor_registry(registry)
            .with_setting_engine(settings)
            .with_handler(Arc::new(Forwarder { tx: pc_tx }))
            .with_udp_addrs(config.bind_addrs.clone())
            .with_data_channel_send_buffer_limit(DATA_CHANNEL_SEND_LIMIT)
            .build()
            .await
            .map_err(|e| RtcError::Setup(format!("peer connection: {e}")))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let (connected, _) = watch::channel(false);
        let mut actor = Actor {
            negotiator: Negotiator::new(is_polite(config.local.as_str(), config.remote.as_str())),
            config,
            pc,
            pending_candidates: Vec::new(),
            have_remote_description: false,
            events,
            started: Instant::now(),
            first_offer_at: None,
            ice_connected_at: None,
            connected,
            tasks: JoinSet::new(),
            playout: media.playout.clone(),
            on_video_frame: media.on_video_frame.clone(),
            last_stats: None,
        };
        if let Err(e) = actor.add_media(media).await {
            let _ = actor.pc.close().await;
            return Err(e);
        }
        Ok(actor)
    }

    /// Adds our two tracks and the pre-negotiated file channel, and starts their tasks.
    async fn add_media(&mut self, media: SessionMedia) -> Result<(), RtcError> {
        let video_ssrc: u32 = rand::random();
        let video = local_track(RtpCodecKind::Video, h264_codec(), video_ssrc)?;
        let video_sender = self
            .pc
            .add_track(video.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| RtcError::Setup(format!("add video track: {e}")))?;
        let audio_ssrc: u32 = rand::random();
        let audio = local_track(RtpCodecKind::Audio, opus_codec(), audio_ssrc)?;
        let audio_sender = self
            .pc
            .add_track(audio.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| RtcError::Setup(format!("add audio track: {e}")))?;

        if let Some(rx) = media.video {
            self.tasks.spawn(send_video(
                video.clone(),
                video_sender,
                video_ssrc,
                rx,
                media.keyframe.clone(),
                self.connected.subscribe(),
            ));
        }
        self.tasks
            .spawn(watch_keyframe_requests(video, media.keyframe));
        if let Some(rx) = media.audio {
            self.tasks.spawn(send_audio(
                audio,
                audio_sender,
                audio_ssrc,
                rx,
                self.connected.subscribe(),
            ));
        }

        if self.config.initiator {
            let channel = self
                .pc
                .create_data_channel(
                    FILE_CHANNEL_LABEL,
                    Some(RTCDataChannelInit {
                        ordered: true,
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|e| RtcError::Setup(format!("data channel: {e}")))?;
            self.watch_file_channel(channel);
        }
        Ok(())
    }

    /// Polls the file channel until it opens, then hands it to the session's owner, who polls
    /// it from then on.
    fn watch_file_channel(&mut self, channel: Arc<dyn DataChannel>) {
        let events = self.events.clone();
        let (remote, id) = (self.config.remote.clone(), self.config.session_id);
        self.tasks.spawn(async move {
            loop {
                match channel.poll().await {
                    Some(DataChannelEvent::OnOpen) => {
                        let _ = events
                            .send((remote, id, SessionEvent::FileChannel(channel)))
                            .await;
                        return;
                    }
                    Some(DataChannelEvent::OnClose) | None => return,
                    Some(_) => {}
                }
            }
        });
    }

    async fn emit(&self, event: SessionEvent) {
        let _ = self
            .events
            .send((self.config.remote.clone(), self.config.session_id, event))
            .await;
    }

    async fn send_signal(&self, signal: Signal) {
        self.emit(SessionEvent::Signal(Envelope {
            session: self.config.session_id,
            signal,
        }))
        .await;
    }

    /// Carries out negotiation actions in order; a failure resets the negotiator.
    async fn execute(&mut self, actions: Vec<NegotiationAction>) {
        for action in actions {
            if let Err(e) = self.execute_one(action).await {
                tracing::warn!(remote = %self.config.remote, error = %e, "negotiation step failed");
                self.negotiator.action_failed();
                return;
            }
        }
    }

    async fn execute_one(&mut self, action: NegotiationAction) -> Result<(), RtcError> {
        let fail =
            |what: &str, e: webrtc::error::Error| RtcError::Negotiation(format!("{what}: {e}"));
        match action {
            NegotiationAction::SendOffer { ice_restart } => {
                self.first_offer_at.get_or_insert_with(Instant::now);
                let options = ice_restart.then_some(RTCOfferOptions { ice_restart: true });
                let offer = self
                    .pc
                    .create_offer(options)
                    .await
                    .map_err(|e| fail("create offer", e))?;
                let sdp = offer.sdp.clone();
                self.pc
                    .set_local_description(offer)
                    .await
                    .map_err(|e| fail("set local offer", e))?;
                self.send_signal(Signal::Offer { sdp }).await;
            }
            NegotiationAction::RollbackLocalOffer => {
                let rollback =
                    RTCSessionDescription::rollback(None).map_err(|e| fail("rollback", e))?;
                self.pc
                    .set_local_description(rollback)
                    .await
                    .map_err(|e| fail("rollback", e))?;
            }
            NegotiationAction::AcceptOffer { sdp } => {
                self.first_offer_at.get_or_insert_with(Instant::now);
                let offer =
                    RTCSessionDescription::offer(sdp).map_err(|e| fail("parse offer", e))?;
                self.pc
                    .set_remote_description(offer)
                    .await
                    .map_err(|e| fail("set remote offer", e))?;
                self.remote_description_set().await;
                let answer = self
                    .pc
                    .create_answer(None)
                    .await
                    .map_err(|e| fail("create answer", e))?;
                let sdp = answer.sdp.clone();
                self.pc
                    .set_local_description(answer)
                    .await
                    .map_err(|e| fail("set local answer", e))?;
                self.send_signal(Signal::Answer { sdp }).await;
            }
            NegotiationAction::AcceptAnswer { sdp } => {
                let answer =
                    RTCSessionDescription::answer(sdp).map_err(|e| fail("parse answer", e))?;
                self.pc
                    .set_remote_description(answer)
                    .await
                    .map_err(|e| fail("set remote answer", e))?;
                self.remote_description_set().await;
            }
            NegotiationAction::AddCandidate(c) => {
                if self.have_remote_description {
                    self.add_candidate(c).await;
                } else if self.pending_candidates.len() < 256 {
                    self.pending_candidates.push(c);
                }
            }
        }
        Ok(())
    }

    async fn remote_description_set(&mut self) {
        self.have_remote_description = true;
        for c in std::mem::take(&mut self.pending_candidates) {
            self.add_candidate(c).await;
        }
    }

    async fn add_candidate(&self, c: CandidateInit) {
        let init = RTCIceCandidateInit {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_mline_index: c.sdp_mline_index,
            username_fragment: c.username_fragment,
            url: None,
        };
        // A bad candidate from the network is skipped, not fatal: others may work.
        if let Err(e) = self.pc.add_ice_candidate(init).await {
            tracing::debug!(remote = %self.config.remote, error = %e, "remote candidate rejected");
        }
    }

    async fn receive_track(&mut self, track: Arc<dyn TrackRemote>) {
        match track.kind().await {
            RtpCodecKind::Video => {
                let keyframe_needed = Arc::new(Notify::new());
                let on_keyframe: Callback = {
                    let n = keyframe_needed.clone();
                    Arc::new(move || n.notify_one())
                };
                let receiver = match VideoReceiver::start(
                    self.config.remote.as_str(),
                    self.config.read_stamps,
                    self.on_video_frame.clone(),
                    on_keyframe,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start video decoder");
                        return;
                    }
                };
                self.emit(SessionEvent::RemoteVideo(receiver.output()))
                    .await;
                self.tasks
                    .spawn(receive_video(track, receiver, keyframe_needed));
            }
            RtpCodecKind::Audio => {
                let key = self.config.remote.to_string();
                if let Err(e) = self.playout.add_stream(&key) {
                    tracing::error!(error = %e, "cannot start audio decoder");
                    return;
                }
                self.tasks
                    .spawn(receive_audio(track, self.playout.clone(), key));
            }
            _ => {}
        }
    }

    async fn report_stats(&mut self) {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut stats = PeerStats::default();
        for pair in report.candidate_pairs() {
            if pair.nominated && pair.current_round_trip_time > 0.0 {
                stats.rtt_ms = Some(pair.current_round_trip_time * 1000.0);
            }
        }
        for inbound in report.inbound_rtp_streams() {
            stats.bytes_received += inbound.bytes_received;
            stats.packets_lost += inbound.received_rtp_stream_stats.packets_lost;
        }
        for outbound in report.outbound_rtp_streams() {
            stats.bytes_sent += outbound.sent_rtp_stream_stats.bytes_sent;
        }
        let now = Instant::now();
        if let Some((then, rx, tx)) = self.last_stats {
            let secs = now.duration_since(then).as_secs_f64().max(0.001);
            stats.receive_kbps =
                stats.bytes_received.saturating_sub(rx) as f64 * 8.0 / 1000.0 / secs;
            stats.send_kbps = stats.bytes_sent.saturating_sub(tx) as f64 * 8.0 / 1000.0 / secs;
        }
        self.last_stats = Some((now, stats.bytes_received, stats.bytes_sent));
        self.emit(SessionEvent::Stats(stats)).await;
    }
}

async fn payload_type(sender: &Arc<dyn RtpSender>, mime: &str) -> Option<u8> {
    let params = sender.get_parameters().await.ok()?;
    params
        .rtp_parameters
        .codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
        .map(|c| c.payload_type)
}

async fn wait_connected(connected: &mut watch::Receiver<bool>) -> bool {
    connected.wait_for(|c| *c).await.is_ok()
}

async fn send_video(
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    mut frames: broadcast::Receiver<Arc<EncodedVideo>>,
    keyframe: Arc<AtomicBool>,
    mut connected: watch::Receiver<bool>,
) {
    if !wait_connected(&mut connected).await {
        return;
    }
    let Some(pt) = payload_type(&sender, MIME_TYPE_H264).await else {
        tracing::warn!("no H.264 payload type negotiated; not sending video");
        return;
    };
    // A new peer needs a keyframe to start decoding.
    keyframe.store(true, Ordering::Relaxed);
    let mut waiting_for_keyframe = true;
    let mut last_capture: Option<u64> = None;
    loop {
        let frame = match frames.recv().await {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // We skipped frames the receiver's decoder would need.
                keyframe.store(true, Ordering::Relaxed);
                waiting_for_keyframe = true;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if waiting_for_keyframe {
            if !frame.keyframe {
                continue;
            }
            waiting_for_keyframe = false;
        }
        let duration = match last_capture {
            Some(prev) if frame.capture_us > prev => {
                Duration::from_micros((frame.capture_us - prev).min(1_000_000))
            }
            _ => Duration::from_micros(33_333),
        };
        last_capture = Some(frame.capture_us);
        let sample = Sample {
            data: frame.data.clone(),
            duration,
            ..Sample::new(Instant::now())
        };
        if track
            .sample_writer(ssrc, pt)
            .write_sample(&sample)
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn send_audio(
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    mut frames: broadcast::Receiver<Arc<EncodedAudio>>,
    mut connected: watch::Receiver<bool>,
) {
    if !wait_connected(&mut connected).await {
        return;
    }
    let Some(pt) = payload_type(&sender, MIME_TYPE_OPUS).await else {
        tracing::warn!("no Opus payload type negotiated; not sending audio");
        return;
    };
    loop {
        let frame = match frames.recv().await {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let sample = Sample {
            data: frame.data.clone(),
            duration: Duration::from_millis(20),
            ..Sample::new(Instant::now())
        };
        if track
            .sample_writer(ssrc, pt)
            .write_sample(&sample)
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Turns PLI/FIR from the remote into a keyframe request to our encoder.
async fn watch_keyframe_requests(track: Arc<TrackLocalStaticSample>, keyframe: Arc<AtomicBool>) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event
            && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
        {
            keyframe.store(true, Ordering::Relaxed);
        }
    }
}

async fn receive_video(
    track: Arc<dyn TrackRemote>,
    receiver: VideoReceiver,
    keyframe_needed: Arc<Notify>,
) {
    let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mut assembler = FrameAssembler::new();
    let mut depacketizer = H264Packet::default();
    let mut last_pli: Option<Instant> = None;
    let send_pli = async |last_pli: &mut Option<Instant>| {
        if last_pli.is_some_and(|t| t.elapsed() < Duration::from_millis(300)) {
            return;
        }
        *last_pli = Some(Instant::now());
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        let _ = track.write_rtcp(vec![Box::new(pli)]).await;
    };
    loop {
        tokio::select! {
            event = track.poll() => {
                let Some(event) = event else { return };
                let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                    if matches!(event, TrackRemoteEvent::OnEnded) {
                        return;
                    }
                    continue;
                };
                let h = &packet.header;
                let assembled = assembler.push(h.sequence_number, h.timestamp, h.marker, packet.payload);
                for item in assembled {
                    match item {
                        Assembled::Frame { payloads, .. } => {
                            let mut unit = BytesMut::new();
                            let mut broken = false;
                            for payload in payloads {
                                match depacketizer.depacketize(&payload) {
                                    Ok(nals) => unit.extend_from_slice(&nals),
                                    Err(_) => broken = true,
                                }
                            }
                            if broken {
                                depacketizer = H264Packet::default();
                                send_pli(&mut last_pli).await;
                            } else if !unit.is_empty() {
                                receiver.push(AccessUnit { data: unit.freeze(), received_at: Instant::now() });
                            }
                        }
                        Assembled::Lost { .. } => {
                            depacketizer = H264Packet::default();
                            send_pli(&mut last_pli).await;
                        }
                    }
                }
            }
            _ = keyframe_needed.notified() => send_pli(&mut last_pli).await,
        }
    }
}

async fn receive_audio(track: Arc<dyn TrackRemote>, playout: Arc<AudioPlayout>, key: String) {
    while let Some(event) = track.poll().await {
        match event {
            TrackRemoteEvent::OnRtpPacket(packet) => {
                let h = &packet.header;
                playout.push(&key, h.sequence_number, h.timestamp, packet.payload);
            }
            TrackRemoteEvent::OnEnded => break,
            _ => {}
        }
    }
    playout.remove_stream(&key);
}

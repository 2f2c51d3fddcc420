//! One remote peer: the `PeerSession` actor around a webrtc 0.21 PeerConnection. It owns the
//! connection, the negotiator, and the tasks that move media (local encoded frames out, remote
//! RTP into decoders and the audio playout) and hands the file data channel to its owner once
//! open. Events go out tagged with the remote peer's id; dropping the handle closes everything.

use super::assembler::{Assembled, AssemblerStats, FrameAssembler};
use super::estimator::{self, HuddleEstimator, PublishedEstimate};
use super::feedback::{FeedbackReader, LinkFeedback, RetransmissionGate, is_keyframe_request};
use super::handshake_copies::HandshakeCopyRuntime;
use super::negotiation::{CandidateInit, NegotiationAction, Negotiator, Signal, is_polite};
use super::quality::{LinkQuality, QualityMeter, QualitySample};
use super::{Envelope, RtcError};
use crate::ids::{IceServer, PeerId};
use crate::media::audio_pipeline::AudioPlayout;
use crate::media::codec::EncodedAudio;
use crate::media::ladder::VideoTarget;
use crate::media::simulcast::{LAYERS, PublishLayers};
use crate::media::video::{AccessUnit, Callback, RemoteVideo, VideoReceiver};
use crate::media::video_send::{VideoDemand, VideoFeed};
use bytes::BytesMut;
use rtc::interceptor::{
    CongestionControlBuilder, NackGeneratorBuilder, NackResponderBuilder, Slot,
};
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::RTCOfferOptions;
use rtc::peer_connection::configuration::media_engine::{MIME_TYPE_H264, MIME_TYPE_OPUS};
use rtc::peer_connection::transport::RTCDtlsRole;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::extension::HeaderExtension;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters, RTCRtpEncodingParameters,
    RtpCodecKind,
};
use rtc::sdp::extmap::{SDES_MID_URI, SDES_RTP_STREAM_ID_URI};
use rtc::statistics::report::RTCStatsReportEntry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
    RTCIceTransportPolicy, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder, StatsSelector, configure_twcc,
    register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

/// Label of the file-transfer data channel. The initiator creates it in-band (DCEP): a
/// pre-negotiated id races in webrtc 0.21 (data arriving before the local side opens the same
/// stream id makes the open fail with "stream already exists" and the channel never works).
pub const FILE_CHANNEL_LABEL: &str = "huddle-files";
/// Stream id of the screen-share track in the SDP (`a=msid`): receivers show what arrives on it
/// as a presentation, not as the sender's camera. The track's id starts with `screen-`.
pub const SCREEN_STREAM_ID: &str = "huddle-screen";
/// Stream id of the camera and microphone tracks.
pub const CAMERA_STREAM_ID: &str = "huddle";

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
    /// Use only TURN relay candidates (a network that allows nothing else, or privacy).
    pub relay_only: bool,
    /// A connection with the SFU that receives several peers' media: whose each received
    /// track is, by its track id (the SFU names tracks by their `mid`).
    pub stream_owners: Option<watch::Receiver<HashMap<String, StreamOwner>>>,
    /// Only the file data channel, no media sections (two peers in a room on the SFU, whose
    /// media goes through the SFU, sending each other files).
    pub data_only: bool,
}

/// Whose a track received from the SFU is, and whether it is their screen share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamOwner {
    pub peer: PeerId,
    pub screen: bool,
    /// Which offer made the stream active for this owner. Janus reuses the media section of
    /// a stream that ended for the next one it adds, with the same SSRC, so webrtc 0.21
    /// announces no new track: a different number here means the track now carries a new
    /// stream, and its receiver starts over for its new owner.
    pub since: u64,
}

/// A track received from the SFU, the offer it was last started for, and its receive task.
struct SfuReceive {
    track: Arc<dyn TrackRemote>,
    since: u64,
    task: tokio::task::AbortHandle,
    /// The playout stream an audio track feeds (removed when it starts over).
    audio_key: Option<String>,
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
            relay_only: false,
            stream_owners: None,
            data_only: false,
        }
    }
}

/// What a session needs from the local media pipelines.
pub struct SessionMedia {
    /// This peer's own feed from the video encoder (its frames, its bitrate budget).
    pub video: Option<VideoFeed>,
    /// Instead of `video`, on a connection with the SFU: the camera's simulcast layers,
    /// lowest first (`VideoSender::subscribe_layers`), sent as one track with a rid each.
    pub video_layers: Vec<VideoFeed>,
    /// The same from the screen-share encoder, while we share.
    pub screen: Option<VideoFeed>,
    pub audio: Option<broadcast::Receiver<Arc<EncodedAudio>>>,
    pub playout: Arc<AudioPlayout>,
    /// Runs on the decoder thread after each new remote frame (wakes the UI).
    pub on_video_frame: Callback,
}

/// One connection's figures, every second. "Sent" is what we send this peer, "received" what
/// it sends us.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerStats {
    /// Round-trip time: from the peer's reception reports (LSR/DLSR), else from ICE checks.
    pub rtt_ms: Option<f64>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub receive_kbps: f64,
    pub send_kbps: f64,
    /// Packets of the peer's streams that never arrived the first time (before retransmission),
    /// cumulative.
    pub packets_lost: i64,
    pub packets_received: u64,
    /// The lowest share of packets lost (before retransmission) since the last figures among
    /// the received streams that carried at least `LEAST_LOSS_MIN_PACKETS` in that time. On a
    /// connection with the SFU this tells our own downlink's congestion, which every stream
    /// shows, from loss on a publisher's uplink before the SFU, which only its streams show.
    pub least_stream_loss: Option<f64>,
    /// Our bandwidth estimate towards this peer (all media), and the share left for video.
    pub estimate_kbps: f64,
    pub video_budget_kbps: f64,
    /// What we send this peer: resolution, frame rate, encoder bitrate (the top running layer
    /// when sending simulcast).
    pub sending: Option<VideoTarget>,
    /// Sending simulcast (to the SFU): the layers running now, lowest first.
    pub layers_sending: Vec<VideoTarget>,
    /// Share of our video packets the peer last reported lost (before retransmission).
    pub loss_reported: Option<f64>,
    /// Our smoothed view of that loss, from congestion-control feedback.
    pub loss_estimated: f64,
    /// Packets the peer asked us to send again, retransmissions we sent, and those we held
    /// back to keep within the estimate.
    pub nacked_by_peer: u64,
    pub retransmissions_sent: u64,
    pub retransmissions_withheld: u64,
    /// NACK repeats not answered because our retransmission of that packet was still in flight.
    pub retransmissions_repeat_skipped: u64,
    /// Second copies of our retransmissions sent on a long path, and those the budget held back.
    pub retransmission_copies_sent: u64,
    pub retransmission_copies_withheld: u64,
    /// Extra copies of DTLS handshake datagrams sent (`handshake_copies`).
    pub dtls_handshake_copies_sent: u64,
    /// NACK packets we sent, and holes in the peer's video that a late packet filled.
    pub nacks_sent: u64,
    pub retransmissions_received: u64,
    /// Video packets given up on (the frame was dropped and a keyframe requested).
    pub video_packets_abandoned: u64,
    /// Whole frames reassembled, and those skipped after a loss while waiting for a keyframe.
    pub video_frames_assembled: u64,
    pub frames_skipped_for_keyframe: u64,
    pub keyframe_requests_sent: u64,
    pub keyframe_requests_received: u64,
    /// Interarrival jitter of the peer's video, milliseconds.
    pub jitter_ms: Option<f64>,
    /// Why our estimate went down, and the queuing delay it sees towards this peer.
    pub estimator: crate::rtc::estimator::EstimatorCounters,
    /// Candidate types of the selected pair, local then remote ("host", "srflx", "relay").
    pub path: Option<(String, String)>,
    /// Freezes of the peer's video so far: no new picture for more than max(3 x the median
    /// frame interval, 150 ms); and the time they lasted.
    pub freezes: u64,
    pub frozen_ms: u64,
    /// How the link feels over the last 10 s, from loss, RTT and freezes (`None` at first).
    pub quality: Option<LinkQuality>,
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
    /// On a connection with the SFU: `peer`'s camera arrived.
    RemoteVideoOf {
        peer: PeerId,
        video: Arc<RemoteVideo>,
    },
    /// The peer's screen-share track arrived (its pictures come while the peer shares).
    RemoteScreen(Arc<RemoteVideo>),
    /// On a connection with the SFU: `peer`'s screen-share track arrived.
    RemoteScreenOf {
        peer: PeerId,
        video: Arc<RemoteVideo>,
    },
    /// The file data channel is open; the receiver of this event owns it from now on.
    FileChannel(Arc<dyn DataChannel>),
    RemoteMediaState {
        audio: bool,
        video: bool,
        screen: bool,
    },
    /// On a connection with the SFU: `peer`'s camera needs a keyframe (asked through the
    /// signaling server as well: RTCP keyframe requests from these connections have not been
    /// seen to reach Janus).
    KeyframeWanted {
        peer: PeerId,
    },
    Stats(Box<PeerStats>),
    Closed(CloseReason),
}

enum SessionCommand {
    Signal(Signal),
    RestartIce,
    AttachVideo(VideoFeed),
    /// A share's feed (`None`: the share stopped).
    AttachScreen(Option<VideoFeed>),
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

    /// Starts sending video on a session that began without a camera (the video track was
    /// negotiated from the start; it just had nothing to send).
    pub fn attach_video(&self, feed: VideoFeed) {
        let _ = self.commands.try_send(SessionCommand::AttachVideo(feed));
    }

    /// Starts sending a screen share (`Some`) on the screen track negotiated from the start, or
    /// stops (`None`).
    pub fn attach_screen(&self, feed: Option<VideoFeed>) {
        let _ = self.commands.try_send(SessionCommand::AttachScreen(feed));
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

/// What the interceptors share with the session actor.
struct ChainTaps {
    estimate: PublishedEstimate,
    feedback: LinkFeedback,
}

/// How often the NACK generator asks for missing packets, and how often per packet at most: it
/// keeps asking for 300 ms, and the far end answers at most once per round trip
/// (`RetransmissionGate`), so a retransmission that is itself lost is asked for again.
const NACK_INTERVAL: Duration = Duration::from_millis(30);
const NACKS_PER_PACKET: u16 = 10;
/// Packets per stream the sender keeps for retransmission, and how far behind the newest packet
/// a retransmission may arrive and still pass the receiver's SRTP replay check. Retransmissions
/// are re-sends on the media SSRC (see `media_engine`), so with SRTP's default 64-packet window a
/// hole in a 1080p screen keyframe (~400 packets in one burst) was refilled too late to be let
/// in: under 5 % loss no share picture ever completed.
const RETRANSMISSION_HISTORY: usize = 2048;

fn media_engine() -> Result<(MediaEngine, Registry, ChainTaps), RtcError> {
    let mut me = MediaEngine::default();
    // Codecs first: the interceptor helpers add their RTCP feedback (nack, nack pli,
    // transport-cc) only to codecs already registered.
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
    let taps = ChainTaps {
        estimate: PublishedEstimate::new(estimator::INITIAL_BPS),
        feedback: LinkFeedback::default(),
    };
    // Retransmissions are plain re-sends on the video SSRC, not RTX: in webrtc 0.21 RTX packets
    // are unwrapped after the NACK generator, which then keeps asking for what already arrived,
    // and they bypass congestion control.
    let registry = register_default_interceptors(Registry::new(), &mut me)
        .map_err(|e| RtcError::Setup(format!("interceptors: {e}")))?
        .with(
            Slot::NackGenerator,
            NackGeneratorBuilder::new()
                .with_interval(NACK_INTERVAL)
                .with_max_nacks_per_packet(NACKS_PER_PACKET)
                .build(),
        )
        .with(
            Slot::NackResponder,
            NackResponderBuilder::new()
                .with_size(RETRANSMISSION_HISTORY as u16)
                .build(),
        );
    // Transport-wide feedback both ways and our estimator on it; no pacer (it would queue audio
    // behind every keyframe at the estimate's pace).
    let registry = configure_twcc(registry, &mut me)
        .map_err(|e| RtcError::Setup(format!("transport-cc: {e}")))?
        .with(
            Slot::CongestionControl,
            CongestionControlBuilder::new(HuddleEstimator::new(
                taps.estimate.clone(),
                Some(taps.feedback.clone()),
            ))
            .build(),
        )
        // Wire side of the NACK responder (4000), to see its retransmissions.
        .with(
            Slot::from(3_500),
            RetransmissionGate::new(taps.feedback.clone(), taps.estimate.clone()),
        )
        // Last in the chain, so it only sees what the others let through.
        .with(
            Slot::from(14_000),
            FeedbackReader::new(taps.feedback.clone()),
        );
    Ok((me, registry, taps))
}

/// One of our tracks: `name` is "video", "audio" or "screen".
fn local_track(
    name: &str,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> Result<Arc<TrackLocalStaticSample>, RtcError> {
    track_with_encodings(name, kind, codec, &[(String::new(), ssrc)])
}

/// Our camera as simulcast layers, one encoding per `(ssrc, layer)`, listed highest layer
/// first (the rid order Janus reads by default).
fn simulcast_track(ssrcs: &[u32]) -> Result<Arc<TrackLocalStaticSample>, RtcError> {
    let encodings: Vec<(String, u32)> = ssrcs
        .iter()
        .zip(LAYERS.iter())
        .rev()
        .map(|(ssrc, layer)| (layer.rid.to_owned(), *ssrc))
        .collect();
    track_with_encodings("video", RtpCodecKind::Video, h264_codec(), &encodings)
}

/// A track sending one stream per `(rid, ssrc)` (the rid empty for a plain track).
fn track_with_encodings(
    name: &str,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    encodings: &[(String, u32)],
) -> Result<Arc<TrackLocalStaticSample>, RtcError> {
    let ssrc = encodings.first().map_or(0, |(_, s)| *s);
    let stream = if name == "screen" {
        SCREEN_STREAM_ID
    } else {
        CAMERA_STREAM_ID
    };
    // Track ids must differ from the remote peer's: webrtc 0.21 routes feedback about a sent
    // track by its id and looks among *received* tracks first, so a remote "video" track would
    // swallow every keyframe request for our own "video" track.
    let track = MediaStreamTrack::new(
        stream.to_owned(),
        format!("{name}-{ssrc:08x}"),
        name.to_owned(),
        kind,
        encodings
            .iter()
            .map(|(rid, ssrc)| RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: rid.clone(),
                    ssrc: Some(*ssrc),
                    ..Default::default()
                },
                codec: codec.clone(),
                ..Default::default()
            })
            .collect(),
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
    /// On a connection with the SFU: each track by its mid.
    sfu_receives: HashMap<String, SfuReceive>,
    playout: Arc<AudioPlayout>,
    on_video_frame: Callback,
    last_stats: Option<(Instant, u64, u64)>,
    taps: ChainTaps,
    video_demand: Option<Arc<VideoDemand>>,
    video_ssrc: u32,
    /// Sending the camera as simulcast layers (to the SFU).
    simulcast: Option<SimulcastSend>,
    /// Shared with the video receive task: its hole wait, its counters.
    receive: Arc<VideoReceiveShared>,
    rtt: Option<Duration>,
    jitter: Option<Duration>,
    /// The peer's decoded video, for its freeze count.
    remote_video: Option<Arc<RemoteVideo>>,
    /// Our video track and its sender, kept for a camera turned on after the session started.
    video_track: Option<(Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>)>,
    /// Our screen track and its sender, the share's demand while we share, and its two tasks.
    screen_track: Option<(Arc<TrackLocalStaticSample>, Arc<dyn RtpSender>)>,
    screen_ssrc: u32,
    screen_demand: Option<Arc<VideoDemand>>,
    screen_tasks: Vec<tokio::task::AbortHandle>,
    /// The peer's screen share: its receive task's shared state.
    screen_receive: Arc<VideoReceiveShared>,
    /// The peer's microphone or camera is on (its last media-state signal).
    remote_sending: bool,
    quality: QualityMeter,
    /// What the connection's sockets run on; counts the handshake copies.
    runtime: Arc<HandshakeCopyRuntime>,
    /// Each received stream's cumulative packets received and lost at the last figures.
    stream_counts: HashMap<u32, (u64, i64)>,
}

/// Streams with fewer packets than this since the last figures say too little about loss.
const LEAST_LOSS_MIN_PACKETS: u64 = 10;

/// What the video receive task and the session share.
#[derive(Default)]
struct VideoReceiveShared {
    /// How long to wait for a missing packet, microseconds (0: the default).
    wait_us: AtomicU64,
    /// How late a frame that needed one retransmission arrives: a round trip plus the NACK
    /// generator's tick, microseconds (0: not measured yet).
    retransmission_lateness_us: AtomicU64,
    assembler: Mutex<AssemblerStats>,
    keyframe_requests: AtomicU64,
    /// Whole frames skipped while waiting for a keyframe after a loss.
    skipped_for_keyframe: AtomicU64,
}

/// ICE connected this long ago and DTLS has not finished: the handshake is stuck. A healthy one
/// takes two round trips; rtc-dtls re-sends a lost flight after a fixed 1 s (webrtc 0.21 does not
/// let us set it), so at 5 % loss a handshake that lost two flights completes about 2.6 s after
/// ICE (seen on the `lossy` link, where 2.5 s tore it down 40 ms before it finished). 3.5 s lets
/// three re-sends through.
const DTLS_STALL: Duration = Duration::from_millis(3500);

/// Headers of one audio packet (IP, UDP, RTP, SRTP, extensions): about 60 bytes.
const AUDIO_PACKET_OVERHEAD_BITS: u64 = 60 * 8;

/// Audio's share of the link, with packet overhead at 50 or 100 packets/s, at the Opus bitrate
/// and packet length the engine picks for that estimate in a call that sends video.
pub fn audio_reserve_bps(estimate_bps: u64) -> u64 {
    use crate::media::audio_pipeline::{voice_bitrate_for, voice_packet_samples_for};
    let packets_per_second = crate::media::codec::SAMPLE_RATE as u64
        / voice_packet_samples_for(estimate_bps, true) as u64;
    voice_bitrate_for(estimate_bps) as u64 + packets_per_second * AUDIO_PACKET_OVERHEAD_BITS
}

/// The video budget left by an estimate: a margin for the estimate's error and for
/// retransmissions, minus audio.
pub fn video_budget_bps(estimate_bps: u64) -> u32 {
    let usable = estimate_bps as f64 * 0.9;
    (usable - audio_reserve_bps(estimate_bps) as f64).max(30_000.0) as u32
}

/// A screen share's part of the video budget: it keeps priority over the camera under
/// congestion (slides and code are what the call is about), leaving the camera a quarter, or
/// what its smallest picture needs (160x120) when that is more, or half on a very slow link.
pub fn screen_share_bps(video_budget_bps: u32) -> u32 {
    let camera = (video_budget_bps / 4)
        .max(CAMERA_BESIDE_SHARE_MIN_BPS)
        .min(video_budget_bps / 2);
    video_budget_bps - camera
}

/// What the camera keeps beside a share at least (while the budget is more than twice this).
const CAMERA_BESIDE_SHARE_MIN_BPS: u32 = 30_000;

/// The camera's budget: all of it without a share, else what the share leaves unused.
pub fn camera_budget_bps(video_budget_bps: u32, screen_uses_bps: Option<u32>) -> u32 {
    match screen_uses_bps {
        None => video_budget_bps,
        Some(screen) => video_budget_bps.saturating_sub(screen).max(30_000),
    }
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
    // Congestion control steers the encoder five times a second; figures go out once a second.
    let mut control_tick = tokio::time::interval(Duration::from_millis(200));
    control_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u64 = 0;
    let mut disconnected_since: Option<Instant> = None;
    let mut stream_owners = actor.config.stream_owners.clone();
    let reason = loop {
        tokio::select! {
            Ok(()) = async {
                match stream_owners.as_mut() {
                    Some(owners) => owners.changed().await,
                    None => std::future::pending().await,
                }
            } => actor.rebind_sfu_receives().await,
            cmd = commands.recv() => match cmd {
                None => break CloseReason::Closed,
                // The owner handles bye (it replaces the session); nothing to do here.
                Some(SessionCommand::Signal(Signal::Bye)) => {}
                Some(SessionCommand::Signal(Signal::MediaState { audio, video, screen })) => {
                    actor.remote_sending = audio || video || screen;
                    actor.emit(SessionEvent::RemoteMediaState { audio, video, screen }).await;
                }
                Some(SessionCommand::Signal(signal)) => {
                    let actions = actor.negotiator.on_signal(signal);
                    actor.execute(actions).await;
                }
                Some(SessionCommand::RestartIce) => {
                    let actions = actor.negotiator.negotiation_needed(true);
                    actor.execute(actions).await;
                }
                Some(SessionCommand::AttachVideo(feed)) => actor.attach_video(feed),
                Some(SessionCommand::AttachScreen(feed)) => actor.attach_screen(feed),
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
            _ = control_tick.tick() => {
                actor.steer();
                ticks += 1;
                if !ticks.is_multiple_of(5) {
                    continue;
                }
                // rtc-dtls 0.21 can stall for good when a flight is lost: a side that receives
                // the peer's repeated flight drops its own retransmit timer and never answers.
                // Connectivity is there (ICE is up), so a fresh connection fixes it at once.
                // Not on a receiving connection with the SFU: webrtc 0.21 may never report one
                // connected although its media flows (seen with Janus), and nothing waits on it.
                if !*actor.connected.borrow()
                    && actor.config.stream_owners.is_none()
                    && actor
                        .ice_connected_at
                        .is_some_and(|at| at.elapsed() > DTLS_STALL)
                {
                    break CloseReason::Failed("DTLS handshake stalled".into());
                }
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
        let (me, registry, taps) = media_engine()?;
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
            // The answerer is ICE-controlled, and learns that ICE is up (from the nomination)
            // before the offerer does. As DTLS client it would send its hello at once, to an
            // offerer whose DTLS is not listening yet, and wait a whole 1 s retransmission
            // (seen on every 120 ms-RTT `4g` run). As DTLS server it waits for the offerer's
            // hello, which comes only once both sides are up.
            .with_answering_dtls_role(RTCDtlsRole::Server)
            .with_srtp_replay_protection_window(RETRANSMISSION_HISTORY)
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
        let mut rtc_config = RTCConfigurationBuilder::new().with_ice_servers(ice_servers);
        if config.relay_only {
            rtc_config = rtc_config.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
        }
        let rtc_config = rtc_config.build();
        let runtime = Arc::new(HandshakeCopyRuntime::new());
        let pc = PeerConnectionBuilder::new()
            .with_runtime(Arc::clone(&runtime) as Arc<dyn webrtc::runtime::Runtime>)
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
            sfu_receives: HashMap::new(),
            playout: media.playout.clone(),
            on_video_frame: media.on_video_frame.clone(),
            last_stats: None,
            taps,
            video_demand: None,
            video_ssrc: 0,
            simulcast: None,
            receive: Arc::new(VideoReceiveShared::default()),
            rtt: None,
            jitter: None,
            remote_video: None,
            video_track: None,
            screen_track: None,
            screen_ssrc: 0,
            screen_demand: None,
            screen_tasks: Vec::new(),
            screen_receive: Arc::new(VideoReceiveShared::default()),
            remote_sending: true,
            quality: QualityMeter::new(),
            runtime,
            stream_counts: HashMap::new(),
        };
        if let Err(e) = actor.add_media(media).await {
            let _ = actor.pc.close().await;
            return Err(e);
        }
        Ok(actor)
    }

    /// Adds our two tracks and the pre-negotiated file channel, and starts their tasks.
    async fn add_media(&mut self, media: SessionMedia) -> Result<(), RtcError> {
        if !self.config.data_only {
            self.add_tracks(media).await?;
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

    /// Our camera, microphone and screen tracks, and their sending tasks.
    async fn add_tracks(&mut self, media: SessionMedia) -> Result<(), RtcError> {
        let video_ssrc: u32 = rand::random();
        self.video_ssrc = video_ssrc;
        let layer_ssrcs: Vec<u32> = media.video_layers.iter().map(|_| rand::random()).collect();
        let video = if layer_ssrcs.is_empty() {
            local_track("video", RtpCodecKind::Video, h264_codec(), video_ssrc)?
        } else {
            simulcast_track(&layer_ssrcs)?
        };
        let video_sender = self
            .pc
            .add_track(video.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| RtcError::Setup(format!("add video track: {e}")))?;
        let audio_ssrc: u32 = rand::random();
        let audio = local_track("audio", RtpCodecKind::Audio, opus_codec(), audio_ssrc)?;
        let audio_sender = self
            .pc
            .add_track(audio.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| RtcError::Setup(format!("add audio track: {e}")))?;
        // The screen track is negotiated from the start, like the camera's, so a share starts
        // and stops without renegotiation; it sends nothing until then.
        let screen_ssrc: u32 = rand::random();
        self.screen_ssrc = screen_ssrc;
        let screen = local_track("screen", RtpCodecKind::Video, h264_codec(), screen_ssrc)?;
        let screen_sender = self
            .pc
            .add_track(screen.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(|e| RtcError::Setup(format!("add screen track: {e}")))?;
        self.screen_track = Some((screen, screen_sender));
        if let Some(feed) = media.screen {
            self.attach_screen(Some(feed));
        }

        self.video_track = Some((video.clone(), video_sender.clone()));
        if !layer_ssrcs.is_empty() {
            self.attach_layers(media.video_layers, layer_ssrcs, video, video_sender);
        } else if let Some(feed) = media.video {
            self.attach_video(feed);
        }
        if let Some(rx) = media.audio {
            self.tasks.spawn(send_audio(
                audio,
                audio_sender,
                audio_ssrc,
                rx,
                self.connected.subscribe(),
            ));
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

    /// Starts the tasks that send `feed` on our video track (once per session).
    fn attach_video(&mut self, feed: VideoFeed) {
        let Some((track, sender)) = self.video_track.clone() else {
            return;
        };
        if self.video_demand.is_some() {
            return;
        }
        let demand = feed.demand.clone();
        self.video_demand = Some(demand.clone());
        self.tasks.spawn(send_video(
            track.clone(),
            sender,
            self.video_ssrc,
            feed,
            self.connected.subscribe(),
            None,
        ));
        self.tasks.spawn(watch_keyframe_requests(
            track,
            vec![(self.video_ssrc, demand)],
        ));
    }

    /// Starts sending the camera's simulcast layers on `track`, one stream each.
    fn attach_layers(
        &mut self,
        feeds: Vec<VideoFeed>,
        ssrcs: Vec<u32>,
        track: Arc<TrackLocalStaticSample>,
        sender: Arc<dyn RtpSender>,
    ) {
        let mut layers = Vec::new();
        for ((feed, ssrc), spec) in feeds.into_iter().zip(ssrcs).zip(LAYERS.iter()) {
            layers.push((ssrc, feed.demand.clone()));
            let tag = LayerTag {
                rid: spec.rid,
                pc: self.pc.clone(),
            };
            self.tasks.spawn(send_video(
                track.clone(),
                sender.clone(),
                ssrc,
                feed,
                self.connected.subscribe(),
                Some(tag),
            ));
        }
        self.tasks
            .spawn(watch_keyframe_requests(track, layers.clone()));
        let initial = video_budget_bps(estimator::INITIAL_BPS as u64);
        self.simulcast = Some(SimulcastSend {
            layers,
            split: PublishLayers::new((640, 480), initial),
        });
    }

    /// Starts (or, with `None`, stops) sending a screen share on our screen track. A new share
    /// replaces the tasks of the one before.
    fn attach_screen(&mut self, feed: Option<VideoFeed>) {
        for task in self.screen_tasks.drain(..) {
            task.abort();
        }
        self.screen_demand = None;
        let (Some(feed), Some((track, sender))) = (feed, self.screen_track.clone()) else {
            return;
        };
        let demand = feed.demand.clone();
        self.screen_demand = Some(demand.clone());
        self.screen_tasks.push(self.tasks.spawn(send_video(
            track.clone(),
            sender,
            self.screen_ssrc,
            feed,
            self.connected.subscribe(),
            None,
        )));
        self.screen_tasks
            .push(self.tasks.spawn(watch_keyframe_requests(
                track,
                vec![(self.screen_ssrc, demand)],
            )));
    }

    /// A decoder for a remote video track (camera or screen) and the task feeding it.
    fn start_video_receive(
        &mut self,
        track: Arc<dyn TrackRemote>,
        name: &str,
        shared: Arc<VideoReceiveShared>,
        also_ask: Option<Callback>,
    ) -> Option<(Arc<RemoteVideo>, tokio::task::AbortHandle)> {
        let keyframe_needed = Arc::new(Notify::new());
        let on_keyframe: Callback = {
            let n = keyframe_needed.clone();
            Arc::new(move || n.notify_one())
        };
        let receiver = VideoReceiver::start(
            name,
            self.config.read_stamps,
            self.on_video_frame.clone(),
            on_keyframe,
        )
        .inspect_err(|e| tracing::error!(error = %e, name, "cannot start a video decoder"))
        .ok()?;
        let output = receiver.output();
        let task = self.tasks.spawn(receive_video(
            track,
            receiver,
            keyframe_needed,
            shared,
            also_ask,
        ));
        Some((output, task))
    }

    async fn receive_track(&mut self, track: Arc<dyn TrackRemote>) {
        if let Some(owners) = &self.config.stream_owners {
            let mid = track.track_id().await;
            let owner = owners.borrow().get(mid.as_str()).cloned();
            tracing::debug!(mid = %mid, owner = ?owner, "a track from the SFU");
            let Some(owner) = owner else {
                tracing::warn!(mid = %mid, "a track from the SFU that no stream names");
                return;
            };
            return self.receive_track_of(mid, owner, track).await;
        }
        let is_screen = track.stream_id().await == SCREEN_STREAM_ID
            || track.track_id().await.starts_with("screen-");
        match track.kind().await {
            RtpCodecKind::Video => {
                let remote = &self.config.remote;
                let (name, shared) = if is_screen {
                    (format!("{remote}-screen"), self.screen_receive.clone())
                } else {
                    (remote.to_string(), self.receive.clone())
                };
                let Some((output, _)) = self.start_video_receive(track, &name, shared, None) else {
                    return;
                };
                if is_screen {
                    self.emit(SessionEvent::RemoteScreen(output)).await;
                } else {
                    self.remote_video = Some(output.clone());
                    self.emit(SessionEvent::RemoteVideo(output)).await;
                }
            }
            RtpCodecKind::Audio => {
                let key = self.config.remote.to_string();
                let _ = self.start_audio_receive(track, key);
            }
            _ => {}
        }
    }

    /// The SFU's streams changed: a track whose media section now carries a new stream
    /// (see `StreamOwner::since`) starts over for its new owner.
    async fn rebind_sfu_receives(&mut self) {
        let Some(owners) = &self.config.stream_owners else {
            return;
        };
        let moved: Vec<(String, StreamOwner)> = {
            let owners = owners.borrow();
            self.sfu_receives
                .iter()
                .filter_map(|(mid, r)| {
                    let owner = owners.get(mid)?;
                    (owner.since != r.since).then(|| (mid.clone(), owner.clone()))
                })
                .collect()
        };
        for (mid, owner) in moved {
            let Some(old) = self.sfu_receives.remove(&mid) else {
                continue;
            };
            tracing::debug!(mid = %mid, owner = ?owner, "a track from the SFU carries a new stream");
            old.task.abort();
            if let Some(key) = &old.audio_key {
                self.playout.remove_stream(key);
            }
            self.receive_track_of(mid, owner, old.track).await;
        }
    }

    /// A track on a connection with the SFU: `owner`'s camera, screen or microphone.
    async fn receive_track_of(
        &mut self,
        mid: String,
        owner: StreamOwner,
        track: Arc<dyn TrackRemote>,
    ) {
        let StreamOwner {
            peer: owner,
            screen,
            since,
        } = owner;
        let remember = |task: tokio::task::AbortHandle, audio_key: Option<String>| SfuReceive {
            track: track.clone(),
            since,
            task,
            audio_key,
        };
        match track.kind().await {
            RtpCodecKind::Video => {
                let shared = Arc::new(VideoReceiveShared::default());
                let ask: Callback = {
                    let events = self.events.clone();
                    let (remote, id) = (self.config.remote.clone(), self.config.session_id);
                    let peer = owner.clone();
                    Arc::new(move || {
                        let wanted = SessionEvent::KeyframeWanted { peer: peer.clone() };
                        let _ = events.try_send((remote.clone(), id, wanted));
                    })
                };
                let name = if screen {
                    format!("{owner}-screen")
                } else {
                    owner.to_string()
                };
                if let Some((video, task)) =
                    self.start_video_receive(track.clone(), &name, shared, Some(ask))
                {
                    self.sfu_receives.insert(mid, remember(task, None));
                    let event = if screen {
                        SessionEvent::RemoteScreenOf { peer: owner, video }
                    } else {
                        SessionEvent::RemoteVideoOf { peer: owner, video }
                    };
                    self.emit(event).await;
                }
            }
            RtpCodecKind::Audio => {
                let key = owner.to_string();
                if let Some(task) = self.start_audio_receive(track.clone(), key.clone()) {
                    self.sfu_receives.insert(mid, remember(task, Some(key)));
                }
            }
            _ => {}
        }
    }

    /// Plays `track` into the mix as the stream `key` (a peer's id).
    fn start_audio_receive(
        &mut self,
        track: Arc<dyn TrackRemote>,
        key: String,
    ) -> Option<tokio::task::AbortHandle> {
        if let Err(e) = self.playout.add_stream(&key) {
            tracing::error!(error = %e, "cannot start audio decoder");
            return None;
        }
        Some(
            self.tasks
                .spawn(receive_audio(track, self.playout.clone(), key)),
        )
    }

    /// Five times a second: the congestion controller's estimate becomes this peer's video
    /// budget, and the measured round trip and jitter size the receive side's wait for
    /// retransmissions.
    fn steer(&mut self) {
        let estimate = self.taps.estimate.target_bps_at(Instant::now());
        let budget = video_budget_bps(estimate);
        let screen_wants = self.screen_demand.as_ref().map(|d| {
            // What the share's encoder last said it uses; its whole share at first.
            let share = screen_share_bps(budget);
            d.set_budget(share);
            d.sending().map_or(share, |t| t.bitrate_bps.min(share))
        });
        if let Some(demand) = &self.video_demand {
            demand.set_budget(camera_budget_bps(budget, screen_wants));
        }
        if let Some(sim) = &mut self.simulcast {
            let source = sim
                .layers
                .iter()
                .find_map(|(_, d)| d.source())
                .unwrap_or((640, 480));
            let budgets = sim.split.update(
                Instant::now(),
                source,
                camera_budget_bps(budget, screen_wants),
            );
            for ((_, demand), bps) in sim.layers.iter().zip(budgets) {
                demand.set_budget(bps);
            }
        }
        if let Ok(feedback) = self.taps.feedback.lock()
            && feedback.rtt.is_some()
        {
            self.rtt = feedback.rtt;
        }
        // A retransmission takes a round trip plus the NACK generator's tick; jitter can delay
        // either way. Wait for three rounds: at 5 % loss one retransmission in twenty is lost
        // too, and about one hole in a hundred loses two in a row (a NACK or a retransmission
        // each time), about once a call-minute. A third round costs those rare frames one more
        // round trip; giving up costs a keyframe request, a round trip and a keyframe many
        // times a frame's size on the same lossy path: a freeze of half a second or more.
        let rtt = self.rtt.unwrap_or(Duration::from_millis(100));
        let jitter = self.jitter.unwrap_or_default();
        let wait = (rtt.mul_f32(3.2) + jitter * 2 + NACK_INTERVAL + Duration::from_millis(20))
            .clamp(Duration::from_millis(60), Duration::from_millis(500));
        for receive in [&self.receive, &self.screen_receive] {
            receive
                .wait_us
                .store(wait.as_micros() as u64, Ordering::Relaxed);
            if let Some(rtt) = self.rtt {
                receive
                    .retransmission_lateness_us
                    .store((rtt + NACK_INTERVAL).as_micros() as u64, Ordering::Relaxed);
            }
        }
    }

    async fn report_stats(&mut self) {
        let report = self.pc.get_stats(Instant::now(), StatsSelector::None).await;
        let mut stats = PeerStats::default();
        // Only the selected pair: pairs that were selected before an ICE restart stay marked
        // nominated.
        let selected = report
            .transport()
            .map(|t| t.selected_candidate_pair_id.clone());
        let mut ice_rtt = None;
        for pair in report.candidate_pairs() {
            if selected.as_ref().is_none_or(|id| *id != pair.stats.id) {
                continue;
            }
            if pair.current_round_trip_time > 0.0 {
                ice_rtt = Some(Duration::from_secs_f64(pair.current_round_trip_time));
            }
            // Pairs name candidates by their ICE id; the candidates' own entries are prefixed.
            let kind = |prefix: &str, id: &str| match report.get(&format!("{prefix}{id}")) {
                Some(RTCStatsReportEntry::LocalCandidate(c))
                | Some(RTCStatsReportEntry::RemoteCandidate(c)) => c.candidate_type.to_string(),
                _ => "unknown".to_owned(),
            };
            stats.path = Some((
                kind("RTCLocalIceCandidate_", &pair.local_candidate_id),
                kind("RTCRemoteIceCandidate_", &pair.remote_candidate_id),
            ));
        }
        if self.rtt.is_none() {
            self.rtt = ice_rtt;
        }
        stats.rtt_ms = self.rtt.or(ice_rtt).map(|d| d.as_secs_f64() * 1000.0);
        let mut least_loss: Option<f64> = None;
        for inbound in report.inbound_rtp_streams() {
            let received = &inbound.received_rtp_stream_stats;
            let counts = (received.packets_received, received.packets_lost);
            let ssrc = received.rtp_stream_stats.ssrc;
            if let Some((was_received, was_lost)) = self.stream_counts.insert(ssrc, counts) {
                let got = counts.0.saturating_sub(was_received);
                let lost = (counts.1 - was_lost).max(0) as u64;
                if got + lost >= LEAST_LOSS_MIN_PACKETS {
                    let share = lost as f64 / (got + lost) as f64;
                    least_loss = Some(least_loss.map_or(share, |l| l.min(share)));
                }
            }
            stats.bytes_received += inbound.bytes_received;
            stats.packets_received += received.packets_received;
            stats.packets_lost += received.packets_lost;
            stats.nacks_sent += inbound.nack_count as u64;
            if received.rtp_stream_stats.kind == RtpCodecKind::Video {
                // In RTP timestamp units (90 kHz for video).
                let jitter = Duration::from_secs_f64((received.jitter / 90_000.0).max(0.0));
                self.jitter = Some(jitter);
                stats.jitter_ms = Some(jitter.as_secs_f64() * 1000.0);
            }
        }
        stats.least_stream_loss = least_loss;
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
        let estimate = self.taps.estimate.target_bps_at(now);
        stats.estimate_kbps = estimate as f64 / 1000.0;
        stats.loss_estimated = self.taps.estimate.loss();
        stats.estimator = self.taps.estimate.counters();
        if let Some(demand) = &self.video_demand {
            stats.video_budget_kbps = demand.budget() as f64 / 1000.0;
            stats.sending = demand.sending();
        }
        if let Some(sim) = &self.simulcast {
            stats.video_budget_kbps = sim
                .layers
                .iter()
                .map(|(_, d)| d.budget() as f64)
                .sum::<f64>()
                / 1000.0;
            stats.layers_sending = sim.layers.iter().filter_map(|(_, d)| d.sending()).collect();
            stats.sending = stats.layers_sending.last().copied();
        }
        if let Ok(feedback) = self.taps.feedback.lock() {
            stats.loss_reported = feedback
                .reports
                .get(&self.video_ssrc)
                .map(|r| r.fraction_lost);
            stats.nacked_by_peer = feedback.nacked_packets;
            stats.retransmissions_sent = feedback.retransmissions_sent;
            stats.retransmissions_withheld = feedback.retransmissions_withheld;
            stats.retransmissions_repeat_skipped = feedback.retransmissions_repeat_skipped;
            stats.retransmission_copies_sent = feedback.retransmission_copies_sent;
            stats.retransmission_copies_withheld = feedback.retransmission_copies_withheld;
            stats.keyframe_requests_received = feedback.keyframe_requests;
        }
        if let Ok(assembler) = self.receive.assembler.lock() {
            stats.retransmissions_received = assembler.recovered;
            stats.video_packets_abandoned = assembler.lost;
            stats.video_frames_assembled = assembler.frames;
        }
        stats.keyframe_requests_sent = self.receive.keyframe_requests.load(Ordering::Relaxed);
        stats.dtls_handshake_copies_sent = self.runtime.copies_sent();
        stats.frames_skipped_for_keyframe =
            self.receive.skipped_for_keyframe.load(Ordering::Relaxed);
        if let Some(video) = &self.remote_video {
            // Once a second per peer: read the two counters, not a copy of every sample.
            let (freezes, frozen_us) = video.freezes();
            stats.freezes = freezes;
            stats.frozen_ms = frozen_us / 1000;
        }
        stats.quality = self.quality.update(
            now,
            QualitySample {
                packets_lost: stats.packets_lost,
                packets_received: stats.packets_received,
                loss_reported: stats.loss_reported,
                rtt_ms: stats.rtt_ms,
                freezes: stats.freezes,
                expecting_media: self.remote_sending,
            },
        );
        self.emit(SessionEvent::Stats(Box::new(stats))).await;
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

/// What a simulcast layer's packets carry besides the media: its rid, and the mid of the
/// track's media section (the SDP lists no SSRCs for simulcast, so the SFU tells the streams
/// apart by these two).
struct LayerTag {
    rid: &'static str,
    pc: Arc<dyn PeerConnection>,
}

/// An SDES item as an RTP header extension (mid, rid): the text itself.
struct SdesText(bytes::Bytes);

impl rtc::shared::marshal::MarshalSize for SdesText {
    fn marshal_size(&self) -> usize {
        self.0.len()
    }
}

impl rtc::shared::marshal::Marshal for SdesText {
    fn marshal_to(&self, buf: &mut [u8]) -> Result<usize, rtc::shared::error::Error> {
        let out = buf
            .get_mut(..self.0.len())
            .ok_or(rtc::shared::error::Error::ErrBufferTooSmall)?;
        out.copy_from_slice(&self.0);
        Ok(self.0.len())
    }
}

fn sdes_extension(uri: &'static str, text: &bytes::Bytes) -> HeaderExtension {
    HeaderExtension::Custom {
        uri: uri.into(),
        extension: Box::new(SdesText(text.clone())),
    }
}

/// The mid negotiated for `sender`'s media section.
async fn mid_of(pc: &Arc<dyn PeerConnection>, sender: &Arc<dyn RtpSender>) -> Option<String> {
    for transceiver in pc.get_transceivers().await {
        if let Ok(Some(s)) = transceiver.sender().await
            && s.id() == sender.id()
        {
            return transceiver.mid().await.ok().flatten();
        }
    }
    None
}

async fn send_video(
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    feed: VideoFeed,
    mut connected: watch::Receiver<bool>,
    layer: Option<LayerTag>,
) {
    let VideoFeed { mut frames, demand } = feed;
    // Nothing is encoded for this peer before the connection is up (`VideoDemand`); any frame
    // already queued is dropped.
    loop {
        tokio::select! {
            up = wait_connected(&mut connected) => {
                if !up {
                    return;
                }
                break;
            }
            frame = frames.recv() => {
                if frame.is_none() {
                    return;
                }
            }
        }
    }
    let Some(pt) = payload_type(&sender, MIME_TYPE_H264).await else {
        tracing::warn!("no H.264 payload type negotiated; not sending video");
        return;
    };
    let tags = match &layer {
        None => None,
        Some(tag) => {
            let Some(mid) = mid_of(&tag.pc, &sender).await else {
                tracing::warn!("the simulcast track has no mid; not sending video");
                return;
            };
            Some((
                bytes::Bytes::from(mid),
                bytes::Bytes::from_static(tag.rid.as_bytes()),
            ))
        }
    };
    drop(layer);
    // Frames queued before the connection was up are stale: start from a fresh keyframe.
    while frames.try_recv().is_ok() {}
    demand.request_first_keyframe();
    let mut waiting_for_keyframe = true;
    let mut last_capture: Option<u64> = None;
    while let Some(frame) = frames.recv().await {
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
        let mut writer = track.sample_writer(ssrc, pt);
        if let Some((mid, rid)) = &tags {
            writer = writer
                .with_extension(sdes_extension(SDES_MID_URI, mid))
                .with_extension(sdes_extension(SDES_RTP_STREAM_ID_URI, rid));
        }
        if writer.write_sample(&sample).await.is_err() {
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
    // Speech captured while the connection was being set up is stale by now; sent, it arrives
    // as a burst the far end's jitter buffer must drop again. Start from the next frame.
    frames = frames.resubscribe();
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
            duration: crate::media::audio::span_of(frame.samples),
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

/// Turns PLI/FIR from the remote into a keyframe request to the encoder of the stream it
/// names (`streams`: SSRC and demand; a request naming none of them goes to the first).
async fn watch_keyframe_requests(
    track: Arc<TrackLocalStaticSample>,
    streams: Vec<(u32, Arc<VideoDemand>)>,
) {
    while let Some(event) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = event else {
            continue;
        };
        for p in packets.iter().filter(|p| is_keyframe_request(p.as_ref())) {
            let named = p.destination_ssrc();
            let mut asked = streams
                .iter()
                .filter(|(ssrc, _)| named.contains(ssrc))
                .peekable();
            if asked.peek().is_none() {
                if let Some((_, demand)) = streams.first() {
                    demand.request_keyframe();
                }
                continue;
            }
            for (_, demand) in asked {
                demand.request_keyframe();
            }
        }
    }
}

/// Our camera's simulcast layers on a connection with the SFU.
struct SimulcastSend {
    /// Per layer, lowest first: its SSRC and its encoder's demand.
    layers: Vec<(u32, Arc<VideoDemand>)>,
    /// How the uplink's budget is split among them.
    split: PublishLayers,
}

/// Whether an Annex-B access unit holds an IDR slice (a picture that decodes on its own).
pub fn contains_idr(annex_b: &[u8]) -> bool {
    annex_b
        .windows(4)
        .any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

/// Keyframe requests at most this often while waiting for one.
const PLI_INTERVAL: Duration = Duration::from_millis(200);

async fn receive_video(
    track: Arc<dyn TrackRemote>,
    receiver: VideoReceiver,
    keyframe_needed: Arc<Notify>,
    shared: Arc<VideoReceiveShared>,
    also_ask: Option<Callback>,
) {
    let media_ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mut assembler = FrameAssembler::new();
    let mut depacketizer = H264Packet::default();
    let mut last_pli: Option<Instant> = None;
    // After a loss, P-frames would only make decoder errors: skip to the next keyframe.
    let mut waiting_for_keyframe = false;
    // Until the first keyframe, likewise: the stream's first packets may have been lost before
    // we knew the stream, and no NACK can ask for packets before the first one seen.
    let mut had_keyframe = false;
    // Not 0: Janus drops feedback whose sender SSRC is 0 (webrtc's NACK generator picks a
    // random one too).
    let sender_ssrc: u32 = rand::random::<u32>().max(1);
    let send_pli = async |last_pli: &mut Option<Instant>| {
        if last_pli.is_some_and(|t| t.elapsed() < PLI_INTERVAL) {
            return;
        }
        *last_pli = Some(Instant::now());
        shared.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        if let Some(ask) = &also_ask {
            ask();
        }
        let pli = PictureLossIndication {
            sender_ssrc,
            media_ssrc,
        };
        let _ = track.write_rtcp(vec![Box::new(pli)]).await;
    };
    loop {
        let wait_us = shared.wait_us.load(Ordering::Relaxed);
        if wait_us > 0 {
            assembler.set_wait(Duration::from_micros(wait_us));
        }
        // Wake for an open hole's deadline, and to repeat a keyframe request that went unheard
        // (a fixed time after the last one: packets arriving meanwhile must not postpone it).
        let repeat_pli =
            waiting_for_keyframe.then(|| last_pli.map_or_else(Instant::now, |t| t + PLI_INTERVAL));
        let deadline = match (assembler.deadline(), repeat_pli) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
        };
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let assembled = tokio::select! {
            event = track.poll() => {
                let Some(event) = event else { return };
                let TrackRemoteEvent::OnRtpPacket(packet) = event else {
                    if matches!(event, TrackRemoteEvent::OnEnded) {
                        return;
                    }
                    continue;
                };
                let h = &packet.header;
                assembler.push(h.sequence_number, h.timestamp, h.marker, packet.payload, Instant::now())
            }
            _ = sleep => {
                if waiting_for_keyframe {
                    send_pli(&mut last_pli).await;
                }
                assembler.poll(Instant::now())
            }
            _ = keyframe_needed.notified() => {
                send_pli(&mut last_pli).await;
                continue;
            }
        };
        for item in assembled {
            match item {
                Assembled::Frame {
                    payloads,
                    timestamp,
                    repaired,
                } => {
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
                        waiting_for_keyframe = true;
                        send_pli(&mut last_pli).await;
                        continue;
                    }
                    if unit.is_empty() {
                        continue;
                    }
                    let keyframe = contains_idr(&unit);
                    if !had_keyframe && !keyframe && !waiting_for_keyframe {
                        waiting_for_keyframe = true;
                        send_pli(&mut last_pli).await;
                    }
                    if waiting_for_keyframe {
                        if !keyframe {
                            shared.skipped_for_keyframe.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        waiting_for_keyframe = false;
                    }
                    had_keyframe = true;
                    let lateness = shared.retransmission_lateness_us.load(Ordering::Relaxed);
                    receiver.push(AccessUnit {
                        data: unit.freeze(),
                        received_at: Instant::now(),
                        rtp_timestamp: timestamp,
                        retransmission_lateness: (lateness > 0)
                            .then(|| Duration::from_micros(lateness)),
                        repaired,
                    });
                }
                Assembled::Lost { .. } => {
                    depacketizer = H264Packet::default();
                    waiting_for_keyframe = true;
                    send_pli(&mut last_pli).await;
                }
            }
        }
        if let Ok(mut stats) = shared.assembler.lock() {
            *stats = assembler.stats();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_keeps_priority_over_the_camera_and_the_camera_keeps_a_small_picture() {
        // A good link: the camera gets a quarter.
        assert_eq!(screen_share_bps(2_000_000), 1_500_000);
        assert_eq!(camera_budget_bps(2_000_000, Some(1_500_000)), 500_000);
        // A 200 kbit/s uplink (about 85 kbit/s for video): the camera keeps its floor.
        assert_eq!(screen_share_bps(85_000), 55_000);
        assert_eq!(camera_budget_bps(85_000, Some(55_000)), 30_000);
        // Less than twice the floor: half each.
        assert_eq!(screen_share_bps(40_000), 20_000);
        // What the share leaves unused goes to the camera; without a share, all of it.
        assert_eq!(camera_budget_bps(2_000_000, Some(300_000)), 1_700_000);
        assert_eq!(camera_budget_bps(2_000_000, None), 2_000_000);
    }
}

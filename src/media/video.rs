//! The video pipeline threads. Sending: a capture thread (test pattern or camera) puts I420
//! frames into a latest-wins slot; one encoder thread encodes each frame once and publishes it to
//! every peer. Receiving: one decoder thread per remote stream turns access units into RGBA
//! frames, delivered latest-wins, with counters and (optionally) stamp readings.

use super::MediaError;
use super::codec::H264Decoder;
use super::frame::FramePool;
use super::frame::{I420Frame, RgbaFrame};
use super::pattern::TestPattern;
use super::playout::VideoPlayout;
pub use super::samples::Samples;
use super::scene::Scene;
use super::screen::ScreenSource;
use super::slot::LatestSlot;
use super::stamp::{FrameStamp, read_stamp};
pub use super::video_send::EncoderStats;
use super::video_send::{EncoderThread, Subscribers, VideoFeed};
use super::{Stopper, now_us};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where local video comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum VideoSourceSpec {
    /// The synthetic moving pattern; `source_id` goes into every frame's stamp.
    TestPattern {
        width: usize,
        height: usize,
        fps: u32,
        source_id: u8,
    },
    /// The synthetic scene that encodes like a real camera (`scene`); stamped like the pattern.
    Scene {
        width: usize,
        height: usize,
        fps: u32,
        source_id: u8,
    },
    /// A real camera (nokhwa index).
    Camera { index: u32, name: String },
    /// A screen share: what to capture and at most how many frames a second.
    Screen { source: ScreenSource, fps: u32 },
}

impl VideoSourceSpec {
    pub fn test_pattern(source_id: u8) -> Self {
        VideoSourceSpec::TestPattern {
            width: 640,
            height: 480,
            fps: 30,
            source_id,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            VideoSourceSpec::TestPattern {
                width,
                height,
                fps,
                source_id,
            } => format!("test pattern {source_id} ({width}x{height}@{fps})"),
            VideoSourceSpec::Scene {
                width,
                height,
                fps,
                source_id,
            } => format!("synthetic scene {source_id} ({width}x{height}@{fps})"),
            VideoSourceSpec::Camera { name, .. } => name.clone(),
            VideoSourceSpec::Screen { source, .. } => source.describe(),
        }
    }

    /// The frame rate a screen share captures at, `None` for cameras and camera stand-ins.
    pub fn screen_fps(&self) -> Option<u32> {
        match self {
            VideoSourceSpec::Screen { fps, .. } => Some((*fps).clamp(1, 60)),
            _ => None,
        }
    }
}

/// The local video: capture thread + encoder thread. Encoded frames go to `subscribe()`rs.
pub struct VideoSender {
    frames: Arc<LatestSlot<I420Frame>>,
    capture: Option<CaptureThread>,
    spec: VideoSourceSpec,
    /// Synthetic sources keep their frame numbering when capture stops and restarts.
    parked_pattern: Option<Synthetic>,
    encoder: Option<JoinHandle<()>>,
    encoder_stop: Stopper,
    subscribers: Subscribers,
    stats: Arc<Mutex<EncoderStats>>,
    self_view: Option<Arc<LatestSlot<Arc<RgbaFrame>>>>,
    enabled: bool,
    camera_state: Arc<Mutex<super::camera::CameraState>>,
}

/// A synthetic source, kept across camera off and on so its numbering continues.
pub(crate) enum Synthetic {
    Pattern(TestPattern),
    Scene(Box<Scene>),
}

impl Synthetic {
    fn size(&self) -> (usize, usize) {
        match self {
            Synthetic::Pattern(p) => p.size(),
            Synthetic::Scene(s) => s.size(),
        }
    }
    fn is_scene(&self) -> bool {
        matches!(self, Synthetic::Scene(_))
    }
    fn render(&mut self, capture_us: u64) -> I420Frame {
        match self {
            Synthetic::Pattern(p) => p.render(capture_us),
            Synthetic::Scene(s) => s.render(capture_us),
        }
    }
}

struct CaptureThread {
    stop: Stopper,
    handle: Option<JoinHandle<Option<Synthetic>>>,
    /// A camera thread may be stuck in the driver waiting for a frame that never comes
    /// (unplugged): it is told to stop and left to finish on its own instead of being joined.
    detach: bool,
}

impl CaptureThread {
    fn finish(mut self) -> Option<Synthetic> {
        self.stop.stop();
        if self.detach {
            self.handle.take();
            return None;
        }
        self.handle.take().and_then(|h| h.join().ok()).flatten()
    }
}

impl Drop for CaptureThread {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(h) = self.handle.take()
            && !self.detach
        {
            let _ = h.join();
        }
    }
}

impl VideoSender {
    /// Starts encoding at `bitrate_bps` (`None`: chosen per resolution). With `self_view`, every
    /// captured frame is also converted to RGBA for local display.
    pub fn start(
        spec: VideoSourceSpec,
        bitrate_bps: Option<u32>,
        self_view: Option<Arc<LatestSlot<Arc<RgbaFrame>>>>,
    ) -> Result<Self, MediaError> {
        let frames = Arc::new(LatestSlot::new());
        let subscribers = Subscribers::default();
        let stats = Arc::new(Mutex::new(EncoderStats {
            encode_us: Samples::with_capacity(10_000),
            ..Default::default()
        }));
        let encoder_stop = Stopper::new();
        let thread = EncoderThread {
            frames: frames.clone(),
            subscribers: subscribers.clone(),
            stats: stats.clone(),
            stop: encoder_stop.clone(),
            fixed_bitrate: bitrate_bps,
            self_view: self_view.clone(),
            screen_fps: spec.screen_fps(),
        };
        let encoder = std::thread::Builder::new()
            .name("video-encoder".into())
            .spawn(move || thread.run())
            .map_err(|e| MediaError::Thread(e.to_string()))?;
        let mut sender = VideoSender {
            frames,
            capture: None,
            spec,
            parked_pattern: None,
            encoder: Some(encoder),
            encoder_stop,
            subscribers,
            stats,
            self_view,
            enabled: false,
            camera_state: Arc::new(Mutex::new(super::camera::CameraState::Off)),
        };
        sender.set_enabled(true)?;
        Ok(sender)
    }

    /// A new peer: its own queue of encoded frames and its own bitrate budget, starting at
    /// `initial_budget_bps` (see `video_send`).
    pub fn subscribe(&self, initial_budget_bps: u32) -> VideoFeed {
        self.subscribers.subscribe(initial_budget_bps)
    }

    /// An SFU publisher's simulcast layers, lowest first (`simulcast::LAYERS`), each with its
    /// own encoder; paused until given a budget.
    pub fn subscribe_layers(&self) -> Vec<VideoFeed> {
        (0..super::simulcast::LAYERS.len())
            .map(|layer| self.subscribers.subscribe_layer(layer))
            .collect()
    }

    /// Asks every peer's next frame to be a keyframe (the source changed).
    pub fn request_keyframe(&self) {
        self.subscribers.request_keyframes();
    }

    pub fn stats(&self) -> EncoderStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Enabled and its capture thread still running (a screen capture ends by itself when
    /// what it shows is gone).
    pub fn is_capturing(&self) -> bool {
        self.enabled
            && self
                .capture
                .as_ref()
                .and_then(|c| c.handle.as_ref())
                .is_some_and(|h| !h.is_finished())
    }

    pub fn spec(&self) -> &VideoSourceSpec {
        &self.spec
    }

    /// What a real camera is doing (`Off` for synthetic sources).
    pub fn camera_state(&self) -> super::camera::CameraState {
        self.camera_state
            .lock()
            .map(|s| s.clone())
            .unwrap_or(super::camera::CameraState::Off)
    }

    /// Camera on/off. Off stops the capture thread (releasing a real camera); the encoder idles.
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), MediaError> {
        if enabled == self.enabled {
            return Ok(());
        }
        if enabled {
            self.capture = Some(self.spawn_capture()?);
            self.request_keyframe();
        } else if let Some(capture) = self.capture.take() {
            self.parked_pattern = capture.finish();
            if let Some(view) = &self.self_view {
                view.take();
            }
        }
        self.enabled = enabled;
        Ok(())
    }

    /// Switches the source under the running encoder: no renegotiation; the next frame from the
    /// new source is a keyframe.
    pub fn set_source(&mut self, spec: VideoSourceSpec) -> Result<(), MediaError> {
        if let Some(capture) = self.capture.take() {
            capture.finish();
        }
        self.parked_pattern = None;
        self.spec = spec;
        if self.enabled {
            self.capture = Some(self.spawn_capture()?);
            self.request_keyframe();
        }
        Ok(())
    }

    fn spawn_capture(&mut self) -> Result<CaptureThread, MediaError> {
        let stop = Stopper::new();
        let frames = self.frames.clone();
        let detach = matches!(self.spec, VideoSourceSpec::Camera { .. });
        let handle = match self.spec.clone() {
            VideoSourceSpec::Camera { index, .. } => {
                let stop = stop.clone();
                let state = self.camera_state.clone();
                std::thread::Builder::new()
                    .name("camera".into())
                    .spawn(move || {
                        super::camera::capture(index, frames, stop, state);
                        None
                    })
                    .map_err(|e| MediaError::Thread(e.to_string()))?
            }
            VideoSourceSpec::Screen { source, fps } => {
                // Opened here, so a display that is not there is the caller's error at once.
                let mut capturer = super::screen::open(&source)?;
                let stop = stop.clone();
                let period = Duration::from_secs_f64(1.0 / fps.clamp(1, 60) as f64);
                std::thread::Builder::new()
                    .name("screen-capture".into())
                    .spawn(move || {
                        let mut pacer = super::audio::Pacer::new(period);
                        let mut failures = 0u32;
                        while !stop.is_stopped() {
                            pacer.wait();
                            match capturer.capture(now_us()) {
                                Ok(frame) => {
                                    failures = 0;
                                    frames.put(frame);
                                }
                                // A window that closed, a display that went away: give up
                                // after a second of failures, not at the first hiccup.
                                Err(e) => {
                                    failures += 1;
                                    if failures == 1 || failures >= fps.max(1) {
                                        tracing::warn!(error = %e, failures, "screen capture failed");
                                    }
                                    if failures >= fps.max(1) {
                                        break;
                                    }
                                }
                            }
                        }
                        None
                    })
                    .map_err(|e| MediaError::Thread(e.to_string()))?
            }
            VideoSourceSpec::TestPattern {
                width,
                height,
                fps,
                source_id,
            }
            | VideoSourceSpec::Scene {
                width,
                height,
                fps,
                source_id,
            } => {
                let scene = matches!(self.spec, VideoSourceSpec::Scene { .. });
                let mut source = self
                    .parked_pattern
                    .take()
                    .filter(|p| p.size() == (width & !1, height & !1) && p.is_scene() == scene)
                    .unwrap_or_else(|| {
                        if scene {
                            Synthetic::Scene(Box::new(Scene::new(width, height, source_id)))
                        } else {
                            Synthetic::Pattern(TestPattern::new(width, height, source_id))
                        }
                    });
                let stop = stop.clone();
                let period = Duration::from_secs_f64(1.0 / fps.clamp(1, 120) as f64);
                std::thread::Builder::new()
                    .name("video-capture".into())
                    .spawn(move || {
                        let mut pacer = super::audio::Pacer::new(period);
                        while !stop.is_stopped() {
                            pacer.wait();
                            frames.put(source.render(now_us()));
                        }
                        Some(source)
                    })
                    .map_err(|e| MediaError::Thread(e.to_string()))?
            }
        };
        Ok(CaptureThread {
            stop,
            handle: Some(handle),
            detach,
        })
    }
}

impl Drop for VideoSender {
    fn drop(&mut self) {
        self.capture.take();
        self.encoder_stop.stop();
        if let Some(h) = self.encoder.take() {
            let _ = h.join();
        }
    }
}

/// One H.264 access unit received from the network.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    pub data: Bytes,
    /// When its last packet arrived.
    pub received_at: Instant,
    /// RTP timestamp (90 kHz): the capture rhythm the playout clock follows.
    pub rtp_timestamp: u32,
    /// How late a frame that needs a retransmission arrives on this path, when measured (see
    /// `VideoPlayout::note_retransmission_lateness`).
    pub retransmission_lateness: Option<Duration>,
    /// The frame waited for a hole in its packets to be filled (a retransmission).
    pub repaired: bool,
}

#[derive(Debug, Clone, Default)]
pub struct VideoRecvStats {
    pub units_received: u64,
    pub units_dropped: u64,
    pub frames_decoded: u64,
    pub decode_errors: u64,
    pub bytes: u64,
    pub width: usize,
    pub height: usize,
    pub first_frame_at: Option<Instant>,
    pub last_frame_at: Option<Instant>,
    pub last_stamp: Option<FrameStamp>,
    pub stamps_read: u64,
    /// Stamps whose number did not increase over the previous one from the same source.
    pub out_of_order: u64,
    /// Capture → picture handed to the display (decoded, and past the playout delay), from
    /// stamps, microseconds.
    pub latency_us: Samples,
    /// The playout clock's current delay (covering network jitter and retransmissions).
    pub playout_delay_ms: f64,
    pub decode_us: Samples,
    /// Distinct stamp sources seen, in order of first appearance.
    pub sources: Vec<u8>,
    /// Freezes: a new picture came more than max(3 x the median frame interval, 150 ms) after
    /// the previous one. `frozen_us` adds up those intervals.
    pub freezes: u64,
    pub frozen_us: u64,
    /// The longest interval between two pictures since the first picture or `reset_samples`.
    pub longest_interval_us: u64,
    /// Recent intervals between decoded pictures, for the median.
    intervals_us: VecDeque<u64>,
}

/// Shortest gap between pictures that counts as a freeze, whatever the frame rate.
const FREEZE_FLOOR_US: u64 = 150_000;

impl VideoRecvStats {
    /// Notes a new picture `interval_us` after the previous one.
    fn note_interval(&mut self, interval_us: u64) {
        let mut sorted: Vec<u64> = self.intervals_us.iter().copied().collect();
        sorted.sort_unstable();
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
        // A freeze breaks an established rhythm: the first few pictures only set it.
        if sorted.len() >= 3 && interval_us > (3 * median).max(FREEZE_FLOOR_US) {
            self.freezes += 1;
            self.frozen_us += interval_us;
        }
        self.longest_interval_us = self.longest_interval_us.max(interval_us);
        if self.intervals_us.len() == 31 {
            self.intervals_us.pop_front();
        }
        self.intervals_us.push_back(interval_us);
    }
}

/// What a decoder thread shares with its readers.
pub struct RemoteVideo {
    pub latest: LatestSlot<Arc<RgbaFrame>>,
    stats: Mutex<VideoRecvStats>,
    pub read_stamps: bool,
}

impl std::fmt::Debug for RemoteVideo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteVideo")
            .field("read_stamps", &self.read_stamps)
            .finish_non_exhaustive()
    }
}

impl RemoteVideo {
    pub fn stats(&self) -> VideoRecvStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// When the last frame was decoded, without copying the samples.
    pub fn last_frame_at(&self) -> Option<Instant> {
        self.stats.lock().ok().and_then(|s| s.last_frame_at)
    }

    /// Freezes so far and their total length in microseconds, without copying the samples.
    pub fn freezes(&self) -> (u64, u64) {
        self.stats
            .lock()
            .map(|s| (s.freezes, s.frozen_us))
            .unwrap_or_default()
    }

    /// Clears the latency and decode-time samples and the longest interval (e.g. after warm-up
    /// in a benchmark).
    pub fn reset_samples(&self) {
        if let Ok(mut s) = self.stats.lock() {
            s.latency_us.clear();
            s.decode_us.clear();
            s.longest_interval_us = 0;
        }
    }
}

pub type Callback = Arc<dyn Fn() + Send + Sync>;

/// The decoder thread of one remote video stream. Dropping it stops the thread.
pub struct VideoReceiver {
    input: Option<SyncSender<AccessUnit>>,
    thread: Option<JoinHandle<()>>,
    output: Arc<RemoteVideo>,
    on_keyframe_needed: Callback,
}

/// Access units queued for decoding before new ones are dropped: room for the playout delay
/// (up to 300 ms, 9 frames at 30 fps) and a burst behind a retransmission.
const DECODE_QUEUE: usize = 32;

impl VideoReceiver {
    /// `on_frame` runs on the decoder thread after each new picture (keep it cheap: wake a UI).
    /// `on_keyframe_needed` asks the sender for a keyframe (PLI).
    pub fn start(
        name: &str,
        read_stamps: bool,
        on_frame: Callback,
        on_keyframe_needed: Callback,
    ) -> Result<Self, MediaError> {
        let (tx, rx) = sync_channel(DECODE_QUEUE);
        let output = Arc::new(RemoteVideo {
            latest: LatestSlot::new(),
            stats: Mutex::new(VideoRecvStats {
                latency_us: Samples::with_capacity(20_000),
                decode_us: Samples::with_capacity(20_000),
                ..Default::default()
            }),
            read_stamps,
        });
        let thread = {
            let output = output.clone();
            let keyframe = on_keyframe_needed.clone();
            std::thread::Builder::new()
                .name(format!("video-decoder-{name}"))
                .spawn(move || decoder_loop(rx, output, on_frame, keyframe))
                .map_err(|e| MediaError::Thread(e.to_string()))?
        };
        Ok(VideoReceiver {
            input: Some(tx),
            thread: Some(thread),
            output,
            on_keyframe_needed,
        })
    }

    pub fn output(&self) -> Arc<RemoteVideo> {
        self.output.clone()
    }

    /// Queues an access unit. When the decoder is behind, the unit is dropped and a keyframe
    /// requested, since later P-frames would reference what was dropped.
    pub fn push(&self, unit: AccessUnit) {
        let Some(input) = &self.input else { return };
        if let Ok(mut s) = self.output.stats.lock() {
            s.units_received += 1;
            s.bytes += unit.data.len() as u64;
        }
        match input.try_send(unit) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if let Ok(mut s) = self.output.stats.lock() {
                    s.units_dropped += 1;
                }
                (self.on_keyframe_needed)();
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Drop for VideoReceiver {
    fn drop(&mut self) {
        self.input.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn decoder_loop(
    rx: Receiver<AccessUnit>,
    output: Arc<RemoteVideo>,
    on_frame: Callback,
    on_keyframe_needed: Callback,
) {
    let mut decoder = match H264Decoder::new() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "no video decoder");
            return;
        }
    };
    let mut pool = FramePool::default();
    let mut playout = VideoPlayout::new();
    let mut last_keyframe_request: Option<Instant> = None;
    while let Ok(unit) = rx.recv() {
        let mut frame = pool.get();
        let Some(buf) = Arc::get_mut(&mut frame) else {
            continue;
        };
        let started = Instant::now();
        let result = decoder.decode(&unit.data, buf);
        let decode_us = started.elapsed().as_micros() as i64;
        match result {
            Ok(true) => {
                // Hold the picture until its slot in the capture rhythm (see `playout`).
                if let Some(lateness) = unit.retransmission_lateness {
                    playout.note_retransmission_lateness(lateness);
                }
                let show_at = playout.schedule(unit.rtp_timestamp, unit.received_at, unit.repaired);
                let wait = show_at.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                let done_us = now_us();
                let stamp = output.read_stamps.then(|| read_stamp(buf)).flatten();
                if let Some(s) = stamp {
                    // The stamp carries the time modulo 2^48 µs; the frame says it in full.
                    buf.capture_us = done_us.saturating_sub(s.age_us(done_us).max(0) as u64);
                }
                if let Ok(mut s) = output.stats.lock() {
                    let now = Instant::now();
                    if let Some(previous) = s.last_frame_at {
                        s.note_interval(now.duration_since(previous).as_micros() as u64);
                    }
                    s.frames_decoded += 1;
                    s.playout_delay_ms = playout.delay().as_secs_f64() * 1000.0;
                    s.first_frame_at.get_or_insert(now);
                    s.last_frame_at = Some(now);
                    (s.width, s.height) = (buf.width, buf.height);
                    s.decode_us.push(decode_us);
                    if let Some(stamp) = stamp {
                        s.stamps_read += 1;
                        if let Some(prev) = s.last_stamp
                            && prev.source == stamp.source
                            && stamp.number <= prev.number
                        {
                            s.out_of_order += 1;
                        }
                        if !s.sources.contains(&stamp.source) {
                            s.sources.push(stamp.source);
                        }
                        s.latency_us.push(stamp.age_us(done_us));
                        s.last_stamp = Some(stamp);
                    }
                }
                pool.publish(frame.clone());
                output.latest.put(frame);
                on_frame();
            }
            Ok(false) => {}
            Err(_) => {
                if let Ok(mut s) = output.stats.lock() {
                    s.decode_errors += 1;
                }
                // Ask for a keyframe, at most every 250 ms.
                let due =
                    last_keyframe_request.is_none_or(|t| t.elapsed() > Duration::from_millis(250));
                if due {
                    last_keyframe_request = Some(Instant::now());
                    on_keyframe_needed();
                }
            }
        }
    }
}

#[cfg(test)]
mod freeze_tests {
    use super::VideoRecvStats;

    #[test]
    fn a_freeze_is_a_gap_well_over_the_usual_interval() {
        let mut s = VideoRecvStats::default();
        for _ in 0..30 {
            s.note_interval(33_333);
        }
        s.note_interval(140_000); // under the 150 ms floor
        assert_eq!(s.freezes, 0);
        s.note_interval(400_000);
        assert_eq!((s.freezes, s.frozen_us), (1, 400_000));
        // At 5 fps (200 ms apart) a 500 ms gap is not three intervals.
        let mut slow = VideoRecvStats::default();
        for _ in 0..30 {
            slow.note_interval(200_000);
        }
        slow.note_interval(500_000);
        assert_eq!(slow.freezes, 0);
        slow.note_interval(700_000);
        assert_eq!(slow.freezes, 1);
    }
}

//! The video encoder thread and what each peer asks of it. In a mesh one encoder cannot suit
//! every link: one peer behind a 300 kbit/s uplink would drag everyone down to its picture, or
//! everyone up to a bitrate its link drops. So every peer has its own `VideoDemand` (a bitrate
//! budget from its connection's congestion control, and keyframe requests) and its own quality
//! ladder, and the thread keeps one encoder per ladder rung in use: peers on the same rung share
//! one encoding (at the lowest budget among them), so a call where every link is good encodes
//! once, and the cost of a bad link is one extra, smaller encoding, not one per peer. Frames go to
//! each peer through its own small queue; a peer that falls behind loses frames and gets a
//! keyframe, the others do not notice.

use super::Stopper;
use super::codec::{EncodedVideo, H264Encoder};
use super::convert::I420Scaler;
use super::frame::FramePool;
use super::frame::{I420Frame, RgbaFrame};
use super::ladder::{Ladder, VideoTarget};
use super::reveal::Reveal;
use super::samples::Samples;
use super::slot::LatestSlot;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the encoder thread has done, for statistics.
#[derive(Debug, Clone, Default)]
pub struct EncoderStats {
    /// Frames encoded, over every encoding.
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub encode_us: Samples,
    /// The largest picture being encoded.
    pub width: usize,
    pub height: usize,
    /// Encodings running (one per ladder rung some peer is on).
    pub encodings: usize,
    /// A screen share: macroblock rows of the picture not yet revealed to the encoder (see
    /// `reveal`), after the last frame.
    pub reveal_pending_rows: usize,
}

/// Encoded frames queued for one peer's connection before older ones are dropped.
const PEER_QUEUE: usize = 4;
/// Forced keyframes per encoding at most this often (PLI storms, many peers joining), plus the
/// time the last one takes to leave at the encoding's bitrate (see `keyframe_hold`).
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// The same after a connection's first keyframe. A receiver asks for a keyframe only when what
/// arrived would not decode, never merely while waiting, so a request this early means the
/// first keyframe's opening packets were lost (no NACK can ask for packets before the first one
/// seen): on a 5 % path that cost about half a second of the first picture.
const FIRST_KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(100);
/// An encoder nobody has used for this long is dropped.
const IDLE_ENCODER: Duration = Duration::from_secs(3);
/// Bitrate changes smaller than this share are not worth telling the encoder.
const BITRATE_STEP: f64 = 0.05;

/// What one peer's connection asks of the video encoder. The session writes the budget and
/// keyframe requests; the encoder thread reads them before every frame and writes back what it
/// is sending.
#[derive(Debug)]
pub struct VideoDemand {
    budget_bps: AtomicU32,
    keyframe: AtomicBool,
    /// The pending keyframe is this peer's first since its connection came up: it is not held
    /// back by a keyframe forced earlier for someone else.
    first_keyframe: AtomicBool,
    /// The peer's connection is up: until then nothing is encoded for it. Frames encoded
    /// before would be thrown away, and the rate control would pay for their keyframe by
    /// skipping the frames after it, the first real keyframe among them (seconds for a
    /// 1080p screen at a starting budget).
    ready: AtomicBool,
    sending: Mutex<Option<VideoTarget>>,
    /// The size of the pictures the encoder takes in (the camera's).
    source: Mutex<Option<(usize, usize)>>,
}

impl VideoDemand {
    pub fn new(budget_bps: u32) -> Self {
        VideoDemand {
            budget_bps: AtomicU32::new(budget_bps),
            // No keyframe yet: frames before the connection is up are thrown away, so the
            // sender asks for one once it is (a keyframe forced now would only hold that one
            // back by `KEYFRAME_MIN_INTERVAL`).
            keyframe: AtomicBool::new(false),
            first_keyframe: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            sending: Mutex::new(None),
            source: Mutex::new(None),
        }
    }

    /// The bitrate this peer's link can take for video, bits per second.
    pub fn set_budget(&self, bps: u32) {
        self.budget_bps.store(bps, Ordering::Relaxed);
    }

    pub fn budget(&self) -> u32 {
        self.budget_bps.load(Ordering::Relaxed)
    }

    pub fn request_keyframe(&self) {
        self.keyframe.store(true, Ordering::Relaxed);
    }

    /// The connection just came up: encoding for it starts, with a keyframe now, whatever the
    /// hold. Once per connection, so it cannot become a keyframe storm.
    pub fn request_first_keyframe(&self) {
        self.ready.store(true, Ordering::Relaxed);
        self.first_keyframe.store(true, Ordering::Relaxed);
        self.keyframe.store(true, Ordering::Relaxed);
    }

    /// The resolution, frame rate and bitrate currently sent to this peer.
    pub fn sending(&self) -> Option<VideoTarget> {
        self.sending.lock().ok().and_then(|s| *s)
    }

    /// The size of the source pictures, once one has been encoded.
    pub fn source(&self) -> Option<(usize, usize)> {
        self.source.lock().ok().and_then(|s| *s)
    }
}

/// A peer's end: its encoded frames and its demand.
pub struct VideoFeed {
    pub frames: mpsc::Receiver<Arc<EncodedVideo>>,
    pub demand: Arc<VideoDemand>,
}

struct Subscriber {
    demand: Arc<VideoDemand>,
    frames: mpsc::Sender<Arc<EncodedVideo>>,
    ladder: Option<Ladder>,
    /// A simulcast layer (`simulcast::LAYERS`): a fixed size and frame rate, no ladder; a
    /// budget of 0 pauses it.
    layer: Option<usize>,
    /// The encoding (`VideoTarget::encoding`) this peer gets.
    encoding: Option<u8>,
}

/// Encodings of simulcast layers are numbered from here, apart from the ladder's rungs.
const LAYER_ENCODING_BASE: u8 = 100;

/// Subscribers shared between `VideoSender` (adds) and the encoder thread (reads, prunes).
#[derive(Clone, Default)]
pub struct Subscribers(Arc<Mutex<Vec<Subscriber>>>);

impl Subscribers {
    /// A new peer, starting from `initial_budget_bps`.
    pub fn subscribe(&self, initial_budget_bps: u32) -> VideoFeed {
        self.add(initial_budget_bps, None)
    }

    /// One simulcast layer for an SFU publisher (`simulcast::LAYERS[layer]`), paused until its
    /// budget is set above 0.
    pub fn subscribe_layer(&self, layer: usize) -> VideoFeed {
        self.add(0, Some(layer.min(super::simulcast::LAYERS.len() - 1)))
    }

    fn add(&self, initial_budget_bps: u32, layer: Option<usize>) -> VideoFeed {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let demand = Arc::new(VideoDemand::new(initial_budget_bps));
        if let Ok(mut subs) = self.0.lock() {
            subs.push(Subscriber {
                demand: demand.clone(),
                frames: tx,
                ladder: None,
                layer,
                encoding: None,
            });
        }
        VideoFeed { frames: rx, demand }
    }

    /// Every peer gets a keyframe next (the source changed).
    pub fn request_keyframes(&self) {
        if let Ok(subs) = self.0.lock() {
            for s in subs.iter() {
                s.demand.request_keyframe();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One encoding: one rung's resolution and frame rate.
struct Encoding {
    encoder: H264Encoder,
    fps: u32,
    next_due_us: u64,
    /// When the last forced keyframe was sent, and how long until the next may be forced.
    last_keyframe: Option<(Instant, Duration)>,
    last_used: Instant,
    /// A screen's encoding takes the picture in band by band, as its budget allows.
    reveal: Option<Reveal>,
}

/// Whether to force a keyframe now: one is wanted, and either the last forced one's hold has
/// passed or a peer whose connection just came up is waiting for its first.
fn may_force_keyframe(
    wanted: bool,
    first: bool,
    last_forced: Option<(Instant, Duration)>,
    now: Instant,
) -> bool {
    let held = last_forced.is_some_and(|(at, hold)| now.duration_since(at) < hold);
    wanted && (first || !held)
}

/// How long after a forced keyframe of `bytes` at `bitrate_bps` another may be forced: the
/// far end asks again (its PLI repeats) while the first is still on its way, and on a slow link
/// a keyframe takes most of a second to get through: forcing one per request there kept the
/// bottleneck full of keyframes (eight in 2.5 s after a drop to 300 kbit/s, no picture shown).
/// `first`: it was a connection's first keyframe (see `FIRST_KEYFRAME_MIN_INTERVAL`).
fn keyframe_hold(bytes: usize, bitrate_bps: u32, first: bool) -> Duration {
    let sending = Duration::from_secs_f64(bytes as f64 * 8.0 / bitrate_bps.max(10_000) as f64);
    let interval = if first {
        FIRST_KEYFRAME_MIN_INTERVAL
    } else {
        KEYFRAME_MIN_INTERVAL
    };
    interval + sending.min(Duration::from_secs(2))
}

/// The self-view is drawn at most 260 points wide (`ui::call`); converting and uploading the
/// camera's full picture for it cost the app as much as a remote picture.
const SELF_VIEW_MAX_WIDTH: usize = 320;

/// The self-view's size for a camera picture: the same aspect, at most
/// [`SELF_VIEW_MAX_WIDTH`] wide, even sides (I420).
fn self_view_size(width: usize, height: usize) -> (usize, usize) {
    if width <= SELF_VIEW_MAX_WIDTH || width == 0 {
        return (width, height);
    }
    let scaled_height = (height * SELF_VIEW_MAX_WIDTH / width) & !1;
    (SELF_VIEW_MAX_WIDTH, scaled_height.max(2))
}

/// `frame` at `size`: the frame itself, or a copy scaled once per captured frame and kept in
/// `scaled` for whoever needs that size next (the self-view, the encodings).
fn at_size<'a>(
    frame: &'a I420Frame,
    size: (usize, usize),
    scaler: &mut I420Scaler,
    scaled: &'a mut HashMap<(usize, usize), I420Frame>,
) -> Result<&'a I420Frame, super::MediaError> {
    if size == (frame.width, frame.height) {
        return Ok(frame);
    }
    Ok(match scaled.entry(size) {
        Entry::Occupied(copy) => copy.into_mut(),
        Entry::Vacant(slot) => slot.insert(scaler.scale(frame, size.0, size.1)?),
    })
}

pub(crate) struct EncoderThread {
    pub frames: Arc<LatestSlot<I420Frame>>,
    pub subscribers: Subscribers,
    pub stats: Arc<Mutex<EncoderStats>>,
    pub stop: Stopper,
    /// A fixed bitrate (tests, benchmarks): no ladder, one encoding at the source size.
    pub fixed_bitrate: Option<u32>,
    pub self_view: Option<Arc<LatestSlot<Arc<RgbaFrame>>>>,
    /// A screen share at most this many frames a second (screen-content encoding, a ladder that
    /// drops frames before pixels); `None` for a camera.
    pub screen_fps: Option<u32>,
}

impl EncoderThread {
    pub fn run(self) {
        let mut encodings: BTreeMap<u8, Encoding> = BTreeMap::new();
        let mut scaler = I420Scaler::default();
        let mut view_pool = FramePool::default();
        while !self.stop.is_stopped() {
            let Some(frame) = self.frames.take_timeout(Duration::from_millis(50)) else {
                continue;
            };
            // Scaled copies of this frame, shared by the self-view and the encodings.
            let mut scaled: HashMap<(usize, usize), I420Frame> = HashMap::new();
            if let Some(view) = &self.self_view {
                let size = self_view_size(frame.width, frame.height);
                match at_size(&frame, size, &mut scaler, &mut scaled) {
                    Err(e) => tracing::debug!(error = %e, "cannot scale the self-view"),
                    Ok(source) => {
                        let mut rgba = view_pool.get();
                        if let Some(buf) = Arc::get_mut(&mut rgba) {
                            source.to_rgba(buf);
                        }
                        view_pool.publish(rgba.clone());
                        view.put(rgba);
                    }
                }
            }
            let now = Instant::now();
            let groups = self.plan(&frame, now);
            for (rung, group) in groups {
                self.encode_group(
                    &mut encodings,
                    &mut scaler,
                    &mut scaled,
                    &frame,
                    rung,
                    group,
                    now,
                );
            }
            encodings.retain(|_, e| now.duration_since(e.last_used) < IDLE_ENCODER);
            if let Ok(mut s) = self.stats.lock() {
                s.encodings = encodings.len();
            }
        }
    }

    /// Who gets which rung for this frame: rung → (target, members).
    fn plan(&self, frame: &I420Frame, now: Instant) -> BTreeMap<u8, Group> {
        let mut groups: BTreeMap<u8, Group> = BTreeMap::new();
        let Ok(mut subs) = self.subscribers.0.lock() else {
            return groups;
        };
        subs.retain(|s| !s.frames.is_closed());
        let source = (frame.width, frame.height);
        for s in subs
            .iter_mut()
            .filter(|s| s.demand.ready.load(Ordering::Relaxed))
        {
            let budget = s.demand.budget();
            if let Ok(mut seen) = s.demand.source.lock() {
                *seen = Some(source);
            }
            if let Some(layer) = s.layer {
                if budget == 0 {
                    // Paused: it starts again from a keyframe.
                    s.encoding = None;
                    if let Ok(mut sending) = s.demand.sending.lock() {
                        *sending = None;
                    }
                    continue;
                }
                let spec = super::simulcast::LAYERS[layer];
                let (width, height) = super::simulcast::layer_size(source, layer);
                let target = VideoTarget {
                    rung: layer as u8,
                    encoding: LAYER_ENCODING_BASE + layer as u8,
                    width,
                    height,
                    fps: spec.fps,
                    bitrate_bps: budget,
                };
                if s.encoding.replace(target.encoding).is_none() {
                    s.demand.request_keyframe();
                }
                if let Ok(mut sending) = s.demand.sending.lock() {
                    *sending = Some(target);
                }
                groups
                    .entry(target.encoding)
                    .or_insert_with(|| Group {
                        target,
                        members: Vec::new(),
                    })
                    .members
                    .push((s.demand.clone(), s.frames.clone()));
                continue;
            }
            let target = match self.fixed_bitrate {
                Some(bps) => VideoTarget {
                    rung: 0,
                    encoding: 0,
                    width: source.0,
                    height: source.1,
                    fps: self.screen_fps.unwrap_or(30),
                    bitrate_bps: bps,
                },
                None => {
                    let ladder = match &mut s.ladder {
                        Some(l) if l.source() == source => l,
                        slot => slot.insert(match self.screen_fps {
                            Some(fps) => Ladder::for_screen(source, budget, fps),
                            None => Ladder::new(source, budget),
                        }),
                    };
                    ladder.update(now, budget)
                }
            };
            if s.encoding != Some(target.encoding) {
                // Moving to another encoding: its stream starts with a keyframe. (Not on the
                // first one: the connection asks for its keyframe once it is up, and one forced
                // now would be thrown away and hold that one back by the keyframe limit.)
                if s.encoding.replace(target.encoding).is_some() {
                    s.demand.request_keyframe();
                }
            }
            if let Ok(mut sending) = s.demand.sending.lock() {
                *sending = Some(target);
            }
            let group = groups.entry(target.encoding).or_insert_with(|| Group {
                target,
                members: Vec::new(),
            });
            group.target.bitrate_bps = group.target.bitrate_bps.min(target.bitrate_bps);
            group.target.fps = group.target.fps.min(target.fps);
            group.members.push((s.demand.clone(), s.frames.clone()));
        }
        groups
    }

    #[allow(clippy::too_many_arguments)]
    fn encode_group(
        &self,
        encodings: &mut BTreeMap<u8, Encoding>,
        scaler: &mut I420Scaler,
        scaled: &mut HashMap<(usize, usize), I420Frame>,
        frame: &I420Frame,
        rung: u8,
        group: Group,
        now: Instant,
    ) {
        let t = group.target;
        let size = (t.width, t.height);
        // A new frame rate alone needs no new encoder (and no keyframe): frames are dropped by
        // capture time below.
        let fresh = encodings
            .get(&rung)
            .is_none_or(|e| e.encoder.size() != size);
        if fresh {
            let encoder = if self.screen_fps.is_some() {
                H264Encoder::for_screen(t.width, t.height, t.bitrate_bps, t.fps as f32)
            } else {
                H264Encoder::new(t.width, t.height, t.bitrate_bps, t.fps as f32)
            };
            match encoder {
                Ok(encoder) => {
                    encodings.insert(
                        rung,
                        Encoding {
                            encoder,
                            fps: t.fps,
                            next_due_us: 0,
                            last_keyframe: None,
                            last_used: now,
                            reveal: self.screen_fps.map(|_| Reveal::new()),
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot create video encoder");
                    return;
                }
            }
        }
        let Some(enc) = encodings.get_mut(&rung) else {
            return;
        };
        enc.last_used = now;
        enc.fps = t.fps;
        // Lower frame rates take every n-th frame, by capture time.
        if frame.capture_us < enc.next_due_us {
            return;
        }
        // A quarter period of slack for capture jitter.
        let period_us = 1_000_000 / t.fps.max(1) as u64;
        enc.next_due_us = frame.capture_us + period_us - period_us / 4;
        let current = enc.encoder.bitrate() as f64;
        if (t.bitrate_bps as f64 - current).abs() > current * BITRATE_STEP
            && let Err(e) = enc.encoder.set_bitrate(t.bitrate_bps)
        {
            tracing::debug!(error = %e, "bitrate change refused");
        }
        let wanted = group
            .members
            .iter()
            .any(|(d, _)| d.keyframe.load(Ordering::Relaxed));
        let first = group
            .members
            .iter()
            .any(|(d, _)| d.first_keyframe.load(Ordering::Relaxed));
        let force = may_force_keyframe(wanted, first, enc.last_keyframe, now);
        let input = match at_size(frame, size, scaler, scaled) {
            Ok(input) => input,
            Err(e) => {
                tracing::warn!(error = %e, "cannot scale video");
                return;
            }
        };
        let input = match enc.reveal.as_mut() {
            Some(reveal) => reveal.next(
                input,
                Reveal::allowance_bytes(enc.encoder.bitrate(), t.fps),
                enc.encoder.next_is_keyframe(force),
            ),
            None => input,
        };
        let started = Instant::now();
        match enc.encoder.encode(input, force) {
            Ok(Some(out)) => {
                if let Some(reveal) = enc.reveal.as_mut() {
                    reveal.encoded(out.data.len(), out.keyframe);
                }
                // Requests are settled by a keyframe that came out, not by asking: rate control
                // may skip the very frame that was to be one.
                if out.keyframe {
                    // Only forced keyframes count against the limit: a new encoder's first
                    // frame must not delay the keyframe a peer that just connected asks for.
                    if force {
                        let hold = keyframe_hold(out.data.len(), enc.encoder.bitrate(), first);
                        enc.last_keyframe = Some((now, hold));
                    }
                    for (d, _) in &group.members {
                        d.keyframe.store(false, Ordering::Relaxed);
                        d.first_keyframe.store(false, Ordering::Relaxed);
                    }
                }
                if let Ok(mut s) = self.stats.lock() {
                    s.frames += 1;
                    s.keyframes += out.keyframe as u64;
                    s.bytes += out.data.len() as u64;
                    s.encode_us.push(started.elapsed().as_micros() as i64);
                    if rung == 0 || s.width * s.height <= size.0 * size.1 {
                        (s.width, s.height) = size;
                        s.reveal_pending_rows = enc
                            .reveal
                            .as_ref()
                            .map_or(0, |r| r.last_step().pending_bands);
                    }
                }
                let out = Arc::new(out);
                for (demand, tx) in &group.members {
                    if tx.try_send(out.clone()).is_err() {
                        // This peer missed a frame its decoder needs.
                        demand.request_keyframe();
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "video encode failed"),
        }
    }
}

struct Group {
    target: VideoTarget,
    members: Vec<(Arc<VideoDemand>, mpsc::Sender<Arc<EncodedVideo>>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_view_is_a_small_copy_with_the_same_aspect() {
        assert_eq!(self_view_size(640, 480), (320, 240));
        assert_eq!(self_view_size(1280, 720), (320, 180));
        assert_eq!(self_view_size(1920, 1080), (320, 180));
        // Small pictures and odd shapes: kept, or even-sided.
        assert_eq!(self_view_size(320, 240), (320, 240));
        assert_eq!(self_view_size(160, 120), (160, 120));
        assert_eq!(self_view_size(642, 482), (320, 240));
        assert_eq!(self_view_size(4000, 2), (320, 2));
    }

    #[test]
    fn a_peer_just_connected_gets_its_keyframe_through_a_hold() {
        let now = Instant::now();
        let held = Some((now, Duration::from_millis(600)));
        let over = Some((now - Duration::from_millis(700), Duration::from_millis(600)));
        assert!(!may_force_keyframe(false, false, None, now));
        assert!(may_force_keyframe(true, false, None, now));
        // A repeated PLI waits out the hold...
        assert!(!may_force_keyframe(true, false, held, now));
        assert!(may_force_keyframe(true, false, over, now));
        // ...a connection's first keyframe does not.
        assert!(may_force_keyframe(true, true, held, now));
    }

    #[test]
    fn a_keyframe_holds_the_next_for_as_long_as_it_takes_to_send() {
        // 60 kB at 1.5 Mbit/s leaves in 320 ms; 10 kB at 120 kbit/s needs 667 ms.
        let fast = keyframe_hold(60_000, 1_500_000, false);
        assert!(fast >= Duration::from_millis(619) && fast <= Duration::from_millis(621));
        let slow = keyframe_hold(10_000, 120_000, false);
        assert!(slow >= Duration::from_millis(966) && slow <= Duration::from_millis(968));
        // Bounded whatever the figures say.
        assert_eq!(
            keyframe_hold(10_000_000, 0, false),
            KEYFRAME_MIN_INTERVAL + Duration::from_secs(2)
        );
        // A connection's first keyframe is asked for again sooner: only a loss asks.
        let first = keyframe_hold(6_000, 300_000, true);
        assert!(first >= Duration::from_millis(259) && first <= Duration::from_millis(261));
    }
}

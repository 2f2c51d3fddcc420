//! The video playout clock, as a state machine without I/O: when to show each decoded picture.
//! Frames leave the network unevenly (jitter, and a frame waiting for a retransmitted packet
//! arrives late with the ones queued behind it). Shown the moment they are decoded, that is a
//! stall followed by a burst, which people see as a freeze. So each picture is shown at its
//! capture rhythm (RTP timestamp) plus a delay that covers how late frames have arrived in the
//! last two seconds (the latest of them, at most `MAX_DELAY`), growing at once when frames come
//! later, shrinking within a second or two when the path calms down. A frame later than its
//! slot is shown at once.
//!
//! "Late" is against the earliest frame of the quarter second before it, not of the whole
//! window: a bottleneck queue draining after a capacity drop delivers frames ever less late, and
//! measured against the drained path those frames read as seconds of jitter, which held the
//! delay at its maximum for two seconds after the queue had gone (capture-to-display latency
//! over 300 ms with an empty network queue). A queue building up (a sender probing past the
//! capacity) delivers frames ever later, a few ms each: against the last quarter second that
//! is a few tens of ms, not the whole queue, which the delay would otherwise add a second time
//! on top of it. A frame held up by a retransmission is late against the frames just before
//! it, so it still counts in full.
//!
//! The first late frame would still freeze the picture: until one has come, the window says
//! nothing is late. So for its first seconds the clock also grows, a little per frame (the
//! pictures slow down slightly instead of stopping), towards a prior: how late a frame that
//! needs one retransmission would be on this path (a round trip and the NACK tick). On a path
//! that repairs nothing in its first seconds (`QUIET_START`), that delay then drains away; on
//! one that does, it holds for `START_PHASE`.
//!
//! Losses on a lossy path come every second or few, not every two seconds like clockwork: with
//! only the two-second window, the delay drained between them and the next retransmitted frame
//! froze the picture (the `4g` benchmark, 1 % loss, 150 ms round trip). So frames the network
//! delivered only after a hole was repaired (`schedule`'s `repaired`) are remembered for
//! `REPAIR_MEMORY`, like libwebrtc's jitter delay that adds a round trip once NACKs have been
//! seen. What they add is capped at a little over one retransmission on the path at its
//! quietest (`note_retransmission_lateness`): retransmissions stuck behind a congested queue
//! are that queue's doing, and holding their lateness for long would keep latency high after
//! the queue has gone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Lateness samples are kept this long: long enough to span the gap between two retransmission
/// events on a lossy path, short enough that a queue that built up and drained (a capacity
/// drop) stops adding to the latency soon after.
const WINDOW: Duration = Duration::from_secs(2);
/// A frame's lateness is measured against the earliest of the frames captured up to this long
/// before it (by RTP time, so frames stuck behind a retransmission still have on-time frames
/// to be measured against): short against a queue's growth.
const LOCAL_BASE_MS: f64 = 250.0;
/// The delay never exceeds this (a path this bad freezes anyway; latency must stay bounded).
pub const MAX_DELAY: Duration = Duration::from_millis(300);
/// How fast the delay comes down once less is needed (fraction of the excess per second).
const SHRINK_PER_SECOND: f64 = 1.0;
/// How long the lateness of a repaired frame (one retransmission) is covered.
const REPAIR_MEMORY: Duration = Duration::from_secs(15);
/// What repaired frames keep in the delay is at most this many times the path's quietest
/// retransmission lateness (jitter comes on top of the round trip).
const REPAIR_CAP_FACTOR: f64 = 1.3;
/// How long after the first picture the start prior holds on a path that has repaired a frame
/// in its first `QUIET_START`: as long as a repaired frame is remembered, since losses so far
/// say more will come. (Two seconds froze the picture at the first losses 3–5 s into calls on
/// the `4g` link.)
const START_PHASE: Duration = REPAIR_MEMORY;
/// A path that repaired nothing in this long after the first picture has shown it loses
/// little: the start prior drains away then instead of adding a round trip to the latency
/// for `START_PHASE` (which kept latency over 300 ms for 4.4 s after a capacity drop 10 s
/// into a call on a path that had lost nothing before it).
const QUIET_START: Duration = Duration::from_secs(3);
/// A retransmission this little late is a hitch of about two frame intervals, not a freeze:
/// no start prior for it (on loopback it held 31 ms on every call's first seconds, the clean
/// latency figure's p95 going from 12 to 25 ms).
const START_PRIOR_MIN_MS: f64 = 60.0;
/// How much the delay grows per picture towards the start prior: each picture comes at most
/// this much after its slot's interval, far below what reads as a freeze.
const PRIOR_STEP_MS: f64 = 40.0;
const RTP_CLOCK: f64 = 90_000.0;

struct Lateness {
    arrived: Instant,
    /// Capture time against the reference frame's (ms, from RTP timestamps).
    offset_ms: f64,
    /// Arrival against the reference, less the capture offset (ms).
    late_ms: f64,
    /// How much later than the earliest frame captured in the `LOCAL_BASE_MS` before it (ms).
    jitter_ms: f64,
}

pub struct VideoPlayout {
    /// A frame's RTP timestamp and its arrival, as the reference for every other frame.
    reference: Option<(u32, Instant)>,
    /// Per frame, newest last.
    lateness: VecDeque<Lateness>,
    delay_ms: f64,
    last_update: Option<Instant>,
    /// See `note_retransmission_lateness` (ms).
    start_prior_ms: f64,
    /// The smallest retransmission lateness noted (ms): the path at its quietest.
    quietest_repair_ms: Option<f64>,
    /// Repaired frames of the last `REPAIR_MEMORY`: arrival and lateness against the local
    /// base (ms), newest last.
    repairs: VecDeque<(Instant, f64)>,
    /// A frame was repaired within `QUIET_START` of the first picture.
    repaired_early: bool,
}

impl Default for VideoPlayout {
    fn default() -> Self {
        Self::new()
    }
}

impl VideoPlayout {
    pub fn new() -> Self {
        VideoPlayout {
            reference: None,
            lateness: VecDeque::new(),
            delay_ms: 0.0,
            last_update: None,
            start_prior_ms: 0.0,
            quietest_repair_ms: None,
            repairs: VecDeque::new(),
            repaired_early: false,
        }
    }

    /// How late a frame held up by one retransmission arrives on this path now (a round trip
    /// and the NACK tick). For the first seconds of the stream the delay works up to it (capped
    /// at `MAX_DELAY`; none under `START_PRIOR_MIN_MS`); the smallest value seen caps what
    /// repaired frames keep in the delay.
    pub fn note_retransmission_lateness(&mut self, lateness: Duration) {
        let lateness_ms = (lateness.as_secs_f64() * 1000.0).min(MAX_DELAY.as_secs_f64() * 1000.0);
        self.start_prior_ms = if lateness_ms >= START_PRIOR_MIN_MS {
            lateness_ms
        } else {
            0.0
        };
        self.quietest_repair_ms = Some(
            self.quietest_repair_ms
                .map_or(lateness_ms, |q| q.min(lateness_ms)),
        );
    }

    /// The delay added now on top of the earliest possible time.
    pub fn delay(&self) -> Duration {
        Duration::from_secs_f64(self.delay_ms / 1000.0)
    }

    /// When to show a frame with RTP timestamp `ts` whose last packet arrived at `arrived`;
    /// `repaired` when the frame waited for a hole in its packets to be filled.
    pub fn schedule(&mut self, ts: u32, arrived: Instant, repaired: bool) -> Instant {
        let (ref_ts, ref_at) = *self.reference.get_or_insert((ts, arrived));
        let offset_ms = ts.wrapping_sub(ref_ts) as i32 as f64 * 1000.0 / RTP_CLOCK;
        // Where this frame would be on the reference's clock; a jump of minutes means the
        // sender restarted its timestamps: start over.
        if offset_ms.abs() > 60_000.0 {
            self.reference = Some((ts, arrived));
            self.lateness.clear();
            self.repairs.clear();
            self.repaired_early = false;
            return arrived;
        }
        let arrived_ms = arrived.saturating_duration_since(ref_at).as_secs_f64() * 1000.0
            - ref_at.saturating_duration_since(arrived).as_secs_f64() * 1000.0;
        let late_ms = arrived_ms - offset_ms;
        let local_earliest = self
            .lateness
            .iter()
            .filter(|l| l.offset_ms <= offset_ms && l.offset_ms >= offset_ms - LOCAL_BASE_MS)
            .map(|l| l.late_ms)
            .fold(late_ms, f64::min);
        let jitter_ms = late_ms - local_earliest;
        self.lateness.push_back(Lateness {
            arrived,
            offset_ms,
            late_ms,
            jitter_ms,
        });
        if repaired {
            self.repairs.push_back((arrived, jitter_ms));
        }
        while self
            .repairs
            .front()
            .is_some_and(|(at, _)| arrived.saturating_duration_since(*at) > REPAIR_MEMORY)
        {
            self.repairs.pop_front();
        }
        while self
            .lateness
            .front()
            .is_some_and(|l| arrived.saturating_duration_since(l.arrived) > WINDOW)
        {
            self.lateness.pop_front();
        }
        // The earliest frame in the window defines "on time"; the others are late against it.
        let earliest = self
            .lateness
            .iter()
            .map(|l| l.late_ms)
            .fold(f64::MAX, f64::min);
        let jitter = self
            .lateness
            .iter()
            .map(|l| l.jitter_ms)
            .fold(0.0, f64::max);
        let repair = match self.quietest_repair_ms {
            Some(quietest) => self
                .repairs
                .iter()
                .map(|(_, j)| *j)
                .fold(0.0, f64::max)
                .min(quietest * REPAIR_CAP_FACTOR),
            None => 0.0,
        };
        let needed = jitter.max(repair).min(MAX_DELAY.as_secs_f64() * 1000.0);
        let first_picture = self.last_update.is_none();
        let elapsed = self
            .last_update
            .map_or(0.0, |t| arrived.saturating_duration_since(t).as_secs_f64());
        self.last_update = Some(arrived);
        let since_start = arrived.saturating_duration_since(ref_at);
        self.repaired_early |= repaired && since_start < QUIET_START;
        let starting =
            since_start < QUIET_START || (self.repaired_early && since_start < START_PHASE);
        let floor = if starting { self.start_prior_ms } else { 0.0 };
        if needed >= self.delay_ms && needed >= floor {
            self.delay_ms = needed;
        } else if self.delay_ms < floor && !first_picture {
            // Late frames ask for less than the prior: work up to it a step at a time, or at
            // once to what they ask, whichever is more.
            self.delay_ms = (self.delay_ms + PRIOR_STEP_MS).min(floor).max(needed);
        } else {
            let shrink = (SHRINK_PER_SECOND * elapsed).min(1.0);
            self.delay_ms -= (self.delay_ms - needed.max(floor)) * shrink;
        }
        let show_ms = offset_ms + earliest + self.delay_ms;
        let show = if show_ms >= 0.0 {
            ref_at + Duration::from_secs_f64(show_ms / 1000.0)
        } else {
            ref_at
                .checked_sub(Duration::from_secs_f64(-show_ms / 1000.0))
                .unwrap_or(ref_at)
        };
        // Whatever the timestamps say, no picture waits longer than the largest delay.
        show.clamp(arrived, arrived + MAX_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_TS: u32 = 3000; // 33.3 ms at 90 kHz

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    #[test]
    fn an_even_stream_is_shown_as_it_arrives() {
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        for i in 0..100u32 {
            let arrived = t0 + ms(i as f64 * 1000.0 / 30.0);
            let show = p.schedule(i * FRAME_TS, arrived, false);
            assert!(show.duration_since(arrived) < ms(1.0), "frame {i}");
        }
    }

    #[test]
    fn a_frame_held_up_by_a_retransmission_does_not_stall_the_pictures_after_it() {
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        let mut shown = Vec::new();
        for i in 0..300u32 {
            let on_time = i as f64 * 1000.0 / 30.0;
            // Every 30th frame waits 100 ms for a retransmission; the next two queue behind it.
            let late = match i % 30 {
                10 => 100.0,
                11 => 67.0,
                12 => 34.0,
                _ => 0.0,
            };
            shown.push(p.schedule(i * FRAME_TS, t0 + ms(on_time + late), i % 30 == 10));
        }
        // Once the delay has adapted (after the first late frame), pictures are shown evenly.
        let gaps: Vec<f64> = shown[60..]
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
            .collect();
        let worst = gaps.iter().cloned().fold(0.0, f64::max);
        assert!(worst < 40.0, "largest gap between pictures {worst:.1} ms");
        assert!(
            p.delay() >= ms(95.0) && p.delay() <= ms(101.0),
            "{:?}",
            p.delay()
        );
    }

    /// On a 4G-like path (150 ms round trip) the first retransmission of the call: frame 20
    /// arrives 180 ms late and the two behind it queue up. Returns the display times.
    fn first_retransmission(prior: Option<Duration>) -> (Vec<f64>, VideoPlayout) {
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        let mut shown = Vec::new();
        for i in 0..180u32 {
            if let Some(prior) = prior {
                p.note_retransmission_lateness(prior);
            }
            let on_time = i as f64 * 1000.0 / 30.0;
            let late = match i {
                20 => 180.0,
                21 => 147.0,
                22 => 114.0,
                _ => 0.0,
            };
            let show = p.schedule(i * FRAME_TS, t0 + ms(on_time + late), i == 20);
            shown.push(show.duration_since(t0).as_secs_f64() * 1000.0);
        }
        (shown, p)
    }

    fn largest_gap(shown: &[f64]) -> f64 {
        shown.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
    }

    #[test]
    fn a_start_prior_keeps_the_first_retransmission_from_freezing_the_picture() {
        // Without a prior, the first late frame is a freeze (> 150 ms without a picture).
        let (without, _) = first_retransmission(None);
        assert!(largest_gap(&without) > 150.0, "{}", largest_gap(&without));
        // With the path's retransmission lateness as the prior: the first picture is not held
        // back, the pictures slow down by at most a step each while the delay builds, and the
        // late frame lands inside the delay.
        let (with, p) = first_retransmission(Some(ms(170.0)));
        assert!(with[0] < 1.0, "first picture held {} ms", with[0]);
        for (i, w) in with.windows(2).enumerate().take(20) {
            assert!(
                w[1] - w[0] <= 33.4 + PRIOR_STEP_MS,
                "frame {i}: {}",
                w[1] - w[0]
            );
        }
        assert!(largest_gap(&with) < 100.0, "{}", largest_gap(&with));
        // The repaired frame is remembered: 5 s later the delay still covers it.
        assert!(p.delay() >= ms(175.0), "{:?}", p.delay());
    }

    /// Frames on a 150 ms path (retransmission lateness 170 ms at its quietest): frame 20
    /// waits for a retransmission `late` ms; returns the delay after 10 s and after 20 s.
    fn delay_after_one_repair(late: f64) -> (Duration, Duration) {
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        let mut at_10s = Duration::ZERO;
        for i in 0..600u32 {
            p.note_retransmission_lateness(ms(170.0));
            let on_time = i as f64 * 1000.0 / 30.0;
            let late = if i == 20 { late } else { 0.0 };
            p.schedule(i * FRAME_TS, t0 + ms(on_time + late), i == 20);
            if i == 300 {
                at_10s = p.delay();
            }
        }
        (at_10s, p.delay())
    }

    #[test]
    fn a_repaired_frame_is_covered_until_the_repair_memory_ends() {
        // Losses on a 1 % path come seconds apart: the delay keeps covering a retransmission
        // well past the two-second window, then drains on a path that stopped losing.
        let (at_10s, at_20s) = delay_after_one_repair(180.0);
        assert!(at_10s >= ms(179.0), "{at_10s:?}");
        assert!(at_20s < ms(20.0), "{at_20s:?}");
    }

    #[test]
    fn a_fast_path_gets_no_start_prior() {
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        for i in 0..30u32 {
            p.note_retransmission_lateness(ms(31.0));
            p.schedule(i * FRAME_TS, t0 + ms(i as f64 * 1000.0 / 30.0), false);
        }
        assert!(p.delay() < ms(1.0), "{:?}", p.delay());
    }

    #[test]
    fn a_path_that_repairs_nothing_at_first_drops_the_prior_soon_after() {
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        let mut at_2s = Duration::ZERO;
        for i in 0..210u32 {
            p.note_retransmission_lateness(ms(170.0));
            p.schedule(i * FRAME_TS, t0 + ms(i as f64 * 1000.0 / 30.0), false);
            if i == 60 {
                at_2s = p.delay();
            }
        }
        // The prior held while the path had not shown itself yet, then drained.
        assert!(at_2s >= ms(169.0), "{at_2s:?}");
        assert!(p.delay() < ms(20.0), "{:?}", p.delay());
    }

    #[test]
    fn a_retransmission_stuck_behind_a_queue_is_not_held_for_long() {
        // 290 ms late (a congested queue on the way): after the window only what one
        // retransmission takes on the quiet path stays, 1.3 x 170 ms.
        let (at_10s, _) = delay_after_one_repair(290.0);
        assert!(at_10s <= ms(222.0) && at_10s >= ms(215.0), "{at_10s:?}");
    }

    #[test]
    fn the_delay_shrinks_when_the_path_calms_down_and_stays_bounded() {
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        p.schedule(0, t0, false);
        p.schedule(FRAME_TS, t0 + ms(33.3 + 900.0), false);
        assert_eq!(p.delay(), MAX_DELAY);
        for i in 2..500u32 {
            p.schedule(
                i * FRAME_TS,
                t0 + ms(i as f64 * 1000.0 / 30.0 + 900.0),
                false,
            );
        }
        // Everything is equally late now: nothing to cover, and the old spike has aged out.
        assert!(p.delay() < ms(20.0), "{:?}", p.delay());
    }

    #[test]
    fn a_queue_building_up_is_not_taken_for_jitter() {
        // A sender 10 % over the bottleneck's capacity for 3 s: each frame 3.3 ms later than
        // the one before, 300 ms late in the end. The queue is the network's latency already;
        // the playout delay must not add it again.
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        for i in 0..300u32 {
            let late = if i < 120 { 0.0 } else { (i - 120) as f64 * 3.3 };
            p.schedule(
                i * FRAME_TS,
                t0 + ms(i as f64 * 1000.0 / 30.0 + late.min(300.0)),
                false,
            );
        }
        assert!(p.delay() < ms(30.0), "{:?}", p.delay());
    }

    #[test]
    fn a_bottleneck_queue_draining_after_a_capacity_drop_adds_no_delay() {
        // As seen at a capacity drop: 10 s on time, 2.3 s with no picture while the queue
        // filled, then the queued frames in a burst, each 25 ms less late than the one before
        // (1600 ms down to 50 ms), then a steady path 50 ms later than before the drop.
        let t0 = Instant::now();
        let mut p = VideoPlayout::new();
        let mut held = Vec::new();
        for i in (0..300u32).chain(370..600) {
            let late = match i {
                0..300 => 0.0,
                370..432 => 1600.0 - 25.0 * (i - 370) as f64,
                _ => 50.0,
            };
            let arrived = t0 + ms(i as f64 * 1000.0 / 30.0 + late);
            let show = p.schedule(i * FRAME_TS, arrived, false);
            if i >= 432 {
                held.push(show.duration_since(arrived).as_secs_f64() * 1000.0);
            }
        }
        // From the first frame after the drain on, nothing is held back for jitter that was
        // only the queue emptying.
        let worst = held.iter().cloned().fold(0.0, f64::max);
        assert!(worst < 5.0, "a picture held {worst:.1} ms after the drain");
        assert!(p.delay() < ms(5.0), "{:?}", p.delay());
    }
}

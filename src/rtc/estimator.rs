//! Huddle's send-side bandwidth estimate for one peer connection, fed by transport-wide
//! congestion-control feedback. Arrival grouping, the Kalman group-delay estimate, the
//! adaptive overuse threshold and the received-rate window are the `rtc` crate's GCC parts;
//! the trendline used near a known ceiling, the rate control and the loss half are ours,
//! because GCC's fit video calls badly here:
//! - its loss half holds the rate anywhere between 2 % and 10 % loss, so at a steady 5 % random
//!   loss (Wi-Fi) the estimate never climbs past its start. Random loss that NACK repairs is not
//!   congestion; a drop-tail queue overflowing shows first as a standing queue, which the delay
//!   half catches. So loss only caps the rate above 15 % and cuts it above 30 % (as measured
//!   from feedback, which over-counts: see `LOSS_HOLD`).
//! - its increase is 8 %/s, or +60 kbit/s per second after any backoff, so after a capacity drop
//!   it takes 15 s or more to come back. Ours climbs faster the longer the path stays quiet and
//!   forgets an old ceiling once the path delivers clearly more than it (twice: see
//!   `ceiling_passed_once`).
//! - it climbs without bound while the encoder sends less than the estimate; ours stays within
//!   1.5x of what the far end is actually receiving (plus a margin), as libwebrtc does.
//! - the crate's Kalman estimate misses a queue growing slowly (a probe a few percent past the
//!   capacity); near a known ceiling libwebrtc's trendline judges instead (`DelayTrendline`).
//! - while feedback is not arriving at all, `PublishedEstimate::target_bps_at` pushes the rate
//!   back (see `feedback_silence_factor`), and the first feedback after it keeps that cut.
//!
//! The estimate is published through an atomic the session reads; the struct is a plain state
//! machine over reports and `now`, tested without a network.

use super::feedback::LinkFeedback;
pub use super::published_estimate::MIN_BPS;
use super::published_estimate::feedback_silence_factor;
pub use super::published_estimate::{EstimatorCounters, PublishedEstimate};
use rtc::interceptor::{
    BandwidthEstimator, EstimatorStats, OveruseDetector, PacketReport, RateCalculator,
    RateControlState, SlopeEstimator, Usage,
};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Where the estimate starts: 320x240 video and audio; its first keyframe (about 6 kB) still
/// fits a 200 kbit/s uplink's 300 ms queue. Until the first backoff the estimate grows fast
/// (`GROWTH_START`), so a good link reaches 640x480 in about three seconds.
pub const INITIAL_BPS: f64 = 300_000.0;
pub const MAX_BPS: f64 = 3_500_000.0;

const DECREASE_FACTOR: f64 = 0.85;
const CHANGE_INTERVAL: Duration = Duration::from_millis(200);
/// Growth per second while the path has been quiet for a short and for a long while.
const GROWTH_SLOW: f64 = 1.08;
const GROWTH_FAST: f64 = 1.4;
const GROWTH_START: f64 = 2.0;
const QUIET_FOR_FAST_GROWTH: Duration = Duration::from_secs(2);
/// Additive growth (bits per second, per second) between 0.85x and 1.3x of the last ceiling.
const NEAR_CEILING_GROWTH_BPS: f64 = 80_000.0;
/// Near a known ceiling (the estimate above 0.85 of it) the estimate grows by this share of it
/// per second (at most the figure above): probing faster past a drop-tail bottleneck fills its
/// queue again.
const NEAR_CEILING_GROWTH_SHARE: f64 = 0.15;
/// The estimate counts as near a known ceiling above this share of it.
const NEAR_CEILING: f64 = 0.85;
/// What arrives at the far end, as a share of the last ceiling, from which growth slows to
/// `AT_CEILING_GROWTH_SHARE` per second; and above which the ceiling is taken as gone. Judged
/// on what arrives, not on the estimate: the estimate runs about a third above what is sent
/// (audio, the retransmission reserve, an encoder under its target), and forgetting the
/// ceiling once the estimate passed it let the estimate race past a bottleneck still there.
const AT_CEILING: f64 = 0.9;
const AT_CEILING_GROWTH_SHARE: f64 = 0.08;
const CEILING_PASSED_AT: f64 = 1.15;
/// Growth per second, as a share of the ceiling, towards a ceiling passed once (see
/// `ceiling_passed_once`): capacity that came back is found within seconds.
const PASSED_CEILING_GROWTH_SHARE: f64 = 0.3;
/// How recent a reading of the saturated path must be to serve as the ceiling.
const SATURATED_MAX_AGE: Duration = Duration::from_secs(2);
/// How long such a reading still counts as a capacity the ceiling must be passed by.
const SATURATED_MEMORY: Duration = Duration::from_secs(10);
/// Loss over the last second above which the rate stops climbing, and above which it is cut.
/// Higher than the packet loss they mean: rtc 0.21's feedback history counts every packet a
/// lost feedback packet would have acknowledged as lost, so on a path losing 5 % of packets
/// both ways this reads 5-20 %.
const LOSS_HOLD: f64 = 0.15;
const LOSS_CUT: f64 = 0.30;
const LOSS_WINDOW: Duration = Duration::from_secs(1);
/// Fewer packets than this in the window say too little about loss to act on.
const LOSS_MIN_PACKETS: usize = 20;
/// The far end's reception reports (RFC 3550 fraction lost) confirm a loss cut: at least this
/// share in a report younger than `LOSS_REPORT_MAX_AGE`. Otherwise the heavy loss our feedback
/// shows may be lost feedback, not lost media, and at most holds the rate (if a report confirms
/// `LOSS_REPORT_CONFIRMS_HOLD`).
const LOSS_REPORT_CONFIRMS: f64 = 0.10;
/// The same for a hold: on a 5 % path our figure read 13-28 % through the first seconds of a
/// call (lost feedback again) while the reports said 0-1.5 %, and the hold kept the picture at
/// 480x360 for 5 s.
const LOSS_REPORT_CONFIRMS_HOLD: f64 = 0.05;
const LOSS_REPORT_MAX_AGE: Duration = Duration::from_secs(3);

/// Queuing delay from one-way delays: each packet's (arrival − departure) against the smallest
/// seen in the last half minute, which is the path without a queue (the two clocks' offset
/// cancels). The Kalman slope of GCC reacts to a queue *growing*; a drop-tail queue that has
/// filled shows no growth, only a standing delay and losses, which this sees.
#[derive(Default)]
struct QueueDelay {
    first_departure: Option<Instant>,
    /// Minimum one-way delay (ms, relative) per second, newest last.
    minima: std::collections::VecDeque<(u64, f64)>,
    smoothed_ms: f64,
}

/// Seconds of one-way delay minima the base delay is taken over.
const BASE_WINDOW_SECS: u64 = 30;
/// Smoothed queuing delay above which the path counts as overused, and below which as idle.
/// (On a 200 kbit/s link one 1200-byte packet alone takes 48 ms to serialise.)
const QUEUE_OVERUSE_MS: f64 = 100.0;
const QUEUE_NORMAL_MS: f64 = 60.0;
/// After a backoff for a standing queue, the queue takes time to drain (at 15 % under capacity,
/// a 300 ms queue needs 2 s). Backing off again on every feedback meanwhile would take 0.85 of
/// a received rate that is itself falling with our own cuts, spiralling down to the minimum.
/// So for this long only a queue that grows again counts; after it, a queue still standing
/// (the first cut was not enough) brings the next backoff.
const QUEUE_DRAIN_GRACE: Duration = Duration::from_secs(1);
/// How much the queue may grow over its level at the backoff and still count as draining.
const QUEUE_REGROWTH_MS: f64 = 30.0;

/// The delay trend as libwebrtc's trendline reads it: the accumulated inter-group delay,
/// smoothed, and the slope of a line fitted through its last `TRENDLINE_WINDOW` points, scaled
/// by the number of readings behind it (up to `TRENDLINE_MAX_DELTAS`) and a gain. A queue
/// growing 15 % faster than it drains (a sender probing 15 % past the capacity) adds 5 ms per
/// 33 ms frame: the `rtc` crate's Kalman estimate of the per-group delta reads about that, below
/// the 12.5 ms threshold, so it never called overuse and the queue only stopped at the standing
/// queue detector's 100 ms. The fitted slope, scaled, reads 0.15 x 60 x 4 = 36 against a
/// threshold that starts at 12.5 (it adapts upwards after large swings, so in practice the
/// queue is caught at a few tens of ms rather than at once).
#[derive(Default)]
struct DelayTrendline {
    first_at: Option<Instant>,
    accumulated_ms: f64,
    smoothed_ms: f64,
    /// (send time since the first reading, smoothed accumulated delay), both ms; newest last.
    points: std::collections::VecDeque<(f64, f64)>,
    readings: u32,
    trend: f64,
}

const TRENDLINE_WINDOW: usize = 20;
const TRENDLINE_SMOOTHING: f64 = 0.9;
const TRENDLINE_GAIN: f64 = 4.0;
const TRENDLINE_MAX_DELTAS: u32 = 60;

impl DelayTrendline {
    /// Folds in one inter-group delay (`delta_ms`, the group sent at `at`); returns the scaled
    /// trend to compare against the overuse threshold (0 until the window has filled).
    fn update(&mut self, at: Instant, delta_ms: f64) -> f64 {
        let first = *self.first_at.get_or_insert(at);
        self.readings = (self.readings + 1).min(TRENDLINE_MAX_DELTAS);
        self.accumulated_ms += delta_ms;
        self.smoothed_ms = TRENDLINE_SMOOTHING * self.smoothed_ms
            + (1.0 - TRENDLINE_SMOOTHING) * self.accumulated_ms;
        let x = at.saturating_duration_since(first).as_secs_f64() * 1000.0;
        self.points.push_back((x, self.smoothed_ms));
        if self.points.len() > TRENDLINE_WINDOW {
            self.points.pop_front();
        }
        if self.points.len() == TRENDLINE_WINDOW
            && let Some(slope) = fitted_slope(&self.points)
        {
            self.trend = slope * f64::from(self.readings) * TRENDLINE_GAIN;
        }
        self.trend
    }
}

/// Least-squares slope of y over x; `None` when all x are equal.
fn fitted_slope(points: &std::collections::VecDeque<(f64, f64)>) -> Option<f64> {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    (den > 0.0).then(|| num / den)
}

/// The path's capacity read from how a burst of packets (a keyframe, written all at once)
/// spreads out on its way: a bottleneck serves them back to back, so they arrive spaced by its
/// serialisation time (packet-train dispersion). libwebrtc sends probe clusters at a call's
/// start for this; our keyframes serve as the clusters. Read only before the first backoff:
/// at our 300 kbit/s start into a 200 kbit/s uplink the delay signals called overuse after
/// about a second, when the 300 ms queue had overflowed and audio behind it had been concealed.
#[derive(Default)]
struct BurstDispersion {
    /// Departure of the burst's latest packet.
    last_departure: Option<Instant>,
    /// (arrival on the far end's clock, size) of each packet of the burst.
    arrivals: Vec<(Duration, usize)>,
    /// A packet of the burst was lost: its slot would read as a slower path.
    lost: bool,
}

/// Packets that left at most this far apart belong to one burst.
const BURST_GAP: Duration = Duration::from_millis(2);
/// A burst says something about the capacity from this many packets (three gaps) on.
const BURST_MIN_PACKETS: usize = 4;
/// Longer bursts are read from their first packets.
const BURST_MAX_PACKETS: usize = 64;

impl BurstDispersion {
    /// Folds in one report (in send order); returns the capacity a burst it completed shows,
    /// bits per second.
    fn update(&mut self, report: &PacketReport) -> Option<f64> {
        let continues = self
            .last_departure
            .is_some_and(|last| report.departure.saturating_duration_since(last) <= BURST_GAP);
        let finished = if continues { None } else { self.finish() };
        self.last_departure = Some(report.departure);
        match report.arrival.filter(|_| report.arrived) {
            Some(a) if self.arrivals.len() < BURST_MAX_PACKETS => {
                self.arrivals.push((a, report.size))
            }
            Some(_) => {}
            None => self.lost = true,
        }
        finished
    }

    /// The median of the rates each gap between consecutive arrivals shows (a packet's size
    /// over the time since the one before it): at a bottleneck every gap reads its capacity,
    /// while one jitter spike makes only one gap long.
    fn finish(&mut self) -> Option<f64> {
        let mut done = std::mem::take(self);
        if done.lost || done.arrivals.len() < BURST_MIN_PACKETS {
            return None;
        }
        done.arrivals.sort_by_key(|(at, _)| *at);
        let mut rates: Vec<f64> = done
            .arrivals
            .windows(2)
            .map(|w| {
                let gap = w[1].0.saturating_sub(w[0].0).as_secs_f64();
                if gap > 0.0 {
                    w[1].1 as f64 * 8.0 / gap
                } else {
                    f64::INFINITY
                }
            })
            .collect();
        rates.sort_by(|a, b| a.total_cmp(b));
        Some(rates[rates.len() / 2])
    }
}

impl QueueDelay {
    /// Folds in a batch of reports; returns the smoothed queuing delay in ms.
    fn update(&mut self, reports: &[PacketReport]) -> Option<f64> {
        let mut delays = Vec::new();
        for r in reports {
            let Some(arrival) = r.arrival.filter(|_| r.arrived) else {
                continue;
            };
            let first = *self.first_departure.get_or_insert(r.departure);
            let sent = r.departure.saturating_duration_since(first);
            let owd = arrival.as_secs_f64() * 1000.0 - sent.as_secs_f64() * 1000.0;
            let second = sent.as_secs();
            match self.minima.back_mut() {
                Some((s, m)) if *s == second => *m = m.min(owd),
                _ => self.minima.push_back((second, owd)),
            }
            delays.push(owd);
        }
        let newest = self.minima.back()?.0;
        while self
            .minima
            .front()
            .is_some_and(|(s, _)| s + BASE_WINDOW_SECS < newest)
        {
            self.minima.pop_front();
        }
        if delays.is_empty() {
            return None;
        }
        let base = self.minima.iter().map(|(_, m)| *m).fold(f64::MAX, f64::min);
        delays.sort_by(|a, b| a.total_cmp(b));
        let median = delays[delays.len() / 2] - base;
        self.smoothed_ms += (median - self.smoothed_ms) * 0.5;
        Some(self.smoothed_ms)
    }
}

pub struct HuddleEstimator {
    queue: QueueDelay,
    dispersion: BurstDispersion,
    /// Groups the reports into send bursts, and keeps the Kalman estimate of the delay between
    /// them that `detector` judges.
    slope: SlopeEstimator,
    trendline: DelayTrendline,
    /// Overuse by the `rtc` crate's Kalman estimate of the group delay: coarse (it misses a
    /// queue growing slowly) and, smoothed as it is, little moved by a lone keyframe's burst
    /// (the trendline backed off on those). Rules away from a known ceiling, where the
    /// estimate climbs fast and ladder switches send large keyframes.
    detector: OveruseDetector,
    /// Overuse by the trendline: rules near a known ceiling, where the estimate probes a few
    /// percent past the capacity and the queue grows slowly.
    trend_detector: OveruseDetector,
    /// What the far end received, stamped with arrival times on its clock (`arrival_epoch` +
    /// arrival). Stamped with our feedback times instead, each feedback's packets land at one
    /// instant, and a 500 ms window then holds five batches over a 400 ms span: the rate read
    /// 20-25 % high, so a backoff to 0.85 of it stayed above the capacity and the queue it was
    /// meant to drain stayed full.
    received: RateCalculator,
    arrival_epoch: Instant,
    latest_arrival: Option<Duration>,
    /// The received rate while a queue of more than `QUEUE_OVERUSE_MS` stood at the bottleneck,
    /// and when (a shorter queue may empty within the rate's window): with its queue never
    /// empty a bottleneck delivers exactly its capacity, so this reads the capacity, even while
    /// our own backoff is draining the queue (when what we send is already below it). Taken as
    /// the ceiling at a backoff. Using the received rate instead, a backoff during a drain set
    /// a ceiling far below the capacity, which the estimate then passed and forgot, and the
    /// fast growth that followed filled the queue again seconds after a capacity drop.
    saturated_rate: Option<(Instant, f64)>,
    state: RateControlState,
    target: f64,
    last_change: Option<Instant>,
    /// The received rate at the last backoff: approached carefully, then forgotten once passed.
    ceiling: Option<f64>,
    /// The delivered rate passed the ceiling once since the last backoff (and it was raised).
    ceiling_passed_once: bool,
    /// Any backoff yet (delay or loss): until then the estimate grows as fast as it can.
    backed_off_ever: bool,
    /// Since when the delay signal has said nothing but "normal".
    quiet_since: Option<Instant>,
    loss_avg: f64,
    /// (when, lost, reported) per feedback batch over the last second.
    loss_window: std::collections::VecDeque<(Instant, usize, usize)>,
    /// The cap the loss half imposes (`None`: loss is low enough not to cap).
    loss_cap: Option<f64>,
    /// When we last backed off for a standing queue, and the queue delay then (ms).
    queue_backoff: Option<(Instant, f64)>,
    /// The RTCP taps' view of the far end's reception reports, when wired.
    reports: Option<LinkFeedback>,
    published: PublishedEstimate,
}

impl HuddleEstimator {
    /// `reports`: where the RTCP taps keep the far end's reception reports, if anywhere.
    pub fn new(published: PublishedEstimate, reports: Option<LinkFeedback>) -> Self {
        HuddleEstimator {
            queue: QueueDelay::default(),
            dispersion: BurstDispersion::default(),
            slope: SlopeEstimator::new(),
            trendline: DelayTrendline::default(),
            detector: OveruseDetector::new(),
            trend_detector: OveruseDetector::new(),
            received: RateCalculator::default(),
            arrival_epoch: Instant::now(),
            latest_arrival: None,
            saturated_rate: None,
            state: RateControlState::default(),
            target: INITIAL_BPS,
            last_change: None,
            ceiling: None,
            ceiling_passed_once: false,
            quiet_since: None,
            backed_off_ever: false,
            loss_avg: 0.0,
            loss_window: std::collections::VecDeque::new(),
            loss_cap: None,
            queue_backoff: None,
            reports,
            published,
        }
    }

    fn delay_control(&mut self, now: Instant, usage: Usage, received: Option<f64>) {
        self.state = self.state.next(usage);
        if usage == Usage::Normal {
            self.quiet_since.get_or_insert(now);
        } else {
            self.quiet_since = None;
        }
        let settled = self
            .last_change
            .is_none_or(|t| now.saturating_duration_since(t) >= CHANGE_INTERVAL);
        match self.state {
            RateControlState::Hold => {}
            RateControlState::Decrease => {
                if let Some(received) = received {
                    // The received window can still hold a faster past: never back off upwards.
                    self.target = self.target.min(received * DECREASE_FACTOR);
                    // The path's capacity is what it delivered while its queue stood; failing
                    // a recent such reading, what it delivers now.
                    let saturated = self.saturated_within(now, SATURATED_MAX_AGE);
                    self.ceiling = Some(saturated.unwrap_or(received));
                    self.ceiling_passed_once = false;
                    self.last_change = Some(now);
                }
            }
            RateControlState::Increase if settled => {
                let elapsed = self
                    .last_change
                    .map_or(CHANGE_INTERVAL, |t| now.saturating_duration_since(t))
                    .min(Duration::from_secs(1));
                // A capacity the path showed recently (delivered under a standing queue) must
                // be passed too: the ceilings set in the chaos right after a drop (loss cuts,
                // feedback lost on the congested way back) can be a fifth of it.
                let shown = self.saturated_within(now, SATURATED_MEMORY).unwrap_or(0.0);
                if let (Some(ceiling), Some(received)) = (self.ceiling, received)
                    && received > ceiling.max(shown) * CEILING_PASSED_AT
                {
                    // The path delivers clearly more than at the last backoff. Once may be a
                    // ceiling read too low: one set in the chaos of a capacity drop (our own
                    // cuts draining the queue, feedback lost on the congested reverse path)
                    // read 170-235 kbit/s on a 300 kbit/s path, and forgetting it at the first
                    // pass let the fast growth fill the queue to 200 ms seconds later. So the
                    // first pass raises the ceiling to what arrives and approaches it faster;
                    // a second pass (1.3x the old ceiling) means the capacity came back.
                    if self.ceiling_passed_once {
                        self.ceiling = None;
                        self.ceiling_passed_once = false;
                    } else {
                        self.ceiling = Some(received);
                        self.ceiling_passed_once = true;
                    }
                }
                let before = self.target;
                self.target = if let Some(c) = self.near_ceiling() {
                    // Slowly near a known limit: overshooting it fills the bottleneck's queue.
                    // Slower still once what arrives is at the limit: from there every bit of
                    // growth goes into the queue until the delay signal catches it.
                    let at_limit = received.is_some_and(|r| r >= c * AT_CEILING);
                    let per_second = if self.ceiling_passed_once {
                        // Passed once: arriving "at" this ceiling says nothing of a limit.
                        c * PASSED_CEILING_GROWTH_SHARE
                    } else if at_limit {
                        (c * AT_CEILING_GROWTH_SHARE).min(NEAR_CEILING_GROWTH_BPS)
                    } else {
                        (c * NEAR_CEILING_GROWTH_SHARE).min(NEAR_CEILING_GROWTH_BPS)
                    };
                    self.target + per_second * elapsed.as_secs_f64()
                } else {
                    let quiet_long = self
                        .quiet_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= QUIET_FOR_FAST_GROWTH);
                    let growth = if !self.backed_off_ever {
                        GROWTH_START
                    } else if quiet_long {
                        GROWTH_FAST
                    } else {
                        GROWTH_SLOW
                    };
                    self.target * growth.powf(elapsed.as_secs_f64())
                };
                // Not more than the far end shows we can use: an encoder sending less than the
                // estimate must not let it climb unchecked. This only stops growth; backing off
                // is the delay and loss halves' call.
                if let Some(received) = received {
                    self.target = self.target.min((received * 1.5 + 100_000.0).max(before));
                }
                self.last_change = Some(now);
            }
            RateControlState::Increase => {}
        }
    }

    /// The ceiling, when the estimate is close enough to it (above 0.85 of it) that growth
    /// slows and the trendline judges overuse.
    fn near_ceiling(&self) -> Option<f64> {
        self.ceiling.filter(|c| self.target > c * NEAR_CEILING)
    }

    /// The rate delivered under a standing queue, if read within `age`.
    fn saturated_within(&self, now: Instant, age: Duration) -> Option<f64> {
        self.saturated_rate
            .filter(|(at, _)| now.saturating_duration_since(*at) <= age)
            .map(|(_, rate)| rate)
    }

    /// `backed_off`: the delay half already backed off on this feedback.
    fn loss_control(&mut self, now: Instant, lost: usize, total: usize, backed_off: bool) {
        // Loss over the last second of feedback: a burst counts while it lasts and is
        // forgotten a second later, however few packets a slow link carries.
        self.loss_window.push_back((now, lost, total));
        while self
            .loss_window
            .front()
            .is_some_and(|(t, _, _)| now.saturating_duration_since(*t) > LOSS_WINDOW)
        {
            self.loss_window.pop_front();
        }
        let (lost, total) = self
            .loss_window
            .iter()
            .fold((0, 0), |(l, n), (_, bl, bn)| (l + bl, n + bn));
        if total < LOSS_MIN_PACKETS {
            return;
        }
        self.loss_avg = lost as f64 / total as f64;
        if self.loss_avg < LOSS_HOLD || !self.reports_confirm_loss(now, LOSS_REPORT_CONFIRMS_HOLD) {
            self.loss_cap = None;
        } else if self.loss_avg < LOSS_CUT {
            self.loss_cap.get_or_insert(self.target);
        } else {
            // Judge the next cut on loss measured after this one, not on the same burst again.
            self.loss_window.clear();
            if backed_off {
                return;
            }
            if !self.reports_confirm_loss(now, LOSS_REPORT_CONFIRMS) {
                self.loss_cap.get_or_insert(self.target);
                return;
            }
            let base = self.loss_cap.unwrap_or(self.target).min(self.target);
            self.loss_cap = Some(base * (1.0 - 0.5 * self.loss_avg));
            // Heavy loss marks a limit as much as a queue does; where a queue stood just now,
            // the loss is that queue overflowing, and what it delivered is the limit.
            let saturated = self.saturated_within(now, SATURATED_MAX_AGE);
            self.ceiling = Some(saturated.map_or(base, |s| s.max(base)));
            self.ceiling_passed_once = false;
            self.backed_off_ever = true;
            self.published.backoff(2);
        }
    }

    /// Whether the far end's reception reports bear out heavy loss. rtc 0.21 counts every
    /// packet a lost feedback packet covered as lost, so on a lossy path our own figure
    /// overstates: at a call's start on a 5 % path one lost feedback packet read as 50 % loss,
    /// and the cut kept the picture at 320x240 for seconds. So with reports wired, only a recent
    /// report of real loss confirms a cut (until the first report, nothing does); without them
    /// (tests of the estimator alone) our own figure stands. `at_least`: the share of packets
    /// a report must say were lost.
    fn reports_confirm_loss(&self, now: Instant, at_least: f64) -> bool {
        let Some(reports) = &self.reports else {
            return true;
        };
        let Ok(state) = reports.lock() else {
            return true;
        };
        state.last_loss_report.is_some_and(|(at, lost)| {
            now.saturating_duration_since(at) <= LOSS_REPORT_MAX_AGE && lost >= at_least
        })
    }

    fn publish(&self) {
        let p = &self.published;
        p.target_bps
            .store(self.target_bitrate() as u64, Ordering::Relaxed);
        p.loss_ppm
            .store((self.loss_avg * 1e6) as u64, Ordering::Relaxed);
        p.ceiling_bps
            .store(self.ceiling.unwrap_or(0.0) as u64, Ordering::Relaxed);
    }
}

impl BandwidthEstimator for HuddleEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        // Feedback after a long silence: the rate was pushed back meanwhile (see
        // `feedback_silence_factor`); keep that cut rather than jump back to the old estimate
        // and wait for these reports to show the queue it would fill.
        if let Some(silence) = self.published.take_unacknowledged(now) {
            let factor = feedback_silence_factor(silence);
            if factor < 1.0 {
                self.target = (self.target * factor).max(MIN_BPS);
                self.backed_off_ever = true;
                self.last_change = Some(now);
            }
        }
        let probing_ceiling = self.near_ceiling().is_some();
        let mut usage = if probing_ceiling {
            self.trend_detector.usage()
        } else {
            self.detector.usage()
        };
        let mut burst_capacity: Option<f64> = None;
        for report in reports {
            if let Some(read) = self.dispersion.update(report) {
                tracing::debug!(kbps = read / 1000.0, "a send burst's spread at the far end");
                burst_capacity = Some(burst_capacity.map_or(read, |c| c.max(read)));
            }
            if let Some(arrival) = report.arrival.filter(|_| report.arrived) {
                self.received.add(self.arrival_epoch + arrival, report.size);
                self.latest_arrival = self.latest_arrival.max(Some(arrival));
            }
            if let Some(trend) = self.slope.accumulate(report) {
                let growth = self.trendline.update(trend.at, trend.measurement_ms);
                let by_trend = self.trend_detector.update(trend.at, growth);
                let by_kalman = self.detector.update(trend.at, trend.estimate_ms);
                usage = if probing_ceiling { by_trend } else { by_kalman };
            }
        }
        // A path that cannot carry even our start rate, shown by a burst before anything else
        // spoke: start from what it carries. Only below the start rate, where a wrong read
        // cannot do much harm; on a fast path with jitter a burst's spread reads megabits.
        if let Some(capacity) = burst_capacity
            && !self.backed_off_ever
            && capacity < INITIAL_BPS
        {
            self.target = (capacity * DECREASE_FACTOR).max(MIN_BPS);
            self.ceiling = Some(capacity);
            self.ceiling_passed_once = false;
            self.backed_off_ever = true;
            self.last_change = Some(now);
            self.published.backoff(3);
        }
        // Either delay signal may call overuse; a standing queue holds the rate where it is.
        let slope_overuse = usage == Usage::Over;
        let queue = self.queue.update(reports);
        let draining = |q: f64| {
            self.queue_backoff.is_some_and(|(at, level)| {
                now.saturating_duration_since(at) < QUEUE_DRAIN_GRACE
                    && q <= level + QUEUE_REGROWTH_MS
            })
        };
        let mut queue_overuse = false;
        match queue {
            Some(q) if q > QUEUE_OVERUSE_MS && !slope_overuse && draining(q) => {
                usage = Usage::Under
            }
            Some(q) if q > QUEUE_OVERUSE_MS => {
                usage = Usage::Over;
                queue_overuse = !slope_overuse;
            }
            Some(q) if q > QUEUE_NORMAL_MS && usage == Usage::Normal => usage = Usage::Under,
            _ => {}
        }
        if let Some(q) = queue {
            self.published
                .queue_delay_ms
                .store(q.max(0.0) as u64, Ordering::Relaxed);
        }
        let received = self
            .latest_arrival
            .and_then(|at| self.received.rate_bits_per_second(self.arrival_epoch + at));
        if let (Some(q), Some(r)) = (queue, received)
            && q > QUEUE_OVERUSE_MS
        {
            self.saturated_rate = Some((now, r));
        }
        let before = self.target;
        self.delay_control(now, usage, received);
        let backed_off = self.target < before;
        if backed_off {
            self.backed_off_ever = true;
            self.published.backoff(if slope_overuse { 0 } else { 1 });
            if queue_overuse && let Some(q) = queue {
                self.queue_backoff = Some((now, q));
            }
        }
        let lost = reports.iter().filter(|r| !r.arrived).count();
        self.loss_control(now, lost, reports.len(), backed_off);
        // While loss caps the rate, the delay half must not climb behind the cap (a full
        // drop-tail queue shows no delay gradient), or lifting the cap would jump.
        if let Some(cap) = self.loss_cap {
            self.target = self.target.min(cap);
        }
        self.target = self.target.clamp(MIN_BPS, MAX_BPS);
        self.publish();
    }

    fn target_bitrate(&self) -> f64 {
        self.loss_cap
            .map_or(self.target, |cap| self.target.min(cap))
            .clamp(MIN_BPS, MAX_BPS)
    }

    fn stats(&self) -> EstimatorStats {
        let mut stats = EstimatorStats::default();
        stats.delay_based_bitrate = Some(self.target);
        stats.loss_based_bitrate = self.loss_cap;
        stats.packet_loss = Some(self.loss_avg);
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    /// A simulated path: packets of 1200 bytes sent at `send_bps`, through a bottleneck of
    /// `capacity_bps` with `base_delay`, a drop-tail queue of `queue`, and random loss.
    struct Path {
        start: Instant,
        sent_at: Duration,
        busy_until: Duration,
        id: u64,
        rng: u64,
        /// (sent at, time spent in the bottleneck queue) of every packet that got through.
        queued: Vec<(Duration, Duration)>,
        /// Sent, not yet reported back.
        in_flight: std::collections::VecDeque<PacketReport>,
    }

    impl Path {
        fn new() -> Self {
            Path {
                start: Instant::now(),
                sent_at: Duration::ZERO,
                busy_until: Duration::ZERO,
                id: 0,
                rng: 0x1234_5678,
                queued: Vec::new(),
                in_flight: std::collections::VecDeque::new(),
            }
        }

        fn random(&mut self) -> f64 {
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            (self.rng % 1_000_000) as f64 / 1e6
        }

        /// Sends for `span` at the estimator's own target. Every 100 ms the receiver reports
        /// what has arrived by then (and the losses before it), as TWCC feedback does; the
        /// report reaches the sender 40 ms later. A packet still queued is not reported yet.
        fn run(
            &mut self,
            est: &mut HuddleEstimator,
            span: Duration,
            capacity_bps: f64,
            loss: f64,
        ) -> Vec<f64> {
            let size = 1200usize;
            let one_way = Duration::from_millis(40);
            let end = self.sent_at + span;
            let mut next_feedback = self.sent_at + Duration::from_millis(100);
            let mut targets = Vec::new();
            while self.sent_at < end {
                let send_bps = est.target_bitrate();
                let gap = Duration::from_secs_f64(size as f64 * 8.0 / send_bps);
                self.sent_at += gap;
                let now = self.sent_at;
                let start = self.busy_until.max(now);
                let queued = start - now;
                let dropped = queued > Duration::from_millis(300) || self.random() < loss;
                let arrival = if dropped {
                    None
                } else {
                    self.queued.push((now, queued));
                    self.busy_until =
                        start + Duration::from_secs_f64(size as f64 * 8.0 / capacity_bps);
                    Some(self.busy_until + one_way)
                };
                self.id += 1;
                self.in_flight.push_back(PacketReport {
                    ssrc: 1,
                    id: self.id,
                    rtp_sequence_number: self.id as u16,
                    is_twcc: true,
                    twcc_sequence_number: self.id as u16,
                    size,
                    arrived: arrival.is_some(),
                    departure: self.start + now,
                    arrival,
                    ecn: Ecn::NotEct,
                });
                if now >= next_feedback {
                    next_feedback += Duration::from_millis(100);
                    // Arrivals are in order (one FIFO queue, fixed delay): report up to the
                    // last packet that has arrived.
                    let reported = self
                        .in_flight
                        .iter()
                        .rposition(|r| r.arrival.is_some_and(|a| a <= now))
                        .map_or(0, |i| i + 1);
                    let batch: Vec<PacketReport> = self.in_flight.drain(..reported).collect();
                    est.on_reports(self.start + now + one_way, &batch);
                    targets.push(est.target_bitrate());
                }
            }
            targets
        }
    }

    fn estimator() -> (HuddleEstimator, PublishedEstimate) {
        let published = PublishedEstimate::new(INITIAL_BPS);
        (HuddleEstimator::new(published.clone(), None), published)
    }

    #[test]
    fn random_loss_that_nack_repairs_does_not_hold_the_rate_down() {
        let (mut est, published) = estimator();
        let mut path = Path::new();
        let targets = path.run(&mut est, Duration::from_secs(15), 10_000_000.0, 0.05);
        let last = *targets.last().unwrap();
        assert!(last > 1_500_000.0, "5 % loss, 10 Mbit/s path: {last}");
        assert_eq!(published.target_bps(), last as u64);
        assert!(
            (0.03..0.07).contains(&published.loss()),
            "{}",
            published.loss()
        );
    }

    #[test]
    fn a_bottleneck_brings_the_estimate_down_to_its_capacity() {
        let (mut est, _) = estimator();
        let mut path = Path::new();
        let targets = path.run(&mut est, Duration::from_secs(10), 200_000.0, 0.0);
        let tail = &targets[targets.len() - 30..];
        let mean = tail.iter().sum::<f64>() / tail.len() as f64;
        assert!((100_000.0..260_000.0).contains(&mean), "{mean}");
    }

    #[test]
    fn after_a_capacity_drop_it_comes_back_within_seconds() {
        let (mut est, _) = estimator();
        let mut path = Path::new();
        path.run(&mut est, Duration::from_secs(8), 2_000_000.0, 0.0);
        let low = path.run(&mut est, Duration::from_secs(10), 300_000.0, 0.0);
        assert!(*low.last().unwrap() < 400_000.0, "{:?}", low.last());
        // Draining the queue must not spiral the estimate far below the new capacity.
        let floor = low.iter().copied().fold(f64::MAX, f64::min);
        assert!(floor > 120_000.0, "fell to {floor} on a 300 kbit/s path");
        // And it settles near that capacity within 4 s.
        let settled = &low[40..];
        let mean = settled.iter().sum::<f64>() / settled.len() as f64;
        assert!((180_000.0..380_000.0).contains(&mean), "{mean}");
        let up = path.run(&mut est, Duration::from_secs(8), 2_000_000.0, 0.0);
        assert!(*up.last().unwrap() > 1_000_000.0, "{:?}", up.last());
    }

    #[test]
    fn at_a_lower_capacity_it_does_not_keep_refilling_the_queue() {
        let (mut est, _) = estimator();
        let mut path = Path::new();
        path.run(&mut est, Duration::from_secs(8), 2_000_000.0, 0.0);
        let drop_at = path.sent_at;
        path.run(&mut est, Duration::from_secs(15), 300_000.0, 0.0);
        // Per second of the low phase, the longest any packet waited in the bottleneck queue.
        let mut worst = vec![Duration::ZERO; 15];
        for (at, waited) in &path.queued {
            if let Some(second) = at.checked_sub(drop_at).map(|d| d.as_secs() as usize)
                && let Some(w) = worst.get_mut(second)
            {
                *w = (*w).max(*waited);
            }
        }
        let ms: Vec<u128> = worst.iter().map(|d| d.as_millis()).collect();
        // Once settled (4 s after the drop), probing for more must not fill the queue again.
        assert!(ms[4..].iter().all(|&q| q < 150), "{ms:?}");
        // The limit it probes against is the new capacity, not what it sent while draining.
        let ceiling = est.ceiling.expect("a ceiling from the low phase");
        assert!((250_000.0..400_000.0).contains(&ceiling), "{ceiling}");
    }

    #[test]
    fn heavy_feedback_loss_the_far_end_does_not_report_does_not_cut_the_rate() {
        let published = PublishedEstimate::new(INITIAL_BPS);
        let reports = LinkFeedback::default();
        let mut est = HuddleEstimator::new(published, Some(reports.clone()));
        let mut path = Path::new();
        // The far end keeps reporting 2 % loss while our feedback shows 45 %.
        let mut targets = Vec::new();
        for _ in 0..12 {
            reports.lock().unwrap().last_loss_report = Some((path.start + path.sent_at, 0.02));
            targets.extend(path.run(&mut est, Duration::from_millis(500), 10_000_000.0, 0.45));
        }
        let lowest = targets.iter().copied().fold(f64::MAX, f64::min);
        assert!(lowest >= INITIAL_BPS * 0.99, "cut to {lowest}");
        assert_eq!(published_backoffs(&est), 0);
    }

    #[test]
    fn with_reports_wired_only_a_report_of_real_loss_confirms_a_cut() {
        // Before the far end's first reception report (a call's first second), heavy loss in
        // our feedback only holds the rate.
        let reports = LinkFeedback::default();
        let mut est =
            HuddleEstimator::new(PublishedEstimate::new(INITIAL_BPS), Some(reports.clone()));
        let mut path = Path::new();
        let targets = path.run(&mut est, Duration::from_secs(3), 10_000_000.0, 0.45);
        let lowest = targets.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            lowest >= INITIAL_BPS * 0.99,
            "cut to {lowest} with no report yet"
        );
        assert_eq!(published_backoffs(&est), 0);
        // Once the far end reports the loss too, the rate is cut.
        for _ in 0..6 {
            reports.lock().unwrap().last_loss_report = Some((path.start + path.sent_at, 0.45));
            path.run(&mut est, Duration::from_millis(500), 10_000_000.0, 0.45);
        }
        assert!(published_backoffs(&est) > 0);
        assert!(
            est.target_bitrate() < INITIAL_BPS,
            "{}",
            est.target_bitrate()
        );
    }

    /// The target after 4 s of a 20 % loss in our feedback, with the far end reporting
    /// `reported` loss.
    fn climb_under_feedback_loss(reported: f64) -> f64 {
        let reports = LinkFeedback::default();
        let mut est =
            HuddleEstimator::new(PublishedEstimate::new(INITIAL_BPS), Some(reports.clone()));
        let mut path = Path::new();
        for _ in 0..8 {
            reports.lock().unwrap().last_loss_report = Some((path.start + path.sent_at, reported));
            path.run(&mut est, Duration::from_millis(500), 10_000_000.0, 0.2);
        }
        est.target_bitrate()
    }

    #[test]
    fn loss_only_our_feedback_shows_does_not_hold_the_climb() {
        // A 5 % path at a call's start: our feedback reads 13-28 %, the reports 0-1.5 %.
        let climbed = climb_under_feedback_loss(0.01);
        assert!(climbed > INITIAL_BPS * 2.0, "{climbed}");
        // Loss the far end reports too holds the rate (after the first fraction of a second,
        // before the loss window has enough packets to judge).
        let held = climb_under_feedback_loss(0.2);
        assert!(held < climbed / 2.0, "{held} against {climbed}");
    }

    fn published_backoffs(est: &HuddleEstimator) -> u64 {
        est.published.counters().loss_backoffs
    }

    #[test]
    fn feedback_that_comes_back_after_a_long_silence_keeps_the_push_back() {
        let (mut est, published) = estimator();
        let mut path = Path::new();
        path.run(&mut est, Duration::from_secs(8), 2_000_000.0, 0.0);
        let before = est.target_bitrate();
        // Both directions congested: what was sent goes unacknowledged for 1.8 s.
        let silent_from = path.start + path.sent_at;
        published.note_sent(silent_from);
        let resumed = silent_from + Duration::from_millis(1800);
        let pushed = published.target_bps_at(resumed) as f64;
        assert!(pushed < before * 0.2, "{pushed} of {before}");
        // The first feedback after it does not bring the old estimate back.
        path.sent_at += Duration::from_millis(1800);
        path.busy_until = path.sent_at;
        path.run(&mut est, Duration::from_millis(150), 2_000_000.0, 0.0);
        assert!(
            est.target_bitrate() < before * 0.2,
            "{} of {before}",
            est.target_bitrate()
        );
    }

    #[test]
    fn the_trendline_reads_a_slowly_growing_queue_and_not_a_steady_one() {
        let t0 = Instant::now();
        let frame = Duration::from_millis(33);
        let mut steady = DelayTrendline::default();
        let mut growing = DelayTrendline::default();
        let (mut flat, mut rising) = (0.0, 0.0);
        for i in 0..80u32 {
            let at = t0 + frame * i;
            // Jitter of a few ms either way on the steady path; 5 ms more per frame on the
            // other (a sender 15 % past the capacity).
            let jitter = if i % 2 == 0 { 3.0 } else { -3.0 };
            flat = steady.update(at, jitter);
            rising = growing.update(at, 5.0);
        }
        assert!(flat.abs() < 6.0, "steady path read {flat}");
        assert!(rising > 12.5, "growing queue read {rising}");
    }

    /// A keyframe's burst: `sizes` written at `sent` (0.1 ms apart), arriving at the given
    /// offsets after `sent` on the far end's clock; then an audio packet 20 ms later, which
    /// closes the burst.
    fn burst(
        t0: Instant,
        sent: Duration,
        sizes: &[usize],
        arrivals_ms: &[f64],
    ) -> Vec<PacketReport> {
        let mut reports: Vec<PacketReport> = sizes
            .iter()
            .zip(arrivals_ms)
            .enumerate()
            .map(|(i, (&size, &at))| PacketReport {
                ssrc: 1,
                id: i as u64,
                rtp_sequence_number: i as u16,
                is_twcc: true,
                twcc_sequence_number: i as u16,
                size,
                arrived: true,
                departure: t0 + sent + Duration::from_micros(100 * i as u64),
                arrival: Some(sent + Duration::from_secs_f64(at / 1000.0)),
                ecn: Ecn::NotEct,
            })
            .collect();
        let n = reports.len();
        reports.push(PacketReport {
            id: n as u64,
            size: 120,
            departure: t0 + sent + Duration::from_millis(20),
            arrival: Some(sent + Duration::from_millis(300)),
            ..reports[0].clone()
        });
        reports
    }

    #[test]
    fn a_start_burst_spread_by_a_slow_uplink_brings_the_estimate_under_its_capacity() {
        let (mut est, published) = estimator();
        let t0 = Instant::now();
        // Five 1200-byte packets through 200 kbit/s arrive 48 ms apart.
        let arrivals: Vec<f64> = (0..5).map(|i| 40.0 + 48.0 * f64::from(i)).collect();
        est.on_reports(
            t0 + Duration::from_millis(400),
            &burst(t0, Duration::ZERO, &[1200; 5], &arrivals),
        );
        let target = est.target_bitrate();
        assert!((150_000.0..=175_000.0).contains(&target), "{target}");
        assert_eq!(published.counters().dispersion_backoffs, 1);
        // Read once, at the start: a later burst does not cut again.
        est.on_reports(
            t0 + Duration::from_millis(900),
            &burst(t0, Duration::from_millis(500), &[1200; 5], &arrivals),
        );
        assert_eq!(published.counters().dispersion_backoffs, 1);
    }

    #[test]
    fn a_start_burst_on_a_fast_path_with_a_jitter_spike_changes_nothing() {
        let (mut est, published) = estimator();
        let t0 = Instant::now();
        // 4 Mbit/s (2.4 ms per packet), one packet held 30 ms by jitter (order kept).
        let arrivals = [60.0, 62.4, 92.4, 92.5, 94.9];
        est.on_reports(
            t0 + Duration::from_millis(400),
            &burst(t0, Duration::ZERO, &[1200; 5], &arrivals),
        );
        assert_eq!(published.counters().dispersion_backoffs, 0);
        assert!(
            est.target_bitrate() >= INITIAL_BPS,
            "{}",
            est.target_bitrate()
        );
    }

    #[test]
    fn a_burst_that_lost_a_packet_is_not_read() {
        let (mut est, published) = estimator();
        let t0 = Instant::now();
        let arrivals: Vec<f64> = (0..5).map(|i| 40.0 + 48.0 * f64::from(i)).collect();
        let mut reports = burst(t0, Duration::ZERO, &[1200; 5], &arrivals);
        reports[2].arrived = false;
        reports[2].arrival = None;
        est.on_reports(t0 + Duration::from_millis(400), &reports);
        assert_eq!(published.counters().dispersion_backoffs, 0);
    }

    #[test]
    fn heavy_loss_cuts_the_rate() {
        let (mut est, _) = estimator();
        let mut path = Path::new();
        let targets = path.run(&mut est, Duration::from_secs(6), 10_000_000.0, 0.45);
        assert!(
            *targets.last().unwrap() < INITIAL_BPS,
            "{:?}",
            targets.last()
        );
    }
}

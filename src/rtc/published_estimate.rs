//! What the bandwidth estimator publishes for the rest of the connection to read: the
//! estimate, the loss it sees and why it backed off, in atomics shared by clones. Below both
//! the estimator (which writes it) and the feedback taps and session (which read it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The lowest estimate: audio and the smallest video rung still fit.
pub const MIN_BPS: f64 = 60_000.0;

/// How long feedback may stay away while we send before the estimate is pushed back. The clock
/// starts at the first packet sent after the last feedback arrived, so it measures the gap
/// between feedback arrivals (about 100 ms), not the round trip: a lost feedback packet doubles
/// it, and 600 ms means several in a row are stuck in, or lost to, congestion.
const FEEDBACK_SILENCE_GRACE: Duration = Duration::from_millis(600);
/// Past the grace, the estimate halves every this long while the silence lasts.
const FEEDBACK_SILENCE_HALVING: Duration = Duration::from_millis(400);

/// The share of the estimate to use when no feedback has come for `silence` while we sent.
/// When both directions of a path lose capacity at once (a shared uplink that drops), each
/// side's congestion feedback is queued behind, and mostly dropped with, the other side's
/// overflowing media: measured on the `capacity-drop` link, no feedback at all arrived for
/// 1.8 s after the drop, the estimator saw nothing, and the sender kept sending 1.5 Mbit/s into
/// 300 kbit/s the whole time. Like libwebrtc's congestion window, unacknowledged data pushes
/// the rate down without waiting for feedback that is not coming.
pub fn feedback_silence_factor(silence: Duration) -> f64 {
    let over = silence.saturating_sub(FEEDBACK_SILENCE_GRACE);
    0.5f64.powf(over.as_secs_f64() / FEEDBACK_SILENCE_HALVING.as_secs_f64())
}

/// What the session reads from the estimator, shared through atomics.
#[derive(Clone, Debug)]
pub struct PublishedEstimate {
    epoch: Instant,
    /// When the oldest packet sent since the last feedback went out (ms since `epoch`, plus
    /// one; 0: everything sent has been acknowledged).
    unacknowledged_since: Arc<AtomicU64>,
    pub(super) target_bps: Arc<AtomicU64>,
    /// Smoothed share of packets the far end reported lost, in millionths.
    pub(super) loss_ppm: Arc<AtomicU64>,
    /// Why the estimate went down: backoffs on a growing delay (GCC's slope), on a standing
    /// queue, on heavy loss, and on a start burst's dispersion; and the queuing delay now (ms).
    backoffs: Arc<[AtomicU64; 4]>,
    pub(super) queue_delay_ms: Arc<AtomicU64>,
    /// The ceiling the estimate probes against (bits per second, 0: none).
    pub(super) ceiling_bps: Arc<AtomicU64>,
}

/// What made the estimator back off, and the queuing delay it sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EstimatorCounters {
    pub delay_backoffs: u64,
    pub queue_backoffs: u64,
    pub loss_backoffs: u64,
    /// Cuts at a call's start to a capacity read from a burst's spread (see `BurstDispersion`).
    pub dispersion_backoffs: u64,
    pub queue_delay_ms: u64,
    pub ceiling_kbps: u64,
}

impl PublishedEstimate {
    pub fn new(initial: f64) -> Self {
        PublishedEstimate {
            epoch: Instant::now(),
            unacknowledged_since: Arc::default(),
            target_bps: Arc::new(AtomicU64::new(initial as u64)),
            loss_ppm: Arc::default(),
            backoffs: Arc::default(),
            queue_delay_ms: Arc::default(),
            ceiling_bps: Arc::default(),
        }
    }
    /// The estimate for all RTP to this peer (audio and video), bits per second, as the
    /// estimator last set it.
    pub fn target_bps(&self) -> u64 {
        self.target_bps.load(Ordering::Relaxed)
    }
    /// The estimate to send at now: `target_bps`, pushed back while what was sent goes
    /// unacknowledged (see `feedback_silence_factor`), not below `MIN_BPS`.
    pub fn target_bps_at(&self, now: Instant) -> u64 {
        let target = self.target_bps() as f64;
        match self.unacknowledged_for(now) {
            Some(silence) => {
                (target * feedback_silence_factor(silence)).max(MIN_BPS.min(target)) as u64
            }
            None => target as u64,
        }
    }
    fn unacknowledged_for(&self, now: Instant) -> Option<Duration> {
        let since = self
            .unacknowledged_since
            .load(Ordering::Relaxed)
            .checked_sub(1)?;
        Some(now.saturating_duration_since(self.epoch + Duration::from_millis(since)))
    }
    /// An RTP packet went out at `now`.
    pub(super) fn note_sent(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        // Only the first packet after an acknowledgement starts the clock.
        let _ =
            self.unacknowledged_since
                .compare_exchange(0, ms, Ordering::Relaxed, Ordering::Relaxed);
    }
    /// Feedback arrived at `now`: returns how long the oldest packet it could cover had gone
    /// unacknowledged, and restarts the clock.
    pub(super) fn take_unacknowledged(&self, now: Instant) -> Option<Duration> {
        let age = self.unacknowledged_for(now);
        self.unacknowledged_since.store(0, Ordering::Relaxed);
        age
    }
    /// Smoothed loss before retransmission, 0..=1.
    pub fn loss(&self) -> f64 {
        self.loss_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }
    pub fn counters(&self) -> EstimatorCounters {
        let b = |i: usize| self.backoffs[i].load(Ordering::Relaxed);
        EstimatorCounters {
            delay_backoffs: b(0),
            queue_backoffs: b(1),
            loss_backoffs: b(2),
            dispersion_backoffs: b(3),
            queue_delay_ms: self.queue_delay_ms.load(Ordering::Relaxed),
            ceiling_kbps: self.ceiling_bps.load(Ordering::Relaxed) / 1000,
        }
    }
    pub(super) fn backoff(&self, reason: usize) {
        self.backoffs[reason].fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn feedback_silence_halves_the_estimate_every_400_ms_past_its_grace() {
        assert_eq!(feedback_silence_factor(ms(0)), 1.0);
        assert_eq!(feedback_silence_factor(ms(600)), 1.0);
        assert!((feedback_silence_factor(ms(1000)) - 0.5).abs() < 1e-9);
        assert!((feedback_silence_factor(ms(1800)) - 0.125).abs() < 1e-9);
    }

    #[test]
    fn unacknowledged_packets_push_the_estimate_back_until_feedback_comes() {
        let p = PublishedEstimate::new(2_000_000.0);
        let t0 = Instant::now();
        // Nothing sent: no silence to speak of, however long.
        assert_eq!(p.target_bps_at(t0 + ms(5000)), 2_000_000);
        p.note_sent(t0 + ms(10));
        // Later packets do not restart the clock: the oldest unacknowledged one counts.
        p.note_sent(t0 + ms(500));
        assert_eq!(p.target_bps_at(t0 + ms(300)), 2_000_000);
        let pushed = p.target_bps_at(t0 + ms(1010));
        assert!((990_000..=1_010_000).contains(&pushed), "{pushed}");
        // However long the silence, not below the floor.
        assert_eq!(p.target_bps_at(t0 + ms(20_000)), MIN_BPS as u64);
        let age = p
            .take_unacknowledged(t0 + ms(1010))
            .expect("packets were unacknowledged");
        assert!(age >= ms(999) && age <= ms(1001), "{age:?}");
        // Feedback came: the estimator's own target stands again.
        assert_eq!(p.target_bps_at(t0 + ms(1500)), 2_000_000);
        assert_eq!(p.take_unacknowledged(t0 + ms(1500)), None);
    }
}

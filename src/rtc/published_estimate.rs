//! What the bandwidth estimator publishes for the rest of the connection to read: the
//! estimate, the loss it sees and why it backed off, in atomics shared by clones. Below both
//! the estimator (which writes it) and the feedback taps and session (which read it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the session reads from the estimator, shared through atomics.
#[derive(Clone, Debug, Default)]
pub struct PublishedEstimate {
    pub(super) target_bps: Arc<AtomicU64>,
    /// Smoothed share of packets the far end reported lost, in millionths.
    pub(super) loss_ppm: Arc<AtomicU64>,
    /// Why the estimate went down: backoffs on a growing delay (GCC's slope), on a standing
    /// queue, and on heavy loss; and the queuing delay now (ms).
    backoffs: Arc<[AtomicU64; 3]>,
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
    pub queue_delay_ms: u64,
    pub ceiling_kbps: u64,
}

impl PublishedEstimate {
    pub fn new(initial: f64) -> Self {
        let p = PublishedEstimate::default();
        p.target_bps.store(initial as u64, Ordering::Relaxed);
        p
    }
    /// The estimate for all RTP to this peer (audio and video), bits per second.
    pub fn target_bps(&self) -> u64 {
        self.target_bps.load(Ordering::Relaxed)
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
            queue_delay_ms: self.queue_delay_ms.load(Ordering::Relaxed),
            ceiling_kbps: self.ceiling_bps.load(Ordering::Relaxed) / 1000,
        }
    }
    pub(super) fn backoff(&self, reason: usize) {
        self.backoffs[reason].fetch_add(1, Ordering::Relaxed);
    }
}

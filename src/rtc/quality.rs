//! Connection quality as a person would judge it (good / fair / poor) from loss, round-trip
//! time and freezes over the last few seconds. A plain state machine fed with cumulative
//! counters and `now`; no I/O. Imports nothing from the rest of Huddle.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How the connection to one peer feels right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkQuality {
    Good,
    Fair,
    Poor,
}

impl LinkQuality {
    pub fn label(self) -> &'static str {
        match self {
            LinkQuality::Good => "good",
            LinkQuality::Fair => "fair",
            LinkQuality::Poor => "poor",
        }
    }
}

/// One reading of a peer's cumulative counters (as `PeerStats` and the video receiver keep them).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct QualitySample {
    /// Packets of the peer's streams lost on first transmission, and received, cumulative.
    pub packets_lost: i64,
    pub packets_received: u64,
    /// Share of our packets the peer last reported lost (0..1), if it has reported.
    pub loss_reported: Option<f64>,
    pub rtt_ms: Option<f64>,
    /// Freezes of the peer's video so far, cumulative.
    pub freezes: u64,
    /// The peer says its microphone or camera is on: receiving nothing then means an outage,
    /// not a muted peer.
    pub expecting_media: bool,
}

/// Loss above this (either direction) makes a link fair; above `POOR_LOSS`, poor. Below 2 %
/// NACK and FEC hide loss entirely; by 8 % retransmissions start costing visible quality.
const FAIR_LOSS: f64 = 0.02;
const POOR_LOSS: f64 = 0.08;
/// Round trips that make conversation awkward (fair) and hard (poor): ITU-T G.114 puts the
/// comfortable one-way limit at 150 ms.
const FAIR_RTT_MS: f64 = 300.0;
const POOR_RTT_MS: f64 = 600.0;
/// Freezes within the window: one is fair, more is poor.
const POOR_FREEZES: u64 = 2;
/// How far back the judgement looks.
const WINDOW: Duration = Duration::from_secs(10);
/// A better grade must hold this long before it shows, so the badge does not flicker.
const UPGRADE_AFTER: Duration = Duration::from_secs(3);

/// Judges one peer's link from samples arriving about once a second.
#[derive(Debug)]
pub struct QualityMeter {
    history: VecDeque<(Instant, QualitySample)>,
    shown: Option<LinkQuality>,
    /// When the raw grade first became better than the shown one (for `UPGRADE_AFTER`).
    better_since: Option<Instant>,
}

impl Default for QualityMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl QualityMeter {
    pub fn new() -> Self {
        QualityMeter {
            history: VecDeque::new(),
            shown: None,
            better_since: None,
        }
    }

    /// The grade shown now; `None` until there are two samples to compare.
    pub fn quality(&self) -> Option<LinkQuality> {
        self.shown
    }

    /// Takes a new sample and returns the grade to show.
    pub fn update(&mut self, now: Instant, sample: QualitySample) -> Option<LinkQuality> {
        self.history.push_back((now, sample));
        while self
            .history
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
            && self.history.len() > 2
        {
            self.history.pop_front();
        }
        let Some(raw) = self.raw_grade() else {
            return self.shown;
        };
        match self.shown {
            Some(shown) if raw < shown => {
                let since = *self.better_since.get_or_insert(now);
                if now.duration_since(since) >= UPGRADE_AFTER {
                    self.shown = Some(raw);
                    self.better_since = None;
                }
            }
            _ => {
                self.shown = Some(raw);
                self.better_since = None;
            }
        }
        self.shown
    }

    /// The grade of the window as it stands, without hysteresis.
    fn raw_grade(&self) -> Option<LinkQuality> {
        let (_, first) = self.history.front()?;
        let (_, last) = self.history.back()?;
        if self.history.len() < 2 {
            return None;
        }
        let lost = (last.packets_lost - first.packets_lost).max(0) as f64;
        let received = last.packets_received.saturating_sub(first.packets_received) as f64;
        let receive_loss = if lost + received > 0.0 {
            lost / (lost + received)
        } else {
            0.0
        };
        let loss = receive_loss.max(last.loss_reported.unwrap_or(0.0));
        let freezes = last.freezes.saturating_sub(first.freezes);
        let rtt = last.rtt_ms.unwrap_or(0.0);
        // Nothing arriving from a peer that sends (an outage) is the worst a link gets.
        let silent = received == 0.0 && last.expecting_media;
        Some(
            if silent || loss > POOR_LOSS || rtt > POOR_RTT_MS || freezes >= POOR_FREEZES {
                LinkQuality::Poor
            } else if loss > FAIR_LOSS || rtt > FAIR_RTT_MS || freezes > 0 {
                LinkQuality::Fair
            } else {
                LinkQuality::Good
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lost: i64, received: u64, rtt: f64, freezes: u64) -> QualitySample {
        QualitySample {
            packets_lost: lost,
            packets_received: received,
            loss_reported: Some(0.0),
            rtt_ms: Some(rtt),
            freezes,
            expecting_media: true,
        }
    }

    #[test]
    fn needs_two_samples() {
        let mut m = QualityMeter::new();
        assert_eq!(m.update(Instant::now(), sample(0, 100, 20.0, 0)), None);
    }

    #[test]
    fn clean_link_is_good_and_each_signal_degrades_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut m = QualityMeter::new();
        m.update(t0, sample(0, 0, 20.0, 0));
        assert_eq!(
            m.update(t0 + s, sample(0, 1000, 20.0, 0)),
            Some(LinkQuality::Good)
        );
        // 5 % loss on what we receive.
        let mut m = QualityMeter::new();
        m.update(t0, sample(0, 0, 20.0, 0));
        assert_eq!(
            m.update(t0 + s, sample(50, 950, 20.0, 0)),
            Some(LinkQuality::Fair)
        );
        // The peer reports 10 % of ours lost.
        let mut m = QualityMeter::new();
        m.update(t0, sample(0, 0, 20.0, 0));
        let mut bad = sample(0, 1000, 20.0, 0);
        bad.loss_reported = Some(0.10);
        assert_eq!(m.update(t0 + s, bad), Some(LinkQuality::Poor));
        // A long round trip.
        let mut m = QualityMeter::new();
        m.update(t0, sample(0, 0, 400.0, 0));
        assert_eq!(
            m.update(t0 + s, sample(0, 1000, 400.0, 0)),
            Some(LinkQuality::Fair)
        );
        // Two freezes.
        let mut m = QualityMeter::new();
        m.update(t0, sample(0, 0, 20.0, 0));
        assert_eq!(
            m.update(t0 + s, sample(0, 1000, 20.0, 2)),
            Some(LinkQuality::Poor)
        );
    }

    #[test]
    fn nothing_arriving_is_poor() {
        let t0 = Instant::now();
        let mut m = QualityMeter::new();
        m.update(t0, sample(0, 500, 20.0, 0));
        assert_eq!(
            m.update(t0 + Duration::from_secs(1), sample(0, 500, 20.0, 0)),
            Some(LinkQuality::Poor)
        );
    }

    #[test]
    fn a_muted_peer_with_its_camera_off_is_not_an_outage() {
        let t0 = Instant::now();
        let mut quiet = sample(0, 500, 20.0, 0);
        quiet.expecting_media = false;
        let mut m = QualityMeter::new();
        m.update(t0, quiet);
        assert_eq!(
            m.update(t0 + Duration::from_secs(1), quiet),
            Some(LinkQuality::Good)
        );
    }

    #[test]
    fn degrades_at_once_recovers_after_holding_and_forgets_old_trouble() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = QualityMeter::new();
        m.update(at(0), sample(0, 0, 20.0, 0));
        assert_eq!(
            m.update(at(1), sample(0, 1000, 20.0, 0)),
            Some(LinkQuality::Good)
        );
        // A burst of loss: poor at once.
        assert_eq!(
            m.update(at(2), sample(300, 1700, 20.0, 0)),
            Some(LinkQuality::Poor)
        );
        // The burst stays in the 10 s window, then leaves it; the better grade must hold 3 s.
        let mut received = 1700;
        let mut last = None;
        for s in 3..=20 {
            received += 1000;
            last = m.update(at(s), sample(300, received, 20.0, 0));
            if s <= 12 {
                assert_ne!(last, Some(LinkQuality::Good), "at {s} s");
            }
        }
        assert_eq!(last, Some(LinkQuality::Good));
    }
}

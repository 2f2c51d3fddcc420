//! What one direction of an emulated link does to each packet, as a state machine without I/O:
//! outages, random and bursty (Gilbert–Elliott) loss, a bottleneck with a drop-tail queue sized
//! in milliseconds and a rate that may follow a schedule, one-way delay and jitter. `offer` takes
//! a packet's arrival time and size and says when it leaves the far end, or why it was dropped.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// How packets get lost, before they reach the bottleneck.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    None,
    /// Each packet independently with this probability (0..=1).
    Random(f64),
    /// Two-state Markov chain. In the good state packets are lost with `loss_good`, in the bad
    /// state with `loss_bad`; per packet the chain moves good → bad with `p_good_to_bad` and
    /// bad → good with `p_bad_to_good`.
    GilbertElliott {
        p_good_to_bad: f64,
        p_bad_to_good: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

impl Loss {
    /// The long-run share of packets this model loses.
    pub fn average(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let total = p_good_to_bad + p_bad_to_good;
                if total <= 0.0 {
                    return loss_good;
                }
                let bad = p_good_to_bad / total;
                bad * loss_bad + (1.0 - bad) * loss_good
            }
        }
    }
}

/// One direction of a link.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra delay drawn uniformly from 0..=jitter for each packet.
    pub jitter: Duration,
    /// With jitter, let a later packet overtake an earlier one. Off: order is kept, as on most
    /// real paths, by holding a packet until the one before it has left.
    pub reorder: bool,
    pub loss: Loss,
    /// Bottleneck rate over time: `(from, bits per second)` steps sorted by time, measured from
    /// when the schedule is armed. `None` rate (or no steps) means unlimited.
    pub rate: Vec<(Duration, Option<u64>)>,
    /// Drop-tail queue in front of the bottleneck, as the time it takes to drain at the rate.
    pub queue: Duration,
    /// Total outages: `(from, length)`, measured from when the schedule is armed.
    pub outages: Vec<(Duration, Duration)>,
    /// Outages for UDP only, TCP still passing: a middlebox that stops carrying media while
    /// the signaling connection stays up.
    pub udp_outages: Vec<(Duration, Duration)>,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            reorder: false,
            loss: Loss::None,
            rate: Vec::new(),
            queue: Duration::from_millis(300),
            outages: Vec::new(),
            udp_outages: Vec::new(),
        }
    }
}

impl LinkSpec {
    /// The bottleneck rate in force at `t` after arming (`None`: unlimited).
    pub fn rate_at(&self, t: Duration) -> Option<u64> {
        self.rate
            .iter()
            .take_while(|(from, _)| *from <= t)
            .last()
            .and_then(|(_, r)| *r)
    }

    pub fn in_outage(&self, t: Duration) -> bool {
        self.outages
            .iter()
            .any(|(from, len)| t >= *from && t < *from + *len)
    }

    pub fn in_udp_outage(&self, t: Duration) -> bool {
        self.udp_outages
            .iter()
            .any(|(from, len)| t >= *from && t < *from + *len)
    }
}

/// Both directions of a link between side A and side B.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkProfile {
    pub name: String,
    pub a_to_b: LinkSpec,
    pub b_to_a: LinkSpec,
    /// How long a benchmark run on this profile should last to show what it is about.
    pub suggested_run: Duration,
}

impl LinkProfile {
    fn symmetric(name: &str, spec: LinkSpec, run_secs: u64) -> Self {
        LinkProfile {
            name: name.to_owned(),
            a_to_b: spec.clone(),
            b_to_a: spec,
            suggested_run: Duration::from_secs(run_secs),
        }
    }

    /// The named profiles the tests and the benchmark use.
    pub fn named(name: &str) -> Option<LinkProfile> {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        let spec = match name {
            "clean" => LinkSpec::default(),
            "lossy" => LinkSpec {
                delay: ms(30),
                jitter: ms(10),
                loss: Loss::Random(0.05),
                ..LinkSpec::default()
            },
            // Bursts of about 3 packets; about 3 % of packets lost on average.
            "bursty" => LinkSpec {
                delay: ms(40),
                loss: Loss::GilbertElliott {
                    p_good_to_bad: 0.0115,
                    p_bad_to_good: 0.3,
                    loss_good: 0.0,
                    loss_bad: 0.8,
                },
                ..LinkSpec::default()
            },
            "slow-uplink" => LinkSpec {
                delay: ms(40),
                rate: vec![(Duration::ZERO, Some(200_000))],
                queue: ms(300),
                ..LinkSpec::default()
            },
            "capacity-drop" => LinkSpec {
                delay: ms(40),
                rate: vec![
                    (Duration::ZERO, Some(2_000_000)),
                    (s(10), Some(300_000)),
                    (s(25), Some(2_000_000)),
                ],
                queue: ms(300),
                ..LinkSpec::default()
            },
            "outage" => LinkSpec {
                delay: ms(20),
                outages: vec![(s(8), s(3))],
                ..LinkSpec::default()
            },
            "long-outage" => LinkSpec {
                delay: ms(20),
                outages: vec![(s(8), s(30))],
                ..LinkSpec::default()
            },
            "udp-outage" => LinkSpec {
                delay: ms(20),
                udp_outages: vec![(s(8), s(30))],
                ..LinkSpec::default()
            },
            "4g" => LinkSpec {
                delay: ms(60),
                jitter: ms(20),
                loss: Loss::Random(0.01),
                rate: vec![(Duration::ZERO, Some(4_000_000))],
                queue: ms(200),
                ..LinkSpec::default()
            },
            _ => return None,
        };
        let run = match name {
            "capacity-drop" => 40,
            "long-outage" | "udp-outage" => 50,
            _ => 25,
        };
        Some(LinkProfile::symmetric(name, spec, run))
    }

    /// Every named profile, in the order the benchmark runs them (`long-outage` is opt-in).
    pub const NAMES: [&'static str; 7] = [
        "clean",
        "lossy",
        "bursty",
        "slow-uplink",
        "capacity-drop",
        "outage",
        "4g",
    ];
}

/// Why a packet did not get through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drop {
    Outage,
    Loss,
    /// The bottleneck's queue was full.
    Queue,
    /// The emulator holds too many packets in flight (a safety bound, not a link property).
    Overflow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Leaves the far end at this time (same clock as `now`).
    Deliver(Duration),
    Drop(Drop),
}

/// Counters for one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    pub dropped_outage: u64,
    pub dropped_loss: u64,
    pub dropped_queue: u64,
    pub dropped_overflow: u64,
    /// Longest time a delivered packet waited in the bottleneck's queue, microseconds.
    pub max_queue_delay_us: u64,
}

impl DirectionStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_outage + self.dropped_loss + self.dropped_queue + self.dropped_overflow
    }
}

/// The state of one direction. Time is any monotonic clock; schedules count from `armed_at`.
pub struct Direction {
    spec: LinkSpec,
    rng: StdRng,
    bad_state: bool,
    /// When the bottleneck has sent everything accepted so far.
    busy_until: Duration,
    /// Delivery time of the latest packet accepted, to keep order.
    last_delivery: Duration,
    armed_at: Duration,
    pub stats: DirectionStats,
}

impl Direction {
    pub fn new(spec: LinkSpec, seed: u64) -> Self {
        Direction {
            spec,
            rng: StdRng::seed_from_u64(seed),
            bad_state: false,
            busy_until: Duration::ZERO,
            last_delivery: Duration::ZERO,
            armed_at: Duration::ZERO,
            stats: DirectionStats::default(),
        }
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Starts the rate schedule and the outages at `now`.
    pub fn arm(&mut self, now: Duration) {
        self.armed_at = now;
    }

    /// Time since the schedule was armed.
    pub fn schedule_time(&self, now: Duration) -> Duration {
        now.saturating_sub(self.armed_at)
    }

    /// An IP packet arrives at `now`: a UDP one also meets the UDP-only outages.
    pub fn offer_packet(&mut self, now: Duration, packet: &[u8]) -> Verdict {
        if is_udp(packet) && self.spec.in_udp_outage(self.schedule_time(now)) {
            self.stats.packets_in += 1;
            self.stats.bytes_in += packet.len() as u64;
            self.stats.dropped_outage += 1;
            return Verdict::Drop(Drop::Outage);
        }
        self.offer(now, packet.len())
    }

    /// A packet of `len` bytes arrives at `now`.
    pub fn offer(&mut self, now: Duration, len: usize) -> Verdict {
        self.stats.packets_in += 1;
        self.stats.bytes_in += len as u64;
        let t = self.schedule_time(now);
        if self.spec.in_outage(t) {
            self.stats.dropped_outage += 1;
            return Verdict::Drop(Drop::Outage);
        }
        if self.lost() {
            self.stats.dropped_loss += 1;
            return Verdict::Drop(Drop::Loss);
        }
        let departure = match self.spec.rate_at(t) {
            Some(bps) if bps > 0 => {
                let start = self.busy_until.max(now);
                if start - now > self.spec.queue {
                    self.stats.dropped_queue += 1;
                    return Verdict::Drop(Drop::Queue);
                }
                let wait_us = (start - now).as_micros() as u64;
                self.stats.max_queue_delay_us = self.stats.max_queue_delay_us.max(wait_us);
                let send = Duration::from_nanos(len as u64 * 8 * 1_000_000_000 / bps);
                self.busy_until = start + send;
                self.busy_until
            }
            _ => now,
        };
        let jitter = if self.spec.jitter.is_zero() {
            Duration::ZERO
        } else {
            let max = self.spec.jitter.as_micros() as u64;
            Duration::from_micros(self.rng.random_range(0..=max))
        };
        let mut delivery = departure + self.spec.delay + jitter;
        if !self.spec.reorder {
            delivery = delivery.max(self.last_delivery);
        }
        self.last_delivery = self.last_delivery.max(delivery);
        self.stats.delivered_packets += 1;
        self.stats.delivered_bytes += len as u64;
        Verdict::Deliver(delivery)
    }

    /// Counts a packet the I/O side had to drop for its own bound.
    pub fn overflowed(&mut self, len: usize) {
        self.stats.delivered_packets = self.stats.delivered_packets.saturating_sub(1);
        self.stats.delivered_bytes = self.stats.delivered_bytes.saturating_sub(len as u64);
        self.stats.dropped_overflow += 1;
    }

    fn lost(&mut self) -> bool {
        match self.spec.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.random_bool(p.clamp(0.0, 1.0)),
            Loss::GilbertElliott {
                p_good_to_bad,
                p_bad_to_good,
                loss_good,
                loss_bad,
            } => {
                let flip = if self.bad_state {
                    p_bad_to_good
                } else {
                    p_good_to_bad
                };
                if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                    self.bad_state = !self.bad_state;
                }
                let p = if self.bad_state { loss_bad } else { loss_good };
                self.rng.random_bool(p.clamp(0.0, 1.0))
            }
        }
    }
}

/// Whether an IP packet (IPv4 or IPv6, as a TUN device gives it) carries UDP.
fn is_udp(packet: &[u8]) -> bool {
    const UDP: u8 = 17;
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.get(9) == Some(&UDP),
        Some(6) => packet.get(6) == Some(&UDP),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn delay_is_added_and_order_kept_under_jitter() {
        let spec = LinkSpec {
            delay: ms(30),
            jitter: ms(10),
            ..LinkSpec::default()
        };
        let mut d = Direction::new(spec, 7);
        let mut last = Duration::ZERO;
        for i in 0..1000u64 {
            let now = Duration::from_micros(i * 500);
            let Verdict::Deliver(at) = d.offer(now, 1200) else {
                panic!("no loss configured")
            };
            assert!(at >= now + ms(30) && at <= now + ms(40) + Duration::from_micros(500));
            assert!(at >= last, "order kept");
            last = at;
        }
    }

    #[test]
    fn jitter_may_reorder_when_allowed() {
        let spec = LinkSpec {
            jitter: ms(20),
            reorder: true,
            ..LinkSpec::default()
        };
        let mut d = Direction::new(spec, 1);
        let times: Vec<Duration> = (0..200u64)
            .map(|i| match d.offer(Duration::from_micros(i * 100), 100) {
                Verdict::Deliver(t) => t,
                Verdict::Drop(_) => panic!("no loss"),
            })
            .collect();
        assert!(times.windows(2).any(|w| w[1] < w[0]));
    }

    #[test]
    fn random_loss_matches_its_rate() {
        let mut d = Direction::new(
            LinkSpec {
                loss: Loss::Random(0.05),
                ..LinkSpec::default()
            },
            3,
        );
        for i in 0..100_000u64 {
            d.offer(Duration::from_micros(i), 100);
        }
        let rate = d.stats.dropped_loss as f64 / 100_000.0;
        assert!((0.045..0.055).contains(&rate), "{rate}");
    }

    #[test]
    fn gilbert_elliott_loses_in_bursts_at_its_average() {
        let profile = LinkProfile::named("bursty").unwrap();
        let expected = profile.a_to_b.loss.average();
        assert!((0.025..0.035).contains(&expected), "{expected}");
        let mut d = Direction::new(profile.a_to_b, 11);
        let mut lost = Vec::new();
        for i in 0..200_000u64 {
            lost.push(matches!(
                d.offer(Duration::from_micros(i * 1000), 100),
                Verdict::Drop(Drop::Loss)
            ));
        }
        let rate = lost.iter().filter(|l| **l).count() as f64 / lost.len() as f64;
        assert!((expected * 0.85..expected * 1.15).contains(&rate), "{rate}");
        // Bursty: a loss is far more likely right after a loss than on average.
        let after_loss = lost.windows(2).filter(|w| w[0]).count() as f64;
        let both = lost.windows(2).filter(|w| w[0] && w[1]).count() as f64;
        assert!(both / after_loss > 5.0 * rate, "{}", both / after_loss);
    }

    #[test]
    fn bottleneck_paces_and_drops_at_the_tail() {
        // 1 Mbit/s: a 1250-byte packet takes 10 ms. Queue of 50 ms.
        let spec = LinkSpec {
            rate: vec![(Duration::ZERO, Some(1_000_000))],
            queue: ms(50),
            ..LinkSpec::default()
        };
        let mut d = Direction::new(spec, 0);
        let verdicts: Vec<Verdict> = (0..10).map(|_| d.offer(ms(0), 1250)).collect();
        // Packets 0..=5 fit (the 6th waits 50 ms, the limit); the rest are dropped.
        for (i, v) in verdicts.iter().enumerate() {
            if i <= 5 {
                assert_eq!(*v, Verdict::Deliver(ms(10 * (i as u64 + 1))));
            } else {
                assert_eq!(*v, Verdict::Drop(Drop::Queue));
            }
        }
        // The queue drains: 100 ms later there is room again.
        assert_eq!(d.offer(ms(100), 1250), Verdict::Deliver(ms(110)));
        assert_eq!(d.stats.max_queue_delay_us, 50_000);
    }

    #[test]
    fn rate_schedule_and_outages_follow_the_armed_clock() {
        let profile = LinkProfile::named("capacity-drop").unwrap();
        let spec = &profile.a_to_b;
        assert_eq!(spec.rate_at(ms(9_999)), Some(2_000_000));
        assert_eq!(spec.rate_at(ms(10_000)), Some(300_000));
        assert_eq!(spec.rate_at(ms(30_000)), Some(2_000_000));

        let mut d = Direction::new(LinkProfile::named("outage").unwrap().a_to_b, 0);
        d.arm(ms(5_000));
        assert!(matches!(d.offer(ms(12_000), 100), Verdict::Deliver(_)));
        assert_eq!(d.offer(ms(13_000), 100), Verdict::Drop(Drop::Outage));
        assert_eq!(d.offer(ms(15_999), 100), Verdict::Drop(Drop::Outage));
        assert!(matches!(d.offer(ms(16_000), 100), Verdict::Deliver(_)));
        assert_eq!(d.stats.dropped(), 2);
    }

    #[test]
    fn a_udp_outage_stops_udp_and_lets_tcp_through() {
        // Minimal IPv4 headers: protocol 17 (UDP) and 6 (TCP) at byte 9; and an IPv6 UDP one.
        let v4 = |protocol: u8| {
            let mut p = vec![0u8; 40];
            p[0] = 0x45;
            p[9] = protocol;
            p
        };
        let mut v6_udp = vec![0u8; 60];
        v6_udp[0] = 0x60;
        v6_udp[6] = 17;
        let mut d = Direction::new(LinkProfile::named("udp-outage").unwrap().a_to_b, 0);
        d.arm(ms(0));
        assert!(matches!(
            d.offer_packet(ms(7_000), &v4(17)),
            Verdict::Deliver(_)
        ));
        assert_eq!(
            d.offer_packet(ms(9_000), &v4(17)),
            Verdict::Drop(Drop::Outage)
        );
        assert_eq!(
            d.offer_packet(ms(9_000), &v6_udp),
            Verdict::Drop(Drop::Outage)
        );
        assert!(matches!(
            d.offer_packet(ms(9_000), &v4(6)),
            Verdict::Deliver(_)
        ));
        assert!(matches!(
            d.offer_packet(ms(38_000), &v4(17)),
            Verdict::Deliver(_)
        ));
        // Too short to be an IP packet: not UDP.
        assert!(matches!(
            d.offer_packet(ms(9_000), &[0x45]),
            Verdict::Deliver(_)
        ));
    }

    #[test]
    fn every_named_profile_exists() {
        for name in LinkProfile::NAMES {
            assert!(LinkProfile::named(name).is_some(), "{name}");
        }
        assert!(LinkProfile::named("long-outage").is_some());
        assert!(LinkProfile::named("nope").is_none());
    }
}

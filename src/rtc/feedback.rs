//! Interceptors that hand the application what only the RTCP path knows, for one connection:
//! - `FeedbackReader` (last in the chain) marks inbound keyframe requests (PLI, FIR) for delivery
//!   to the application, the one kind of feedback only the encoder can answer; reads the far
//!   end's reception reports on our streams (loss, jitter, round-trip time from LSR/DLSR) and
//!   counts the NACKed packets it asks for; and lets through what carries attributes (the
//!   congestion controller's bitrate changes) so statistics see them.
//! - `RetransmissionGate` (wire side of the NACK responder) counts the retransmissions the
//!   responder sends, which statistics do not count when they are plain re-sends, and holds
//!   them to a share of the bandwidth estimate: when a queue overflows, the far end NACKs
//!   everything it missed, and answering all of it would feed the very congestion that lost it.
//!   It also sends a packet again only once a round trip has passed since its last
//!   retransmission: the far end repeats its NACK every few tens of milliseconds until the hole
//!   fills, and answering each repeat would send three copies where one was in flight. It also
//!   tells the published estimate when RTP goes out, for its feedback-silence clock. On a long
//!   path it sends each retransmission a second time shortly after the first (`SecondCopies`):
//!   a lost retransmission otherwise costs a second round trip, longer than the playout delay
//!   has spare, and the picture freezes.
//!
//! Both write into a shared `LinkFeedback` the session reads once per tick.

use super::published_estimate::PublishedEstimate;
use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::time::SystemInstant;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// What the far end last said about one of our streams.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StreamReport {
    /// Share of packets lost since its previous report, 0..=1 (before retransmission).
    pub fraction_lost: f64,
    pub total_lost: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    pub rtt: Option<Duration>,
}

/// Counters and reports for one connection, shared between its interceptors and its session.
#[derive(Debug, Default)]
pub struct FeedbackState {
    /// By our SSRC.
    pub reports: HashMap<u32, StreamReport>,
    /// Packets of ours the far end asked for again.
    pub nacked_packets: u64,
    /// Keyframe requests received.
    pub keyframe_requests: u64,
    /// Retransmissions sent in answer to NACKs, and those the budget held back.
    pub retransmissions_sent: u64,
    pub retransmissions_withheld: u64,
    /// NACK repeats not answered because the previous retransmission was still in flight.
    pub retransmissions_repeat_skipped: u64,
    /// Second copies of retransmissions sent (see `SecondCopies`), and those the budget held
    /// back.
    pub retransmission_copies_sent: u64,
    pub retransmission_copies_withheld: u64,
    /// Latest round-trip time from any report.
    pub rtt: Option<Duration>,
    /// When the last reception report came, and the largest loss fraction in it (0..1): the
    /// far end's own count, which congestion control trusts over its feedback-derived figure.
    pub last_loss_report: Option<(std::time::Instant, f64)>,
}

pub type LinkFeedback = Arc<Mutex<FeedbackState>>;

/// The middle 32 bits of the NTP time now, as LSR and DLSR count.
fn ntp_mid32_now() -> u32 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    ((SystemInstant::unix2ntp(unix) >> 16) & 0xffff_ffff) as u32
}

/// Round-trip time from a report block (RFC 3550 6.4.1), `None` without a sender report yet.
pub fn rtt_from_report(block: &ReceptionReport, now_mid32: u32) -> Option<Duration> {
    if block.last_sender_report == 0 {
        return None;
    }
    let rtt = now_mid32
        .wrapping_sub(block.last_sender_report)
        .wrapping_sub(block.delay);
    // Above ~1 minute it is a clock step or garbage, not a path.
    (rtt < 60 << 16).then(|| Duration::from_micros(rtt as u64 * 1_000_000 / 65_536))
}

pub struct FeedbackReader {
    state: LinkFeedback,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl FeedbackReader {
    pub fn new(state: LinkFeedback) -> Self {
        FeedbackReader {
            state,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }

    fn note(&self, packets: &[Box<dyn rtc::rtcp::Packet>]) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let now_mid32 = ntp_mid32_now();
        for p in packets {
            let any = p.as_any();
            let blocks = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                &rr.reports[..]
            } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                &sr.reports[..]
            } else {
                if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                    state.nacked_packets += nack
                        .nacks
                        .iter()
                        .map(|pair| pair.packet_list().len() as u64)
                        .sum::<u64>();
                } else if is_keyframe_request(p.as_ref()) {
                    state.keyframe_requests += 1;
                }
                continue;
            };
            if let Some(worst) = blocks.iter().map(|b| b.fraction_lost).max() {
                state.last_loss_report = Some((std::time::Instant::now(), worst as f64 / 256.0));
            }
            for block in blocks {
                let rtt = rtt_from_report(block, now_mid32);
                if rtt.is_some() {
                    state.rtt = rtt;
                }
                state.reports.insert(
                    block.ssrc,
                    StreamReport {
                        fraction_lost: block.fraction_lost as f64 / 256.0,
                        total_lost: block.total_lost,
                        jitter: block.jitter,
                        rtt,
                    },
                );
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for FeedbackReader {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            self.note(packets);
            let requests: Vec<Box<dyn rtc::rtcp::Packet>> = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            if requests.is_empty() {
                // The chain's end drops the payload but passes attributes (bitrate changes) on.
                if !msg.message.attributes.is_empty() {
                    self.read.push_back(msg);
                }
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for FeedbackReader {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

/// Retransmissions may use this share of the bandwidth estimate (the video budget leaves 10 %
/// of it, and recent bursts may borrow from the bucket).
const RETRANSMISSION_SHARE: f64 = 0.15;
/// The bucket holds this much time of that rate, and never less than two full packets.
const RETRANSMISSION_BURST: Duration = Duration::from_millis(250);
const RETRANSMISSION_MIN_BURST_BYTES: f64 = 2_400.0;

/// How long a retransmitted packet counts as in flight: a round trip (jitter included in the
/// measurement) less a little, so a NACK repeated because the retransmission itself was lost is
/// answered at once. Without a measurement, 50 ms.
fn repeat_gap(rtt: Option<Duration>) -> Duration {
    rtt.map_or(Duration::from_millis(50), |r| r * 9 / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(400))
}

/// Remembers when each packet was last retransmitted, as a plain state machine; entries expire
/// after a second, so it stays small whatever the NACK rate.
#[derive(Debug, Default)]
pub struct RepeatFilter {
    last: HashMap<(u32, u16), Instant>,
    order: VecDeque<(Instant, (u32, u16))>,
}

const REPEAT_MEMORY: Duration = Duration::from_secs(1);

impl RepeatFilter {
    /// Whether packet `key` may be retransmitted now (and if so, remember that it was).
    pub fn allow(&mut self, now: Instant, key: (u32, u16), gap: Duration) -> bool {
        while let Some((at, old)) = self.order.front().copied() {
            if now.saturating_duration_since(at) < REPEAT_MEMORY {
                break;
            }
            self.order.pop_front();
            if self.last.get(&old) == Some(&at) {
                self.last.remove(&old);
            }
        }
        if self
            .last
            .get(&key)
            .is_some_and(|at| now.saturating_duration_since(*at) < gap)
        {
            return false;
        }
        self.last.insert(key, now);
        self.order.push_back((now, key));
        true
    }
}

/// A retransmission is sent a second time when the round trip is at least this long: a lost
/// retransmission is asked for again only a round trip later, so the frame waiting for it comes
/// two round trips late. On a 4G-like path (150 ms) that is 300 ms, past what the playout delay
/// covers; below 50 ms the second round trip fits inside it.
const SECOND_COPY_MIN_RTT: Duration = Duration::from_millis(50);
/// The second copy follows the first this much later, so a loss burst (a few packets on a busy
/// path) that took the first rarely takes both. It is what a lost first copy then costs.
const SECOND_COPY_SPACING: Duration = Duration::from_millis(20);
/// At most this many copies wait at once (a NACK storm must not grow memory).
const SECOND_COPIES_MAX: usize = 256;

/// Second copies of retransmissions waiting for their time, as a plain state machine. At 1 %
/// random loss a quarter to a third of 20 s calls on a 150 ms path lost one retransmission and
/// froze; the copies cost the loss rate again in bandwidth (1 % of it here), and the budget
/// keeps them out of a congested path's way (`RetransmissionBudget::admit_spare`).
#[derive(Debug)]
pub struct SecondCopies<T> {
    pending: VecDeque<(Instant, T)>,
}

impl<T> Default for SecondCopies<T> {
    fn default() -> Self {
        SecondCopies {
            pending: VecDeque::new(),
        }
    }
}

impl<T> SecondCopies<T> {
    /// Keeps a copy of a retransmission sent at `now` to send again, if the path's round trip
    /// calls for one; returns whether it did.
    pub fn schedule(
        &mut self,
        now: Instant,
        rtt: Option<Duration>,
        copy: impl FnOnce() -> T,
    ) -> bool {
        if rtt.is_none_or(|r| r < SECOND_COPY_MIN_RTT) || self.pending.len() >= SECOND_COPIES_MAX {
            return false;
        }
        self.pending.push_back((now + SECOND_COPY_SPACING, copy()));
        true
    }

    /// When the next copy is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|(due, _)| *due)
    }

    /// The next copy due by `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Option<T> {
        if self.next_due()? <= now {
            self.pending.pop_front().map(|(_, copy)| copy)
        } else {
            None
        }
    }
}

/// A token bucket for retransmitted bytes, as a plain state machine.
#[derive(Debug, Default)]
pub struct RetransmissionBudget {
    tokens: f64,
    last: Option<Instant>,
}

impl RetransmissionBudget {
    /// Whether a retransmission of `bytes` may go out now, with the estimate at `estimate_bps`.
    pub fn admit(&mut self, now: Instant, bytes: usize, estimate_bps: u64) -> bool {
        self.admit_keeping(now, bytes, estimate_bps, 0.0)
    }

    /// Like `admit`, for what only helps (a second copy): it goes out only while the bucket
    /// keeps half its depth for first retransmissions, so in a NACK storm (a congested path)
    /// copies are the first thing left out.
    pub fn admit_spare(&mut self, now: Instant, bytes: usize, estimate_bps: u64) -> bool {
        self.admit_keeping(now, bytes, estimate_bps, 0.5)
    }

    fn admit_keeping(
        &mut self,
        now: Instant,
        bytes: usize,
        estimate_bps: u64,
        keep_share: f64,
    ) -> bool {
        let rate = estimate_bps as f64 * RETRANSMISSION_SHARE / 8.0;
        let depth = (rate * RETRANSMISSION_BURST.as_secs_f64()).max(RETRANSMISSION_MIN_BURST_BYTES);
        let elapsed = self
            .last
            .map_or(RETRANSMISSION_BURST, |t| now.saturating_duration_since(t));
        self.last = Some(now);
        self.tokens = (self.tokens + rate * elapsed.as_secs_f64()).min(depth);
        let cost = bytes as f64;
        if self.tokens >= cost + depth * keep_share {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

pub struct RetransmissionGate {
    state: LinkFeedback,
    estimate: PublishedEstimate,
    budget: RetransmissionBudget,
    repeats: RepeatFilter,
    copies: SecondCopies<TaggedPacket>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

/// Payload plus RTP header, extensions, SRTP tag, UDP and IP: about 60 bytes.
fn wire_bytes(rtp: &rtc::rtp::Packet) -> usize {
    rtp.payload.len() + 60
}

impl RetransmissionGate {
    pub fn new(state: LinkFeedback, estimate: PublishedEstimate) -> Self {
        RetransmissionGate {
            state,
            estimate,
            budget: RetransmissionBudget::default(),
            repeats: RepeatFilter::default(),
            copies: SecondCopies::default(),
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RetransmissionGate {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        let now = Instant::now();
        if let Packet::Rtp(_) = &msg.message.packet {
            self.estimate.note_sent(now);
        }
        if let Packet::Rtp(rtp) = &msg.message.packet
            && msg.message.has(&Attribute::Retransmission)
        {
            let Ok(mut state) = self.state.lock() else {
                self.write.push_back(msg);
                return Ok(());
            };
            let key = (rtp.header.ssrc, rtp.header.sequence_number);
            if !self.repeats.allow(now, key, repeat_gap(state.rtt)) {
                state.retransmissions_repeat_skipped += 1;
                return Ok(());
            }
            let admitted =
                self.budget
                    .admit(now, wire_bytes(rtp), self.estimate.target_bps_at(now));
            if !admitted {
                state.retransmissions_withheld += 1;
                return Ok(());
            }
            state.retransmissions_sent += 1;
            self.copies.schedule(now, state.rtt, || TaggedPacket {
                now: msg.now,
                transport: msg.transport,
                message: msg.message.clone(),
            });
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Self::Error> {
        while let Some(mut copy) = self.copies.take_due(now) {
            let Packet::Rtp(rtp) = &copy.message.packet else {
                continue;
            };
            let admitted =
                self.budget
                    .admit_spare(now, wire_bytes(rtp), self.estimate.target_bps_at(now));
            if let Ok(mut state) = self.state.lock() {
                if admitted {
                    state.retransmission_copies_sent += 1;
                } else {
                    state.retransmission_copies_withheld += 1;
                }
            }
            if admitted {
                self.estimate.note_sent(now);
                copy.now = now;
                self.write.push_back(copy);
            }
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        self.copies.next_due()
    }
}

impl Interceptor for RetransmissionGate {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmissions_keep_to_their_share_of_the_estimate() {
        let t0 = Instant::now();
        let mut budget = RetransmissionBudget::default();
        // 1 Mbit/s estimate: 150 kbit/s for retransmissions, 18.75 kB/s.
        let mut sent = 0usize;
        for i in 0..2000u64 {
            // A storm: 1260-byte retransmissions every millisecond for 2 s (5 Mbit/s).
            if budget.admit(t0 + Duration::from_millis(i), 1260, 1_000_000) {
                sent += 1260;
            }
        }
        let rate = sent as f64 * 8.0 / 2.0;
        assert!(
            (140_000.0..=175_000.0).contains(&rate),
            "{rate} bit/s let through"
        );
        // A lone retransmission after a quiet spell always goes out.
        assert!(budget.admit(t0 + Duration::from_secs(5), 1260, 100_000));
    }

    #[test]
    fn a_repeated_nack_is_answered_only_after_a_round_trip() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let gap = repeat_gap(Some(Duration::from_millis(100)));
        assert_eq!(gap, Duration::from_millis(90));
        let mut f = RepeatFilter::default();
        assert!(f.allow(at(0), (1, 7), gap));
        // The NACK generator repeats every 30 ms while the retransmission is on its way.
        assert!(!f.allow(at(30), (1, 7), gap));
        assert!(!f.allow(at(60), (1, 7), gap));
        // Other packets and other streams are independent.
        assert!(f.allow(at(60), (1, 8), gap));
        assert!(f.allow(at(60), (2, 7), gap));
        // A round trip later the hole is still open: that retransmission was lost too.
        assert!(f.allow(at(95), (1, 7), gap));
        assert!(!f.allow(at(120), (1, 7), gap));
        // Old entries are forgotten, so memory stays bounded.
        assert!(f.allow(at(5_000), (1, 9), gap));
        assert_eq!(f.last.len(), 1);
        assert_eq!(f.order.len(), 1);
    }

    #[test]
    fn a_retransmission_on_a_long_path_goes_out_again_shortly_after() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut copies = SecondCopies::default();
        // A short path (or none measured yet): a second round trip fits the playout delay.
        assert!(!copies.schedule(at(0), None, || 1));
        assert!(!copies.schedule(at(0), Some(Duration::from_millis(30)), || 1));
        assert_eq!(copies.next_due(), None);
        // A 4G-like path: the copy is due 20 ms later, and comes out once, in order.
        let rtt = Some(Duration::from_millis(150));
        assert!(copies.schedule(at(0), rtt, || 7));
        assert!(copies.schedule(at(5), rtt, || 8));
        assert_eq!(copies.next_due(), Some(at(20)));
        assert_eq!(copies.take_due(at(19)), None);
        assert_eq!(copies.take_due(at(21)), Some(7));
        assert_eq!(copies.take_due(at(21)), None);
        assert_eq!(copies.take_due(at(40)), Some(8));
        assert_eq!(copies.next_due(), None);
        // A NACK storm does not grow the queue without bound.
        let stored = (0..1_000)
            .filter(|i| copies.schedule(at(50), rtt, || *i))
            .count();
        assert_eq!(stored, SECOND_COPIES_MAX);
    }

    #[test]
    fn second_copies_give_way_to_first_retransmissions() {
        let t0 = Instant::now();
        let mut budget = RetransmissionBudget::default();
        // 1 Mbit/s: a bucket of 250 ms at 150 kbit/s, 4.7 kB, starts full.
        assert!(budget.admit_spare(t0, 1260, 1_000_000));
        // Drain below half: first retransmissions still go, copies no longer do.
        assert!(budget.admit(t0, 1260, 1_000_000));
        assert!(!budget.admit_spare(t0, 1260, 1_000_000));
        assert!(budget.admit(t0, 1260, 1_000_000));
        // Refilled after a quiet spell, copies go again.
        assert!(budget.admit_spare(t0 + Duration::from_secs(1), 1260, 1_000_000));
    }

    #[test]
    fn round_trip_time_comes_from_lsr_and_dlsr() {
        // Sent our SR at mid32 = 10 s; the far end held it 0.5 s; now is 10.62 s.
        let block = ReceptionReport {
            last_sender_report: 10 << 16,
            delay: 1 << 15,
            ..Default::default()
        };
        let now = (10 << 16) + (62 * 65_536 / 100);
        let rtt = rtt_from_report(&block, now).unwrap();
        assert!((119..=121).contains(&rtt.as_millis()), "{rtt:?}");
        // No SR seen yet by the far end: no figure.
        let none = ReceptionReport::default();
        assert_eq!(rtt_from_report(&none, now), None);
        // A report from the future (clock step) is not a path.
        assert_eq!(rtt_from_report(&block, 5 << 16), None);
    }
}

//! Adaptive audio jitter buffer as a state machine without I/O: packets go in with their RTP
//! sequence number, timestamp and arrival time; the playout asks for the next frame once it has
//! played the last. A frame is one packet, 10 or 20 ms long (the sender chooses; the buffer
//! follows the RTP timestamp steps). The target delay follows the measured inter-arrival jitter
//! (RFC 3550) and the recent spread of transit times (bursts of delay the smoothed jitter
//! misses), between one frame and 240 ms, plus a frame for each recent loss or late packet; a
//! buffer that holds more than its target for a second sheds a frame, at a quiet one where it
//! can.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct JitterConfig {
    /// The frame length assumed until two consecutive packets show the sender's.
    pub frame: Duration,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// RTP clock rate of the stream.
    pub clock_rate: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            frame: Duration::from_millis(20),
            // One frame, whichever length.
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(240),
            clock_rate: 48_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The next packet, in order.
    Frame(Bytes),
    /// A packet is missing: conceal it (Opus PLC or FEC from `next`, when given).
    Conceal { next: Option<Bytes> },
    /// Nothing to play (not started, or the sender went quiet).
    Silence,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub played: u64,
    /// Lost frames made up with nothing to go on (Opus packet-loss concealment).
    pub concealed: u64,
    /// Lost frames decoded from the in-band FEC of the packet after them (Opus falls back to
    /// concealment where that packet carries none).
    pub fec_decoded: u64,
    pub late: u64,
    pub duplicates: u64,
    pub underruns: u64,
    pub dropped_for_latency: u64,
}

pub struct JitterBuffer {
    config: JitterConfig,
    /// The sender's packet length, from the RTP timestamp step between consecutive packets.
    frame: Duration,
    /// Sequence number and RTP timestamp of the last packet pushed.
    last_pushed: Option<(u64, u32)>,
    packets: BTreeMap<u64, Bytes>,
    highest: Option<u64>,
    /// Next sequence number to play; `None` while (re)buffering.
    next: Option<u64>,
    missing_run: u32,
    /// The missing frame we already waited one extra period for (see `pop`).
    held_for: Option<u64>,
    jitter_secs: f64,
    /// (arrival, transit) over the last few seconds: the spread between the quickest and each
    /// packet is how much delay it takes to play every packet in time. The smoothed jitter
    /// misses bursts, such as audio stuck behind a keyframe in a bottleneck's queue.
    transits: std::collections::VecDeque<(f64, f64)>,
    /// Peak of that spread, decaying slowly.
    spread_secs: f64,
    last_transit: Option<f64>,
    last_arrival: Option<Instant>,
    epoch: Option<Instant>,
    /// Frames added to the target by losses and late packets (see `pop`), kept while they
    /// keep coming and given back one at a time after a calm spell.
    grown_frames: usize,
    /// `pops` at the last growth (or give-back).
    grown_at_pop: u64,
    /// The frame held for (see `pop`): the target grows once it or its successor comes, which
    /// a sender that went quiet never sends.
    growth_pending: Option<u64>,
    pops: u64,
    /// Pops in a row at which more than the target was buffered.
    surplus_pops: u32,
    /// Recent largest payload, decaying (halves in about 3 s): a much smaller payload is
    /// likely silence, the place to shed a frame.
    loud_payload: f64,
    stats: JitterStats,
}

/// Concealment in a row, with nothing buffered, before we decide the sender went quiet.
const MAX_CONCEAL_WITH_EMPTY_BUFFER: Duration = Duration::from_millis(60);
/// Arrival variation under this share of a frame does not add a frame to the target, once
/// this many arrivals (a second of audio) have been measured.
const QUIET_PATH_SHARE: f64 = 0.25;
const QUIET_PATH_MIN_ARRIVALS: usize = 50;
/// Frames a loss or a late packet can add to the target, and how long a calm gives one back.
const MAX_GROWN_FRAMES: usize = 3;
const GROWN_KEEP: Duration = Duration::from_secs(15);
/// A buffer holding more than its target at every pop for this long sheds a frame at the next
/// quiet packet, or at any packet once it has waited three times as long. Without it a buffer
/// that started deep, or whose target fell, kept its extra frame for good: 20 ms of
/// mouth-to-ear on every loopback call.
const SHED_AFTER: Duration = Duration::from_secs(1);
const SHED_ANYWAY_AFTER: Duration = Duration::from_secs(3);
/// How far past its target the buffer may run before it skips ahead.
const SKIP_AHEAD_SLACK: Duration = Duration::from_millis(40);
/// Packet lengths the timestamp step is believed for (Opus: 2.5 to 120 ms).
const FRAME_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(2500)..=Duration::from_millis(120);
/// A payload under this share of the recent largest is taken for silence.
const QUIET_PAYLOAD_SHARE: f64 = 0.5;
/// Seconds of arrivals the transit spread is measured over.
const SPREAD_WINDOW_SECS: f64 = 5.0;
/// A sequence jump this large is a new stream, not loss.
const RESET_JUMP: u64 = 500;
/// A pause this long starts a new talk spurt (the sender was muted or silent): its arrival
/// offset says nothing about network jitter.
const TALK_SPURT_GAP: Duration = Duration::from_millis(200);

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        JitterBuffer {
            frame: config.frame,
            last_pushed: None,
            config,
            packets: BTreeMap::new(),
            highest: None,
            next: None,
            missing_run: 0,
            held_for: None,
            jitter_secs: 0.0,
            transits: std::collections::VecDeque::new(),
            spread_secs: 0.0,
            last_transit: None,
            last_arrival: None,
            epoch: None,
            grown_frames: 0,
            grown_at_pop: 0,
            growth_pending: None,
            pops: 0,
            surplus_pops: 0,
            loud_payload: 0.0,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }

    pub fn buffered(&self) -> usize {
        self.packets.len()
    }

    /// Smoothed inter-arrival jitter (RFC 3550) and the transit spread the target follows.
    pub fn arrival_variation(&self) -> (Duration, Duration) {
        (
            Duration::from_secs_f64(self.jitter_secs.max(0.0)),
            Duration::from_secs_f64(self.spread_secs.max(0.0)),
        )
    }

    /// Current target delay, a whole number of frames.
    pub fn target_delay(&self) -> Duration {
        self.frame * self.target_frames() as u32
    }

    /// The sender's packet length in samples at the stream's clock rate: how much a lost
    /// packet's concealment must make up.
    pub fn frame_samples(&self) -> usize {
        (self.frame.as_secs_f64() * self.config.clock_rate as f64).round() as usize
    }

    /// Pops (frames played) in `span`, at least one.
    fn pops_in(&self, span: Duration) -> u64 {
        ((span.as_secs_f64() / self.frame.as_secs_f64()).round() as u64).max(1)
    }

    fn target_frames(&self) -> usize {
        let frame = self.frame.as_secs_f64();
        let variation = (3.0 * self.jitter_secs).max(self.spread_secs);
        // Rounded up, the smallest variation would buy a whole frame of delay (on loopback a
        // millisecond cost 20 ms of mouth-to-ear). Where it is that small, one frame; a packet
        // that still comes late costs one concealed frame, and the buffer grows by it (`pop`).
        // Only once the path has shown it is quiet: at a stream's start nothing is measured
        // yet, and starting one frame lean on a lossy path (before the first losses grow the
        // buffer) cost Opus its FEC (`lossy` concealment 1.0-1.3 % against 0.2-0.9 %).
        let quiet =
            self.transits.len() >= QUIET_PATH_MIN_ARRIVALS && variation < frame * QUIET_PATH_SHARE;
        let variation = if quiet { 0.0 } else { variation };
        let wanted = frame + variation;
        let min = (self.config.min_delay.as_secs_f64() / frame)
            .round()
            .max(1.0) as usize;
        let max = (self.config.max_delay.as_secs_f64() / frame).round() as usize;
        ((wanted / frame).ceil() as usize + self.grown_frames).clamp(min, max.max(min))
    }

    fn unwrap_seq(&self, seq: u16) -> u64 {
        match self.highest {
            None => seq as u64 + (1 << 16),
            Some(h) => {
                let diff = seq.wrapping_sub(h as u16) as i16 as i64;
                (h as i64 + diff).max(0) as u64
            }
        }
    }

    pub fn push(&mut self, seq: u16, rtp_timestamp: u32, payload: Bytes, now: Instant) {
        self.stats.received += 1;
        let mut ext = self.unwrap_seq(seq);
        if let Some(h) = self.highest
            && ext.abs_diff(h) > RESET_JUMP
        {
            // The sender restarted: start over rather than conceal hundreds of frames.
            self.packets.clear();
            self.next = None;
            self.highest = None;
            self.last_transit = None;
            self.transits.clear();
            self.spread_secs = 0.0;
            ext = self.unwrap_seq(seq);
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        if let Some((last_seq, last_ts)) = self.last_pushed
            && ext == last_seq + 1
        {
            let step = rtp_timestamp.wrapping_sub(last_ts) as f64 / self.config.clock_rate as f64;
            let step = Duration::from_secs_f64(step);
            if FRAME_RANGE.contains(&step) {
                self.frame = step;
            }
        }
        self.last_pushed = Some((ext, rtp_timestamp));

        // Inter-arrival jitter, RFC 3550 section 6.4.1.
        let epoch = *self.epoch.get_or_insert(now);
        let arrival = now.saturating_duration_since(epoch).as_secs_f64();
        let transit = arrival - rtp_timestamp as f64 / self.config.clock_rate as f64;
        if self
            .last_arrival
            .is_some_and(|t| now.saturating_duration_since(t) > TALK_SPURT_GAP)
        {
            self.last_transit = None;
            self.transits.clear();
            self.spread_secs = 0.0;
        }
        self.last_arrival = Some(now);
        self.transits.push_back((arrival, transit));
        while self
            .transits
            .front()
            .is_some_and(|(t, _)| arrival - t > SPREAD_WINDOW_SECS)
        {
            self.transits.pop_front();
        }
        let quickest = self
            .transits
            .iter()
            .map(|(_, t)| *t)
            .fold(f64::MAX, f64::min);
        // Halves in about 5 s of packets at 50 per second.
        self.spread_secs = (self.spread_secs * 0.997).max(transit - quickest);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            // Ignore timestamp wraps and stream restarts.
            if d < 10.0 {
                self.jitter_secs += (d - self.jitter_secs) / 16.0;
            }
        }
        self.last_transit = Some(transit);

        if self.next.is_some_and(|n| ext < n) {
            self.stats.late += 1;
            return;
        }
        self.loud_payload = (self.loud_payload * 0.995).max(payload.len() as f64);
        if self.packets.insert(ext, payload).is_some() {
            self.stats.duplicates += 1;
        }
    }

    /// The frame to play now. Call once per frame period.
    pub fn pop(&mut self) -> Playout {
        self.pops += 1;
        if self.grown_frames > 0 && self.pops - self.grown_at_pop > self.pops_in(GROWN_KEEP) {
            self.grown_frames -= 1;
            self.grown_at_pop = self.pops;
        }
        let next = match self.next {
            Some(next) => next,
            // (Re)buffering: start once the target is buffered.
            None => {
                self.surplus_pops = 0;
                if self.packets.len() < self.target_frames() {
                    return Playout::Silence;
                }
                let Some((&first, _)) = self.packets.first_key_value() else {
                    return Playout::Silence;
                };
                self.next = Some(first);
                self.missing_run = 0;
                first
            }
        };
        if self.growth_pending.take() == Some(next)
            && (self.packets.contains_key(&next) || self.packets.contains_key(&(next + 1)))
        {
            self.grown_frames = (self.grown_frames + 1).min(MAX_GROWN_FRAMES);
            self.grown_at_pop = self.pops;
        }
        let target = self.target_frames();
        // Too much queued (a burst, or the sender's clock runs fast): skip ahead. The slack is
        // in time (two 20 ms frames), so 10 ms packets are not dropped sooner.
        let mut next = next;
        if self.packets.len() as u64 > target as u64 + self.pops_in(SKIP_AHEAD_SLACK) {
            while self.packets.len() > target {
                self.packets.pop_first();
                self.stats.dropped_for_latency += 1;
            }
            if let Some((&first, _)) = self.packets.first_key_value() {
                next = next.max(first);
            }
        }
        if self.packets.len() > target {
            self.surplus_pops += 1;
        } else {
            self.surplus_pops = 0;
        }
        let (shed_after, shed_anyway_after) =
            (self.pops_in(SHED_AFTER), self.pops_in(SHED_ANYWAY_AFTER));
        if u64::from(self.surplus_pops) >= shed_after
            && self.packets.contains_key(&(next + 1))
            && self.packets.get(&next).is_some_and(|p| {
                (p.len() as f64) < self.loud_payload * QUIET_PAYLOAD_SHARE
                    || u64::from(self.surplus_pops) >= shed_anyway_after
            })
        {
            self.packets.remove(&next);
            self.stats.dropped_for_latency += 1;
            self.surplus_pops = 0;
            next += 1;
        }
        if let Some(payload) = self.packets.remove(&next) {
            self.next = Some(next + 1);
            self.missing_run = 0;
            self.stats.played += 1;
            return Playout::Frame(payload);
        }
        // A loss with nothing behind it to recover it from (Opus carries a frame's FEC in the
        // next packet) means the buffer is too lean for FEC: it starts at its target and never
        // grew with it. Wait one period for this frame instead of skipping it, once: the buffer
        // grows by a frame, and this frame is recovered from its successor if that comes.
        if !self.packets.contains_key(&(next + 1))
            && self.packets.len() <= target
            && self.missing_run == 0
            && self.held_for != Some(next)
        {
            self.held_for = Some(next);
            self.growth_pending = Some(next);
            self.stats.concealed += 1;
            return Playout::Conceal { next: None };
        }
        if self.packets.is_empty() {
            self.missing_run += 1;
            if u64::from(self.missing_run) > self.pops_in(MAX_CONCEAL_WITH_EMPTY_BUFFER) {
                self.next = None;
                self.stats.underruns += 1;
                return Playout::Silence;
            }
        } else {
            self.missing_run = 0;
        }
        self.next = Some(next + 1);
        let next = self.packets.get(&(next + 1)).cloned();
        if next.is_some() {
            self.stats.fec_decoded += 1;
        } else {
            self.stats.concealed += 1;
        }
        Playout::Conceal { next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sim {
        jb: JitterBuffer,
        start: Instant,
    }

    impl Sim {
        fn new() -> Self {
            Sim {
                jb: JitterBuffer::new(JitterConfig::default()),
                start: Instant::now(),
            }
        }
        fn push_at(&mut self, seq: u16, ms: u64) {
            self.push_sized(seq, ms, 2);
        }
        /// A payload of `len` bytes (at least the two of the sequence number).
        fn push_sized(&mut self, seq: u16, ms: u64, len: usize) {
            let ts = (seq as u32).wrapping_mul(960);
            let mut payload = seq.to_be_bytes().to_vec();
            payload.resize(len.max(2), 0);
            self.jb.push(
                seq,
                ts,
                Bytes::from(payload),
                self.start + Duration::from_millis(ms),
            );
        }
    }

    fn seq_of(p: &Playout) -> Option<u16> {
        match p {
            Playout::Frame(b) => Some(u16::from_be_bytes([b[0], b[1]])),
            _ => None,
        }
    }

    #[test]
    fn steady_stream_plays_in_order_with_minimum_delay() {
        let mut s = Sim::new();
        let mut played = Vec::new();
        for i in 0..50u16 {
            s.push_at(i, i as u64 * 20);
            played.push(seq_of(&s.jb.pop()));
        }
        assert_eq!(played[0], Some(0));
        assert!(played.iter().zip(0..).all(|(p, i)| *p == Some(i)));
        assert_eq!(s.jb.target_delay(), Duration::from_millis(20));
        assert_eq!(s.jb.stats().concealed, 0);
    }

    #[test]
    fn a_stream_of_10_ms_packets_is_followed_at_its_own_frame_length() {
        let mut s = Sim::new();
        assert_eq!(
            s.jb.frame_samples(),
            960,
            "20 ms until packets show otherwise"
        );
        let mut played = Vec::new();
        // 20 ms packets first, then the sender switches to 10 ms ones (timestamps step 480).
        let mut ts = 0u32;
        let mut at_ms = 0u64;
        for i in 0..200u16 {
            let step = if i < 50 { 960 } else { 480 };
            s.jb.push(
                i,
                ts,
                Bytes::from(i.to_be_bytes().to_vec()),
                s.start + Duration::from_millis(at_ms),
            );
            played.push(seq_of(&s.jb.pop()));
            ts = ts.wrapping_add(step);
            at_ms += step as u64 / 48;
        }
        assert_eq!(s.jb.frame_samples(), 480);
        assert_eq!(s.jb.target_delay(), Duration::from_millis(10));
        assert!(
            played.iter().zip(0..).all(|(p, i)| *p == Some(i)),
            "{played:?}"
        );
        assert_eq!(s.jb.stats().concealed, 0);
    }

    #[test]
    fn a_millisecond_of_jitter_does_not_cost_a_frame_of_delay_and_more_does() {
        let mut quiet = Sim::new();
        let mut jittery = Sim::new();
        for i in 0..100u16 {
            let wobble = if i % 2 == 0 { 1 } else { 0 };
            quiet.push_at(i, i as u64 * 20 + wobble);
            quiet.jb.pop();
            let wobble = if i % 2 == 0 { 4 } else { 0 };
            jittery.push_at(i, i as u64 * 20 + wobble);
            jittery.jb.pop();
        }
        assert_eq!(quiet.jb.target_delay(), Duration::from_millis(20));
        assert_eq!(jittery.jb.target_delay(), Duration::from_millis(40));
    }

    #[test]
    fn reordering_inside_the_buffer_is_repaired() {
        let mut s = Sim::new();
        for (seq, ms) in [(0u16, 0u64), (2, 40), (1, 41), (3, 60)] {
            s.push_at(seq, ms);
        }
        let out: Vec<_> = (0..4).map(|_| seq_of(&s.jb.pop())).collect();
        assert_eq!(out, [Some(0), Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn loss_is_concealed_and_late_packets_dropped() {
        let mut s = Sim::new();
        s.push_at(0, 0);
        assert_eq!(seq_of(&s.jb.pop()), Some(0));
        s.push_at(2, 40);
        // 1 never came: conceal, offering 2 for FEC.
        assert_eq!(
            s.jb.pop(),
            Playout::Conceal {
                next: Some(Bytes::from(2u16.to_be_bytes().to_vec()))
            }
        );
        assert_eq!(seq_of(&s.jb.pop()), Some(2));
        assert_eq!((s.jb.stats().fec_decoded, s.jb.stats().concealed), (1, 0));
        s.push_at(1, 70); // too late now
        assert_eq!(s.jb.stats().late, 1);
        s.push_at(3, 60);
        s.push_at(3, 61);
        assert_eq!(s.jb.stats().duplicates, 1);
        assert_eq!(seq_of(&s.jb.pop()), Some(3));
    }

    #[test]
    fn silence_after_the_sender_stops_then_rebuffers() {
        let mut s = Sim::new();
        for i in 0..5u16 {
            s.push_at(i, i as u64 * 20);
            s.jb.pop();
        }
        let quiet: Vec<_> = (0..6).map(|_| s.jb.pop()).collect();
        assert!(matches!(quiet[0], Playout::Conceal { next: None }));
        // One period waited for the first missing frame (the lean buffer growing for FEC),
        // three more concealed, then silence.
        assert!(matches!(quiet[3], Playout::Conceal { next: None }));
        assert_eq!(quiet[4], Playout::Silence);
        assert_eq!(quiet[5], Playout::Silence);
        assert_eq!(s.jb.stats().underruns, 1);
        // The sender resumes (muted senders keep their sequence numbers running on).
        s.push_at(5, 500);
        assert_eq!(seq_of(&s.jb.pop()), Some(5));
        // The pause is not mistaken for network jitter.
        assert_eq!(s.jb.target_delay(), Duration::from_millis(20));
    }

    #[test]
    fn a_lean_buffer_grows_at_a_loss_so_the_next_loss_is_recovered_by_fec() {
        // Packets arrive exactly on time and are played as they come: one frame buffered at
        // most, so a lost frame has no successor to recover it from yet.
        let mut s = Sim::new();
        let mut outs = Vec::new();
        for i in 0..60u16 {
            // Frames 20 and 40 are lost.
            if i != 20 && i != 40 {
                s.push_at(i, i as u64 * 20);
            }
            outs.push(s.jb.pop());
        }
        // The first loss is concealed for one period while its place is held (the buffer grows
        // by a frame), then recovered from its successor; the second, with a frame buffered
        // now, straight from its successor's in-band FEC.
        assert_eq!(s.jb.stats().concealed, 1);
        assert_eq!(s.jb.stats().fec_decoded, 2);
        assert!(
            outs.iter()
                .any(|o| matches!(o, Playout::Conceal { next: Some(_) }))
        );
        // Nothing else was lost or dropped on the way.
        assert_eq!(s.jb.stats().dropped_for_latency, 0);
    }

    /// Pushes frames `range` (loud except those in `quiet`) 20 ms apart with a 1 ms wobble,
    /// popping after each but the first (the playout starts a period late, as when the first
    /// two frames come together); returns what each pop played.
    fn run_speech(
        s: &mut Sim,
        range: std::ops::Range<u16>,
        quiet: std::ops::Range<u16>,
    ) -> Vec<Option<u16>> {
        let range_start = range.start;
        range
            .map(|i| {
                let len = if quiet.contains(&i) { 3 } else { 100 };
                s.push_sized(i, i as u64 * 20 + u64::from(i % 2), len);
                if i == range_start {
                    return None;
                }
                seq_of(&s.jb.pop())
            })
            .collect()
    }

    #[test]
    fn a_buffer_deeper_than_its_target_sheds_a_frame_where_it_is_quiet() {
        // The 1 ms wobble asks for two frames until 50 arrivals show the path is quiet; the
        // second frame then stays buffered until it is shed.
        let mut s = Sim::new();
        let played = run_speech(&mut s, 0..200, 110..120);
        assert_eq!(s.jb.target_delay(), Duration::from_millis(20));
        assert_eq!(s.jb.stats().dropped_for_latency, 1);
        assert_eq!(s.jb.stats().concealed, 0);
        let skipped: Vec<u16> = (0..199)
            .filter(|seq| !played.contains(&Some(*seq)))
            .collect();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!((110..120).contains(&skipped[0]), "{skipped:?}");
        // Played as soon as it came, where one frame waited a period before.
        assert_eq!(played[60], Some(59));
        assert_eq!(played[199], Some(199));
    }

    #[test]
    fn without_a_quiet_frame_the_surplus_is_shed_anyway_later() {
        let mut s = Sim::new();
        let played = run_speech(&mut s, 0..300, 0..0);
        assert_eq!(s.jb.stats().dropped_for_latency, 1);
        assert_eq!(played[150], Some(149));
        assert_eq!(played[299], Some(299));
    }

    #[test]
    fn a_frame_grown_at_a_loss_is_kept_through_more_losses_and_given_back_after_calm() {
        let mut s = Sim::new();
        let lag_at = |s: &mut Sim, i: u16, lost: bool| {
            if !lost {
                s.push_at(i, i as u64 * 20);
            }
            seq_of(&s.jb.pop()).map(|p| i - p)
        };
        let mut lags = Vec::new();
        for i in 0..1200u16 {
            // Losses now and then for the first 10 s, then none.
            lags.push(lag_at(&mut s, i, i < 500 && i % 100 == 20));
        }
        // One frame grown at the first loss, and the later losses come from FEC.
        assert_eq!(s.jb.stats().concealed, 1);
        assert_eq!(s.jb.stats().fec_decoded, 5);
        assert_eq!(lags[100], Some(1));
        // 15 s after the last loss the frame is given back.
        assert_eq!(lags[1199], Some(0));
        assert_eq!(s.jb.stats().dropped_for_latency, 1);
    }

    #[test]
    fn jitter_raises_the_target_within_bounds() {
        let mut s = Sim::new();
        // Packets arrive in pairs every 40 ms, +-20 ms off their schedule.
        for i in 0..200u16 {
            let ms = (i as u64 / 2) * 40 + if i % 2 == 0 { 0 } else { 1 } + (i as u64 % 5) * 9;
            s.push_at(i, ms);
            if i % 2 == 1 {
                s.jb.pop();
                s.jb.pop();
            }
        }
        // Arrivals spread over about 56 ms: the target covers that plus a frame, no more.
        let target = s.jb.target_delay();
        assert!(target >= Duration::from_millis(60), "{target:?}");
        assert!(target <= Duration::from_millis(100), "{target:?}");
    }

    #[test]
    fn a_burst_is_trimmed_to_keep_latency_low() {
        let mut s = Sim::new();
        for i in 0..20u16 {
            s.push_at(i, 0);
        }
        let first = seq_of(&s.jb.pop()).unwrap();
        assert!(first >= 14, "skipped ahead to {first}");
        assert!(s.jb.stats().dropped_for_latency > 0);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut s = Sim::new();
        let seqs = [65_534u16, 65_535, 0, 1];
        let out: Vec<_> = seqs
            .iter()
            .enumerate()
            .map(|(i, seq)| {
                s.push_at(*seq, i as u64 * 20);
                seq_of(&s.jb.pop())
            })
            .collect();
        assert_eq!(out, seqs.map(Some));
    }

    #[test]
    fn a_restarted_stream_resets() {
        let mut s = Sim::new();
        s.push_at(100, 0);
        s.jb.pop();
        s.push_at(30_000, 20);
        assert_eq!(seq_of(&s.jb.pop()), Some(30_000));
    }
}

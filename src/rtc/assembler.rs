//! Reassembles video frames from RTP packets as a state machine without I/O. A frame is complete
//! when every sequence number from the previous frame's end up to a marker bit is present, so a
//! frame is released the moment its last packet arrives (no waiting for the next frame, which
//! would add a whole frame interval of latency). Reordering is repaired. A gap is waited for
//! (a NACK retransmission takes about a round trip) for `wait`, which the session sizes from the
//! measured round-trip time and jitter, counted from the last repair of the frame at the head
//! (a keyframe of hundreds of packets has dozens of holes, filled over several rounds), up to a
//! few waits in all; only then, or when far too much is waiting behind it, is the frame declared
//! lost.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// Payloads of one frame, in sequence order; `repaired` when it waited for a hole in its
    /// packets to be filled (a retransmission, or a packet overtaken on the way).
    Frame {
        timestamp: u32,
        payloads: Vec<Bytes>,
        repaired: bool,
    },
    /// Packets were lost; what follows may not decode until the next keyframe.
    Lost { packets: u64 },
}

struct Packet {
    timestamp: u32,
    marker: bool,
    payload: Bytes,
}

/// Counters for statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssemblerStats {
    /// Packets that arrived after their frame was released or given up on.
    pub late: u64,
    /// Packets that filled a gap behind newer ones (retransmissions, or reordering).
    pub recovered: u64,
    /// Packets given up on.
    pub lost: u64,
    /// Same packet twice.
    pub duplicates: u64,
    /// Frames released whole.
    pub frames: u64,
}

pub struct FrameAssembler {
    packets: BTreeMap<u64, Packet>,
    highest: Option<u64>,
    /// First sequence number of the next frame to release.
    next_start: Option<u64>,
    /// Since when the frame at the head has had a hole with newer packets behind it.
    gap_first: Option<Instant>,
    /// The last time a hole in the head frame was filled (or `gap_first`): the wait for the
    /// remaining holes counts from here.
    gap_since: Option<Instant>,
    /// The head frame spans `BIG_FRAME_PACKETS` or more (its repair extends its wait).
    head_is_big: bool,
    wait: Duration,
    stats: AssemblerStats,
}

/// How long to wait for a missing packet before the session has measured anything.
pub const DEFAULT_WAIT: Duration = Duration::from_millis(150);
/// Frames that may wait behind a gap before it is given up regardless of time.
const MAX_FRAMES_WAITING: usize = 45;
/// Hard cap on buffered packets (a stream that never sets the marker bit).
const MAX_BUFFERED: usize = 2048;
/// A head frame that keeps being repaired is waited for at most this many waits in all. A 1080p
/// screen keyframe is ~400 packets: at 5 % loss ~20 holes, one of which loses its retransmission
/// too about every other keyframe. Giving up on it costs a keyframe request and another ~500 KB
/// keyframe with its own holes: on `lossy` no share picture ever arrived that way (25 s).
const MAX_WAITS_WHILE_REPAIRED: u32 = 4;
/// A head frame spanning at least this many packets is a big keyframe, waited for while it is
/// being repaired. Smaller frames (a camera's) are given up one wait after their first hole, as
/// before: waiting on while old packets trickle back after an outage held the camera's first
/// frame 1.4 s after the link returned (target 1 s).
const BIG_FRAME_PACKETS: u64 = 64;

impl Default for FrameAssembler {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameAssembler {
    pub fn new() -> Self {
        FrameAssembler {
            packets: BTreeMap::new(),
            highest: None,
            next_start: None,
            gap_first: None,
            gap_since: None,
            head_is_big: false,
            wait: DEFAULT_WAIT,
            stats: AssemblerStats::default(),
        }
    }

    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// How long a hole is waited for from now on.
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// When `poll` should next be called to give up on a hole, if one is open.
    pub fn deadline(&self) -> Option<Instant> {
        let first = self.gap_first?;
        if !self.head_is_big {
            return Some(first + self.wait);
        }
        let since = self.gap_since? + self.wait;
        Some(since.min(first + self.wait * MAX_WAITS_WHILE_REPAIRED))
    }

    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: Bytes,
        now: Instant,
    ) -> Vec<Assembled> {
        let ext = match self.highest {
            None => seq as u64 + (1 << 16),
            Some(h) => {
                let diff = seq.wrapping_sub(h as u16) as i16 as i64;
                (h as i64 + diff).max(0) as u64
            }
        };
        if self.next_start.is_some_and(|s| ext < s) {
            self.stats.late += 1;
            return Vec::new();
        }
        if self.packets.contains_key(&ext) {
            self.stats.duplicates += 1;
            return Vec::new();
        }
        if self.highest.is_some_and(|h| ext < h) {
            self.stats.recovered += 1;
            // A hole of the open gap was filled: the repair is progressing.
            if self.gap_since.is_some() {
                self.gap_since = Some(now);
            }
        }
        self.highest = Some(self.highest.map_or(ext, |h| h.max(ext)));
        self.packets.insert(
            ext,
            Packet {
                timestamp,
                marker,
                payload,
            },
        );
        self.drain(now)
    }

    /// Gives up on a hole whose wait is over.
    pub fn poll(&mut self, now: Instant) -> Vec<Assembled> {
        self.drain(now)
    }

    fn drain(&mut self, now: Instant) -> Vec<Assembled> {
        let mut out = Vec::new();
        while let Some(item) = self.release(now) {
            out.push(item);
        }
        out
    }

    fn release(&mut self, now: Instant) -> Option<Assembled> {
        let (&first, _) = self.packets.first_key_value()?;
        let start = *self.next_start.get_or_insert(first);
        let mut seq = start;
        if first == start {
            // Walk the contiguous run from the start looking for the marker.
            while let Some(p) = self.packets.get(&seq) {
                if p.marker {
                    let timestamp = p.timestamp;
                    let payloads = (start..=seq)
                        .filter_map(|s| self.packets.remove(&s))
                        .map(|p| p.payload)
                        .collect();
                    self.next_start = Some(seq + 1);
                    self.gap_first = None;
                    let repaired = self.gap_since.take().is_some();
                    self.stats.frames += 1;
                    return Some(Assembled::Frame {
                        timestamp,
                        payloads,
                        repaired,
                    });
                }
                seq += 1;
            }
        }
        // The head frame is incomplete. It is a hole (not just a frame still arriving) when
        // packets exist beyond the contiguous run.
        let hole = self.highest.is_some_and(|h| h >= seq);
        if !hole {
            self.gap_first = None;
            self.gap_since = None;
            return None;
        }
        self.gap_first.get_or_insert(now);
        self.gap_since.get_or_insert(now);
        let frames_waiting = self.packets.values().filter(|p| p.marker).count();
        // The head frame's span: up to its marker when that has arrived, else what is there.
        let head_end = self
            .packets
            .range(start..)
            .find(|(_, p)| p.marker)
            .map_or(self.highest.unwrap_or(start), |(s, _)| *s);
        self.head_is_big = head_end + 1 - start >= BIG_FRAME_PACKETS;
        // The same rule `deadline` tells the caller about.
        let expired = self.deadline().is_some_and(|due| now >= due);
        if !expired && frames_waiting < MAX_FRAMES_WAITING && self.packets.len() < MAX_BUFFERED {
            return None;
        }
        // Give up on everything up to the end of the first frame that has a marker.
        let end = self
            .packets
            .iter()
            .find(|(_, p)| p.marker)
            .map(|(s, _)| *s)
            .unwrap_or(first);
        let mut dropped = end + 1 - start;
        let stale: Vec<u64> = self.packets.range(..=end).map(|(s, _)| *s).collect();
        for s in stale {
            self.packets.remove(&s);
            dropped -= 1;
        }
        self.next_start = Some(end + 1);
        // The next frame's hole, if any, waits afresh.
        self.gap_first = None;
        self.gap_since = None;
        self.stats.lost += dropped;
        Some(Assembled::Lost { packets: dropped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(n: u8) -> Bytes {
        Bytes::from(vec![n])
    }

    fn frame(ts: u32, ns: &[u8]) -> Assembled {
        Assembled::Frame {
            timestamp: ts,
            payloads: ns.iter().map(|n| pkt(*n)).collect(),
            repaired: false,
        }
    }

    /// A frame that waited for a hole to be filled.
    fn repaired(ts: u32, ns: &[u8]) -> Assembled {
        Assembled::Frame {
            timestamp: ts,
            payloads: ns.iter().map(|n| pkt(*n)).collect(),
            repaired: true,
        }
    }

    fn ms(start: Instant, v: u64) -> Instant {
        start + Duration::from_millis(v)
    }

    #[test]
    fn in_order_frames_release_on_the_marker() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        assert!(a.push(10, 100, false, pkt(1), t).is_empty());
        assert!(a.push(11, 100, false, pkt(2), t).is_empty());
        assert_eq!(
            a.push(12, 100, true, pkt(3), t),
            vec![frame(100, &[1, 2, 3])]
        );
        assert_eq!(a.push(13, 200, true, pkt(4), t), vec![frame(200, &[4])]);
        assert_eq!(a.deadline(), None);
    }

    #[test]
    fn a_retransmission_within_the_wait_fills_the_hole() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.set_wait(Duration::from_millis(200));
        a.push(1, 0, true, pkt(0), t);
        a.push(2, 9, false, pkt(2), t);
        // 3 is lost; 4 ends the frame, 5 and 6 are whole frames behind it.
        assert!(a.push(4, 9, true, pkt(4), ms(t, 1)).is_empty());
        assert_eq!(a.deadline(), Some(ms(t, 201)));
        assert!(a.push(5, 18, true, pkt(5), ms(t, 33)).is_empty());
        assert!(a.push(6, 27, true, pkt(6), ms(t, 66)).is_empty());
        assert!(a.poll(ms(t, 150)).is_empty());
        // The retransmission arrives after 120 ms: everything waiting comes out, in order; the
        // frame that waited is marked repaired (the playout clock remembers its lateness).
        assert_eq!(
            a.push(3, 9, false, pkt(3), ms(t, 121)),
            vec![repaired(9, &[2, 3, 4]), frame(18, &[5]), frame(27, &[6])]
        );
        assert_eq!(a.stats().recovered, 1);
        assert_eq!(a.deadline(), None);
    }

    #[test]
    fn a_big_frame_repaired_over_several_rounds_is_waited_for() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.set_wait(Duration::from_millis(100));
        a.push(1, 0, true, pkt(0), t);
        // A keyframe 2..=101 with holes at 3 and 70, and a frame behind it.
        for n in (2u8..=100).filter(|n| *n != 3 && *n != 70) {
            assert!(a.push(n as u16, 9, false, pkt(n), t).is_empty());
        }
        assert!(a.push(101, 9, true, pkt(101), t).is_empty());
        assert!(a.push(102, 18, true, pkt(102), ms(t, 40)).is_empty());
        // 3 comes back in the first round; 70's retransmission was lost and comes in the second,
        // after the first wait would have run out.
        assert!(a.push(3, 9, false, pkt(3), ms(t, 90)).is_empty());
        assert_eq!(a.deadline(), Some(ms(t, 190)));
        assert!(a.poll(ms(t, 150)).is_empty());
        let keyframe: Vec<u8> = (2..=101).collect();
        assert_eq!(
            a.push(70, 9, false, pkt(70), ms(t, 170)),
            vec![repaired(9, &keyframe), frame(18, &[102])]
        );
        assert_eq!(a.stats().lost, 0);
    }

    #[test]
    fn a_small_frame_is_given_up_one_wait_after_its_first_hole_even_while_repaired() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.set_wait(Duration::from_millis(100));
        a.push(1, 0, true, pkt(0), t);
        a.push(2, 9, false, pkt(2), t);
        a.push(6, 9, true, pkt(6), t);
        a.push(7, 18, true, pkt(7), t);
        a.poll(t);
        a.push(3, 9, false, pkt(3), ms(t, 60));
        assert_eq!(a.deadline(), Some(ms(t, 100)));
        assert_eq!(
            a.poll(ms(t, 100)),
            vec![Assembled::Lost { packets: 2 }, frame(18, &[7])]
        );
    }

    #[test]
    fn a_frame_that_keeps_being_repaired_is_still_given_up_after_a_few_waits() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.set_wait(Duration::from_millis(100));
        a.push(1, 0, true, pkt(0), t);
        a.push(2, 9, false, pkt(2), t);
        a.push(130, 9, true, pkt(130), t);
        // One hole filled every 90 ms, never all of them.
        for (i, n) in (3u8..=6).enumerate() {
            let at = ms(t, 90 * (i as u64 + 1));
            a.push(n as u16, 9, false, pkt(n), at);
        }
        assert_eq!(a.deadline(), Some(ms(t, 400)));
        assert!(a.poll(ms(t, 399)).is_empty());
        assert_eq!(a.poll(ms(t, 400)), vec![Assembled::Lost { packets: 123 }]);
    }

    #[test]
    fn a_hole_is_given_up_when_its_wait_is_over() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.set_wait(Duration::from_millis(100));
        a.push(1, 0, true, pkt(0), t);
        a.push(2, 9, false, pkt(2), t);
        a.push(4, 9, true, pkt(4), t);
        a.push(5, 18, true, pkt(5), ms(t, 33));
        assert!(a.poll(ms(t, 99)).is_empty());
        assert_eq!(
            a.poll(ms(t, 100)),
            vec![Assembled::Lost { packets: 1 }, frame(18, &[5])]
        );
        // The missing packet turning up now is late.
        assert!(a.push(3, 9, false, pkt(3), ms(t, 120)).is_empty());
        assert_eq!(a.stats().late, 1);
        assert_eq!(a.stats().lost, 1);
    }

    #[test]
    fn a_frame_still_arriving_is_not_a_hole() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.push(1, 0, false, pkt(1), t);
        a.push(2, 0, false, pkt(2), t);
        assert_eq!(a.deadline(), None);
        assert!(a.poll(ms(t, 10_000)).is_empty());
        assert_eq!(
            a.push(3, 0, true, pkt(3), ms(t, 10_000)),
            vec![frame(0, &[1, 2, 3])]
        );
    }

    #[test]
    fn too_many_frames_behind_a_hole_give_it_up_early() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.set_wait(Duration::from_secs(60));
        a.push(1, 0, true, pkt(0), t);
        // 2 never comes.
        let mut out = Vec::new();
        for seq in 3..(3 + MAX_FRAMES_WAITING as u16) {
            out.extend(a.push(seq, seq as u32, true, pkt(seq as u8), t));
        }
        // The frame the hole belongs to (seq 3) goes with it; the 44 behind it come out.
        assert_eq!(out.first(), Some(&Assembled::Lost { packets: 1 }));
        assert_eq!(out.len(), MAX_FRAMES_WAITING);
    }

    #[test]
    fn duplicates_and_wrapping_sequence_numbers() {
        let t = Instant::now();
        let mut a = FrameAssembler::new();
        a.push(65_534, 0, true, pkt(0), t);
        assert!(a.push(65_535, 9, false, pkt(1), t).is_empty());
        assert!(a.push(65_535, 9, false, pkt(1), t).is_empty());
        assert_eq!(a.stats().duplicates, 1);
        assert_eq!(a.push(0, 9, true, pkt(2), t), vec![frame(9, &[1, 2])]);
    }
}

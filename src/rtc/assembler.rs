//! Reassembles video frames from RTP packets as a state machine without I/O. A frame is complete
//! when every sequence number from the previous frame's end up to a marker bit is present, so a
//! frame is released the moment its last packet arrives (no waiting for the next frame, which
//! would add a whole frame interval of latency). Reordering is repaired; a gap that is not filled
//! (by a NACK retransmission) before three newer frames are waiting is declared lost.

use bytes::Bytes;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Assembled {
    /// Payloads of one frame, in sequence order.
    Frame {
        timestamp: u32,
        payloads: Vec<Bytes>,
    },
    /// Packets were lost; what follows may not decode until the next keyframe.
    Lost { packets: u64 },
}

struct Packet {
    timestamp: u32,
    marker: bool,
    payload: Bytes,
}

#[derive(Default)]
pub struct FrameAssembler {
    packets: BTreeMap<u64, Packet>,
    highest: Option<u64>,
    /// First sequence number of the next frame to release.
    next_start: Option<u64>,
    late: u64,
}

/// Newer complete-looking frames to wait through before giving up on a gap.
const FRAMES_BEFORE_GIVING_UP: usize = 3;
/// Hard cap on buffered packets (a stream that never sets the marker bit).
const MAX_BUFFERED: usize = 2048;

impl FrameAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Packets that arrived after their frame was released or given up on.
    pub fn late_packets(&self) -> u64 {
        self.late
    }

    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: Bytes,
    ) -> Vec<Assembled> {
        let ext = match self.highest {
            None => seq as u64 + (1 << 16),
            Some(h) => {
                let diff = seq.wrapping_sub(h as u16) as i16 as i64;
                (h as i64 + diff).max(0) as u64
            }
        };
        if self.next_start.is_some_and(|s| ext < s) {
            self.late += 1;
            return Vec::new();
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
        let mut out = Vec::new();
        while let Some(item) = self.release() {
            out.push(item);
        }
        out
    }

    fn release(&mut self) -> Option<Assembled> {
        let (&first, _) = self.packets.first_key_value()?;
        let start = *self.next_start.get_or_insert(first);
        if first == start {
            // Walk the contiguous run from the start looking for the marker.
            let mut seq = start;
            while let Some(p) = self.packets.get(&seq) {
                if p.marker {
                    let timestamp = p.timestamp;
                    let payloads = (start..=seq)
                        .filter_map(|s| self.packets.remove(&s))
                        .map(|p| p.payload)
                        .collect();
                    self.next_start = Some(seq + 1);
                    return Some(Assembled::Frame {
                        timestamp,
                        payloads,
                    });
                }
                seq += 1;
            }
        }
        // Incomplete. Give up on the gap once enough newer frames are waiting behind it.
        let markers_waiting = self.packets.values().filter(|p| p.marker).count();
        if markers_waiting < FRAMES_BEFORE_GIVING_UP && self.packets.len() < MAX_BUFFERED {
            return None;
        }
        let &end = self
            .packets
            .iter()
            .find(|(_, p)| p.marker)
            .map(|(s, _)| s)
            .unwrap_or(&first);
        let mut dropped = end + 1 - start;
        let stale: Vec<u64> = self.packets.range(..=end).map(|(s, _)| *s).collect();
        for s in stale {
            self.packets.remove(&s);
            dropped -= 1;
        }
        self.next_start = Some(end + 1);
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
        }
    }

    #[test]
    fn in_order_frames_release_on_the_marker() {
        let mut a = FrameAssembler::new();
        assert!(a.push(10, 100, false, pkt(1)).is_empty());
        assert!(a.push(11, 100, false, pkt(2)).is_empty());
        assert_eq!(a.push(12, 100, true, pkt(3)), vec![frame(100, &[1, 2, 3])]);
        assert_eq!(a.push(13, 200, true, pkt(4)), vec![frame(200, &[4])]);
    }

    #[test]
    fn reordered_packets_are_put_back_in_order() {
        let mut a = FrameAssembler::new();
        a.push(1, 0, true, pkt(0));
        assert!(a.push(3, 9, true, pkt(3)).is_empty());
        assert_eq!(a.push(2, 9, false, pkt(2)), vec![frame(9, &[2, 3])]);
        a.push(4, 18, false, pkt(4));
        // A retransmission filling a gap releases the frame and the one queued behind it.
        a.push(6, 18, true, pkt(6));
        a.push(7, 27, true, pkt(7));
        assert_eq!(
            a.push(5, 18, false, pkt(5)),
            vec![frame(18, &[4, 5, 6]), frame(27, &[7])]
        );
    }

    #[test]
    fn unfilled_gaps_become_loss_after_three_frames() {
        let mut a = FrameAssembler::new();
        a.push(1, 0, true, pkt(0));
        a.push(2, 9, false, pkt(2)); // 3 never comes
        a.push(4, 9, true, pkt(4));
        assert!(a.push(5, 18, true, pkt(5)).is_empty());
        let out = a.push(6, 27, true, pkt(6));
        assert_eq!(
            out,
            vec![
                Assembled::Lost { packets: 1 },
                frame(18, &[5]),
                frame(27, &[6])
            ]
        );
        // The missing packet turning up now is late.
        assert!(a.push(3, 9, false, pkt(3)).is_empty());
        assert_eq!(a.late_packets(), 1);
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut a = FrameAssembler::new();
        a.push(65_534, 0, true, pkt(0));
        assert!(a.push(65_535, 9, false, pkt(1)).is_empty());
        assert_eq!(a.push(0, 9, true, pkt(2)), vec![frame(9, &[1, 2])]);
    }
}

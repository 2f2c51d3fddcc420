//! A frame stamp drawn into the picture: frame number and capture time as a grid of black and
//! white cells in the top-left corner, large enough (1/40 of the width per cell) to survive lossy
//! H.264 coding, so a receiver can read loss, order and capture-to-display-hand-off latency from decoded pixels.

use super::frame::{I420Frame, RgbaFrame};

const CELLS_PER_ROW: usize = 40;
const SYNC: [bool; 4] = [true, false, true, true];
const PAYLOAD_BITS: usize = 8 + 32 + 48 + 8;
const TOTAL_BITS: usize = SYNC.len() + PAYLOAD_BITS;
/// Capture times are carried modulo 2^48 microseconds (about 8.9 years).
pub const TIME_MODULUS: u64 = 1 << 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameStamp {
    /// Identifies the sending source, so a receiver can tell streams apart.
    pub source: u8,
    pub number: u32,
    /// Capture time in microseconds since the Unix epoch, modulo [`TIME_MODULUS`].
    pub capture_us: u64,
}

impl FrameStamp {
    /// Microseconds from capture to `now_us` (wall clock on the same machine), wrap-safe.
    pub fn age_us(&self, now_us: u64) -> i64 {
        let now = now_us % TIME_MODULUS;
        let diff = (now + TIME_MODULUS - self.capture_us) % TIME_MODULUS;
        // Treat a "future" stamp (clock step) as negative rather than as ~8.9 years.
        if diff > TIME_MODULUS / 2 {
            diff as i64 - TIME_MODULUS as i64
        } else {
            diff as i64
        }
    }
}

/// Side of one cell in pixels for a frame of this width.
pub fn cell_size(width: usize) -> usize {
    (width / CELLS_PER_ROW).max(4)
}

/// Rows of cells the stamp occupies.
pub fn stamp_rows() -> usize {
    TOTAL_BITS.div_ceil(CELLS_PER_ROW)
}

fn bits(stamp: FrameStamp) -> [bool; TOTAL_BITS] {
    let mut payload = [0u8; 11];
    payload[0] = stamp.source;
    payload[1..5].copy_from_slice(&stamp.number.to_be_bytes());
    payload[5..].copy_from_slice(&(stamp.capture_us % TIME_MODULUS).to_be_bytes()[2..]);
    let crc = crc8(&payload);
    let mut out = [false; TOTAL_BITS];
    out[..SYNC.len()].copy_from_slice(&SYNC);
    for (i, byte) in payload.iter().chain(std::iter::once(&crc)).enumerate() {
        for bit in 0..8 {
            out[SYNC.len() + i * 8 + bit] = byte & (0x80 >> bit) != 0;
        }
    }
    out
}

fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Draws the stamp into the frame (luma white/black cells, neutral chroma).
pub fn write_stamp(frame: &mut I420Frame, stamp: FrameStamp) {
    let cell = cell_size(frame.width);
    let width = frame.width;
    let (cw, _) = frame.chroma_size();
    let (y_plane, u_plane, v_plane) = frame.planes_mut();
    for (i, bit) in bits(stamp).into_iter().enumerate() {
        let (cx, cy) = ((i % CELLS_PER_ROW) * cell, (i / CELLS_PER_ROW) * cell);
        let luma = if bit { 235 } else { 16 };
        for row in cy..cy + cell {
            y_plane[row * width + cx..row * width + cx + cell].fill(luma);
        }
        for crow in cy / 2..(cy + cell) / 2 {
            u_plane[crow * cw + cx / 2..crow * cw + (cx + cell) / 2].fill(128);
            v_plane[crow * cw + cx / 2..crow * cw + (cx + cell) / 2].fill(128);
        }
    }
}

/// Reads a stamp back from decoded pixels; `None` if there is none or it does not check out.
pub fn read_stamp(frame: &RgbaFrame) -> Option<FrameStamp> {
    let cell = cell_size(frame.width);
    if frame.width < CELLS_PER_ROW * cell || frame.height < stamp_rows() * cell {
        return None;
    }
    let mut read = [false; TOTAL_BITS];
    for (i, bit) in read.iter_mut().enumerate() {
        let (cx, cy) = ((i % CELLS_PER_ROW) * cell, (i / CELLS_PER_ROW) * cell);
        // Sample the middle half of the cell, away from edges where coding artefacts live.
        let (x0, y0, span) = (cx + cell / 4, cy + cell / 4, (cell / 2).max(1));
        let mut sum = 0u32;
        for y in y0..y0 + span {
            for x in x0..x0 + span {
                sum += frame.luma(x, y) as u32;
            }
        }
        *bit = sum / (span * span) as u32 >= 128;
    }
    if read[..SYNC.len()] != SYNC {
        return None;
    }
    let mut bytes = [0u8; 12];
    for (i, byte) in bytes.iter_mut().enumerate() {
        for bit in 0..8 {
            if read[SYNC.len() + i * 8 + bit] {
                *byte |= 0x80 >> bit;
            }
        }
    }
    if crc8(&bytes[..11]) != bytes[11] {
        return None;
    }
    let number = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let mut time = [0u8; 8];
    time[2..].copy_from_slice(&bytes[5..11]);
    Some(FrameStamp {
        source: bytes[0],
        number,
        capture_us: u64::from_be_bytes(time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_survives_conversion_at_both_sizes() {
        for (w, h) in [(640, 480), (1280, 720), (320, 240)] {
            let mut frame = I420Frame::new(w, h);
            let stamp = FrameStamp {
                source: 0xA5,
                number: 0xDEAD_BEEF,
                capture_us: 1_795_000_123_456_789 % TIME_MODULUS,
            };
            write_stamp(&mut frame, stamp);
            let mut rgba = RgbaFrame::default();
            frame.to_rgba(&mut rgba);
            assert_eq!(read_stamp(&rgba), Some(stamp), "{w}x{h}");
        }
    }

    #[test]
    fn unstamped_or_damaged_frames_read_as_none() {
        let frame = I420Frame::new(640, 480);
        let mut rgba = RgbaFrame::default();
        frame.to_rgba(&mut rgba);
        assert_eq!(read_stamp(&rgba), None);

        let mut frame = I420Frame::new(640, 480);
        write_stamp(
            &mut frame,
            FrameStamp {
                source: 3,
                number: 7,
                capture_us: 99,
            },
        );
        // Flip one payload cell: the checksum must catch it.
        let cell = cell_size(640);
        let (cx, cy) = (10 * cell, 0);
        let (y, _, _) = frame.planes_mut();
        for row in cy..cy + cell {
            for x in &mut y[row * 640 + cx..row * 640 + cx + cell] {
                *x = if *x > 128 { 16 } else { 235 };
            }
        }
        frame.to_rgba(&mut rgba);
        assert_eq!(read_stamp(&rgba), None);
        // Too small to hold a stamp.
        let tiny = RgbaFrame {
            width: 40,
            height: 8,
            pixels: vec![0; 40 * 8 * 4],
            capture_us: 0,
        };
        assert_eq!(read_stamp(&tiny), None);
    }

    #[test]
    fn age_wraps_around_the_modulus() {
        let s = FrameStamp {
            source: 0,
            number: 1,
            capture_us: TIME_MODULUS - 10,
        };
        assert_eq!(s.age_us(TIME_MODULUS + 5), 15);
        assert_eq!(s.age_us(TIME_MODULUS * 3 - 20), -10);
    }
}

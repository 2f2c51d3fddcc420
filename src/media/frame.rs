//! Raw video frames: planar I420 (what sources produce and encoders take) and RGBA (what decoders
//! deliver for display), with the conversions between them (BT.601, limited range, as H.264
//! camera video uses), and a pool that reuses RGBA buffers the display has let go of.

use std::collections::VecDeque;
use std::sync::Arc;

/// A planar 4:2:0 frame: the Y plane (`width * height`), then U and V (`ceil(w/2) * ceil(h/2)` each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct I420Frame {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
    /// Capture time, microseconds since the Unix epoch.
    pub capture_us: u64,
}

impl I420Frame {
    /// A black frame.
    pub fn new(width: usize, height: usize) -> Self {
        let (cw, ch) = chroma_size(width, height);
        let mut data = vec![16u8; width * height + 2 * cw * ch];
        data[width * height..].fill(128);
        I420Frame {
            width,
            height,
            data,
            capture_us: 0,
        }
    }

    pub fn chroma_size(&self) -> (usize, usize) {
        chroma_size(self.width, self.height)
    }

    pub fn y(&self) -> &[u8] {
        &self.data[..self.width * self.height]
    }

    pub fn u(&self) -> &[u8] {
        let (cw, ch) = self.chroma_size();
        let start = self.width * self.height;
        &self.data[start..start + cw * ch]
    }

    pub fn v(&self) -> &[u8] {
        let (cw, ch) = self.chroma_size();
        let start = self.width * self.height + cw * ch;
        &self.data[start..start + cw * ch]
    }

    /// The three planes, mutably.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let (cw, ch) = self.chroma_size();
        let (y, rest) = self.data.split_at_mut(self.width * self.height);
        let (u, v) = rest.split_at_mut(cw * ch);
        (y, u, v)
    }

    /// Converts to RGBA, reusing `out`'s allocation.
    pub fn to_rgba(&self, out: &mut RgbaFrame) {
        i420_to_rgba(
            (self.y(), self.u(), self.v()),
            (self.width, self.width.div_ceil(2)),
            self.width,
            self.height,
            out,
        );
        out.capture_us = self.capture_us;
    }

    /// Converts an RGBA image to I420 (used for camera frames and tests).
    pub fn from_rgba(rgba: &[u8], width: usize, height: usize) -> Self {
        let mut frame = I420Frame::new(width, height);
        let (cw, _) = frame.chroma_size();
        let (y_plane, u_plane, v_plane) = frame.planes_mut();
        for row in 0..height {
            for col in 0..width {
                let i = (row * width + col) * 4;
                let (r, g, b) = (rgba[i] as i32, rgba[i + 1] as i32, rgba[i + 2] as i32);
                y_plane[row * width + col] =
                    clamp_u8(((66 * r + 129 * g + 25 * b + 128) >> 8) + 16);
            }
        }
        for crow in 0..height.div_ceil(2) {
            for ccol in 0..width.div_ceil(2) {
                // Average the 2x2 block (edge pixels repeat at odd sizes).
                let (mut r, mut g, mut b) = (0i32, 0i32, 0i32);
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    let row = (crow * 2 + dy).min(height - 1);
                    let col = (ccol * 2 + dx).min(width - 1);
                    let i = (row * width + col) * 4;
                    r += rgba[i] as i32;
                    g += rgba[i + 1] as i32;
                    b += rgba[i + 2] as i32;
                }
                let (r, g, b) = (r / 4, g / 4, b / 4);
                u_plane[crow * cw + ccol] =
                    clamp_u8(((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128);
                v_plane[crow * cw + ccol] =
                    clamp_u8(((112 * r - 94 * g - 18 * b + 128) >> 8) + 128);
            }
        }
        frame
    }
}

pub fn chroma_size(width: usize, height: usize) -> (usize, usize) {
    (width.div_ceil(2), height.div_ceil(2))
}

/// An RGBA image, 4 bytes per pixel, rows packed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RgbaFrame {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
    /// Capture time of the source frame, microseconds since the Unix epoch (0 when unknown).
    pub capture_us: u64,
}

impl RgbaFrame {
    /// Luma (BT.601, full range 0..=255) at a pixel.
    pub fn luma(&self, x: usize, y: usize) -> u8 {
        let i = (y * self.width + x) * 4;
        let (r, g, b) = (
            self.pixels[i] as u32,
            self.pixels[i + 1] as u32,
            self.pixels[i + 2] as u32,
        );
        ((299 * r + 587 * g + 114 * b) / 1000) as u8
    }

    /// Peak signal-to-noise ratio of this picture's luma against `reference`, in dB (how close a
    /// received or captured picture is to what was sent); `None` when the sizes differ.
    pub fn luma_psnr(&self, reference: &RgbaFrame) -> Option<f64> {
        self.luma_psnr_rows(reference, 0..self.height)
    }

    /// The same over the rows in `rows` only (parts of a picture that change, such as a stamp,
    /// left out); `None` when the sizes differ or no row is left.
    pub fn luma_psnr_rows(
        &self,
        reference: &RgbaFrame,
        rows: std::ops::Range<usize>,
    ) -> Option<f64> {
        if (self.width, self.height) != (reference.width, reference.height) {
            return None;
        }
        let rows = rows.start.min(self.height)..rows.end.min(self.height);
        if rows.is_empty() {
            return None;
        }
        let mut sum = 0.0;
        for y in rows.clone() {
            for x in 0..self.width {
                let d = self.luma(x, y) as f64 - reference.luma(x, y) as f64;
                sum += d * d;
            }
        }
        let mse = sum / (self.width * rows.len()).max(1) as f64;
        Some(10.0 * (255.0 * 255.0 / mse.max(1e-9)).log10())
    }
}

/// Converts planar I420 with the given strides (luma, chroma) into `out`.
pub fn i420_to_rgba(
    planes: (&[u8], &[u8], &[u8]),
    strides: (usize, usize),
    width: usize,
    height: usize,
    out: &mut RgbaFrame,
) {
    let (y_plane, u_plane, v_plane) = planes;
    let (y_stride, c_stride) = strides;
    out.width = width;
    out.height = height;
    out.pixels.resize(width * height * 4, 0);
    for (row, out_row) in out.pixels.chunks_exact_mut(width * 4).enumerate() {
        let y_row = &y_plane[row * y_stride..row * y_stride + width];
        let c_off = (row / 2) * c_stride;
        let u_row = &u_plane[c_off..c_off + width.div_ceil(2)];
        let v_row = &v_plane[c_off..c_off + width.div_ceil(2)];
        for (col, px) in out_row.chunks_exact_mut(4).enumerate() {
            let c = 298 * (y_row[col] as i32 - 16);
            let d = u_row[col / 2] as i32 - 128;
            let e = v_row[col / 2] as i32 - 128;
            px[0] = clamp_u8((c + 409 * e + 128) >> 8);
            px[1] = clamp_u8((c - 100 * d - 208 * e + 128) >> 8);
            px[2] = clamp_u8((c + 516 * d + 128) >> 8);
            px[3] = 255;
        }
    }
}

fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rgba_round_trip_keeps_colours_close() {
        let (w, h) = (6, 4);
        let mut rgba = Vec::new();
        for i in 0..w * h {
            // 2x2 blocks of one colour so chroma subsampling loses nothing.
            let block = ((i % w) / 2 + (i / w) / 2 * 3) as u8;
            rgba.extend_from_slice(&[block * 40, 200 - block * 30, 50 + block * 20, 255]);
        }
        let frame = I420Frame::from_rgba(&rgba, w, h);
        let mut back = RgbaFrame::default();
        frame.to_rgba(&mut back);
        assert_eq!((back.width, back.height), (w, h));
        for (a, b) in rgba.iter().zip(&back.pixels) {
            assert!((*a as i32 - *b as i32).abs() <= 3, "{a} vs {b}");
        }
    }

    #[test]
    fn odd_sizes_have_rounded_up_chroma() {
        let f = I420Frame::new(5, 3);
        assert_eq!(f.chroma_size(), (3, 2));
        assert_eq!(f.data.len(), 15 + 2 * 6);
        let mut out = RgbaFrame::default();
        f.to_rgba(&mut out);
        assert_eq!(out.pixels.len(), 5 * 3 * 4);
        assert!(out.pixels.chunks(4).all(|p| p[0] == 0 && p[3] == 255));
    }
}

/// Reuses RGBA buffers the display has let go of, instead of allocating one per frame.
#[derive(Default)]
pub(crate) struct FramePool {
    recent: VecDeque<Arc<RgbaFrame>>,
}

impl FramePool {
    pub(crate) fn get(&mut self) -> Arc<RgbaFrame> {
        if let Some(i) = self.recent.iter().position(|f| Arc::strong_count(f) == 1)
            && let Some(f) = self.recent.remove(i)
        {
            return f;
        }
        Arc::new(RgbaFrame::default())
    }
    pub(crate) fn publish(&mut self, frame: Arc<RgbaFrame>) {
        self.recent.push_back(frame);
        while self.recent.len() > 3 {
            self.recent.pop_front();
        }
    }
}

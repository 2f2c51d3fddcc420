//! The synthetic camera: a moving test pattern (scrolling colour bars and a bouncing box) with a
//! frame stamp, rendered straight into I420 with row copies so it stays cheap at 30 fps.

use super::frame::I420Frame;
use super::stamp::{FrameStamp, TIME_MODULUS, write_stamp};

/// (Y, U, V) of the classic bars: white, yellow, cyan, green, magenta, red, blue, black.
const BARS: [(u8, u8, u8); 8] = [
    (235, 128, 128),
    (210, 16, 146),
    (170, 166, 16),
    (145, 54, 34),
    (106, 202, 222),
    (81, 90, 240),
    (41, 240, 110),
    (16, 128, 128),
];

pub struct TestPattern {
    width: usize,
    height: usize,
    source: u8,
    /// Two periods of one bar row, so any scroll offset is one contiguous slice.
    y_row: Vec<u8>,
    u_row: Vec<u8>,
    v_row: Vec<u8>,
    number: u32,
}

impl TestPattern {
    /// `source` identifies this pattern in its stamps and rotates the bar order, so two peers'
    /// patterns look different too.
    pub fn new(width: usize, height: usize, source: u8) -> Self {
        let width = width.max(64) & !1;
        let height = height.max(64) & !1;
        let bar_width = width.div_ceil(BARS.len());
        let colour = |x: usize| BARS[((x % width) / bar_width + source as usize) % BARS.len()];
        let y_row = (0..2 * width).map(|x| colour(x).0).collect();
        let u_row = (0..width).map(|cx| colour(cx * 2).1).collect();
        let v_row = (0..width).map(|cx| colour(cx * 2).2).collect();
        TestPattern {
            width,
            height,
            source,
            y_row,
            u_row,
            v_row,
            number: 0,
        }
    }

    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Renders the next frame, stamped with its number and `capture_us`.
    pub fn render(&mut self, capture_us: u64) -> I420Frame {
        let mut frame = I420Frame::new(self.width, self.height);
        self.render_into(&mut frame, capture_us);
        frame
    }

    pub fn render_into(&mut self, frame: &mut I420Frame, capture_us: u64) {
        let (w, h) = (self.width, self.height);
        if frame.width != w || frame.height != h {
            *frame = I420Frame::new(w, h);
        }
        let n = self.number as usize;
        let shift = (n * 4) % w;
        let (cw, _) = frame.chroma_size();
        let (y_plane, u_plane, v_plane) = frame.planes_mut();
        for row in y_plane.chunks_exact_mut(w) {
            row.copy_from_slice(&self.y_row[shift..shift + w]);
        }
        let cshift = shift / 2;
        for (u_out, v_out) in u_plane
            .chunks_exact_mut(cw)
            .zip(v_plane.chunks_exact_mut(cw))
        {
            let take = cw.min(self.u_row.len() - cshift);
            u_out[..take].copy_from_slice(&self.u_row[cshift..cshift + take]);
            v_out[..take].copy_from_slice(&self.v_row[cshift..cshift + take]);
            u_out[take..].copy_from_slice(&self.u_row[..cw - take]);
            v_out[take..].copy_from_slice(&self.v_row[..cw - take]);
        }
        // A grey box bouncing around the lower part of the picture.
        let side = (h / 5) & !1;
        let span_x = w - side;
        let span_y = h / 2 - side / 2;
        let bounce = |t: usize, span: usize| {
            let p = t % (2 * span.max(1));
            if p < span { p } else { 2 * span - p }
        };
        let bx = bounce(n * 6, span_x) & !1;
        let by = (h / 2 + bounce(n * 3, span_y) - side / 2) & !1;
        for row in by..(by + side).min(h) {
            y_plane[row * w + bx..row * w + bx + side].fill(180);
        }
        for crow in by / 2..((by + side) / 2).min(h / 2) {
            u_plane[crow * cw + bx / 2..crow * cw + (bx + side) / 2].fill(128);
            v_plane[crow * cw + bx / 2..crow * cw + (bx + side) / 2].fill(128);
        }
        write_stamp(
            frame,
            FrameStamp {
                source: self.source,
                number: self.number,
                capture_us: capture_us % TIME_MODULUS,
            },
        );
        frame.capture_us = capture_us;
        self.number = self.number.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::frame::RgbaFrame;
    use crate::media::stamp::read_stamp;

    #[test]
    fn frames_move_and_carry_increasing_stamps() {
        let mut p = TestPattern::new(640, 480, 9);
        let a = p.render(1_000);
        let b = p.render(34_333);
        assert_ne!(a.y(), b.y(), "the picture moves");
        let mut rgba = RgbaFrame::default();
        b.to_rgba(&mut rgba);
        let s = read_stamp(&rgba).expect("stamp readable");
        assert_eq!((s.source, s.number, s.capture_us), (9, 1, 34_333));
        assert_eq!(rgba.capture_us, 34_333);
    }

    #[test]
    fn sources_look_different() {
        let a = TestPattern::new(320, 240, 0).render(0);
        let b = TestPattern::new(320, 240, 1).render(0);
        assert_ne!(a.data, b.data);
    }
}

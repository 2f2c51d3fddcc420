//! A synthetic camera that costs what a real one costs to encode: a detailed texture panned at
//! sub-pixel speed, two textured objects moving across it, and sensor-like grain on every frame,
//! with the frame stamp in the corner for latency. At 640x480 and 30 fps it fills well over
//! 1 Mbit/s of H.264 at good quality, so congestion shows up in tests as it would with a camera.
//! The test pattern (`pattern`) stays for latency work, where cheap frames are the point.

use super::frame::I420Frame;
use super::stamp::{FrameStamp, TIME_MODULUS, write_stamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Grain values added to luma, cycled with a random offset per frame.
const GRAIN_LEN: usize = 1 << 16;
/// Strength of the grain in luma steps (±).
const GRAIN: i16 = 3;

struct Plane {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl Plane {
    /// Multi-octave value noise in 16..=235, seeded, `width` x `height`.
    fn noise(width: usize, height: usize, rng: &mut StdRng, cells: &[(usize, f32)]) -> Plane {
        let mut acc = vec![0f32; width * height];
        for &(cell, weight) in cells {
            let gw = width / cell + 2;
            let gh = height / cell + 2;
            let grid: Vec<f32> = (0..gw * gh).map(|_| rng.random::<f32>()).collect();
            for y in 0..height {
                let gy = y / cell;
                let fy = (y % cell) as f32 / cell as f32;
                for x in 0..width {
                    let gx = x / cell;
                    let fx = (x % cell) as f32 / cell as f32;
                    let g = |dx: usize, dy: usize| grid[(gy + dy) * gw + gx + dx];
                    let top = g(0, 0) + (g(1, 0) - g(0, 0)) * fx;
                    let bottom = g(0, 1) + (g(1, 1) - g(0, 1)) * fx;
                    acc[y * width + x] += (top + (bottom - top) * fy) * weight;
                }
            }
        }
        let total: f32 = cells.iter().map(|c| c.1).sum();
        let data = acc
            .into_iter()
            .map(|v| (16.0 + 219.0 * (v / total)).clamp(16.0, 235.0) as u8)
            .collect();
        Plane {
            width,
            height,
            data,
        }
    }

    /// Bilinear sample at (x, y) in 1/16 pixel units.
    fn sample(&self, x16: usize, y16: usize) -> u8 {
        let (x, y) = (x16 >> 4, y16 >> 4);
        let (fx, fy) = ((x16 & 15) as u32, (y16 & 15) as u32);
        let x1 = (x + 1).min(self.width - 1);
        let y1 = (y + 1).min(self.height - 1);
        let p = |x: usize, y: usize| self.data[y * self.width + x] as u32;
        let top = p(x, y) * (16 - fx) + p(x1, y) * fx;
        let bottom = p(x, y1) * (16 - fx) + p(x1, y1) * fx;
        ((top * (16 - fy) + bottom * fy) >> 8) as u8
    }
}

/// The moving scene. Frames are stamped like the test pattern's, with `source` and a number.
pub struct Scene {
    width: usize,
    height: usize,
    source: u8,
    luma: Plane,
    chroma_u: Plane,
    chroma_v: Plane,
    grain: Vec<i8>,
    rng: StdRng,
    number: u32,
}

impl Scene {
    pub fn new(width: usize, height: usize, source: u8) -> Scene {
        let width = width.max(64) & !1;
        let height = height.max(64) & !1;
        let mut rng = StdRng::seed_from_u64(0x5eed_0000 + source as u64);
        // The texture is twice the frame in each direction, so the pan has room to travel.
        let (tw, th) = (width * 2, height * 2);
        let luma = Plane::noise(
            tw,
            th,
            &mut rng,
            &[(64, 4.0), (16, 2.0), (4, 1.0), (1, 0.6)],
        );
        let chroma_u = Plane::noise(tw / 2, th / 2, &mut rng, &[(48, 3.0), (8, 1.0)]);
        let chroma_v = Plane::noise(tw / 2, th / 2, &mut rng, &[(48, 3.0), (8, 1.0)]);
        let grain = (0..GRAIN_LEN)
            .map(|_| rng.random_range(-GRAIN..=GRAIN) as i8)
            .collect();
        Scene {
            width,
            height,
            source,
            luma,
            chroma_u,
            chroma_v,
            grain,
            rng,
            number: 0,
        }
    }

    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

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
        // A slow wandering pan (about 40-90 px/s), in 1/16 pixels.
        let t = self.number as f32 / 30.0;
        let pan = |span: usize, speed: f32, phase: f32| {
            ((span as f32 * 8.0) * (1.0 + (t * speed + phase).sin())) as usize
        };
        let (px, py) = (pan(w, 0.21, 0.0), pan(h, 0.17, 1.3));
        let (cw, ch) = frame.chroma_size();
        let grain_at = self.rng.random_range(0..GRAIN_LEN);
        let (y_plane, u_plane, v_plane) = frame.planes_mut();
        for y in 0..h {
            let row = &mut y_plane[y * w..(y + 1) * w];
            for (x, out) in row.iter_mut().enumerate() {
                let v = self.luma.sample(px + x * 16, py + y * 16) as i16;
                let g = self.grain[(grain_at + y * w + x) & (GRAIN_LEN - 1)] as i16;
                *out = (v + g).clamp(16, 235) as u8;
            }
        }
        for y in 0..ch {
            for x in 0..cw {
                let (sx, sy) = (px / 2 + x * 16, py / 2 + y * 16);
                u_plane[y * cw + x] = self.chroma_u.sample(sx, sy);
                v_plane[y * cw + x] = self.chroma_v.sample(sx, sy);
            }
        }
        // Two objects crossing the scene, textured from elsewhere in the texture.
        for (i, (speed_x, speed_y)) in [(5usize, 2usize), (3, 4)].into_iter().enumerate() {
            let side = (h / 4) & !1;
            let bounce = |pos: usize, span: usize| {
                let p = pos % (2 * span.max(1));
                if p < span { p } else { 2 * span - p }
            };
            let n = self.number as usize + i * 97;
            let ox = bounce(n * speed_x, w - side) & !1;
            let oy = bounce(n * speed_y, h - side) & !1;
            let (tx, ty) = (w + i * side, h / 2);
            for y in 0..side {
                let src = &self.luma.data[(ty + y) * self.luma.width + tx..][..side];
                y_plane[(oy + y) * w + ox..][..side].copy_from_slice(src);
            }
            for y in 0..side / 2 {
                let at = (oy / 2 + y) * cw + ox / 2;
                u_plane[at..at + side / 2].fill(90 + 70 * i as u8);
                v_plane[at..at + side / 2].fill(170 - 60 * i as u8);
            }
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
    use crate::media::codec::H264Encoder;
    use crate::media::frame::RgbaFrame;
    use crate::media::pattern::TestPattern;
    use crate::media::stamp::read_stamp;

    fn encoded_bits(mut next: impl FnMut(u64) -> I420Frame, frames: u64) -> u64 {
        let mut enc = H264Encoder::new(640, 480, 1_500_000, 30.0).unwrap();
        let mut bits = 0;
        for i in 0..frames {
            let frame = next(i * 33_333);
            if let Some(out) = enc.encode(&frame, false).unwrap() {
                bits += out.data.len() as u64 * 8;
            }
        }
        bits
    }

    #[test]
    fn the_scene_fills_a_camera_sized_bitrate_where_the_pattern_does_not() {
        // Two seconds at 30 fps with a 1.5 Mbit/s target.
        let mut scene = Scene::new(640, 480, 1);
        let scene_bits = encoded_bits(|t| scene.render(t), 60);
        let mut pattern = TestPattern::new(640, 480, 1);
        let pattern_bits = encoded_bits(|t| pattern.render(t), 60);
        assert!(
            scene_bits / 2 >= 1_000_000,
            "scene: {} kbit/s",
            scene_bits / 2000
        );
        assert!(scene_bits > 2 * pattern_bits, "pattern: {pattern_bits}");
    }

    #[test]
    fn scene_frames_move_and_carry_stamps() {
        let mut scene = Scene::new(320, 240, 7);
        let a = scene.render(1_000);
        let b = scene.render(34_333);
        assert_ne!(a.y(), b.y());
        let mut rgba = RgbaFrame::default();
        b.to_rgba(&mut rgba);
        let s = read_stamp(&rgba).expect("stamp readable");
        assert_eq!((s.source, s.number, s.capture_us), (7, 1, 34_333));
    }
}

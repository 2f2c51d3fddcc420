//! Progressive reveal of a screen share: which parts of the captured screen the encoder is given
//! in each frame, so that no frame carries much more new picture than the share's budget pays
//! for. Owns the picture last handed to the encoder and a learned cost model; imports `frame`
//! and `convert` (the scaler). A plain state machine over pictures and sizes, no I/O and no
//! clock.
//!
//! Why: a text page's first keyframe at 1920x1080 is 300-600 KB whatever openh264's budget (it
//! picks the IDR's quantiser from a table, and a floor coarse enough to shrink it makes text
//! unreadable). On a 200 kbit/s uplink that is 20 s in one burst through a queue of 7.5 KB: no
//! picture ever arrived, and on a 4 Mbit/s path the burst overflowed the queue (35-40 % loss).
//! Here the encoder starts from a blurred copy of the screen (a 1/32 thumbnail scaled back up:
//! the layout, for a keyframe of about 7 KB at 1080p, against 6 KB for a flat picture) and gets
//! the real screen macroblock by macroblock from the top, as much per frame as the budget
//! allows; small changes (a caret, the pointer) go at once. The viewer sees the page sharpen
//! from the top within seconds, and openh264 then refines the static picture as it does anyway.
//! With a budget that covers the whole page, the first frame is the whole page, as before.

use super::convert::I420Scaler;
use super::frame::I420Frame;

/// Rows of one band: a macroblock row.
const BAND: usize = 16;
/// The blurred picture a reveal starts from is the screen scaled down by this much and back up.
const BLUR: usize = 32;
/// Complexity units a changed macroblock costs besides its edges (its header, a flat residual).
const MACROBLOCK_UNITS: u64 = 600;
/// Where the cost model starts: encoded bytes per complexity unit of new picture, measured on
/// the text page (`ScreenPicture`) at 1920x1080 with the screen encoder at a low budget (see
/// the test `the_cost_model_starts_near_what_the_encoder_spends`), rounded up so a slow link's
/// first frames err small.
const INITIAL_BYTES_PER_UNIT: f64 = 0.006;
/// A changed band costing at most this share of a frame's allowance goes at once, out of turn:
/// blank areas, a caret, a clock.
const SMALL_SHARE: f64 = 0.05;
/// A forced keyframe of the picture shown so far is sent as it is when its estimated size is
/// within this many frame allowances; above, the reveal starts again from the blurred picture (a
/// keyframe of the whole page on a slow link is the burst this module exists to avoid).
const KEYFRAME_ALLOWANCES: f64 = 3.0;
/// Complexity below which a frame's new content says too little about the cost per unit.
const MIN_LEARN_UNITS: u64 = 20_000;
/// Bounds of the estimate. The floor is about what the page costs at openh264's coarsest
/// quantisers (143 KB at QP 48 for 120 M units), so a frame never takes in more than a few
/// allowances' worth at once; the ceiling keeps at least a little progress per frame.
const MIN_BYTES_PER_UNIT: f64 = 0.001;
const MAX_BYTES_PER_UNIT: f64 = 0.05;
/// Per frame within its allowance, the estimate falls by this factor.
const FALL_PER_FRAME: f64 = 0.9;

/// What the last picture carried, for learning from its encoded size.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RevealStep {
    /// Complexity units of the new picture it carried.
    pub new_units: u64,
    /// Bands that still differ from the source after it.
    pub pending_bands: usize,
    /// It started the reveal over from the blurred picture.
    pub restarted: bool,
}

/// The picture handed to one screen encoder, revealed band by band.
pub struct Reveal {
    shown: Option<I420Frame>,
    /// Per band: complexity units of what is shown there (0: the blurred picture).
    shown_units: Vec<u64>,
    /// The macroblock (raster order) the next sweep starts at.
    cursor: usize,
    bytes_per_unit: f64,
    /// The allowance the last picture was given, bytes.
    last_allowance: f64,
    last: RevealStep,
    scaler: I420Scaler,
}

impl Default for Reveal {
    fn default() -> Self {
        Self::new()
    }
}

impl Reveal {
    pub fn new() -> Self {
        Reveal {
            shown: None,
            shown_units: Vec::new(),
            cursor: 0,
            bytes_per_unit: INITIAL_BYTES_PER_UNIT,
            last_allowance: f64::INFINITY,
            last: RevealStep::default(),
            scaler: I420Scaler::default(),
        }
    }

    /// New picture a frame may carry, in bytes, at `bitrate_bps` and `fps`: one frame's share
    /// of the budget and half as much again. Rate control fills most frames to its target with
    /// refinement whatever they carry, so an allowance of exactly one frame's share would
    /// rarely be reached and the cost estimate (see `encoded`) would only climb.
    pub fn allowance_bytes(bitrate_bps: u32, fps: u32) -> f64 {
        bitrate_bps as f64 / 8.0 / fps.max(1) as f64 * 1.5
    }

    /// What the last call of [`Reveal::next`] did.
    pub fn last_step(&self) -> RevealStep {
        self.last
    }

    /// The picture to encode for `source` now: the source where the allowance reached, what was
    /// shown before elsewhere. `keyframe`: this frame will be a keyframe.
    pub fn next(&mut self, source: &I420Frame, allowance_bytes: f64, keyframe: bool) -> &I420Frame {
        let bands = source.height.div_ceil(BAND);
        self.last_allowance = allowance_bytes;
        let allowance_units = (allowance_bytes / self.bytes_per_unit).max(0.0) as u64;
        let mut restarted = false;
        let reusable = self
            .shown
            .as_ref()
            .is_some_and(|s| (s.width, s.height) == (source.width, source.height));
        let keyframe_units: u64 = self.shown_units.iter().sum();
        if !reusable
            || (keyframe && keyframe_units as f64 > allowance_units as f64 * KEYFRAME_ALLOWANCES)
        {
            self.shown = Some(blurred(source, &mut self.scaler));
            self.shown_units = vec![0; bands];
            self.cursor = 0;
            restarted = true;
        }
        let shown = match &mut self.shown {
            Some(shown) => shown,
            empty => empty.insert(blurred(source, &mut self.scaler)),
        };
        shown.capture_us = source.capture_us;
        let mbs_per_band = source.width.div_ceil(BAND);
        // Per macroblock, in raster order: complexity units where it changed, else 0.
        let changed: Vec<u64> = (0..bands)
            .flat_map(|b| changed_units(source, shown, b))
            .collect();
        let mut admitted = vec![false; changed.len()];
        let mut spent = 0u64;
        let small = (allowance_units as f64 * SMALL_SHARE) as u64;
        // Small changes first, out of turn: a band's worth of blank page, a caret.
        for b in 0..bands {
            let row = b * mbs_per_band..(b + 1) * mbs_per_band;
            let units: u64 = changed[row.clone()].iter().sum();
            if units > 0 && units <= small {
                admitted[row].fill(true);
                spent += units;
            }
        }
        // Then one sweep from the cursor in raster order until a macroblock does not fit (at
        // least one goes).
        let mut any = spent > 0;
        let total = changed.len();
        let start = self.cursor;
        for step in 0..total {
            let mb = (start + step) % total;
            if changed[mb] == 0 || admitted[mb] {
                continue;
            }
            if any && spent + changed[mb] > allowance_units {
                self.cursor = mb;
                break;
            }
            admitted[mb] = true;
            spent += changed[mb];
            any = true;
            self.cursor = (mb + 1) % total;
        }
        for (mb, _) in admitted.iter().enumerate().filter(|(_, a)| **a) {
            copy_macroblock(source, shown, mb / mbs_per_band, mb % mbs_per_band);
        }
        for b in 0..bands {
            if admitted[b * mbs_per_band..(b + 1) * mbs_per_band]
                .iter()
                .any(|&a| a)
            {
                self.shown_units[b] = shown_units(shown, b);
            }
        }
        let pending_bands = (0..bands)
            .filter(|&b| {
                (b * mbs_per_band..(b + 1) * mbs_per_band)
                    .any(|mb| changed[mb] > 0 && !admitted[mb])
            })
            .count();
        self.last = RevealStep {
            new_units: spent,
            pending_bands,
            restarted,
        };
        shown
    }

    /// The size the last picture came out at. Rate control fills a frame with refinement of
    /// what is shown whatever the new picture in it, so a frame's size says little about what
    /// the new part cost: only a frame over its allowance does (the new part was too much).
    /// So the estimate rises by the share a frame went over and otherwise falls slowly,
    /// admitting more until frames reach their allowance. (Measured at 100 kbit/s: the page
    /// comes in at about the quality it then keeps, 43 dB after a minute; letting rate control
    /// go coarse first and refine later took as long to reach 34 dB.)
    pub fn encoded(&mut self, bytes: usize, keyframe: bool) {
        let units = if keyframe {
            self.shown_units.iter().sum()
        } else {
            self.last.new_units
        };
        if units < MIN_LEARN_UNITS {
            return;
        }
        let bytes = bytes as f64;
        if bytes > self.last_allowance {
            // Over by a share: that much dearer, at most fourfold per frame. (Not bytes per new
            // unit: most of the frame may be refinement.)
            let over = (bytes / self.last_allowance).min(4.0);
            self.bytes_per_unit = (self.bytes_per_unit * over).min(MAX_BYTES_PER_UNIT);
        } else {
            self.bytes_per_unit = (self.bytes_per_unit * FALL_PER_FRAME).max(MIN_BYTES_PER_UNIT);
        }
    }
}

/// `source` blurred: scaled down by [`BLUR`] and back up. A flat picture in its average colour
/// if that fails.
fn blurred(source: &I420Frame, scaler: &mut I420Scaler) -> I420Frame {
    let small = (
        (source.width / BLUR).max(2) & !1,
        (source.height / BLUR).max(2) & !1,
    );
    scaler
        .scale(source, small.0, small.1)
        .and_then(|thumbnail| scaler.scale(&thumbnail, source.width, source.height))
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot blur the share's first picture");
            flat_like(source)
        })
}

/// A picture of `source`'s size in its average colour.
fn flat_like(source: &I420Frame) -> I420Frame {
    let mean = |plane: &[u8]| {
        let sum: u64 = plane.iter().map(|&v| v as u64).sum();
        (sum / plane.len().max(1) as u64) as u8
    };
    let (y, u, v) = (mean(source.y()), mean(source.u()), mean(source.v()));
    let mut flat = I420Frame::new(source.width, source.height);
    let (yp, up, vp) = flat.planes_mut();
    yp.fill(y);
    up.fill(u);
    vp.fill(v);
    flat
}

/// Luma rows of band `b`.
fn band_rows(frame: &I420Frame, b: usize) -> std::ops::Range<usize> {
    (b * BAND).min(frame.height)..((b + 1) * BAND).min(frame.height)
}

/// Chroma rows of band `b`.
fn band_chroma_rows(frame: &I420Frame, b: usize) -> std::ops::Range<usize> {
    let (_, ch) = frame.chroma_size();
    (b * BAND / 2).min(ch)..((b + 1) * BAND / 2).min(ch)
}

/// Per macroblock of band `b`: complexity units where `source` differs from `shown` (its luma
/// edges, what intra coding pays for, plus a fixed cost), 0 where it is the same.
fn changed_units(source: &I420Frame, shown: &I420Frame, b: usize) -> Vec<u64> {
    let w = source.width;
    let rows = band_rows(source, b);
    let (cw, _) = source.chroma_size();
    let crows = band_chroma_rows(source, b);
    let mbs = w.div_ceil(BAND);
    let luma = rows.start * w..rows.end * w;
    let chroma = crows.start * cw..crows.end * cw;
    if source.y()[luma.clone()] == shown.y()[luma]
        && source.u()[chroma.clone()] == shown.u()[chroma.clone()]
        && source.v()[chroma.clone()] == shown.v()[chroma]
    {
        return vec![0; mbs];
    }
    (0..mbs)
        .map(|mb| {
            let cols = mb * BAND..((mb + 1) * BAND).min(w);
            let luma_differs = rows.clone().any(|r| {
                let span = r * w + cols.start..r * w + cols.end;
                source.y()[span.clone()] != shown.y()[span]
            });
            let ccols = cols.start / 2..cols.end.div_ceil(2).min(cw);
            let chroma_differs = crows.clone().any(|r| {
                let span = r * cw + ccols.start..r * cw + ccols.end;
                source.u()[span.clone()] != shown.u()[span.clone()]
                    || source.v()[span.clone()] != shown.v()[span]
            });
            if luma_differs || chroma_differs {
                MACROBLOCK_UNITS + edge_units(source, rows.clone(), cols)
            } else {
                0
            }
        })
        .collect()
}

/// Complexity units of everything in band `b` of `frame` (what a keyframe of it would cost).
fn shown_units(frame: &I420Frame, b: usize) -> u64 {
    let rows = band_rows(frame, b);
    (0..frame.width.div_ceil(BAND))
        .map(|mb| {
            let cols = mb * BAND..((mb + 1) * BAND).min(frame.width);
            MACROBLOCK_UNITS + edge_units(frame, rows.clone(), cols)
        })
        .sum()
}

/// Sum of absolute luma differences to the left and upper neighbour over a block.
fn edge_units(
    frame: &I420Frame,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> u64 {
    let w = frame.width;
    let y = frame.y();
    let mut sum = 0u64;
    for r in rows {
        for c in cols.clone() {
            let p = y[r * w + c] as i32;
            if c > 0 {
                sum += (p - y[r * w + c - 1] as i32).unsigned_abs() as u64;
            }
            if r > 0 {
                sum += (p - y[(r - 1) * w + c] as i32).unsigned_abs() as u64;
            }
        }
    }
    sum
}

/// Copies macroblock `mb` of band `b` from `source` into `shown`.
fn copy_macroblock(source: &I420Frame, shown: &mut I420Frame, b: usize, mb: usize) {
    let w = source.width;
    let rows = band_rows(source, b);
    let cols = (mb * BAND).min(w)..((mb + 1) * BAND).min(w);
    let (cw, _) = source.chroma_size();
    let crows = band_chroma_rows(source, b);
    let ccols = cols.start / 2..cols.end.div_ceil(2).min(cw);
    let (sy, su, sv) = (source.y(), source.u(), source.v());
    let (y, u, v) = shown.planes_mut();
    for r in rows {
        let span = r * w + cols.start..r * w + cols.end;
        y[span.clone()].copy_from_slice(&sy[span]);
    }
    for r in crows {
        let span = r * cw + ccols.start..r * cw + ccols.end;
        u[span.clone()].copy_from_slice(&su[span.clone()]);
        v[span.clone()].copy_from_slice(&sv[span]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::codec::{H264Decoder, H264Encoder};
    use crate::media::frame::RgbaFrame;
    use crate::media::screen::ScreenPicture;

    fn page(width: usize, height: usize) -> I420Frame {
        I420Frame::from_rgba(&ScreenPicture::rgba(width, height), width, height)
    }

    #[test]
    fn the_cost_model_starts_near_what_the_encoder_spends() {
        // The whole page as one keyframe at a low budget: bytes per unit of its complexity.
        let source = page(1920, 1080);
        let units: u64 = (0..source.height.div_ceil(BAND))
            .map(|b| shown_units(&source, b))
            .sum();
        let mut encoder = H264Encoder::for_screen(1920, 1080, 150_000, 2.0).expect("encoder");
        let out = encoder
            .encode(&source, true)
            .expect("encode")
            .expect("frame");
        let measured = out.data.len() as f64 / units as f64;
        println!(
            "page: {units} units, keyframe {} bytes, {measured:.5} bytes/unit",
            out.data.len()
        );
        assert!(
            INITIAL_BYTES_PER_UNIT >= measured && INITIAL_BYTES_PER_UNIT < measured * 2.0,
            "starting cost {INITIAL_BYTES_PER_UNIT} against measured {measured}"
        );
    }

    /// Encodes a static page through a reveal at a fixed budget for `frames` frames: each
    /// frame's size, the reveal's steps, and the decoder's last picture.
    fn reveal_static_page(
        bitrate_bps: u32,
        fps: u32,
        frames: usize,
    ) -> (Vec<usize>, Vec<RevealStep>, RgbaFrame) {
        let source = page(1920, 1080);
        let mut encoder =
            H264Encoder::for_screen(1920, 1080, bitrate_bps, fps as f32).expect("encoder");
        let mut decoder = H264Decoder::new().expect("decoder");
        let mut decoded = RgbaFrame::default();
        let mut reveal = Reveal::new();
        let allowance = Reveal::allowance_bytes(bitrate_bps, fps);
        let (mut sizes, mut steps) = (Vec::new(), Vec::new());
        for i in 0..frames {
            let mut input = source.clone();
            input.capture_us = i as u64 * 1_000_000 / fps as u64;
            let picture = reveal.next(&input, allowance, i == 0).clone();
            let out = encoder
                .encode(&picture, i == 0)
                .expect("encode")
                .expect("frame");
            reveal.encoded(out.data.len(), out.keyframe);
            decoder.decode(&out.data, &mut decoded).expect("decode");
            sizes.push(out.data.len());
            steps.push(reveal.last_step());
        }
        (sizes, steps, decoded)
    }

    fn psnr_against_page(decoded: &RgbaFrame) -> f64 {
        let mut reference = RgbaFrame::default();
        page(decoded.width, decoded.height).to_rgba(&mut reference);
        decoded.luma_psnr(&reference).expect("same size")
    }

    #[test]
    fn on_a_slow_link_a_page_comes_in_frames_the_budget_can_carry_then_sharpens() {
        // 100 kbit/s at 4 fps: about a share's part of a 200 kbit/s uplink. Sent whole, the
        // page's first keyframe is over 500 KB (see the cost test).
        let (bps, fps) = (100_000, 4);
        let allowance = Reveal::allowance_bytes(bps, fps);
        // A minute of it.
        let (sizes, steps, decoded) = reveal_static_page(bps, fps, 240);
        let revealed = steps.iter().position(|s| s.pending_bands == 0);
        let psnr = psnr_against_page(&decoded);
        println!(
            "allowance {allowance:.0} bytes; whole page in the encoder after {revealed:?} \
             frames; PSNR after 60 s {psnr:.1} dB; sizes {sizes:?}"
        );
        assert!(
            steps[0].restarted,
            "the reveal starts from the blurred picture"
        );
        let revealed = revealed.expect("the whole page reaches the encoder");
        // About 35 s measured: the page at the quality it stays at (43 dB after a minute), about
        // what the link carries in that time; a coarse first pass refined later took 11 s to a
        // 20 dB page and a minute to 34 dB.
        assert!(revealed <= 200, "revealed after {revealed} frames");
        // The first keyframe among them (the blurred picture and what fits beside it).
        let largest = sizes[..=revealed].iter().max().copied().unwrap_or(0);
        assert!(
            (largest as f64) < 2.5 * allowance,
            "while revealing, no frame ({largest} bytes) far over the allowance ({allowance:.0})"
        );
        // Bands go in order from the top: what is pending shrinks frame by frame.
        assert!(
            steps[..revealed]
                .windows(2)
                .all(|w| w[1].pending_bands <= w[0].pending_bands)
        );
        // Then rate control refines the static page: what arrives is the page, not a blur.
        assert!(psnr >= 38.0, "PSNR {psnr:.1} dB after a minute");
    }

    #[test]
    fn with_a_budget_for_the_whole_page_the_first_picture_is_the_page() {
        let source = page(640, 360);
        let mut reveal = Reveal::new();
        let picture = reveal.next(&source, 10_000_000.0, true);
        assert_eq!(picture, &source);
        let step = reveal.last_step();
        assert!(step.restarted);
        assert_eq!(step.pending_bands, 0);
        // And a static source needs nothing new after it.
        reveal.next(&source, 10_000_000.0, false);
        assert_eq!(reveal.last_step().new_units, 0);
    }

    #[test]
    fn a_caret_in_the_revealed_part_moves_at_once_while_the_rest_comes_in_turn() {
        let source = page(640, 360);
        let mut reveal = Reveal::new();
        // A small allowance: one frame takes in a band or two of text.
        let allowance = INITIAL_BYTES_PER_UNIT * 400_000.0;
        reveal.next(&source, allowance, true);
        let first = reveal.last_step();
        assert!(first.pending_bands > 5, "{first:?}");
        // A caret appears in the title bar, already shown.
        let mut typed = source.clone();
        let (y, _, _) = typed.planes_mut();
        for row in 2..14 {
            y[row * 640 + 30] = 235;
        }
        assert_ne!(
            reveal.next(&source, allowance, false).y()[5 * 640 + 30],
            235
        );
        let before = reveal.last_step();
        let picture = reveal.next(&typed, allowance, false).clone();
        assert_eq!(picture.y()[5 * 640 + 30], 235, "the caret is shown");
        let second = reveal.last_step();
        assert!(second.pending_bands < before.pending_bands);
        assert!(second.pending_bands > 0);
    }

    #[test]
    fn a_keyframe_asked_for_on_a_slow_link_starts_the_reveal_over() {
        let source = page(640, 360);
        let mut reveal = Reveal::new();
        reveal.next(&source, 10_000_000.0, true);
        // A loss later: the whole page again as one keyframe would be too much for a slow
        // link's allowance, so the reveal starts over from the blurred picture.
        let picture = reveal.next(&source, 2_000.0, true).clone();
        assert!(reveal.last_step().restarted);
        assert_ne!(picture, source);
        // Where the allowance covers the page, the keyframe is the page.
        let mut roomy = Reveal::new();
        roomy.next(&source, 10_000_000.0, true);
        let picture = roomy.next(&source, 10_000_000.0, true);
        assert_eq!(picture, &source);
        assert!(!roomy.last_step().restarted);
    }

    #[test]
    fn frames_over_their_allowance_make_the_estimate_dearer_and_frames_within_it_cheaper() {
        let source = page(640, 360);
        let mut reveal = Reveal::new();
        let start = reveal.bytes_per_unit;
        reveal.next(&source, 5_000.0, true);
        reveal.encoded(10_000, true);
        let dearer = reveal.bytes_per_unit;
        assert!((dearer - start * 2.0).abs() < 1e-9, "{start} -> {dearer}");
        // The picture keeps changing (new content every frame), each frame well within.
        let blank = flat_like(&source);
        for i in 0..200 {
            reveal.next(if i % 2 == 0 { &blank } else { &source }, 5_000.0, false);
            reveal.encoded(1_000, false);
        }
        assert_eq!(reveal.bytes_per_unit, MIN_BYTES_PER_UNIT);
    }

    #[test]
    fn a_picture_of_partial_macroblocks_is_revealed_whole() {
        // 100x70: the last column and row of macroblocks are partial.
        let source = page(100, 70);
        let mut reveal = Reveal::new();
        // A tiny allowance: a macroblock or so a frame, so every partial one is copied alone.
        let mut frames = 0;
        while reveal.next(&source, 1.0, frames == 0) != &source {
            frames += 1;
            assert!(frames < 100, "not revealed after {frames} frames");
        }
        assert_eq!(reveal.last_step().pending_bands, 0);
        assert!(frames > 1, "revealed in {frames} frames");
    }

    #[test]
    fn another_size_starts_over() {
        let mut reveal = Reveal::new();
        reveal.next(&page(640, 360), 10_000_000.0, false);
        let smaller = page(320, 180);
        let picture = reveal.next(&smaller, 10_000_000.0, false);
        assert_eq!(picture, &smaller);
        assert!(reveal.last_step().restarted);
    }
}

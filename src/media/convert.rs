//! Camera pixel formats to the encoder's I420: YUYV (4:2:2 packed), NV12 (4:2:0 semi-planar) and
//! MJPEG (decoded with the `image` crate), tolerating drivers that pad rows. Odd sizes are
//! cropped to even, as H.264 needs. Also scales I420 frames (each plane with
//! `fast_image_resize`) for the lower rungs of the quality ladder.

use super::MediaError;
use super::frame::I420Frame;

fn even(n: usize) -> usize {
    n & !1
}

/// Packed YUYV (Y0 U Y1 V) with `stride` bytes per row (0: tightly packed).
pub fn yuyv_to_i420(
    src: &[u8],
    width: usize,
    height: usize,
    stride: usize,
) -> Result<I420Frame, MediaError> {
    let stride = if stride == 0 { width * 2 } else { stride };
    let (w, h) = (even(width), even(height));
    if w == 0 || h == 0 || stride < width * 2 || src.len() < stride * (height - 1) + width * 2 {
        return Err(MediaError::Source(format!(
            "YUYV frame of {} bytes is too small for {width}x{height}",
            src.len()
        )));
    }
    let mut frame = I420Frame::new(w, h);
    let (cw, _) = frame.chroma_size();
    let (y, u, v) = frame.planes_mut();
    for row in 0..h {
        let line = &src[row * stride..row * stride + w * 2];
        for (dst, pair) in y[row * w..row * w + w].iter_mut().zip(line.chunks_exact(2)) {
            *dst = pair[0];
        }
    }
    for crow in 0..h / 2 {
        let a = &src[2 * crow * stride..2 * crow * stride + w * 2];
        let b = &src[(2 * crow + 1) * stride..(2 * crow + 1) * stride + w * 2];
        for c in 0..w / 2 {
            u[crow * cw + c] = (a[c * 4 + 1] as u16 + b[c * 4 + 1] as u16).div_ceil(2) as u8;
            v[crow * cw + c] = (a[c * 4 + 3] as u16 + b[c * 4 + 3] as u16).div_ceil(2) as u8;
        }
    }
    Ok(frame)
}

/// NV12: a Y plane, then interleaved U/V at half resolution, both with `stride` bytes per row.
pub fn nv12_to_i420(
    src: &[u8],
    width: usize,
    height: usize,
    stride: usize,
) -> Result<I420Frame, MediaError> {
    let stride = if stride == 0 { width } else { stride };
    let (w, h) = (even(width), even(height));
    let needed = stride * height + stride * height.div_ceil(2);
    if w == 0 || h == 0 || stride < width || src.len() < needed - (stride - width) {
        return Err(MediaError::Source(format!(
            "NV12 frame of {} bytes is too small for {width}x{height}",
            src.len()
        )));
    }
    let mut frame = I420Frame::new(w, h);
    let (cw, _) = frame.chroma_size();
    let (y, u, v) = frame.planes_mut();
    for row in 0..h {
        y[row * w..row * w + w].copy_from_slice(&src[row * stride..row * stride + w]);
    }
    let uv = &src[stride * height..];
    for crow in 0..h / 2 {
        let line = &uv[crow * stride..crow * stride + w];
        for c in 0..w / 2 {
            u[crow * cw + c] = line[2 * c];
            v[crow * cw + c] = line[2 * c + 1];
        }
    }
    Ok(frame)
}

/// Packed RGB (3 bytes per pixel) to I420, BT.601 limited range.
pub fn rgb_to_i420(rgb: &[u8], width: usize, height: usize) -> Result<I420Frame, MediaError> {
    if rgb.len() < width * height * 3 {
        return Err(MediaError::Source("RGB frame too small".into()));
    }
    let (w, h) = (even(width), even(height));
    let mut rgba = Vec::with_capacity(w * h * 4);
    for row in 0..h {
        for px in rgb[row * width * 3..row * width * 3 + w * 3].chunks_exact(3) {
            rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
        }
    }
    Ok(I420Frame::from_rgba(&rgba, w, h))
}

/// A motion-JPEG frame to I420. Webcams often omit the Huffman tables; the decoder fills in the
/// standard ones.
pub fn mjpeg_to_i420(jpeg: &[u8]) -> Result<I420Frame, MediaError> {
    let image = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map_err(|e| MediaError::Source(format!("bad MJPEG frame: {e}")))?
        .into_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    rgb_to_i420(image.as_raw(), w, h)
}

/// Scales I420 frames, keeping its buffers between calls.
#[derive(Default)]
pub struct I420Scaler {
    resizer: fast_image_resize::Resizer,
}

impl I420Scaler {
    /// `frame` scaled to `width` x `height` (even), with the same capture time.
    pub fn scale(
        &mut self,
        frame: &I420Frame,
        width: usize,
        height: usize,
    ) -> Result<I420Frame, MediaError> {
        use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, images};
        let mut out = I420Frame::new(width, height);
        out.capture_us = frame.capture_us;
        let (cw, ch) = frame.chroma_size();
        let (ocw, och) = out.chroma_size();
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        let (y, u, v) = out.planes_mut();
        for (src, (sw, sh), dst, (dw, dh)) in [
            (frame.y(), (frame.width, frame.height), y, (width, height)),
            (frame.u(), (cw, ch), u, (ocw, och)),
            (frame.v(), (cw, ch), v, (ocw, och)),
        ] {
            let fail = |e: &dyn std::fmt::Display| MediaError::Codec(format!("scaling: {e}"));
            let src = images::ImageRef::new(sw as u32, sh as u32, src, PixelType::U8)
                .map_err(|e| fail(&e))?;
            let mut dst = images::Image::from_slice_u8(dw as u32, dh as u32, dst, PixelType::U8)
                .map_err(|e| fail(&e))?;
            self.resizer
                .resize(&src, &mut dst, &options)
                .map_err(|e| fail(&e))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::frame::RgbaFrame;

    /// A test card made with the `image` crate: four colour quadrants and a gradient.
    fn card(w: u32, h: u32) -> image::RgbImage {
        image::RgbImage::from_fn(w, h, |x, y| {
            let (r, g, b) = match (x * 2 / w, y * 2 / h) {
                (0, 0) => (220, 40, 40),
                (1, 0) => (40, 200, 60),
                (0, 1) => (40, 60, 220),
                _ => ((x * 255 / w) as u8, (y * 255 / h) as u8, 128),
            };
            image::Rgb([r, g, b])
        })
    }

    fn reference(img: &image::RgbImage) -> I420Frame {
        rgb_to_i420(img.as_raw(), img.width() as usize, img.height() as usize).unwrap()
    }

    /// Mean absolute difference per plane byte.
    fn mad(a: &I420Frame, b: &I420Frame) -> f64 {
        assert_eq!((a.width, a.height), (b.width, b.height));
        let sum: u64 = a
            .data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (*x as i32 - *y as i32).unsigned_abs() as u64)
            .sum();
        sum as f64 / a.data.len() as f64
    }

    /// Packs an I420 frame as YUYV, with optional row padding, as a driver would.
    fn to_yuyv(f: &I420Frame, pad: usize) -> (Vec<u8>, usize) {
        let stride = f.width * 2 + pad;
        let mut out = vec![0u8; stride * f.height];
        let cw = f.width / 2;
        for row in 0..f.height {
            for c in 0..f.width / 2 {
                let o = row * stride + c * 4;
                out[o] = f.y()[row * f.width + 2 * c];
                out[o + 1] = f.u()[(row / 2) * cw + c];
                out[o + 2] = f.y()[row * f.width + 2 * c + 1];
                out[o + 3] = f.v()[(row / 2) * cw + c];
            }
        }
        (out, stride)
    }

    fn to_nv12(f: &I420Frame, pad: usize) -> (Vec<u8>, usize) {
        let stride = f.width + pad;
        let mut out = vec![0u8; stride * f.height + stride * f.height / 2];
        for row in 0..f.height {
            out[row * stride..row * stride + f.width]
                .copy_from_slice(&f.y()[row * f.width..(row + 1) * f.width]);
        }
        let cw = f.width / 2;
        for crow in 0..f.height / 2 {
            for c in 0..cw {
                let o = f.height * stride + crow * stride + 2 * c;
                out[o] = f.u()[crow * cw + c];
                out[o + 1] = f.v()[crow * cw + c];
            }
        }
        (out, stride)
    }

    #[test]
    fn yuyv_and_nv12_round_trip_exactly_with_padding() {
        let expected = reference(&card(64, 48));
        for pad in [0, 32] {
            let (yuyv, stride) = to_yuyv(&expected, pad);
            assert_eq!(
                yuyv_to_i420(&yuyv, 64, 48, stride).unwrap(),
                expected,
                "yuyv pad {pad}"
            );
            let (nv12, stride) = to_nv12(&expected, pad);
            assert_eq!(
                nv12_to_i420(&nv12, 64, 48, stride).unwrap(),
                expected,
                "nv12 pad {pad}"
            );
        }
    }

    #[test]
    fn mjpeg_frames_from_the_image_crate_decode_close_to_the_source() {
        let img = card(640, 480);
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        let decoded = mjpeg_to_i420(&jpeg).unwrap();
        let diff = mad(&decoded, &reference(&img));
        assert!(diff < 3.0, "mean difference {diff}");
        let mut rgba = RgbaFrame::default();
        decoded.to_rgba(&mut rgba);
        // The red quadrant is still red.
        let i = (100 * 640 + 100) * 4;
        assert!(
            rgba.pixels[i] > 180 && rgba.pixels[i + 1] < 90,
            "{:?}",
            &rgba.pixels[i..i + 3]
        );
    }

    #[test]
    fn short_or_corrupt_frames_are_errors() {
        assert!(yuyv_to_i420(&[0; 10], 64, 48, 0).is_err());
        assert!(nv12_to_i420(&[0; 10], 64, 48, 0).is_err());
        assert!(mjpeg_to_i420(b"\xff\xd8 not really a jpeg").is_err());
        // Odd sizes are cropped to even.
        let f = yuyv_to_i420(&vec![128; 65 * 2 * 49], 65, 49, 0).unwrap();
        assert_eq!((f.width, f.height), (64, 48));
    }

    #[test]
    fn scaling_keeps_the_picture_and_its_stamp() {
        use crate::media::frame::RgbaFrame;
        use crate::media::pattern::TestPattern;
        use crate::media::stamp::read_stamp;
        let frame = TestPattern::new(640, 480, 3).render(123_456);
        let mut scaler = I420Scaler::default();
        for (w, h) in [(480, 360), (320, 240), (160, 120)] {
            let small = scaler.scale(&frame, w, h).unwrap();
            assert_eq!(
                (small.width, small.height, small.capture_us),
                (w, h, 123_456)
            );
            let mut rgba = RgbaFrame::default();
            small.to_rgba(&mut rgba);
            // The stamp's cells scale with the width, so it reads at every rung.
            let stamp = read_stamp(&rgba).expect("stamp survives scaling");
            assert_eq!((stamp.source, stamp.capture_us), (3, 123_456));
        }
    }
}

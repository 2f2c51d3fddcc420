//! Real cameras through nokhwa: listing them, and a capture thread that opens one at the best
//! format up to 1280x720@30, converts each frame to I420 and puts it in the latest-wins slot.
//! A missing, busy or unplugged camera becomes a state change, never a panic or a hang.
//! nokhwa's `Camera` is not `Send`: it is created, used and dropped inside the capture thread.

use super::Stopper;
use super::convert::{mjpeg_to_i420, nv12_to_i420, yuyv_to_i420};
use super::frame::I420Frame;
use super::slot::LatestSlot;
use nokhwa::Camera;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
};
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CameraInfo {
    pub index: u32,
    pub name: String,
}

/// What the camera is doing, for the UI ("no camera", "camera disconnected").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CameraState {
    Off,
    Starting,
    Running {
        width: u32,
        height: u32,
        fps: u32,
        format: String,
    },
    NoCamera(String),
    Busy(String),
    Disconnected(String),
}

/// Lists cameras. Blocking (it opens device nodes): call it off the UI thread.
pub fn list_cameras() -> Vec<CameraInfo> {
    match nokhwa::query(ApiBackend::Auto) {
        Ok(list) => list
            .into_iter()
            .filter_map(|c| match c.index() {
                CameraIndex::Index(i) => Some(CameraInfo {
                    index: *i,
                    name: c.human_name(),
                }),
                CameraIndex::String(_) => None,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "camera query failed");
            Vec::new()
        }
    }
}

/// Picks the largest format up to 1280x720 that runs at 24 fps or more (30 preferred), among
/// the formats we can convert; formats that need no decoding win ties.
pub fn choose_format(formats: &[CameraFormat]) -> Option<CameraFormat> {
    let usable = |f: &&CameraFormat| {
        matches!(
            f.format(),
            FrameFormat::MJPEG | FrameFormat::YUYV | FrameFormat::NV12
        ) && f.resolution().width() <= 1280
            && f.resolution().height() <= 720
    };
    let cost = |f: &CameraFormat| match f.format() {
        FrameFormat::NV12 => 0,
        FrameFormat::YUYV => 1,
        _ => 2,
    };
    formats
        .iter()
        .filter(usable)
        .filter(|f| f.frame_rate() >= 24)
        .max_by_key(|f| {
            let area = f.resolution().width() * f.resolution().height();
            (area, f.frame_rate().min(30), 2 - cost(f))
        })
        .or_else(|| formats.iter().filter(usable).max_by_key(|f| f.frame_rate()))
        .copied()
}

fn classify(e: &nokhwa::NokhwaError) -> CameraState {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("busy") {
        CameraState::Busy(text)
    } else if lower.contains("no such device") {
        CameraState::Disconnected(text)
    } else {
        CameraState::NoCamera(text)
    }
}

/// Converts one captured buffer to I420.
fn to_i420(buffer: &nokhwa::Buffer) -> Result<I420Frame, super::MediaError> {
    let res = buffer.resolution();
    let (w, h) = (res.width() as usize, res.height() as usize);
    let data = buffer.buffer();
    match buffer.source_frame_format() {
        FrameFormat::MJPEG => mjpeg_to_i420(data),
        // Drivers may pad rows: derive the stride from the size.
        FrameFormat::YUYV => yuyv_to_i420(data, w, h, data.len().checked_div(h).unwrap_or(0)),
        FrameFormat::NV12 => {
            let stride = (data.len() * 2).checked_div(3 * h).unwrap_or(0);
            nv12_to_i420(data, w, h, stride)
        }
        other => Err(super::MediaError::Source(format!(
            "unsupported camera format {other:?}"
        ))),
    }
}

/// Opens camera `index` and captures until `stop`. Runs on its own thread; `state` tells the
/// owner what happened. Returns when stopped or when the camera fails.
pub fn capture(
    index: u32,
    frames: Arc<LatestSlot<I420Frame>>,
    stop: Stopper,
    state: Arc<Mutex<CameraState>>,
) {
    let set = |s: CameraState| {
        if let Ok(mut st) = state.lock() {
            *st = s;
        }
    };
    set(CameraState::Starting);
    let request = RequestedFormat::with_formats(
        RequestedFormatType::None,
        &[FrameFormat::MJPEG, FrameFormat::YUYV, FrameFormat::NV12],
    );
    let mut camera = match Camera::new(CameraIndex::Index(index), request) {
        Ok(c) => c,
        Err(e) => return set(classify(&e)),
    };
    if let Ok(formats) = camera.compatible_camera_formats()
        && let Some(best) = choose_format(&formats)
    {
        let only = [best.format()];
        let exact = RequestedFormat::with_formats(RequestedFormatType::Exact(best), &only);
        if let Err(e) = camera.set_camera_requset(exact) {
            tracing::debug!(error = %e, "camera kept its own format");
        }
    }
    if let Err(e) = camera.open_stream() {
        return set(classify(&e));
    }
    let fmt = camera.camera_format();
    set(CameraState::Running {
        width: fmt.resolution().width(),
        height: fmt.resolution().height(),
        fps: fmt.frame_rate(),
        format: format!("{:?}", fmt.format()),
    });
    while !stop.is_stopped() {
        match camera.frame() {
            Ok(buffer) => match to_i420(&buffer) {
                Ok(mut frame) => {
                    frame.capture_us = super::now_us();
                    frames.put(frame);
                }
                // A corrupt frame now and then is normal for MJPEG: skip it.
                Err(e) => tracing::trace!(error = %e, "camera frame skipped"),
            },
            Err(e) => {
                set(CameraState::Disconnected(e.to_string()));
                return;
            }
        }
    }
    // Dropping the camera stops streaming and releases it (its light goes off).
    let _ = camera.stop_stream();
    set(CameraState::Off);
}

#[cfg(test)]
mod tests {
    use super::*;
    use nokhwa::utils::Resolution;

    fn f(w: u32, h: u32, format: FrameFormat, fps: u32) -> CameraFormat {
        CameraFormat::new(Resolution::new(w, h), format, fps)
    }

    #[test]
    fn best_format_up_to_720p30() {
        let formats = [
            f(1920, 1080, FrameFormat::MJPEG, 30),
            f(1280, 720, FrameFormat::MJPEG, 30),
            f(1280, 720, FrameFormat::YUYV, 10),
            f(640, 480, FrameFormat::YUYV, 30),
        ];
        assert_eq!(
            choose_format(&formats),
            Some(f(1280, 720, FrameFormat::MJPEG, 30))
        );
        let slow = [
            f(1280, 720, FrameFormat::YUYV, 10),
            f(640, 480, FrameFormat::YUYV, 30),
        ];
        assert_eq!(
            choose_format(&slow),
            Some(f(640, 480, FrameFormat::YUYV, 30))
        );
        let ties = [
            f(640, 480, FrameFormat::MJPEG, 30),
            f(640, 480, FrameFormat::NV12, 30),
        ];
        assert_eq!(
            choose_format(&ties),
            Some(f(640, 480, FrameFormat::NV12, 30))
        );
        assert_eq!(choose_format(&[f(640, 480, FrameFormat::GRAY, 30)]), None);
    }

    /// Capture without a camera: this kernel has no module tree, so no V4L2 loopback device.
    /// What a camera hands over is a `nokhwa::Buffer` (resolution, bytes, format); these are
    /// built the way drivers send them (padded YUYV and NV12 rows, a JPEG per frame) and go
    /// through the same conversion the capture thread uses.
    #[test]
    fn camera_buffers_in_each_format_become_the_same_picture() {
        let (w, h) = (64usize, 48usize);
        // Left half bright, right half dark, no colour.
        let luma = |x: usize| if x < w / 2 { 200u8 } else { 50u8 };
        let yuyv_stride = 2 * w + 16;
        let mut yuyv = vec![0u8; yuyv_stride * h];
        for y in 0..h {
            for x in (0..w).step_by(2) {
                let at = y * yuyv_stride + x * 2;
                yuyv[at..at + 4].copy_from_slice(&[luma(x), 128, luma(x + 1), 128]);
            }
        }
        let nv12_stride = w + 8;
        let mut nv12 = vec![128u8; nv12_stride * h * 3 / 2];
        for y in 0..h {
            for x in 0..w {
                nv12[y * nv12_stride + x] = luma(x);
            }
        }
        let rgb = image::RgbImage::from_fn(w as u32, h as u32, |x, _| {
            let v = if (x as usize) < w / 2 { 200 } else { 50 };
            image::Rgb([v, v, v])
        });
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&rgb)
            .unwrap();
        let res = Resolution::new(w as u32, h as u32);
        for (format, data) in [
            (FrameFormat::YUYV, &yuyv),
            (FrameFormat::NV12, &nv12),
            (FrameFormat::MJPEG, &jpeg),
        ] {
            let frame = to_i420(&nokhwa::Buffer::new(res, data, format))
                .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            assert_eq!((frame.width, frame.height), (w, h), "{format:?}");
            let y_at = |x: usize, y: usize| frame.data[y * w + x] as i32;
            let (left, right) = (y_at(8, 24), y_at(56, 24));
            // YUYV and NV12 carry luma as is; JPEG goes through RGB (studio range), so near.
            assert!(left > 170 && right < 80, "{format:?}: {left} / {right}");
            assert!((y_at(8, 2) - left).abs() <= 3, "{format:?}: rows differ");
            let chroma = frame.data[w * h + (h / 4) * (w / 2) + 4] as i32;
            assert!((chroma - 128).abs() <= 4, "{format:?}: colour {chroma}");
        }
        // A torn MJPEG frame (the capture loop skips these) and a format we do not take.
        let torn = nokhwa::Buffer::new(res, &jpeg[..jpeg.len() / 3], FrameFormat::MJPEG);
        assert!(to_i420(&torn).is_err());
        let gray = nokhwa::Buffer::new(res, &vec![0u8; w * h], FrameFormat::GRAY);
        assert!(to_i420(&gray).is_err());
    }

    #[test]
    fn no_camera_is_an_empty_list_and_a_state_not_a_panic() {
        // This machine has no camera (CI neither). Where one exists, the list is not empty and
        // nothing more runs here: opening a real camera in a test would take it from its user.
        let cams = list_cameras();
        if cams.is_empty() {
            let state = Arc::new(Mutex::new(CameraState::Off));
            let frames = Arc::new(LatestSlot::new());
            capture(0, frames.clone(), Stopper::new(), state.clone());
            let s = state.lock().unwrap().clone();
            assert!(
                matches!(s, CameraState::NoCamera(_) | CameraState::Disconnected(_)),
                "{s:?}"
            );
            assert!(frames.take().is_none());
        }
    }
}

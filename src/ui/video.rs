//! Video on screen: one texture per stream, updated in place with each new frame and re-created
//! only when the frame size changes; drawn letterboxed (aspect kept), optionally mirrored.

use crate::services::RemoteVideo;
use crate::services::RgbaFrame;
use std::sync::Arc;

pub struct VideoTile {
    name: String,
    source: Option<Arc<RemoteVideo>>,
    texture: Option<egui::TextureHandle>,
    size: [usize; 2],
    /// Frames uploaded to the texture (the UI's view of the stream moving).
    pub frames_shown: u64,
    /// The self-view frame last uploaded, to skip re-uploading the same one.
    last_frame: Option<*const RgbaFrame>,
    /// Capture stamp of the picture in the texture (0 when unknown).
    shown_capture_us: u64,
}

impl VideoTile {
    pub fn new(name: &str) -> Self {
        VideoTile {
            name: name.to_owned(),
            source: None,
            texture: None,
            size: [0, 0],
            frames_shown: 0,
            last_frame: None,
            shown_capture_us: 0,
        }
    }

    pub fn set_source(&mut self, source: Arc<RemoteVideo>) {
        self.source = Some(source);
    }

    /// The stream ended (connection closed): show the placeholder until a new one arrives.
    pub fn clear_source(&mut self) {
        self.source = None;
        self.texture = None;
        self.last_frame = None;
    }

    pub fn has_picture(&self) -> bool {
        self.texture.is_some()
    }

    pub fn resolution(&self) -> [usize; 2] {
        self.size
    }

    pub fn frames_decoded(&self) -> u64 {
        self.source
            .as_ref()
            .map(|s| s.stats().frames_decoded)
            .unwrap_or(0)
    }

    /// Capture stamp of the picture in the texture (0 when unknown).
    pub fn shown_capture_us(&self) -> u64 {
        self.shown_capture_us
    }

    pub fn texture(&self) -> Option<&egui::TextureHandle> {
        self.texture.as_ref()
    }

    /// Uploads the newest decoded remote frame, if one arrived since the last call; says
    /// whether one did.
    pub fn refresh(&mut self, ctx: &egui::Context) -> bool {
        let Some(frame) = self.source.as_ref().and_then(|s| s.latest.take()) else {
            return false;
        };
        self.upload(ctx, &frame);
        true
    }

    /// Uploads a frame from a peeked slot (the self-view) unless it is the one already shown.
    pub fn refresh_from(&mut self, ctx: &egui::Context, frame: Option<Arc<RgbaFrame>>) {
        match frame {
            None => {
                self.texture = None;
                self.last_frame = None;
            }
            Some(f) => {
                let ptr = Arc::as_ptr(&f);
                if self.last_frame == Some(ptr) {
                    return;
                }
                self.last_frame = Some(ptr);
                self.upload(ctx, &f);
            }
        }
    }

    fn upload(&mut self, ctx: &egui::Context, frame: &RgbaFrame) {
        if frame.width == 0
            || frame.height == 0
            || frame.pixels.len() != frame.width * frame.height * 4
        {
            return;
        }
        let size = [frame.width, frame.height];
        let image = egui::ColorImage::from_rgba_unmultiplied(size, &frame.pixels);
        match self.texture.as_mut() {
            Some(t) if self.size == size => t.set(image, egui::TextureOptions::LINEAR),
            _ => {
                self.texture = Some(ctx.load_texture(
                    format!("video-{}", self.name),
                    image,
                    egui::TextureOptions::LINEAR,
                ));
                self.size = size;
            }
        }
        self.frames_shown += 1;
        self.shown_capture_us = frame.capture_us;
    }
}

/// The largest rect of the image's aspect ratio that fits in `into`, centred.
pub fn fit(image: egui::Vec2, into: egui::Rect) -> egui::Rect {
    if image.x <= 0.0 || image.y <= 0.0 {
        return into;
    }
    let scale = (into.width() / image.x).min(into.height() / image.y);
    egui::Rect::from_center_size(into.center(), image * scale)
}

/// Columns for `n` tiles of aspect `aspect` (w/h) in an area, maximising tile size.
pub fn grid_columns(n: usize, area: egui::Vec2, aspect: f32) -> usize {
    if n <= 1 {
        return 1;
    }
    let mut best = (1, 0.0f32);
    for cols in 1..=n {
        let rows = n.div_ceil(cols);
        let cell_w = area.x / cols as f32;
        let cell_h = area.y / rows as f32;
        let tile_w = cell_w.min(cell_h * aspect);
        if tile_w > best.1 {
            best = (cols, tile_w);
        }
    }
    best.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_keeps_aspect() {
        let r = fit(
            egui::vec2(640.0, 480.0),
            egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(800.0, 300.0)),
        );
        assert!((r.width() / r.height() - 4.0 / 3.0).abs() < 1e-3);
        assert_eq!(r.height(), 300.0);
        assert_eq!(r.center(), egui::pos2(400.0, 150.0));
    }

    #[test]
    fn grid_adapts_to_count_and_shape() {
        let wide = egui::vec2(1200.0, 600.0);
        assert_eq!(grid_columns(1, wide, 4.0 / 3.0), 1);
        assert_eq!(grid_columns(2, wide, 4.0 / 3.0), 2);
        assert_eq!(grid_columns(4, wide, 4.0 / 3.0), 2);
        assert_eq!(grid_columns(5, wide, 4.0 / 3.0), 3);
        let tall = egui::vec2(500.0, 1200.0);
        assert_eq!(grid_columns(2, tall, 4.0 / 3.0), 1);
    }
}

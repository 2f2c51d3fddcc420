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

    /// The width of the pictures decoded for it (0 before the first).
    pub fn decoded_width(&self) -> usize {
        self.source.as_ref().map_or(0, |s| s.stats().width)
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

const TILE_ASPECT: f32 = 4.0 / 3.0;
const TILE_GAP: f32 = 8.0;

/// Where `n` tiles go in `area`, 4:3 each: a grid that makes them as large as it can, or, with
/// `main` (speaker view), that tile large and the others in a strip along the bottom.
pub fn tile_rects(area: egui::Rect, n: usize, main: Option<usize>) -> Vec<egui::Rect> {
    let tile = |r: egui::Rect| fit(egui::vec2(4.0, 3.0), r);
    match main {
        Some(m) if m < n && n > 1 => {
            let strip_h = (area.height() * 0.2).clamp(80.0, 180.0);
            let others = n - 1;
            let w = (strip_h * TILE_ASPECT)
                .min((area.width() - TILE_GAP * (others as f32 - 1.0)) / others as f32);
            let row_w = w * others as f32 + TILE_GAP * (others as f32 - 1.0);
            let mut x = area.center().x - row_w / 2.0;
            let strip_top = area.max.y - strip_h;
            let main_rect = tile(egui::Rect::from_min_max(
                area.min,
                egui::pos2(area.max.x, strip_top - TILE_GAP),
            ));
            (0..n)
                .map(|i| {
                    if i == m {
                        return main_rect;
                    }
                    let cell =
                        egui::Rect::from_min_size(egui::pos2(x, strip_top), egui::vec2(w, strip_h));
                    x += w + TILE_GAP;
                    tile(cell)
                })
                .collect()
        }
        _ => {
            let cols = grid_columns(n, area.size(), TILE_ASPECT);
            let rows = n.div_ceil(cols.max(1));
            let cell = egui::vec2(
                (area.width() - TILE_GAP * (cols as f32 - 1.0)) / cols as f32,
                (area.height() - TILE_GAP * (rows as f32 - 1.0)) / rows as f32,
            );
            (0..n)
                .map(|i| {
                    let (row, col) = (i / cols, i % cols);
                    tile(egui::Rect::from_min_size(
                        area.min
                            + egui::vec2(
                                col as f32 * (cell.x + TILE_GAP),
                                row as f32 * (cell.y + TILE_GAP),
                            ),
                        cell,
                    ))
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: egui::Rect, b: egui::Rect) -> bool {
        a.intersect(b).is_positive()
    }

    #[test]
    fn speaker_view_puts_the_main_tile_large_and_the_rest_in_a_strip() {
        let area = egui::Rect::from_min_size(egui::pos2(10.0, 20.0), egui::vec2(1000.0, 700.0));
        for n in 2..=6 {
            let rects = tile_rects(area, n, Some(1));
            assert_eq!(rects.len(), n);
            let main = rects[1];
            for (i, r) in rects.iter().enumerate() {
                assert!(
                    area.expand(0.5).contains_rect(*r),
                    "{n}: tile {i} {r:?} outside"
                );
                for (j, o) in rects.iter().enumerate().skip(i + 1) {
                    assert!(!overlap(*r, *o), "{n}: tiles {i} and {j} overlap");
                }
                if i != 1 {
                    assert!(r.area() * 4.0 < main.area(), "{n}: tile {i} not small");
                    assert!(r.min.y > main.max.y, "{n}: tile {i} not below the main one");
                }
            }
        }
        // One person: speaker view is that person, full size, as in the grid.
        assert_eq!(tile_rects(area, 1, Some(0)), tile_rects(area, 1, None));
    }

    #[test]
    fn the_grid_fills_the_area_without_overlap() {
        let area = egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(1200.0, 600.0));
        let rects = tile_rects(area, 4, None);
        assert!(rects.windows(2).all(|w| !overlap(w[0], w[1])));
        assert!(
            rects
                .iter()
                .all(|r| (r.width() - rects[0].width()).abs() < 0.01)
        );
        // A main tile out of range falls back to the grid.
        assert_eq!(tile_rects(area, 4, Some(9)), rects);
    }

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

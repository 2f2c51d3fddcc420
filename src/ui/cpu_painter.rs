//! Paints egui's output (clipped, textured triangles in premultiplied colour) into a pixel
//! buffer on the CPU, with the arithmetic of egui_glow's shader and blend: vertex colour times
//! texel in gamma space, `ONE, ONE_MINUS_SRC_ALPHA`. For machines without a GPU driver, where
//! Mesa's software GL costs the app about 78 MB of its memory (docs/benchmarks.md). Not wired
//! into the window yet. Imports egui only.

use egui::epaint::{ClippedPrimitive, ImageDelta, Primitive, Vertex};
use egui::{Color32, ImageData, Rect, TextureFilter, TextureId, TexturesDelta};
use std::collections::HashMap;

/// Premultiplied RGBA pixels, row by row.
#[derive(Clone, Debug, Default)]
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[u8; 4]>,
}

impl Canvas {
    /// Resizes (contents undefined afterwards) and fills with `color`.
    pub fn clear(&mut self, width: usize, height: usize, color: Color32) {
        self.width = width;
        self.height = height;
        self.pixels.clear();
        self.pixels.resize(width * height, color.to_array());
    }

    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 4]> {
        (x < self.width && y < self.height).then(|| self.pixels[y * self.width + x])
    }
}

struct Texture {
    width: usize,
    height: usize,
    /// Premultiplied RGBA, as egui hands it over.
    texels: Vec<[u8; 4]>,
    magnification: TextureFilter,
    minification: TextureFilter,
}

impl Texture {
    /// The texel at `(u, v)` (0..1 over the texture), clamped to the edge. Bilinear in 8-bit
    /// fixed point: in floats a call-like frame took 18.4 ms instead of 12.7.
    #[inline]
    fn sample(&self, u: f32, v: f32, filter: TextureFilter) -> [u8; 4] {
        let x = u * self.width as f32 - 0.5;
        let y = v * self.height as f32 - 0.5;
        match filter {
            TextureFilter::Nearest => self.texel(x.round() as isize, y.round() as isize),
            TextureFilter::Linear => {
                let (x0, y0) = (x.floor(), y.floor());
                let fx = ((x - x0) * 256.0) as u32;
                let fy = ((y - y0) * 256.0) as u32;
                let (x0, y0) = (x0 as isize, y0 as isize);
                let t00 = self.texel(x0, y0);
                let t10 = self.texel(x0 + 1, y0);
                let t01 = self.texel(x0, y0 + 1);
                let t11 = self.texel(x0 + 1, y0 + 1);
                std::array::from_fn(|c| {
                    let top = t00[c] as u32 * (256 - fx) + t10[c] as u32 * fx;
                    let bottom = t01[c] as u32 * (256 - fx) + t11[c] as u32 * fx;
                    ((top * (256 - fy) + bottom * fy + (1 << 15)) >> 16) as u8
                })
            }
        }
    }

    #[inline]
    fn texel(&self, x: isize, y: isize) -> [u8; 4] {
        let x = x.clamp(0, self.width as isize - 1) as usize;
        let y = y.clamp(0, self.height as isize - 1) as usize;
        self.texels[y * self.width + x]
    }
}

/// egui's textures, kept in memory, and the painting of its meshes with them.
#[derive(Default)]
pub struct CpuPainter {
    textures: HashMap<TextureId, Texture>,
}

/// A vertex in pixels with its colour as floats (0-255, premultiplied).
#[derive(Clone, Copy)]
struct Corner {
    x: f32,
    y: f32,
    u: f32,
    v: f32,
    rgba: [f32; 4],
}

impl Corner {
    fn new(v: &Vertex, pixels_per_point: f32) -> Corner {
        Corner {
            x: v.pos.x * pixels_per_point,
            y: v.pos.y * pixels_per_point,
            u: v.uv.x,
            v: v.uv.y,
            rgba: v.color.to_array().map(f32::from),
        }
    }
}

/// The clip rectangle in whole pixels, as egui_glow's scissor rounds it.
fn clip_pixels(clip: Rect, pixels_per_point: f32, canvas: &Canvas) -> (usize, usize, usize, usize) {
    let round = |v: f32, max: usize| ((v * pixels_per_point).round().max(0.0) as usize).min(max);
    let x0 = round(clip.min.x, canvas.width);
    let y0 = round(clip.min.y, canvas.height);
    (
        x0,
        y0,
        round(clip.max.x, canvas.width).max(x0),
        round(clip.max.y, canvas.height).max(y0),
    )
}

/// `dst` under premultiplied `src`: `src + dst * (1 - src.a)`.
#[inline]
fn blend(dst: &mut [u8; 4], src: [f32; 4]) {
    if src[3] >= 254.5 {
        // Opaque: nothing of `dst` shows through.
        *dst = src.map(|v| (v + 0.5).clamp(0.0, 255.0) as u8);
        return;
    }
    if src[3] <= 0.0 && src[0] <= 0.0 && src[1] <= 0.0 && src[2] <= 0.0 {
        return;
    }
    let keep = 1.0 - src[3] * (1.0 / 255.0);
    for c in 0..4 {
        dst[c] = (src[c] + dst[c] as f32 * keep + 0.5).clamp(0.0, 255.0) as u8;
    }
}

impl CpuPainter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Textures held (for tests and diagnostics).
    pub fn texture_count(&self) -> usize {
        self.textures.len()
    }

    /// Applies egui's texture changes (taking them out of `textures`, which egui requires
    /// handled), paints `primitives` over `canvas`, then frees what egui freed (after painting,
    /// as egui asks). Paint callbacks (custom GL) are skipped.
    pub fn paint(
        &mut self,
        canvas: &mut Canvas,
        pixels_per_point: f32,
        primitives: &[ClippedPrimitive],
        textures: &mut TexturesDelta,
    ) {
        for (id, deltas) in textures.set.drain() {
            // In the order egui made them: a full image, then patches over it.
            for delta in &deltas {
                self.set_texture(id, delta);
            }
        }
        for primitive in primitives {
            let Primitive::Mesh(mesh) = &primitive.primitive else {
                continue;
            };
            let Some(texture) = self.textures.get(&mesh.texture_id) else {
                continue;
            };
            let clip = clip_pixels(primitive.clip_rect, pixels_per_point, canvas);
            if clip.0 == clip.2 || clip.1 == clip.3 {
                continue;
            }
            for tri in mesh.indices.chunks_exact(3) {
                let corner = |i: u32| {
                    mesh.vertices
                        .get(i as usize)
                        .map(|v| Corner::new(v, pixels_per_point))
                };
                // A mesh with an index past its vertices is skipped, not a panic.
                if let (Some(a), Some(b), Some(c)) =
                    (corner(tri[0]), corner(tri[1]), corner(tri[2]))
                {
                    triangle(canvas, clip, [a, b, c], texture);
                }
            }
        }
        for id in textures.free.drain() {
            self.textures.remove(&id);
        }
    }

    fn set_texture(&mut self, id: TextureId, delta: &ImageDelta) {
        let ImageData::Color(image) = &delta.image;
        let [width, height] = image.size;
        if width == 0 || height == 0 || image.pixels.len() != width * height {
            // Nothing to sample (or a malformed image): meshes using it are skipped.
            if delta.pos.is_none() {
                self.textures.remove(&id);
            }
            return;
        }
        let texels = image.pixels.iter().map(|p| p.to_array());
        match delta.pos {
            None => {
                self.textures.insert(
                    id,
                    Texture {
                        width,
                        height,
                        texels: texels.collect(),
                        magnification: delta.options.magnification,
                        minification: delta.options.minification,
                    },
                );
            }
            Some([x0, y0]) => {
                let Some(texture) = self.textures.get_mut(&id) else {
                    return;
                };
                for (i, texel) in texels.enumerate() {
                    let (x, y) = (x0 + i % width.max(1), y0 + i / width.max(1));
                    if x < texture.width && y < texture.height {
                        texture.texels[y * texture.width + x] = texel;
                    }
                }
            }
        }
    }
}

/// Rasterises one triangle at pixel centres inside `clip`, row span by row span.
fn triangle(
    canvas: &mut Canvas,
    clip: (usize, usize, usize, usize),
    [a, b, c]: [Corner; 3],
    texture: &Texture,
) {
    let area = (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x);
    if area.abs() < 1e-6 || !area.is_finite() {
        return;
    }
    let min_y = a.y.min(b.y).min(c.y).floor().max(clip.1 as f32) as usize;
    let max_y = (a.y.max(b.y).max(c.y).ceil().max(0.0) as usize).min(clip.3);
    let min_x = a.x.min(b.x).min(c.x).floor().max(clip.0 as f32) as usize;
    let max_x = (a.x.max(b.x).max(c.x).ceil().max(0.0) as usize).min(clip.2);
    if min_x >= max_x || min_y >= max_y {
        return;
    }
    // Edge functions e_i(x, y) = A_i x + B_i y + C_i, positive inside once divided by `area`;
    // the barycentric weight of the corner opposite each edge.
    let edge = |p: Corner, q: Corner| {
        let (ea, eb) = ((p.y - q.y) / area, (q.x - p.x) / area);
        (ea, eb, -(ea * p.x + eb * p.y))
    };
    let edges = [edge(b, c), edge(c, a), edge(a, b)];
    let corners = [a, b, c];
    let uniform_color = a.rgba == b.rgba && b.rgba == c.rgba;
    let uniform_uv = (a.u, a.v) == (b.u, b.v) && (b.u, b.v) == (c.u, c.v);
    // Magnifying when a texel covers more than a pixel, as the GPU decides per pixel.
    let texel_area = ((b.u - a.u) * (c.v - a.v) - (b.v - a.v) * (c.u - a.u)).abs()
        * (texture.width * texture.height) as f32;
    let filter = if texel_area <= area.abs() {
        texture.magnification
    } else {
        texture.minification
    };
    let constant = (uniform_color && uniform_uv).then(|| {
        let texel = texture.sample(a.u, a.v, filter);
        std::array::from_fn::<f32, 4, _>(|i| a.rgba[i] * texel[i] as f32 / 255.0)
    });
    // A picture drawn as it is (white vertex colour): the texel is the colour.
    let plain = uniform_color && a.rgba == [255.0; 4];
    for y in min_y..max_y {
        let py = y as f32 + 0.5;
        // The span of x where all three weights are >= 0.
        let (mut lo, mut hi) = (min_x as f32 + 0.5, max_x as f32 - 0.5);
        for (ea, eb, ec) in edges {
            let at = eb * py + ec;
            if ea.abs() < 1e-12 {
                if at < 0.0 {
                    hi = lo - 1.0;
                }
            } else if ea > 0.0 {
                lo = lo.max(-at / ea);
            } else {
                hi = hi.min(-at / ea);
            }
        }
        if lo > hi {
            continue;
        }
        let first = (lo - 0.5).ceil().max(min_x as f32) as usize;
        let last = ((hi - 0.5).floor() as usize).min(max_x - 1);
        let row = &mut canvas.pixels[y * canvas.width + first..=y * canvas.width + last];
        if let Some(src) = constant {
            for dst in row {
                blend(dst, src);
            }
            continue;
        }
        // Weights are linear along the row: start at the first pixel, step by their x slopes.
        let px = first as f32 + 0.5;
        let w = edges.map(|(ea, eb, ec)| ea * px + eb * py + ec);
        let at = |w: [f32; 3], f: &dyn Fn(&Corner) -> f32| {
            w[0] * f(&corners[0]) + w[1] * f(&corners[1]) + w[2] * f(&corners[2])
        };
        let slope = edges.map(|(ea, _, _)| ea);
        let (mut u, mut v) = (at(w, &|k| k.u), at(w, &|k| k.v));
        let (du, dv) = (at(slope, &|k| k.u), at(slope, &|k| k.v));
        let mut color: [f32; 4] = std::array::from_fn(|i| at(w, &|k| k.rgba[i]));
        let dcolor: [f32; 4] = if uniform_color {
            [0.0; 4]
        } else {
            std::array::from_fn(|i| at(slope, &|k| k.rgba[i]))
        };
        for dst in row {
            let texel = texture.sample(u, v, filter);
            if plain && texel[3] == 255 {
                *dst = texel;
            } else {
                let src: [f32; 4] =
                    std::array::from_fn(|i| color[i] * texel[i] as f32 * (1.0 / 255.0));
                blend(dst, src);
            }
            u += du;
            v += dv;
            if !uniform_color {
                for i in 0..4 {
                    color[i] += dcolor[i];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui::{ColorImage, Pos2, TextureOptions, Vec2};

    const WIDTH: usize = 200;
    const HEIGHT: usize = 120;

    /// Runs one egui pass of `ui` on a 200x120 screen and paints it over grey.
    fn render(
        painter: &mut CpuPainter,
        ctx: &egui::Context,
        ui: impl FnMut(&mut egui::Ui),
    ) -> Canvas {
        let input = egui::RawInput {
            screen_rect: Some(Rect::from_min_size(
                Pos2::ZERO,
                Vec2::new(WIDTH as f32, HEIGHT as f32),
            )),
            ..Default::default()
        };
        let mut output = ctx.run_ui(input, ui);
        let primitives = ctx.tessellate(output.shapes, output.pixels_per_point);
        let mut canvas = Canvas::default();
        canvas.clear(WIDTH, HEIGHT, Color32::from_gray(40));
        painter.paint(
            &mut canvas,
            output.pixels_per_point,
            &primitives,
            &mut output.textures_delta,
        );
        canvas
    }

    #[test]
    fn a_filled_panel_and_its_text_are_painted() {
        let ctx = egui::Context::default();
        let mut painter = CpuPainter::new();
        let mut text_rect = Rect::NOTHING;
        let canvas = render(&mut painter, &ctx, |ui| {
            egui::Frame::NONE
                .fill(Color32::from_rgb(200, 30, 30))
                .show(ui, |ui| {
                    ui.set_min_size(Vec2::new(WIDTH as f32, HEIGHT as f32));
                    text_rect = ui
                        .label(
                            egui::RichText::new("Huddle")
                                .color(Color32::WHITE)
                                .size(24.0),
                        )
                        .rect;
                });
        });
        assert!(painter.texture_count() >= 1, "the font atlas is held");
        // Far from the text: the fill, exactly.
        assert_eq!(canvas.pixel(150, 100), Some([200, 30, 30, 255]));
        // Inside the label: white glyph pixels, and anti-aliased ones between.
        let (x0, y0) = (text_rect.min.x as usize, text_rect.min.y as usize);
        let (x1, y1) = (text_rect.max.x as usize, text_rect.max.y as usize);
        let label: Vec<[u8; 4]> = (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter_map(|(x, y)| canvas.pixel(x, y))
            .collect();
        let white = label.iter().filter(|p| p[0] > 240 && p[1] > 240).count();
        let between = label.iter().filter(|p| p[1] > 60 && p[1] < 200).count();
        assert!(white > 20, "{white} white pixels in the label");
        assert!(between > 10, "{between} anti-aliased pixels in the label");
    }

    #[test]
    fn an_image_is_drawn_from_its_texture_and_follows_partial_updates() {
        let ctx = egui::Context::default();
        let mut painter = CpuPainter::new();
        let checker = ColorImage::new(
            [2, 2],
            vec![
                Color32::RED,
                Color32::GREEN,
                Color32::BLUE,
                Color32::from_rgb(255, 255, 0),
            ],
        );
        let handle = ctx.load_texture("checker", checker, TextureOptions::NEAREST);
        let id = handle.id();
        let placed = std::cell::Cell::new(Rect::NOTHING);
        let show = |ui: &mut egui::Ui| {
            let (rect, _) = ui.allocate_exact_size(Vec2::new(100.0, 100.0), egui::Sense::hover());
            ui.painter().image(
                id,
                rect,
                Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
                Color32::WHITE,
            );
            placed.set(rect);
        };
        let canvas = render(&mut painter, &ctx, show);
        // One quadrant of the 100x100 image per texel.
        let quadrant = |canvas: &Canvas, qx: usize, qy: usize| {
            let min = placed.get().min;
            canvas.pixel(min.x as usize + qx * 50 + 25, min.y as usize + qy * 50 + 25)
        };
        assert_eq!(placed.get().size(), Vec2::new(100.0, 100.0));
        assert_eq!(quadrant(&canvas, 0, 0), Some([255, 0, 0, 255]));
        assert_eq!(quadrant(&canvas, 1, 0), Some([0, 255, 0, 255]));
        assert_eq!(quadrant(&canvas, 0, 1), Some([0, 0, 255, 255]));
        assert_eq!(quadrant(&canvas, 1, 1), Some([255, 255, 0, 255]));
        // One texel replaced in place, as a video tile's picture is.
        let mut handle = handle;
        handle.set_partial(
            [1, 1],
            ColorImage::new([1, 1], vec![Color32::WHITE]),
            TextureOptions::NEAREST,
        );
        let canvas = render(&mut painter, &ctx, show);
        assert_eq!(quadrant(&canvas, 1, 1), Some([255, 255, 255, 255]));
        assert_eq!(quadrant(&canvas, 0, 0), Some([255, 0, 0, 255]));
        let held = painter.texture_count();
        drop(handle);
        render(&mut painter, &ctx, |_| {});
        assert_eq!(
            painter.texture_count(),
            held - 1,
            "the freed texture is gone"
        );
    }

    #[test]
    fn meshes_are_clipped_and_bad_indices_are_skipped() {
        let mut painter = CpuPainter::new();
        let mut canvas = Canvas::default();
        canvas.clear(40, 40, Color32::BLACK);
        let white = TextureId::Managed(0);
        let mut delta = TexturesDelta::default();
        delta.set.entry(white).or_default().push(ImageDelta::full(
            ColorImage::new([1, 1], vec![Color32::WHITE]),
            TextureOptions::LINEAR,
        ));
        let mut mesh = egui::Mesh::with_texture(white);
        mesh.add_colored_rect(
            Rect::from_min_max(Pos2::new(0.0, 0.0), Pos2::new(40.0, 40.0)),
            Color32::from_rgba_premultiplied(0, 128, 0, 128),
        );
        mesh.indices.extend([0, 1, 99]);
        let clip = Rect::from_min_max(Pos2::new(10.0, 10.0), Pos2::new(20.0, 30.0));
        painter.paint(
            &mut canvas,
            1.0,
            &[ClippedPrimitive {
                clip_rect: clip,
                primitive: Primitive::Mesh(mesh),
            }],
            &mut delta,
        );
        // Half-transparent green over black, inside the clip only.
        assert_eq!(canvas.pixel(15, 15), Some([0, 128, 0, 255]));
        assert_eq!(canvas.pixel(19, 29), Some([0, 128, 0, 255]));
        assert_eq!(canvas.pixel(9, 15), Some([0, 0, 0, 255]));
        assert_eq!(canvas.pixel(20, 15), Some([0, 0, 0, 255]));
        assert_eq!(canvas.pixel(15, 30), Some([0, 0, 0, 255]));
    }
}

//! Paints egui's output (clipped, textured triangles in premultiplied colour) into a pixel
//! buffer on the CPU, with the arithmetic of egui_glow's shader and blend: vertex colour times
//! texel in gamma space, `ONE, ONE_MINUS_SRC_ALPHA`; and works out which parts of the window a
//! pass changed, so only those are painted again. For machines without a GPU driver, where
//! Mesa's software GL costs the app about 78 MB of its memory (docs/benchmarks.md); the window
//! around it is `ui::software`. Imports egui only.

use egui::epaint::{ClippedPrimitive, ImageDelta, Primitive, Vertex};
use egui::{Color32, ImageData, Rect, TextureFilter, TextureId, TexturesDelta};
use std::collections::{HashMap, HashSet};

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

/// A rectangle of whole pixels, `x0..x1` by `y0..y1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelRect {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl PixelRect {
    pub fn whole(canvas: &Canvas) -> PixelRect {
        PixelRect {
            x0: 0,
            y0: 0,
            x1: canvas.width,
            y1: canvas.height,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.x0 >= self.x1 || self.y0 >= self.y1
    }

    pub fn area(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            (self.x1 - self.x0) * (self.y1 - self.y0)
        }
    }

    pub fn intersect(&self, other: &PixelRect) -> PixelRect {
        PixelRect {
            x0: self.x0.max(other.x0),
            y0: self.y0.max(other.y0),
            x1: self.x1.min(other.x1),
            y1: self.y1.min(other.y1),
        }
    }

    fn union(&self, other: &PixelRect) -> PixelRect {
        PixelRect {
            x0: self.x0.min(other.x0),
            y0: self.y0.min(other.y0),
            x1: self.x1.max(other.x1),
            y1: self.y1.max(other.y1),
        }
    }

    /// Overlapping or touching: painting them as one costs no extra pixels worth a second pass.
    fn touches(&self, other: &PixelRect) -> bool {
        self.x0 <= other.x1 && other.x0 <= self.x1 && self.y0 <= other.y1 && other.y0 <= self.y1
    }

    /// `rect` (in points) in whole pixels covering it, widened by one pixel for anti-aliasing
    /// feathers and rounding, inside `bounds`.
    fn covering(rect: Rect, pixels_per_point: f32, bounds: &PixelRect) -> PixelRect {
        if !rect.is_finite() || rect.is_negative() {
            return PixelRect {
                x0: 0,
                y0: 0,
                x1: 0,
                y1: 0,
            };
        }
        let low = |v: f32| ((v * pixels_per_point).floor() - 1.0).max(0.0) as usize;
        let high = |v: f32| ((v * pixels_per_point).ceil() + 1.0).max(0.0) as usize;
        PixelRect {
            x0: low(rect.min.x),
            y0: low(rect.min.y),
            x1: high(rect.max.x),
            y1: high(rect.max.y),
        }
        .intersect(bounds)
    }
}

/// A paint callback for this painter: run once the pass it belongs to has been rasterised
/// (before the picture is handed to the window system). The display meter's stamps use it.
pub struct PaintedCallback(Box<dyn Fn() + Send + Sync>);

impl PaintedCallback {
    pub fn new(f: impl Fn() + Send + Sync + 'static) -> PaintedCallback {
        PaintedCallback(Box::new(f))
    }
}

/// The parts of the window a pass changed, from its primitives against the last pass's and the
/// textures it changed. A video call changes one or two pictures per pass; repainting only
/// those is what makes a CPU painter affordable.
#[derive(Default)]
pub struct DamageTracker {
    last: Vec<ClippedPrimitive>,
    last_frame: Option<(usize, usize, f32)>,
}

/// Separate regions kept before they are merged into one (each is a pass over the primitives).
const MAX_REGIONS: usize = 4;

impl DamageTracker {
    /// The regions of `canvas` (already sized for this pass) to paint again. Empty when the
    /// pass changed nothing visible; the whole canvas after a resize or a scale change.
    pub fn damage(
        &mut self,
        canvas: &Canvas,
        pixels_per_point: f32,
        primitives: &[ClippedPrimitive],
        textures: &TexturesDelta,
    ) -> Vec<PixelRect> {
        let whole = PixelRect::whole(canvas);
        let frame = Some((canvas.width, canvas.height, pixels_per_point));
        let everything = frame != self.last_frame || primitives.len() != self.last.len();
        let changed_textures: HashSet<TextureId> = textures
            .set
            .keys()
            .copied()
            .chain(textures.free.iter().copied())
            .collect();
        let mut regions = Vec::new();
        if everything {
            regions.push(whole);
        } else {
            for (old, new) in self.last.iter().zip(primitives) {
                if !same_primitive(old, new) {
                    add_region(&mut regions, extent(old, pixels_per_point, &whole));
                    add_region(&mut regions, extent(new, pixels_per_point, &whole));
                } else if let Primitive::Mesh(mesh) = &new.primitive
                    && changed_textures.contains(&mesh.texture_id)
                {
                    add_region(&mut regions, extent(new, pixels_per_point, &whole));
                }
            }
        }
        self.last.clear();
        self.last.extend_from_slice(primitives);
        self.last_frame = frame;
        // Mostly everything: one pass over the whole canvas is cheaper than several.
        let area: usize = regions.iter().map(PixelRect::area).sum();
        if area * 4 > whole.area() * 3 {
            return vec![whole];
        }
        regions
    }
}

fn same_primitive(a: &ClippedPrimitive, b: &ClippedPrimitive) -> bool {
    if a.clip_rect != b.clip_rect {
        return false;
    }
    match (&a.primitive, &b.primitive) {
        (Primitive::Mesh(a), Primitive::Mesh(b)) => a == b,
        // Callbacks draw nothing here.
        (Primitive::Callback(a), Primitive::Callback(b)) => a.rect == b.rect,
        _ => false,
    }
}

/// The pixels a primitive can touch: its mesh's bounds inside its clip.
fn extent(primitive: &ClippedPrimitive, pixels_per_point: f32, whole: &PixelRect) -> PixelRect {
    let bounds = match &primitive.primitive {
        Primitive::Mesh(mesh) => mesh.calc_bounds(),
        Primitive::Callback(_) => Rect::NOTHING,
    };
    PixelRect::covering(
        bounds.intersect(primitive.clip_rect),
        pixels_per_point,
        whole,
    )
}

/// Adds `rect`, merging it with the regions it touches; past [`MAX_REGIONS`] all become one.
fn add_region(regions: &mut Vec<PixelRect>, rect: PixelRect) {
    if rect.is_empty() {
        return;
    }
    let mut merged = rect;
    while let Some(i) = regions.iter().position(|r| r.touches(&merged)) {
        merged = merged.union(&regions.swap_remove(i));
    }
    regions.push(merged);
    if regions.len() > MAX_REGIONS {
        let all = regions.iter().fold(merged, |a, r| a.union(r));
        regions.clear();
        regions.push(all);
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
fn clip_pixels(clip: Rect, pixels_per_point: f32, canvas: &Canvas) -> PixelRect {
    let round = |v: f32, max: usize| ((v * pixels_per_point).round().max(0.0) as usize).min(max);
    let x0 = round(clip.min.x, canvas.width);
    let y0 = round(clip.min.y, canvas.height);
    PixelRect {
        x0,
        y0,
        x1: round(clip.max.x, canvas.width).max(x0),
        y1: round(clip.max.y, canvas.height).max(y0),
    }
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
    /// handled), paints `primitives` over the whole `canvas`, then frees what egui freed (after
    /// painting, as egui asks). Paint callbacks of other painters (custom GL) are skipped.
    pub fn paint(
        &mut self,
        canvas: &mut Canvas,
        pixels_per_point: f32,
        primitives: &[ClippedPrimitive],
        textures: &mut TexturesDelta,
    ) {
        let whole = PixelRect::whole(canvas);
        self.paint_regions(
            canvas,
            pixels_per_point,
            primitives,
            textures,
            &[whole],
            None,
        );
    }

    /// As [`CpuPainter::paint`], but only inside `regions`, each first cleared to `clear` when
    /// given (the rest of the canvas keeps the last pass's pixels). [`PaintedCallback`]s run
    /// once at the end when anything was painted.
    pub fn paint_regions(
        &mut self,
        canvas: &mut Canvas,
        pixels_per_point: f32,
        primitives: &[ClippedPrimitive],
        textures: &mut TexturesDelta,
        regions: &[PixelRect],
        clear: Option<Color32>,
    ) {
        for (id, deltas) in textures.set.drain() {
            // In the order egui made them: a full image, then patches over it.
            for delta in &deltas {
                self.set_texture(id, delta);
            }
        }
        let whole = PixelRect::whole(canvas);
        let regions: Vec<PixelRect> = regions
            .iter()
            .map(|r| r.intersect(&whole))
            .filter(|r| !r.is_empty())
            .collect();
        let extents: Vec<PixelRect> = if regions.len() == 1 && regions[0] == whole {
            // Every primitive is painted anyway: no need to measure them.
            vec![whole; primitives.len()]
        } else {
            primitives
                .iter()
                .map(|p| extent(p, pixels_per_point, &whole))
                .collect()
        };
        for region in &regions {
            if let Some(color) = clear {
                let fill = color.to_array();
                for y in region.y0..region.y1 {
                    canvas.pixels[y * canvas.width + region.x0..y * canvas.width + region.x1]
                        .fill(fill);
                }
            }
            for (primitive, extent) in primitives.iter().zip(&extents) {
                if extent.intersect(region).is_empty() {
                    continue;
                }
                let Primitive::Mesh(mesh) = &primitive.primitive else {
                    continue;
                };
                let Some(texture) = self.textures.get(&mesh.texture_id) else {
                    continue;
                };
                let clip =
                    clip_pixels(primitive.clip_rect, pixels_per_point, canvas).intersect(region);
                if clip.is_empty() {
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
        }
        if !regions.is_empty() {
            for primitive in primitives {
                if let Primitive::Callback(callback) = &primitive.primitive
                    && let Some(painted) = callback.callback.downcast_ref::<PaintedCallback>()
                {
                    (painted.0)();
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

/// Texel coordinates in 16.16 fixed point.
const FIXED_ONE: f32 = 65536.0;

/// One row of a picture drawn at white (the texel is the colour), bilinear: texture coordinates
/// step in 16.16 fixed point and two channels are interpolated per multiply, as one u32 holds
/// RGBA. A third of the time of [`Texture::sample`] per pixel; within a unit of it.
fn picture_span(row: &mut [[u8; 4]], texture: &Texture, u: f32, v: f32, du: f32, dv: f32) {
    let (w, h) = (texture.width as f32, texture.height as f32);
    let to_fixed = |t: f32| (t * FIXED_ONE) as i64;
    let mut tx = to_fixed(u * w - 0.5);
    let mut ty = to_fixed(v * h - 0.5);
    let (dtx, dty) = (to_fixed(du * w), to_fixed(dv * h));
    let (max_x, max_y) = (texture.width as i64 - 1, texture.height as i64 - 1);
    let texel = |x: i64, y: i64| {
        let (x, y) = (x.clamp(0, max_x) as usize, y.clamp(0, max_y) as usize);
        u32::from_le_bytes(texture.texels[y * texture.width + x])
    };
    for dst in row {
        let (x0, y0) = (tx >> 16, ty >> 16);
        let fx = ((tx >> 8) & 0xff) as u32;
        let fy = ((ty >> 8) & 0xff) as u32;
        let top = lerp_rgba(texel(x0, y0), texel(x0 + 1, y0), fx);
        let bottom = lerp_rgba(texel(x0, y0 + 1), texel(x0 + 1, y0 + 1), fx);
        let src = lerp_rgba(top, bottom, fy).to_le_bytes();
        if src[3] == 255 {
            *dst = src;
        } else {
            blend(dst, src.map(f32::from));
        }
        tx += dtx;
        ty += dty;
    }
}

/// `a` toward `b` by `w`/256, per byte: red and blue in one multiply, green and alpha in another
/// (each product stays within its 16-bit lane).
#[inline]
fn lerp_rgba(a: u32, b: u32, w: u32) -> u32 {
    let keep = 256 - w;
    // + 128 per lane: rounded, not truncated.
    let rb = (((a & 0x00ff_00ff) * keep + (b & 0x00ff_00ff) * w + 0x0080_0080) >> 8) & 0x00ff_00ff;
    let ga = (((a >> 8) & 0x00ff_00ff) * keep + ((b >> 8) & 0x00ff_00ff) * w + 0x0080_0080)
        & 0xff00_ff00;
    rb | ga
}

/// Rasterises one triangle at pixel centres inside `clip`, row span by row span.
fn triangle(canvas: &mut Canvas, clip: PixelRect, [a, b, c]: [Corner; 3], texture: &Texture) {
    let area = (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x);
    if area.abs() < 1e-6 || !area.is_finite() {
        return;
    }
    let min_y = a.y.min(b.y).min(c.y).floor().max(clip.y0 as f32) as usize;
    let max_y = (a.y.max(b.y).max(c.y).ceil().max(0.0) as usize).min(clip.y1);
    let min_x = a.x.min(b.x).min(c.x).floor().max(clip.x0 as f32) as usize;
    let max_x = (a.x.max(b.x).max(c.x).ceil().max(0.0) as usize).min(clip.x1);
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
            if src[3] >= 254.5 {
                row.fill(src.map(|v| (v + 0.5).clamp(0.0, 255.0) as u8));
            } else {
                for dst in row {
                    blend(dst, src);
                }
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
        if plain && filter == TextureFilter::Linear {
            // A picture at any scale: the video tiles, most of a call's pixels.
            picture_span(row, texture, u, v, du, dv);
            continue;
        }
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

    /// An image mesh over `rect` at white, with texture `id`.
    fn image(id: TextureId, rect: Rect) -> ClippedPrimitive {
        let mut mesh = egui::Mesh::with_texture(id);
        mesh.add_rect_with_uv(
            rect,
            Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
            Color32::WHITE,
        );
        ClippedPrimitive {
            clip_rect: Rect::EVERYTHING,
            primitive: Primitive::Mesh(mesh),
        }
    }

    fn full_image(id: TextureId, color: Color32) -> TexturesDelta {
        let mut delta = TexturesDelta::default();
        delta.set.entry(id).or_default().push(ImageDelta::full(
            ColorImage::new([4, 4], vec![color; 16]),
            TextureOptions::LINEAR,
        ));
        delta
    }

    #[test]
    fn only_what_a_pass_changed_is_damaged_and_painted_again() {
        let mut painter = CpuPainter::new();
        let mut tracker = DamageTracker::default();
        let mut canvas = Canvas::default();
        canvas.clear(100, 80, Color32::BLACK);
        let (left, right) = (TextureId::User(1), TextureId::User(2));
        let left_rect = Rect::from_min_max(Pos2::new(10.0, 10.0), Pos2::new(40.0, 40.0));
        let right_rect = Rect::from_min_max(Pos2::new(60.0, 10.0), Pos2::new(90.0, 40.0));
        let scene = [image(left, left_rect), image(right, right_rect)];
        let mut pass = |canvas: &mut Canvas, mut delta: TexturesDelta| {
            let regions = tracker.damage(canvas, 1.0, &scene, &delta);
            let ran = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counter = ran.clone();
            let mut primitives = scene.to_vec();
            primitives.push(ClippedPrimitive {
                clip_rect: Rect::EVERYTHING,
                primitive: Primitive::Callback(egui::PaintCallback {
                    rect: Rect::EVERYTHING,
                    callback: std::sync::Arc::new(PaintedCallback::new(move || {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    })),
                }),
            });
            painter.paint_regions(
                canvas,
                1.0,
                &primitives,
                &mut delta,
                &regions,
                Some(Color32::BLACK),
            );
            (regions, ran.load(std::sync::atomic::Ordering::SeqCst))
        };
        // The first pass is everything.
        let mut first = full_image(left, Color32::RED);
        first
            .set
            .extend(full_image(right, Color32::BLUE).set.drain());
        let (regions, callbacks) = pass(&mut canvas, first);
        assert_eq!(regions, vec![PixelRect::whole(&canvas)]);
        assert_eq!(callbacks, 1, "a painted pass runs its callbacks");
        assert_eq!(canvas.pixel(25, 25), Some([255, 0, 0, 255]));
        assert_eq!(canvas.pixel(75, 25), Some([0, 0, 255, 255]));
        // Nothing changed: nothing to paint, and no callback claims a paint.
        let (regions, callbacks) = pass(&mut canvas, TexturesDelta::default());
        assert!(regions.is_empty(), "{regions:?}");
        assert_eq!(callbacks, 0);
        // The right picture changed: only around it is damaged and painted.
        let (regions, _) = pass(&mut canvas, full_image(right, Color32::GREEN));
        assert_eq!(regions.len(), 1);
        let r = regions[0];
        assert!(
            r.x0 >= 50 && r.x0 <= 60 && r.x1 >= 90 && r.x1 <= 92,
            "{r:?}"
        );
        assert!(r.y0 <= 10 && r.y1 >= 40 && r.area() < 40 * 40, "{r:?}");
        assert_eq!(canvas.pixel(75, 25), Some([0, 255, 0, 255]));
        assert_eq!(canvas.pixel(25, 25), Some([255, 0, 0, 255]));
        // A pixel outside every region keeps what it had, even if a pass would draw it now.
        canvas.pixels[25 * 100 + 25] = [1, 2, 3, 255];
        pass(&mut canvas, full_image(right, Color32::WHITE));
        assert_eq!(canvas.pixel(25, 25), Some([1, 2, 3, 255]));
        // A new size repaints everything.
        canvas.clear(120, 80, Color32::BLACK);
        let (regions, _) = pass(&mut canvas, TexturesDelta::default());
        assert_eq!(regions, vec![PixelRect::whole(&canvas)]);
        assert_eq!(canvas.pixel(25, 25), Some([255, 0, 0, 255]));
    }

    #[test]
    fn a_scaled_picture_matches_the_reference_sampler_within_one_unit() {
        // A 7x5 texture of varied colours, some translucent, stretched and shifted.
        let texels: Vec<[u8; 4]> = (0..35u32)
            .map(|i| {
                let a = if i % 4 == 0 { 128 } else { 255 };
                let c = |k: u32| (((i * k) % 251) as u8).min(a);
                [c(37), c(91), c(53), a]
            })
            .collect();
        let texture = Texture {
            width: 7,
            height: 5,
            texels,
            magnification: TextureFilter::Linear,
            minification: TextureFilter::Linear,
        };
        let (u, v, du, dv) = (-0.05, 0.3, 0.013, 0.002);
        let background = [10, 20, 30, 255];
        let mut row = vec![background; 90];
        picture_span(&mut row, &texture, u, v, du, dv);
        for (i, got) in row.iter().enumerate() {
            let texel = texture.sample(u + du * i as f32, v + dv * i as f32, TextureFilter::Linear);
            let mut want = background;
            if texel[3] == 255 {
                want = texel;
            } else {
                blend(&mut want, texel.map(f32::from));
            }
            for c in 0..4 {
                assert!(
                    got[c].abs_diff(want[c]) <= 1,
                    "pixel {i}: {got:?} against {want:?}"
                );
            }
        }
    }
}

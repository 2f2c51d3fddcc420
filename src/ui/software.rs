//! The app's window without GL, for machines whose only GL would be Mesa's software rasteriser
//! (which costs the app about 78 MB, docs/benchmarks.md) or that have no GL at all: a winit
//! window whose input egui-winit turns into egui's, painted by `cpu_painter` only where a pass
//! changed something, and presented with softbuffer (MIT-SHM on X11, wl_shm on Wayland). It runs
//! the same `HuddleApp` as the GL window, with the same wake-ups: the engine's repaint requests
//! arrive as event-loop user events, and a minimised window still applies engine events. Like
//! eframe's window it publishes egui's accessibility tree (AccessKit), and it keeps the window's
//! geometry and egui's memory in eframe's own saved state, so either window restores what the
//! other saved. Imports egui, egui-winit (and its winit), softbuffer, ron, eframe's storage
//! directory, and the app it drives (`ui::app`).

use super::UiError;
use super::app::HuddleApp;
use super::cpu_painter::{Canvas, CpuPainter, DamageTracker};
use egui::{Color32, ViewportId};
use egui_winit::{WindowSettings, accesskit_winit, winit};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use winit::application::ApplicationHandler;
use winit::event::WindowEvent;
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop, EventLoopProxy};
use winit::window::{Window, WindowId};

/// Sent to the event loop from other threads.
enum Wake {
    /// egui wants a pass at this time.
    RepaintAt(Instant),
    /// An assistive technology asked for the tree or for an action.
    AccessKit(accesskit_winit::Event),
}

impl From<accesskit_winit::Event> for Wake {
    fn from(event: accesskit_winit::Event) -> Wake {
        Wake::AccessKit(event)
    }
}

/// How often the window's geometry and egui's memory are saved besides on closing (eframe's
/// default).
const SAVE_EVERY: Duration = Duration::from_secs(30);

/// Builds the app once the window (and so egui's context) exists.
pub type MakeApp = Box<dyn FnOnce(&egui::Context) -> Result<HuddleApp, UiError>>;

/// Runs the app in a software-painted window until it closes.
pub fn run(viewport: egui::ViewportBuilder, make_app: MakeApp) -> Result<(), UiError> {
    let event_loop = EventLoop::<Wake>::with_user_event()
        .build()
        .map_err(|e| UiError::Window(e.to_string()))?;
    let ctx = egui::Context::default();
    let proxy = event_loop.create_proxy();
    let repaint_proxy: Mutex<EventLoopProxy<Wake>> = Mutex::new(proxy.clone());
    ctx.set_request_repaint_callback(move |info| {
        // A delay too long to represent means "no repaint needed".
        if let Some(at) = Instant::now().checked_add(info.delay) {
            let proxy = repaint_proxy.lock().unwrap_or_else(|p| p.into_inner());
            // Fails only once the loop has ended.
            let _ = proxy.send_event(Wake::RepaintAt(at));
        }
    });
    let saved = viewport
        .app_id
        .as_deref()
        .and_then(SavedState::load)
        .unwrap_or_default();
    let mut runner = Runner {
        viewport,
        make_app: Some(make_app),
        ctx,
        proxy,
        saved,
        live: None,
        repaint_at: None,
        error: None,
    };
    event_loop
        .run_app(&mut runner)
        .map_err(|e| UiError::Window(e.to_string()))?;
    match runner.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

struct Runner {
    viewport: egui::ViewportBuilder,
    make_app: Option<MakeApp>,
    ctx: egui::Context,
    proxy: EventLoopProxy<Wake>,
    saved: SavedState,
    live: Option<Live>,
    /// The earliest pass egui asked for.
    repaint_at: Option<Instant>,
    error: Option<UiError>,
}

/// The window and what paints into it, from the first `resumed` on.
struct Live {
    window: Arc<Window>,
    /// Kept for the surface's lifetime.
    _context: softbuffer::Context<Arc<Window>>,
    surface: softbuffer::Surface<Arc<Window>, Arc<Window>>,
    input: egui_winit::State,
    info: egui::ViewportInfo,
    app: HuddleApp,
    painter: CpuPainter,
    canvas: Canvas,
    damage: DamageTracker,
    /// The last pass on the UI thread, from input to presented (for `--display-stats`).
    last_pass_seconds: Option<f32>,
    /// The window opens hidden (AccessKit needs that, and it avoids a blank flash) and is shown
    /// once its first picture is presented, if the app wants it visible.
    show_after_present: bool,
    /// The size and position to restore to while maximised or full screen.
    normal_geometry: Option<egui_winit::WindowGeometry>,
    next_save: Instant,
}

impl Runner {
    fn open(&mut self, event_loop: &ActiveEventLoop) -> Result<(), UiError> {
        let window_error = |e: &dyn std::fmt::Display| UiError::Window(e.to_string());
        let zoom = self.ctx.zoom_factor();
        let mut viewport = self.viewport.clone();
        let restored = self.saved.get::<WindowSettings>("window").map(|mut w| {
            w.clamp_size_to_sane_values(largest_monitor_points(zoom, event_loop));
            w.clamp_position_to_monitors(zoom, event_loop);
            w
        });
        if let Some(w) = &restored {
            viewport = w.initialize_viewport_builder(zoom, viewport);
        }
        if let Some(memory) = self.saved.get::<egui::Memory>("egui") {
            self.ctx.memory_mut(|m| *m = memory);
        }
        let show_after_present = viewport.visible.unwrap_or(true);
        let window = Arc::new(
            egui_winit::create_window(&self.ctx, event_loop, &viewport.with_visible(false))
                .map_err(|e| window_error(&e))?,
        );
        if let Some(w) = &restored {
            w.initialize_window(&window);
        }
        let context = softbuffer::Context::new(window.clone()).map_err(|e| window_error(&e))?;
        let surface =
            softbuffer::Surface::new(&context, window.clone()).map_err(|e| window_error(&e))?;
        let mut input = egui_winit::State::new(
            self.ctx.clone(),
            ViewportId::ROOT,
            event_loop,
            Some(window.scale_factor() as f32),
            window.theme(),
            None,
        );
        input.init_accesskit(event_loop, &window, self.proxy.clone());
        let mut info = egui::ViewportInfo::default();
        egui_winit::update_viewport_info(&mut info, &self.ctx, &window, true);
        let make_app = self
            .make_app
            .take()
            .ok_or_else(|| UiError::Window("the window was opened twice".into()))?;
        let app = make_app(&self.ctx)?;
        self.live = Some(Live {
            window,
            _context: context,
            surface,
            input,
            info,
            app,
            painter: CpuPainter::new(),
            canvas: Canvas::default(),
            damage: DamageTracker::default(),
            last_pass_seconds: None,
            show_after_present,
            normal_geometry: restored.map(|w| w.normal_geometry()),
            next_save: Instant::now() + SAVE_EVERY,
        });
        self.repaint_at = Some(Instant::now());
        Ok(())
    }

    /// One egui pass, painted and presented. Returns false when the app asked to close.
    fn pass(&mut self) -> Result<bool, UiError> {
        let Some(live) = self.live.as_mut() else {
            return Ok(true);
        };
        let started = Instant::now();
        let window = live.window.clone();
        egui_winit::update_viewport_info(&mut live.info, &self.ctx, &window, false);
        let mut raw = live.input.take_egui_input(&window);
        raw.viewports.insert(ViewportId::ROOT, live.info.clone());
        let last_pass = live.last_pass_seconds;
        let app = &mut live.app;
        let mut output = self.ctx.run_ui(raw, |ui| app.pass(ui, last_pass));
        live.input
            .handle_platform_output(&window, std::mem::take(&mut output.platform_output));
        if let Some(viewport) = output.viewport_output.remove(&ViewportId::ROOT) {
            let mut actions = Vec::new();
            egui_winit::process_viewport_commands(
                &self.ctx,
                &mut live.info,
                viewport.commands,
                &window,
                &mut actions,
            );
        }
        if live
            .info
            .events
            .iter()
            .any(|e| matches!(e, egui::ViewportEvent::Close))
        {
            return Ok(false);
        }
        let primitives = self.ctx.tessellate(output.shapes, output.pixels_per_point);
        let size = window.inner_size();
        let (Some(width), Some(height)) =
            (NonZeroU32::new(size.width), NonZeroU32::new(size.height))
        else {
            // Nothing to show (minimised on some platforms); textures still follow egui. The
            // canvas no longer matches the last pass the tracker saw, so the next is painted
            // whole.
            live.painter.paint_regions(
                &mut live.canvas,
                output.pixels_per_point,
                &[],
                &mut output.textures_delta,
                &[],
                None,
            );
            live.damage = DamageTracker::default();
            return Ok(true);
        };
        let clear = gamma_color(eframe::App::clear_color(
            &live.app,
            &self.ctx.global_style().visuals,
        ));
        if live.canvas.width != size.width as usize || live.canvas.height != size.height as usize {
            live.canvas
                .clear(size.width as usize, size.height as usize, clear);
        }
        let regions = live.damage.damage(
            &live.canvas,
            output.pixels_per_point,
            &primitives,
            &output.textures_delta,
        );
        live.painter.paint_regions(
            &mut live.canvas,
            output.pixels_per_point,
            &primitives,
            &mut output.textures_delta,
            &regions,
            Some(clear),
        );
        if !regions.is_empty() {
            present(live, width, height, &regions)?;
            if std::mem::take(&mut live.show_after_present) {
                window.set_visible(true);
            }
        }
        live.last_pass_seconds = Some(started.elapsed().as_secs_f32());
        Ok(true)
    }

    /// Saves the window's geometry and egui's memory where eframe keeps them.
    fn save(&mut self) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        let window =
            WindowSettings::from_window(self.ctx.zoom_factor(), &live.window, live.normal_geometry);
        live.normal_geometry = Some(window.normal_geometry());
        self.saved.set("window", &window);
        self.ctx.memory(|m| self.saved.set("egui", m));
        if let Err(e) = self.saved.write() {
            tracing::warn!(error = %e, "cannot save the window's state");
        }
        live.next_save = Instant::now() + SAVE_EVERY;
    }

    fn close(&mut self, event_loop: &ActiveEventLoop) {
        tracing::info!("the window is closing");
        self.save();
        event_loop.exit();
    }

    fn finish(&mut self, event_loop: &ActiveEventLoop, result: Result<bool, UiError>) {
        match result {
            Ok(true) => {}
            Ok(false) => self.close(event_loop),
            Err(e) => {
                tracing::error!(error = %e, "the software window failed");
                self.error = Some(e);
                event_loop.exit();
            }
        }
    }
}

/// Copies the painted regions into the window's buffer and shows them. A buffer that does not
/// hold the last picture (new, resized, or one of several swapped) gets the whole canvas.
fn present(
    live: &mut Live,
    width: NonZeroU32,
    height: NonZeroU32,
    regions: &[super::cpu_painter::PixelRect],
) -> Result<(), UiError> {
    let present_error = |e: softbuffer::SoftBufferError| UiError::Window(e.to_string());
    live.surface.resize(width, height).map_err(present_error)?;
    let mut buffer = live.surface.buffer_mut().map_err(present_error)?;
    let canvas = &live.canvas;
    let whole = [super::cpu_painter::PixelRect::whole(canvas)];
    let copy: &[_] = if buffer.age() == 1 { regions } else { &whole };
    let stride = canvas.width;
    for r in copy {
        for y in r.y0..r.y1.min(canvas.height) {
            let row = y * stride;
            let (Some(dst), Some(src)) = (
                buffer.get_mut(row + r.x0..row + r.x1),
                canvas.pixels.get(row + r.x0..row + r.x1),
            ) else {
                continue;
            };
            for (d, [r, g, b, _]) in dst.iter_mut().zip(src) {
                *d = (u32::from(*r) << 16) | (u32::from(*g) << 8) | u32::from(*b);
            }
        }
    }
    let damage: Vec<softbuffer::Rect> = copy
        .iter()
        .filter_map(|r| {
            Some(softbuffer::Rect {
                x: u32::try_from(r.x0).ok()?,
                y: u32::try_from(r.y0).ok()?,
                width: NonZeroU32::new(u32::try_from(r.x1 - r.x0).ok()?)?,
                height: NonZeroU32::new(u32::try_from(r.y1 - r.y0).ok()?)?,
            })
        })
        .collect();
    buffer.present_with_damage(&damage).map_err(present_error)
}

/// egui's clear colour (gamma-space floats) as the painter's pixels.
fn gamma_color([r, g, b, a]: [f32; 4]) -> Color32 {
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    Color32::from_rgba_premultiplied(byte(r), byte(g), byte(b), byte(a))
}

impl ApplicationHandler<Wake> for Runner {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.live.is_some() {
            return;
        }
        if let Err(e) = self.open(event_loop) {
            self.finish(event_loop, Err(e));
        }
    }

    fn user_event(&mut self, _event_loop: &ActiveEventLoop, wake: Wake) {
        let at = match wake {
            Wake::RepaintAt(at) => at,
            Wake::AccessKit(event) => {
                let Some(live) = self.live.as_mut() else {
                    return;
                };
                match event.window_event {
                    accesskit_winit::WindowEvent::InitialTreeRequested => {
                        // The tree goes out with the next pass's platform output.
                        self.ctx.enable_accesskit();
                    }
                    accesskit_winit::WindowEvent::ActionRequested(request) => {
                        live.input.on_accesskit_action_request(request);
                    }
                    accesskit_winit::WindowEvent::AccessibilityDeactivated => {
                        self.ctx.disable_accesskit();
                        return;
                    }
                }
                Instant::now()
            }
        };
        self.repaint_at = Some(self.repaint_at.map_or(at, |t| t.min(at)));
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        match &event {
            WindowEvent::CloseRequested => {
                self.close(event_loop);
                return;
            }
            WindowEvent::Destroyed => {
                event_loop.exit();
                return;
            }
            WindowEvent::RedrawRequested => {
                let result = self.pass();
                self.finish(event_loop, result);
                return;
            }
            _ => {}
        }
        let response = live.input.on_window_event(&live.window, &event);
        if response.repaint {
            live.window.request_redraw();
        }
    }

    fn about_to_wait(&mut self, event_loop: &ActiveEventLoop) {
        let now = Instant::now();
        if let (Some(at), Some(live)) = (self.repaint_at, self.live.as_mut())
            && at <= now
        {
            self.repaint_at = None;
            let minimized = live.window.is_minimized() == Some(true);
            if minimized {
                // Nothing is drawn, but the engine's events are still applied (issue 17 item 6).
                live.app.pump();
            } else {
                live.window.request_redraw();
            }
            live.app.set_window_hidden(minimized);
        }
        if self.live.as_ref().is_some_and(|l| l.next_save <= now) {
            self.save();
        }
        let next_save = self.live.as_ref().map(|l| l.next_save);
        let wake_at = match (self.repaint_at, next_save) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        event_loop.set_control_flow(match wake_at {
            Some(at) => ControlFlow::WaitUntil(at),
            None => ControlFlow::Wait,
        });
    }
}

/// The largest monitor in points (a restored window is kept no larger), as eframe works it out.
fn largest_monitor_points(zoom: f32, event_loop: &ActiveEventLoop) -> egui::Vec2 {
    let largest = event_loop
        .available_monitors()
        .map(|m| {
            let size = m
                .size()
                .to_logical::<f32>(f64::from(zoom) * m.scale_factor());
            egui::vec2(size.width, size.height)
        })
        .fold(egui::Vec2::ZERO, egui::Vec2::max);
    if largest == egui::Vec2::ZERO {
        egui::Vec2::splat(16000.0)
    } else {
        largest
    }
}

/// eframe's saved state: `app.ron` in eframe's storage directory for the app id, a map of keys
/// to RON values ("window": the window's geometry, "egui": egui's memory). Written only when a
/// value changed, through a temporary file so a crash never leaves half a file.
#[derive(Default)]
struct SavedState {
    path: Option<PathBuf>,
    values: HashMap<String, String>,
    changed: bool,
}

impl SavedState {
    fn load(app_id: &str) -> Option<SavedState> {
        let path = eframe::storage_dir(app_id)?.join("app.ron");
        let values = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| ron::from_str(&text).ok())
            .unwrap_or_default();
        Some(SavedState {
            path: Some(path),
            values,
            changed: false,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Option<T> {
        // A value from another egui version may not parse: it is then as if never saved.
        ron::from_str(self.values.get(key)?).ok()
    }

    fn set<T: serde::Serialize>(&mut self, key: &str, value: &T) {
        let Ok(text) = ron::ser::to_string(value) else {
            return;
        };
        if self.values.get(key) != Some(&text) {
            self.values.insert(key.to_owned(), text);
            self.changed = true;
        }
    }

    fn write(&mut self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.changed {
            return Ok(());
        }
        let text = ron::ser::to_string_pretty(&self.values, ron::ser::PrettyConfig::default())
            .map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("ron.partial");
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, path)?;
        self.changed = false;
        Ok(())
    }
}

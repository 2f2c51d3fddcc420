//! The app's window without GL, for machines whose only GL would be Mesa's software rasteriser
//! (which costs the app about 78 MB, docs/benchmarks.md) or that have no GL at all: a winit
//! window whose input egui-winit turns into egui's, painted by `cpu_painter` only where a pass
//! changed something, and presented with softbuffer (MIT-SHM on X11, wl_shm on Wayland). It runs
//! the same `HuddleApp` as the GL window, with the same wake-ups: the engine's repaint requests
//! arrive as event-loop user events, and a minimised window still applies engine events.
//! Imports egui, egui-winit (and its winit), softbuffer, and the app it drives (`ui::app`).

use super::UiError;
use super::app::HuddleApp;
use super::cpu_painter::{Canvas, CpuPainter, DamageTracker};
use egui::{Color32, ViewportId};
use egui_winit::winit;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use winit::application::ApplicationHandler;
use winit::event::WindowEvent;
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop, EventLoopProxy};
use winit::window::{Window, WindowId};

/// Sent to the event loop from any thread: egui wants a pass at this time.
#[derive(Debug)]
struct RepaintAt(Instant);

/// Builds the app once the window (and so egui's context) exists.
pub type MakeApp = Box<dyn FnOnce(&egui::Context) -> Result<HuddleApp, UiError>>;

/// Runs the app in a software-painted window until it closes.
pub fn run(viewport: egui::ViewportBuilder, make_app: MakeApp) -> Result<(), UiError> {
    let event_loop = EventLoop::<RepaintAt>::with_user_event()
        .build()
        .map_err(|e| UiError::Window(e.to_string()))?;
    let ctx = egui::Context::default();
    let proxy: Mutex<EventLoopProxy<RepaintAt>> = Mutex::new(event_loop.create_proxy());
    ctx.set_request_repaint_callback(move |info| {
        // A delay too long to represent means "no repaint needed".
        if let Some(at) = Instant::now().checked_add(info.delay) {
            let proxy = proxy.lock().unwrap_or_else(|p| p.into_inner());
            // Fails only once the loop has ended.
            let _ = proxy.send_event(RepaintAt(at));
        }
    });
    let mut runner = Runner {
        viewport,
        make_app: Some(make_app),
        ctx,
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
}

impl Runner {
    fn open(&mut self, event_loop: &ActiveEventLoop) -> Result<(), UiError> {
        let window_error = |e: &dyn std::fmt::Display| UiError::Window(e.to_string());
        let window = Arc::new(
            egui_winit::create_window(&self.ctx, event_loop, &self.viewport)
                .map_err(|e| window_error(&e))?,
        );
        let context = softbuffer::Context::new(window.clone()).map_err(|e| window_error(&e))?;
        let surface =
            softbuffer::Surface::new(&context, window.clone()).map_err(|e| window_error(&e))?;
        let input = egui_winit::State::new(
            self.ctx.clone(),
            ViewportId::ROOT,
            event_loop,
            Some(window.scale_factor() as f32),
            window.theme(),
            None,
        );
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
            // Nothing to show (minimised on some platforms); textures still follow egui.
            live.painter.paint_regions(
                &mut live.canvas,
                output.pixels_per_point,
                &[],
                &mut output.textures_delta,
                &[],
                None,
            );
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
        }
        live.last_pass_seconds = Some(started.elapsed().as_secs_f32());
        Ok(true)
    }

    fn finish(&mut self, event_loop: &ActiveEventLoop, result: Result<bool, UiError>) {
        match result {
            Ok(true) => {}
            Ok(false) => event_loop.exit(),
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

impl ApplicationHandler<RepaintAt> for Runner {
    fn resumed(&mut self, event_loop: &ActiveEventLoop) {
        if self.live.is_some() {
            return;
        }
        if let Err(e) = self.open(event_loop) {
            self.finish(event_loop, Err(e));
        }
    }

    fn user_event(&mut self, _event_loop: &ActiveEventLoop, RepaintAt(at): RepaintAt) {
        self.repaint_at = Some(self.repaint_at.map_or(at, |t| t.min(at)));
    }

    fn window_event(&mut self, event_loop: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        let Some(live) = self.live.as_mut() else {
            return;
        };
        match &event {
            WindowEvent::CloseRequested | WindowEvent::Destroyed => {
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
            if live.window.is_minimized() == Some(true) {
                // Nothing is drawn, but the engine's events are still applied (issue 17 item 6).
                live.app.pump();
            } else {
                live.window.request_redraw();
            }
        }
        event_loop.set_control_flow(match self.repaint_at {
            Some(at) => ControlFlow::WaitUntil(at),
            None => ControlFlow::Wait,
        });
    }
}

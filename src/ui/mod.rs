//! The desktop app (egui): lobby, call view (video grid, chat panel, file panel, controls,
//! stats), in eframe's GL window where there is a GPU, and in our software-painted window
//! (`software`, `cpu_painter`) where GL would only be Mesa's software rasteriser. The UI talks to the
//! engine only through `engine::EngineHandle` (commands in, events out) and never blocks: the
//! tokio runtime lives on its own threads. Widgets never import `rtc` or `signaling`.

pub mod app;
mod call;
mod controls;
pub mod cpu_painter;
pub mod display_meter;
mod lobby;
mod settings_window;
pub mod software;
pub mod video;

pub use app::{AppServices, HuddleApp, View};

use crate::settings::{self, Settings};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("cannot start the background runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the window could not be opened: {0}")]
    Window(String),
}

/// What the command line can ask of the app.
#[derive(Clone, Debug, Default)]
pub struct LaunchOptions {
    /// Server URL for this run (overrides the saved setting).
    pub server: Option<String>,
    /// Room to join as soon as connected.
    pub room: Option<String>,
    pub nickname: Option<String>,
    /// Settings file (default: the platform's config directory).
    pub settings_path: Option<PathBuf>,
    /// A PEM certificate to trust for `wss://` (overrides the saved setting).
    pub trusted_cert: Option<PathBuf>,
    /// A join token (from an invite link) for the room.
    pub token: Option<String>,
    /// Print what reached the screen to stdout once a second (JSON lines, for benchmarks).
    pub display_stats: bool,
    /// How to paint the window; `None` chooses ([`Renderer::choose`]).
    pub renderer: Option<Renderer>,
}

/// How the window is painted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renderer {
    /// OpenGL through eframe's glow painter.
    Gl,
    /// egui's output rasterised on the CPU (`cpu_painter`) and presented with softbuffer.
    Software,
}

impl std::str::FromStr for Renderer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gl" => Ok(Renderer::Gl),
            "software" => Ok(Renderer::Software),
            other => Err(format!("unknown renderer {other:?} (gl or software)")),
        }
    }
}

impl Renderer {
    /// `requested`, else `HUDDLE_RENDERER`, else software where GL could only be Mesa's software
    /// rasteriser, which paints no faster than ours and costs about 78 MB: no GPU render node
    /// (`/dev/dri/renderD*`), or `LIBGL_ALWAYS_SOFTWARE` set.
    pub fn choose(requested: Option<Renderer>) -> Renderer {
        Renderer::choose_from(
            requested,
            std::env::var("HUDDLE_RENDERER").ok().as_deref(),
            std::env::var("LIBGL_ALWAYS_SOFTWARE").ok().as_deref(),
            has_gpu_render_node(),
        )
    }

    fn choose_from(
        requested: Option<Renderer>,
        huddle_renderer: Option<&str>,
        libgl_always_software: Option<&str>,
        has_gpu: bool,
    ) -> Renderer {
        if let Some(r) = requested.or_else(|| huddle_renderer.and_then(|v| v.parse().ok())) {
            return r;
        }
        let forced_software =
            libgl_always_software.is_some_and(|v| !v.is_empty() && v != "0" && v != "false");
        if forced_software || !has_gpu {
            Renderer::Software
        } else {
            Renderer::Gl
        }
    }
}

fn has_gpu_render_node() -> bool {
    std::fs::read_dir("/dev/dri").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    })
}

/// The local UTC offset in seconds (for chat times).
pub fn utc_offset_secs() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes into the tm we pass and reads the time we pass.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    }
}

impl eframe::App for HuddleApp {
    /// Runs before every frame and also while the window is minimised or hidden (when the
    /// engine's wake-up asks for a repaint), so events keep being applied with nothing drawn.
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.pump();
        self.set_window_hidden(ctx.input(|i| i.viewport().minimized == Some(true)));
    }

    /// The call view's panels are left unfilled (`call::unfilled`): clearing to the panel colour
    /// costs a software rasteriser far less than filling it.
    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        visuals.panel_fill.to_normalized_gamma_f32()
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.pass(ui, frame.info().cpu_usage);
    }
}

impl HuddleApp {
    /// One pass of either window: `previous_pass_seconds` is what the window measured of the
    /// last one (eframe's CPU time without the buffer swap; the software window's whole pass).
    pub fn pass(&mut self, ui: &mut egui::Ui, previous_pass_seconds: Option<f32>) {
        if let Some(meter) = &mut self.display_meter {
            meter.pass_ran(previous_pass_seconds);
        }
        self.draw(ui);
        if let Some(meter) = &mut self.display_meter {
            if self.view == View::Lobby {
                // The lobby's passes count too: start-up is measured to the first one painted.
                ui.painter().add(meter.pass_marker(ui.max_rect()));
            }
            let call = self.call.as_ref();
            meter.maybe_report(|| {
                call.into_iter()
                    .flat_map(|c| &c.peers)
                    .map(|p| display_meter::StreamCounts {
                        name: p.info.id.to_string(),
                        decoded: p.tile.frames_decoded(),
                        uploaded: p.tile.frames_shown,
                    })
                    .collect()
            });
        }
    }
}

impl HuddleApp {
    /// One frame: apply what the engine sent, then draw. Tests call this through kittest.
    pub fn draw(&mut self, ui: &mut egui::Ui) {
        self.frames_drawn += 1;
        self.pump();
        match self.view {
            View::Lobby => lobby::lobby_ui(self, ui),
            View::Call => {
                if self.call.is_some() {
                    call::call_ui(self, ui);
                } else {
                    self.view = View::Lobby;
                }
            }
        }
        if ui
            .ctx()
            .input_mut(|i| i.consume_shortcut(&controls::SETTINGS))
        {
            self.toggle_settings();
        }
        settings_window::settings_window(self, ui.ctx());
        self.toasts_ui(ui.ctx());
        // Levels and stats change without events; video frames wake us by themselves.
        if self.view == View::Call {
            ui.ctx()
                .request_repaint_after(std::time::Duration::from_millis(200));
        }
    }

    fn toasts_ui(&mut self, ctx: &egui::Context) {
        let now = ctx.input(|i| i.time);
        self.toasts.retain(|t| t.until > now);
        if self.toasts.is_empty() {
            return;
        }
        egui::Area::new(egui::Id::unique("toasts"))
            .anchor(egui::Align2::CENTER_BOTTOM, [0.0, -60.0])
            .order(egui::Order::Foreground)
            .show(ctx, |ui| {
                for t in &self.toasts {
                    egui::Frame::popup(ui.style()).show(ui, |ui| {
                        ui.label(&t.text);
                    });
                }
            });
        let next = self
            .toasts
            .iter()
            .map(|t| t.until - now)
            .fold(f64::INFINITY, f64::min);
        ctx.request_repaint_after(std::time::Duration::from_secs_f64(next.max(0.05)));
    }
}

/// Runs the app until its window closes.
pub fn run(options: LaunchOptions) -> Result<(), UiError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("huddle-rt")
        .enable_all()
        .build()
        .map_err(UiError::Runtime)?;
    let settings_path = options
        .settings_path
        .clone()
        .or_else(settings::default_path);
    let mut settings = settings_path
        .as_deref()
        .map(|p| Settings::load(p).unwrap_or_default())
        .unwrap_or_default();
    if let Some(server) = &options.server {
        settings.server = server.clone();
    }
    if let Some(nick) = &options.nickname {
        settings.nickname = nick.clone();
    }
    if let Some(cert) = &options.trusted_cert {
        settings.trusted_cert = Some(cert.clone());
    }
    let (embedded, embedded_url) =
        crate::services::start_embedded_server(&runtime, &settings, 8787);
    let mut viewport = egui::ViewportBuilder::default()
        .with_title("Huddle")
        .with_app_id("huddle")
        .with_inner_size([1180.0, 760.0])
        .with_min_inner_size([720.0, 480.0])
        .with_drag_and_drop(true);
    if let Ok(icon) =
        eframe::icon_data::from_png_bytes(include_bytes!("../../assets/icons/huddle-256.png"))
    {
        viewport = viewport.with_icon(icon);
    }
    let startup = Startup {
        runtime: runtime.handle().clone(),
        settings_path,
        settings,
        embedded_url,
        room: options.room.clone(),
        token: options.token.clone(),
        display_stats: options.display_stats,
    };
    let renderer = Renderer::choose(options.renderer);
    tracing::info!(?renderer, "opening the window");
    let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = match renderer {
        Renderer::Software => run_software(viewport, startup),
        Renderer::Gl => run_gl(viewport, startup, started.clone()),
    };
    tracing::debug!("the window's loop has ended; stopping the runtime");
    drop(embedded);
    // Give engines and the server a moment to say goodbye, bounded.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    tracing::debug!("the runtime has stopped");
    match result {
        // GL could not even open the window (no driver, no GLX/EGL config): paint ourselves.
        Err(e)
            if renderer == Renderer::Gl && !started.load(std::sync::atomic::Ordering::SeqCst) =>
        {
            tracing::warn!(error = %e, "no GL window; starting again with the software window");
            Err(restart_with_software_window(e))
        }
        other => other,
    }
}

/// Runs this program again, as it was started but with the software window. winit allows one
/// event loop per process and eframe's is spent, so the fallback cannot open in this one.
/// Returns only if the restart could not happen.
fn restart_with_software_window(gl_error: UiError) -> UiError {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let Ok(exe) = std::env::current_exe() else {
            return gl_error;
        };
        let error = std::process::Command::new(exe)
            .args(without_renderer_flag(std::env::args_os().skip(1)))
            .env("HUDDLE_RENDERER", "software")
            .exec();
        UiError::Window(format!(
            "{gl_error}; starting again with the software window failed: {error}"
        ))
    }
    #[cfg(not(unix))]
    gl_error
}

/// `args` without `--renderer X` or `--renderer=X`.
fn without_renderer_flag(
    args: impl Iterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--renderer" {
            skip_value = true;
        } else if !arg.to_string_lossy().starts_with("--renderer=") {
            kept.push(arg);
        }
    }
    kept
}

/// What building the app needs, whichever window it gets.
#[derive(Clone)]
struct Startup {
    runtime: tokio::runtime::Handle,
    settings_path: Option<PathBuf>,
    settings: Settings,
    embedded_url: Option<String>,
    room: Option<String>,
    token: Option<String>,
    display_stats: bool,
}

impl Startup {
    fn make_app(self, ctx: &egui::Context, renderer: Renderer) -> Result<HuddleApp, UiError> {
        let services = AppServices {
            runtime: self.runtime,
            settings_path: self.settings_path,
            embedded_url: self.embedded_url,
            speaker_override: None,
            discover_lan: true,
            read_stamps: self.display_stats,
            bind_addrs: vec!["0.0.0.0:0".into()],
            notifier: crate::services::Notifier::desktop(),
        };
        let mut app = HuddleApp::new(ctx.clone(), services, self.settings);
        app.pending_join = self.room;
        app.lobby.token = self.token;
        if self.display_stats {
            app.display_meter = Some(
                display_meter::DisplayMeter::to_stdout(renderer)
                    .map_err(|e| UiError::Window(format!("cannot start the display meter: {e}")))?,
            );
        }
        Ok(app)
    }
}

fn run_software(viewport: egui::ViewportBuilder, startup: Startup) -> Result<(), UiError> {
    software::run(
        viewport,
        Box::new(move |ctx| startup.make_app(ctx, Renderer::Software)),
    )
}

/// eframe's GL window; `started` is set once the window is open and the app built.
fn run_gl(
    viewport: egui::ViewportBuilder,
    startup: Startup,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), UiError> {
    let native = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    };
    eframe::run_native(
        "Huddle",
        native,
        Box::new(move |cc| {
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            let app = startup.make_app(&cc.egui_ctx, Renderer::Gl)?;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| UiError::Window(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::Renderer;

    #[test]
    fn a_restart_in_software_drops_only_the_renderer_flag() {
        let args = [
            "--server",
            "ws://h:1",
            "--renderer",
            "gl",
            "--renderer=gl",
            "--room",
            "r",
        ]
        .map(std::ffi::OsString::from);
        let kept = super::without_renderer_flag(args.into_iter());
        assert_eq!(kept, ["--server", "ws://h:1", "--room", "r"]);
    }

    #[test]
    fn software_is_chosen_where_gl_could_only_be_mesas_rasteriser() {
        use Renderer::{Gl, Software};
        // A GPU: GL, unless software GL is forced.
        assert_eq!(Renderer::choose_from(None, None, None, true), Gl);
        assert_eq!(Renderer::choose_from(None, None, Some("1"), true), Software);
        assert_eq!(Renderer::choose_from(None, None, Some("0"), true), Gl);
        // No GPU render node: software.
        assert_eq!(Renderer::choose_from(None, None, None, false), Software);
        // Asked for: the flag, then HUDDLE_RENDERER (an unknown value is ignored).
        assert_eq!(Renderer::choose_from(None, Some("gl"), None, false), Gl);
        assert_eq!(
            Renderer::choose_from(None, Some("vulkan"), None, false),
            Software
        );
        assert_eq!(
            Renderer::choose_from(Some(Software), Some("gl"), None, true),
            Software
        );
        assert_eq!("gl".parse::<Renderer>(), Ok(Gl));
        assert!("GL!".parse::<Renderer>().is_err());
    }
}

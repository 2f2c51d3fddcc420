//! The desktop app (egui/eframe, glow renderer so it also runs on Mesa's software rasteriser):
//! lobby, call view (video grid, chat panel, file panel, controls, stats). The UI talks to the
//! engine only through `engine::EngineHandle` (commands in, events out) and never blocks: the
//! tokio runtime lives on its own threads. Widgets never import `rtc` or `signaling`.

pub mod app;
mod call;
mod controls;
pub mod cpu_painter;
pub mod display_meter;
mod lobby;
mod settings_window;
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
    fn logic(&mut self, _ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.pump();
    }

    /// The call view's panels are left unfilled (`call::unfilled`): clearing to the panel colour
    /// costs a software rasteriser far less than filling it.
    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        visuals.panel_fill.to_normalized_gamma_f32()
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        if let Some(meter) = &mut self.display_meter {
            meter.pass_ran(frame.info().cpu_usage);
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
    let handle = runtime.handle().clone();
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
    let native = eframe::NativeOptions {
        viewport,
        renderer: eframe::Renderer::Glow,
        ..Default::default()
    };
    let room = options.room.clone();
    let token = options.token.clone();
    let display_stats = options.display_stats;
    let result = eframe::run_native(
        "Huddle",
        native,
        Box::new(move |cc| {
            let services = AppServices {
                runtime: handle,
                settings_path,
                embedded_url,
                speaker_override: None,
                discover_lan: true,
                read_stamps: display_stats,
                bind_addrs: vec!["0.0.0.0:0".into()],
                notifier: crate::services::Notifier::desktop(),
            };
            let mut app = HuddleApp::new(cc.egui_ctx.clone(), services, settings);
            app.pending_join = room;
            app.lobby.token = token;
            if display_stats {
                app.display_meter = Some(display_meter::DisplayMeter::to_stdout()?);
            }
            Ok(Box::new(app))
        }),
    );
    drop(embedded);
    // Give engines and the server a moment to say goodbye, bounded.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result.map_err(|e| UiError::Window(e.to_string()))
}

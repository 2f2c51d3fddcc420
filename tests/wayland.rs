//! Screen sharing on Wayland, through the desktop portal and PipeWire, as far as this machine
//! allows. It has no GPU (no `/dev/dri`), and the one Wayland portal backend Debian ships for a
//! compositor that runs headless, xdg-desktop-portal-wlr 0.7, refuses to cast without DMA-BUF
//! (upstream issue xdg-desktop-portal-wlr#289). So:
//! - the whole path with only the compositor stood in for: the real `xdg-desktop-portal`
//!   frontend, permission store, PipeWire and WirePlumber on a private session bus and runtime
//!   directory, and a stand-in ScreenCast backend (served with ashpd's backend API) that answers
//!   the dialog at once with a PipeWire node this test feeds a known picture into. Huddle's
//!   capturer asks, is granted, reads the node and is compared with the picture;
//! - the real compositor and backend as far as they go: sway (headless, software rendering) and
//!   xdg-desktop-portal-wlr, through the session and source choice to `Start`, which the backend
//!   refuses here; the share fails with words that say the backend failed;
//! - no portal at all: the share says what to install.
//!
//! And the app's software window (what it paints with when there is no GPU) on that same sway.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ashpd::backend::Result as PortalResult;
use ashpd::backend::request::RequestImpl;
use ashpd::backend::screencast::{ScreencastImpl, SelectSourcesResponse};
use ashpd::backend::session::{CreateSessionResponse, SessionImpl};
use ashpd::desktop::screencast::{
    CursorMode, SelectSourcesOptions, SourceType, StartCastOptions, StreamBuilder, Streams,
    StreamsBuilder,
};
use ashpd::desktop::{CreateSessionOptions, HandleToken, PersistMode};
use ashpd::{MaybeAppID, WindowIdentifierType};
use huddle::engine::ScreenSource;
use huddle::media::frame::RgbaFrame;
use huddle::media::screen::ScreenPicture;
use pipewire as pw;
use pw::spa;

const PICTURE: (usize, usize) = (1280, 720);

/// Programs started for one test, stopped (in reverse order) on drop.
struct Desktop {
    dir: tempfile::TempDir,
    bus: String,
    children: Vec<(&'static str, Child)>,
}

impl Desktop {
    /// A private runtime directory and session bus with nothing on it.
    fn start() -> Desktop {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>"#,
                dir.path().display()
            ),
        )
        .expect("bus config");
        // No service directories: nothing is started on demand, so what runs is what the test
        // started, with the environment it chose.
        let mut daemon = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon is installed (scripts/setup --test installs it)");
        let mut bus = String::new();
        BufReader::new(daemon.stdout.take().expect("stdout"))
            .read_line(&mut bus)
            .expect("dbus-daemon prints its address");
        let bus = bus.trim().to_owned();
        assert!(!bus.is_empty(), "dbus-daemon printed no address");
        Desktop {
            dir,
            bus,
            children: vec![("dbus-daemon", daemon)],
        }
    }

    fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `program` with this desktop's environment plus `env`; its output goes to a log
    /// file named after it, shown when the test fails.
    fn run(&mut self, name: &'static str, program: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.log_path(name)).expect("log file");
        let dir = self.dir.path();
        let mut command = Command::new(program[0]);
        command
            .args(&program[1..])
            .env("XDG_RUNTIME_DIR", dir)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .env("XDG_STATE_HOME", dir.join("state"))
            .env("HOME", dir)
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name} runs (scripts/setup --test installs it): {e}"));
        self.children.push((name, child));
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(name, _)| {
                let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {name}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// PipeWire and its session manager (which links a reader to the node it asks for).
    fn start_pipewire(&mut self) {
        self.run("pipewire", &["pipewire"], &[]);
        let socket = self.runtime_dir().join("pipewire-0");
        wait_until(Duration::from_secs(10), "PipeWire's socket", || {
            UnixStream::connect(&socket).is_ok()
        });
        self.run("wireplumber", &["wireplumber"], &[]);
    }

    /// The real portal frontend and its permission store, using the backends described in
    /// `portals` (a directory of `.portal` files) for the desktop named `desktop`.
    async fn start_portal(&mut self, portals: &Path, desktop: &str) {
        self.run(
            "permission-store",
            &["/usr/libexec/xdg-permission-store", "--replace"],
            &[],
        );
        wait_for_name(&self.bus, "org.freedesktop.impl.portal.PermissionStore").await;
        let portals = portals.to_string_lossy().into_owned();
        self.run(
            "xdg-desktop-portal",
            &["/usr/libexec/xdg-desktop-portal", "--verbose"],
            &[
                ("XDG_DESKTOP_PORTAL_DIR", portals.as_str()),
                ("XDG_CURRENT_DESKTOP", desktop),
            ],
        );
        wait_for_name(&self.bus, "org.freedesktop.portal.Desktop").await;
    }

    /// A connection to PipeWire, as the test's own picture source uses it.
    fn pipewire_socket(&self) -> UnixStream {
        UnixStream::connect(self.runtime_dir().join("pipewire-0")).expect("connect to PipeWire")
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_until(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready in {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `name` has an owner on `bus`, on the bus's own NameOwnerChanged signal.
async fn wait_for_name(bus: &str, name: &str) {
    use futures_util::StreamExt;
    let connection = zbus::connection::Builder::address(bus)
        .expect("address")
        .build()
        .await
        .expect("connect to the private bus");
    let dbus = zbus::fdo::DBusProxy::new(&connection).await.expect("proxy");
    let mut changes = dbus.receive_name_owner_changed().await.expect("subscribe");
    let wanted = zbus::names::BusName::try_from(name).expect("name");
    if dbus.name_has_owner(wanted.clone()).await.unwrap_or(false) {
        return;
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(change) = changes.next().await {
            if let Ok(args) = change.args()
                && args.name() == &wanted
                && args.new_owner().is_some()
            {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name} did not appear on the bus in 20 s"));
}

/// A PipeWire video source node showing `ScreenPicture` as BGRx, on its own thread, as a
/// compositor's cast would.
struct PictureSource {
    node: u32,
    quit: Option<pw::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PictureSource {
    fn start(socket: UnixStream) -> PictureSource {
        let (node_tx, node_rx) = std::sync::mpsc::sync_channel(1);
        let (quit_tx, quit_rx) = pw::channel::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("test-picture-source".into())
            .spawn(move || serve_picture(socket, node_tx, quit_rx))
            .expect("thread");
        let node = node_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the picture source's node is registered");
        PictureSource {
            node,
            quit: Some(quit_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for PictureSource {
    fn drop(&mut self) {
        if let Some(quit) = self.quit.take() {
            let _ = quit.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bgrx_picture() -> Vec<u8> {
    let (width, height) = PICTURE;
    let rgba = ScreenPicture::rgba(width, height);
    rgba.chunks_exact(4)
        .flat_map(|p| [p[2], p[1], p[0], 255])
        .collect()
}

fn serve_picture(
    socket: UnixStream,
    node: std::sync::mpsc::SyncSender<u32>,
    quit: pw::channel::Receiver<()>,
) {
    let (width, height) = PICTURE;
    let stride = width * 4;
    let picture = bgrx_picture();
    pw::init();
    let main_loop = pw::main_loop::MainLoopRc::new(None).expect("main loop");
    let context = pw::context::ContextRc::new(&main_loop, None).expect("context");
    let core = context.connect_fd_rc(socket.into(), None).expect("connect");
    let stream = pw::stream::StreamRc::new(
        core,
        "huddle-test-screen",
        pw::properties::properties! {
            *pw::keys::MEDIA_CLASS => "Video/Source",
            *pw::keys::NODE_NAME => "huddle-test-screen",
        },
    )
    .expect("stream");
    let _listener = stream
        .add_local_listener_with_user_data(Some(node))
        .state_changed(|stream, node, _, state| {
            if matches!(state, pw::stream::StreamState::Paused)
                && let Some(node) = node.take()
            {
                let _ = node.send(stream.node_id());
            }
        })
        .param_changed(move |stream, _, id, param| {
            if id != spa::param::ParamType::Format.as_raw() || param.is_none() {
                return;
            }
            let buffers = pod_bytes(spa::pod::object!(
                spa::utils::SpaTypes::ObjectParamBuffers,
                spa::param::ParamType::Buffers,
                int_property(spa::sys::SPA_PARAM_BUFFERS_buffers, 4),
                int_property(spa::sys::SPA_PARAM_BUFFERS_blocks, 1),
                int_property(spa::sys::SPA_PARAM_BUFFERS_size, (stride * height) as i32),
                int_property(spa::sys::SPA_PARAM_BUFFERS_stride, stride as i32),
            ));
            let pod = spa::pod::Pod::from_bytes(&buffers).expect("pod");
            stream.update_params(&mut [pod]).expect("buffers param");
        })
        .process(move |stream, _| {
            let Some(mut buffer) = stream.dequeue_buffer() else {
                return;
            };
            let Some(data) = buffer.datas_mut().first_mut() else {
                return;
            };
            if let Some(bytes) = data.data()
                && bytes.len() >= picture.len()
            {
                bytes[..picture.len()].copy_from_slice(&picture);
                let chunk = data.chunk_mut();
                *chunk.offset_mut() = 0;
                *chunk.size_mut() = picture.len() as u32;
                *chunk.stride_mut() = stride as i32;
            }
        })
        .register()
        .expect("listener");
    let format = pod_bytes(spa::pod::object!(
        spa::utils::SpaTypes::ObjectParamFormat,
        spa::param::ParamType::EnumFormat,
        spa::pod::property!(
            spa::param::format::FormatProperties::MediaType,
            Id,
            spa::param::format::MediaType::Video
        ),
        spa::pod::property!(
            spa::param::format::FormatProperties::MediaSubtype,
            Id,
            spa::param::format::MediaSubtype::Raw
        ),
        spa::pod::property!(
            spa::param::format::FormatProperties::VideoFormat,
            Id,
            spa::param::video::VideoFormat::BGRx
        ),
        spa::pod::property!(
            spa::param::format::FormatProperties::VideoSize,
            Rectangle,
            spa::utils::Rectangle {
                width: width as u32,
                height: height as u32
            }
        ),
        spa::pod::property!(
            spa::param::format::FormatProperties::VideoFramerate,
            Fraction,
            spa::utils::Fraction { num: 30, denom: 1 }
        ),
    ));
    let pod = spa::pod::Pod::from_bytes(&format).expect("pod");
    stream
        .connect(
            spa::utils::Direction::Output,
            None,
            pw::stream::StreamFlags::MAP_BUFFERS | pw::stream::StreamFlags::DRIVER,
            &mut [pod],
        )
        .expect("connect the source");
    // As the driver it decides when a picture is made: 30 a second.
    let timer_stream = stream.clone();
    let timer = main_loop.loop_().add_timer(move |_| {
        let _ = timer_stream.trigger_process();
    });
    timer
        .update_timer(
            Some(Duration::from_millis(33)),
            Some(Duration::from_millis(33)),
        )
        .into_result()
        .expect("timer");
    let weak_loop = main_loop.downgrade();
    let _quit = quit.attach(main_loop.loop_(), move |()| {
        if let Some(main_loop) = weak_loop.upgrade() {
            main_loop.quit();
        }
    });
    main_loop.run();
}

fn int_property(key: u32, value: i32) -> spa::pod::Property {
    spa::pod::Property {
        key,
        flags: spa::pod::PropertyFlags::empty(),
        value: spa::pod::Value::Int(value),
    }
}

fn pod_bytes(object: spa::pod::Object) -> Vec<u8> {
    spa::pod::serialize::PodSerializer::serialize(
        std::io::Cursor::new(Vec::new()),
        &spa::pod::Value::Object(object),
    )
    .expect("serialize")
    .0
    .into_inner()
}

/// What the stand-in backend was asked, for the test to check.
#[derive(Default)]
struct Asked {
    select_sources: Vec<SelectSourcesOptions>,
    starts: usize,
}

/// The compositor's side of the portal, standing in for xdg-desktop-portal-gnome/-kde/-wlr: the
/// "dialog" picks the one screen at once and offers the test's PipeWire node.
struct StandInCompositor {
    node: u32,
    asked: Arc<Mutex<Asked>>,
}

#[async_trait::async_trait]
impl RequestImpl for StandInCompositor {
    async fn close(&self, _token: HandleToken) {}
}

#[async_trait::async_trait]
impl SessionImpl for StandInCompositor {
    async fn session_closed(&self, _session_token: HandleToken) -> PortalResult<()> {
        Ok(())
    }
}

#[async_trait::async_trait]
impl ScreencastImpl for StandInCompositor {
    fn available_source_types(&self) -> ashpd::enumflags2::BitFlags<SourceType> {
        SourceType::Monitor | SourceType::Window
    }

    fn available_cursor_mode(&self) -> ashpd::enumflags2::BitFlags<CursorMode> {
        CursorMode::Hidden | CursorMode::Embedded
    }

    async fn create_session(
        &self,
        _token: HandleToken,
        session_token: HandleToken,
        _app_id: Option<MaybeAppID>,
        _options: CreateSessionOptions,
    ) -> PortalResult<CreateSessionResponse> {
        Ok(CreateSessionResponse::new(session_token))
    }

    async fn select_sources(
        &self,
        _session_token: HandleToken,
        _app_id: Option<MaybeAppID>,
        options: SelectSourcesOptions,
    ) -> PortalResult<SelectSourcesResponse> {
        if let Ok(mut asked) = self.asked.lock() {
            asked.select_sources.push(options);
        }
        Ok(SelectSourcesResponse::default())
    }

    async fn start_cast(
        &self,
        _session_token: HandleToken,
        _app_id: Option<MaybeAppID>,
        _window_identifier: Option<WindowIdentifierType>,
        _options: StartCastOptions,
    ) -> PortalResult<Streams> {
        if let Ok(mut asked) = self.asked.lock() {
            asked.starts += 1;
        }
        let stream = StreamBuilder::new(self.node)
            .size(Some((PICTURE.0 as i32, PICTURE.1 as i32)))
            .source_type(Some(SourceType::Monitor))
            .build();
        // Restore data is what lets the frontend hand the app a restore token.
        Ok(StreamsBuilder::new(vec![stream])
            .persist_mode(Some(PersistMode::Application))
            .restore_data(Some((
                "huddle-test".to_owned(),
                1,
                zbus::zvariant::Value::from("HEADLESS-1")
                    .try_to_owned()
                    .expect("value"),
            )))
            .build())
    }
}

/// Runs the futures ashpd's backend spawns on the test's runtime.
struct TokioSpawner(tokio::runtime::Handle);

impl futures_util::task::Spawn for TokioSpawner {
    fn spawn_obj(
        &self,
        future: futures_util::task::FutureObj<'static, ()>,
    ) -> Result<(), futures_util::task::SpawnError> {
        self.0.spawn(future);
        Ok(())
    }
}

const STAND_IN_NAME: &str = "org.freedesktop.impl.portal.desktop.huddletest";

/// The stand-in backend, served until dropped.
struct ServedBackend(tokio::task::JoinHandle<()>);

impl Drop for ServedBackend {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the stand-in backend on `bus` and describes it to the frontend in `portals`.
async fn serve_stand_in(bus: &str, portals: &Path, compositor: StandInCompositor) -> ServedBackend {
    std::fs::create_dir_all(portals).expect("portals dir");
    std::fs::write(
        portals.join("huddletest.portal"),
        format!(
            "[portal]\nDBusName={STAND_IN_NAME}\nInterfaces=org.freedesktop.impl.portal.ScreenCast;\nUseIn=huddletest\n"
        ),
    )
    .expect("portal file");
    let connection = zbus::connection::Builder::address(bus)
        .expect("address")
        .build()
        .await
        .expect("connect");
    let builder = ashpd::backend::Builder::new(STAND_IN_NAME)
        .expect("name")
        .screencast(compositor)
        .with_spawn(TokioSpawner(tokio::runtime::Handle::current()));
    // Serves until its connection closes.
    let served = ServedBackend(tokio::spawn(async move {
        if let Err(e) = builder.build_with_connection(connection).await {
            panic!("the stand-in backend stopped: {e}");
        }
    }));
    wait_for_name(bus, STAND_IN_NAME).await;
    served
}

/// Opens a portal share on `bus` off the runtime (it blocks while the portal asks).
async fn open_portal_share(
    bus: &str,
) -> Result<Box<dyn huddle::media::screen::ScreenCapturer>, huddle::media::MediaError> {
    let source = ScreenSource::Portal {
        bus: Some(bus.to_owned()),
    };
    tokio::task::spawn_blocking(move || huddle::media::screen::open(&source))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_share_reads_the_picture_pipewire_carries_and_a_second_share_is_not_asked_again() {
    let mut desktop = Desktop::start();
    desktop.start_pipewire();
    let source = PictureSource::start(desktop.pipewire_socket());
    let asked = Arc::new(Mutex::new(Asked::default()));
    let portals = desktop.runtime_dir().join("portals");
    let _backend = serve_stand_in(
        &desktop.bus,
        &portals,
        StandInCompositor {
            node: source.node,
            asked: asked.clone(),
        },
    )
    .await;
    desktop.start_portal(&portals, "huddletest").await;

    let want = RgbaFrame {
        width: PICTURE.0,
        height: PICTURE.1,
        pixels: ScreenPicture::rgba(PICTURE.0, PICTURE.1),
        capture_us: 0,
    };
    let mut capturer = match open_portal_share(&desktop.bus).await {
        Ok(capturer) => capturer,
        Err(e) => panic!("the portal share opens: {e}\n{}", desktop.logs()),
    };
    let frame = capturer.capture(7).expect("a picture");
    assert_eq!((frame.width, frame.height), PICTURE);
    assert_eq!(frame.capture_us, 7, "the capture thread's stamp");
    let mut rgba = RgbaFrame::default();
    frame.to_rgba(&mut rgba);
    // Only colour conversion (RGB to I420 and back) stands between them.
    let psnr = rgba.luma_psnr(&want).expect("pictures of the same size");
    eprintln!("portal capture luma PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "{psnr:.1} dB");
    {
        let asked = asked.lock().expect("lock");
        let first = asked.select_sources.first().expect("sources were chosen");
        assert_eq!(first.cursor_mode(), Some(CursorMode::Embedded));
        assert_eq!(first.is_multiple(), Some(false));
        assert_eq!(first.persist_mode(), Some(PersistMode::Application));
        assert!(first.restore_data().is_none(), "nothing to restore yet");
    }
    drop(capturer);

    // The second share of this process brings the restore token the first one was given, and
    // the frontend hands the backend what it stored for it: no dialog needed.
    let mut capturer = match open_portal_share(&desktop.bus).await {
        Ok(capturer) => capturer,
        Err(e) => panic!("the second portal share opens: {e}\n{}", desktop.logs()),
    };
    // The system ends the cast (the compositor's node goes away): capture says so, and the
    // engine stops the share when its capture thread gives up.
    drop(source);
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = loop {
        match capturer.capture(8) {
            Err(e) => break e.to_string(),
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "capture went on after the cast ended"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    eprintln!("after the cast ended: {ended}");
    assert!(ended.contains("desktop portal"), "{ended}");
    drop(capturer);
    let asked = asked.lock().expect("lock");
    assert_eq!(asked.starts, 2);
    let second = asked.select_sources.get(1).expect("second choice");
    let restored = second
        .restore_data()
        .map(|(vendor, version, _)| (vendor.to_owned(), version));
    assert_eq!(
        restored,
        Some(("huddle-test".to_owned(), 1)),
        "{}",
        desktop.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_portal_a_share_says_what_to_install() {
    let desktop = Desktop::start();
    let error = match open_portal_share(&desktop.bus).await {
        Ok(_) => panic!("a share opened with no portal on the bus"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("xdg-desktop-portal"), "{error}");
    assert!(error.contains("no ScreenCast desktop portal"), "{error}");
}

/// sway, headless with the pixman renderer (no GPU here), as nobody: it will not run as root. The
/// runtime directory becomes nobody's, which root still reaches. Returns once its Wayland socket
/// (`wayland-1`) exists.
fn start_sway(desktop: &mut Desktop) {
    let dir = desktop.runtime_dir().to_owned();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).expect("chown");
    std::fs::write(
        dir.join("sway.conf"),
        "output * bg #3060C0 solid_color\noutput HEADLESS-1 resolution 1280x720\n",
    )
    .expect("sway config");
    let sway_config = dir.join("sway.conf").to_string_lossy().into_owned();
    desktop.run(
        "sway",
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sway",
            "-c",
            &sway_config,
        ],
        &[
            ("WLR_BACKENDS", "headless"),
            ("WLR_RENDERER", "pixman"),
            ("WLR_LIBINPUT_NO_DEVICES", "1"),
        ],
    );
    let wayland = dir.join("wayland-1");
    wait_until(Duration::from_secs(20), "sway's Wayland socket", || {
        wayland.exists()
    });
}

/// The app's software window (what it chooses with no GPU) on a real Wayland compositor: it
/// maps as the app's toplevel, is shown, and keeps painting, its pictures handed to the
/// compositor through wl_shm without an error. (Its pixels are not read back: no wlroots
/// screenshot tool is installed.)
#[test]
fn the_software_window_maps_and_paints_on_sway() {
    let mut desktop = Desktop::start();
    start_sway(&mut desktop);
    let dir = desktop.runtime_dir().to_owned();
    let settings = dir.join("settings.json");
    std::fs::write(&settings, r#"{"nickname": "app", "speaker": "none"}"#).expect("settings");
    desktop.run(
        "huddle",
        &[
            env!("CARGO_BIN_EXE_huddle"),
            "--server",
            "ws://127.0.0.1:1",
            "--renderer",
            "software",
            "--display-stats",
            "--settings",
            &settings.to_string_lossy(),
        ],
        &[("WAYLAND_DISPLAY", "wayland-1")],
    );
    // Its display reports (stdout, in its log): passes painted, again and again.
    let painted = || {
        std::fs::read_to_string(desktop.log_path("huddle"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["passes_painted"].as_u64())
            .collect::<Vec<u64>>()
    };
    wait_until(Duration::from_secs(30), "three display reports", || {
        painted().len() >= 3
    });
    let reports = painted();
    assert!(
        reports.iter().all(|p| *p >= 1),
        "{reports:?}\n{}",
        desktop.logs()
    );
    // sway shows it: a visible view with the app's id.
    let ipc = std::fs::read_dir(&dir)
        .expect("runtime dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("sway-ipc"))
        .expect("sway's IPC socket");
    let tree = Command::new("swaymsg")
        .arg("-s")
        .arg(&ipc)
        .args(["-t", "get_tree", "-r"])
        .output()
        .expect("swaymsg runs");
    let tree: serde_json::Value = serde_json::from_slice(&tree.stdout).expect("sway's tree");
    fn find_app(node: &serde_json::Value) -> Option<&serde_json::Value> {
        if node["app_id"] == "huddle" {
            return Some(node);
        }
        ["nodes", "floating_nodes"]
            .iter()
            .flat_map(|k| node[*k].as_array().into_iter().flatten())
            .find_map(find_app)
    }
    let view = find_app(&tree)
        .unwrap_or_else(|| panic!("no huddle view in sway's tree\n{}", desktop.logs()));
    assert_eq!(view["visible"], true, "{view}");
    assert_eq!(view["name"], "Huddle", "{view}");
    let log = std::fs::read_to_string(desktop.log_path("huddle")).unwrap_or_default();
    assert!(!log.contains("the software window failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wlroots_portal_is_asked_as_far_as_it_goes_without_a_gpu() {
    let mut desktop = Desktop::start();
    start_sway(&mut desktop);
    let dir = desktop.runtime_dir().to_owned();
    desktop.start_pipewire();
    let config = dir.join("config/xdg-desktop-portal-wlr");
    std::fs::create_dir_all(&config).expect("config dir");
    std::fs::write(
        config.join("config"),
        "[screencast]\nchooser_type=none\noutput_name=HEADLESS-1\n",
    )
    .expect("xdpw config");
    desktop.run(
        "xdg-desktop-portal-wlr",
        &["/usr/libexec/xdg-desktop-portal-wlr", "-l", "DEBUG"],
        &[
            ("WAYLAND_DISPLAY", "wayland-1"),
            ("XDG_CURRENT_DESKTOP", "sway"),
        ],
    );
    wait_for_name(&desktop.bus, "org.freedesktop.impl.portal.desktop.wlr").await;
    desktop
        .start_portal(Path::new("/usr/share/xdg-desktop-portal/portals"), "sway")
        .await;

    let error = match open_portal_share(&desktop.bus).await {
        Ok(_) => panic!(
            "xdg-desktop-portal-wlr cast without a GPU: this machine can now run the whole \
             path, so test the picture here too"
        ),
        Err(e) => e.to_string(),
    };
    let backend =
        std::fs::read_to_string(desktop.log_path("xdg-desktop-portal-wlr")).unwrap_or_default();
    // The session was made and the source chosen by the real backend before Start failed.
    assert!(backend.contains("select sources"), "{}", desktop.logs());
    assert!(
        backend.contains("start method invoked"),
        "{}",
        desktop.logs()
    );
    assert!(error.contains("could not start the share"), "{error}");
    assert!(error.contains("backend"), "{error}");
}

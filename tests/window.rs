//! The desktop app as people run it: its own process, in a window on an X server (a private
//! Xvfb), painted by the software window it chooses where there is no GPU. A call's pictures
//! reach the X screen, a key pressed in the window reaches the app, the window manager's close
//! ends it cleanly, and its size comes back at the next start. The in-process UI tests
//! (tests/ui.rs) cover the app's behaviour; this covers the window around it.

mod common;

use common::peer::{PeerOptions, TestPeer};
use common::*;
use huddle::engine::Event;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, ImageFormat};

const WIDTH: u16 = 1280;
const HEIGHT: u16 = 800;

/// The app's stdout lines (`--display-stats`), read on a thread that ends with the app.
struct AppProcess {
    child: std::process::Child,
    lines: mpsc::Receiver<serde_json::Value>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Its log, for failure messages.
    log: std::path::PathBuf,
}

impl AppProcess {
    /// The app in the software window with `args`, on `display`, keeping its saved state and
    /// log under `home`.
    fn start(
        display: &str,
        home: &std::path::Path,
        name: &str,
        args: &[&std::ffi::OsStr],
    ) -> AppProcess {
        AppProcess::start_with(display, home, name, args, "software", &[])
    }

    fn start_with(
        display: &str,
        home: &std::path::Path,
        name: &str,
        args: &[&std::ffi::OsStr],
        renderer: &str,
        env: &[(&str, &str)],
    ) -> AppProcess {
        let log = home.join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_huddle"))
            .args(args)
            .args(["--display-stats", "--renderer", renderer])
            .envs(env.iter().copied())
            .env("DISPLAY", display)
            .env_remove("WAYLAND_DISPLAY")
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("RUST_LOG", "huddle=debug,warn")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the app starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::sync_channel(256);
        let reader = std::thread::Builder::new()
            .name("app-stdout".into())
            .spawn(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    // Lines nobody waits for any more are dropped, so the thread never blocks.
                    if let Ok(v) = serde_json::from_str(&line) {
                        let _ = tx.try_send(v);
                    }
                }
            })
            .unwrap();
        AppProcess {
            child,
            lines,
            reader: Some(reader),
            log,
        }
    }

    /// Waits for the process to end by itself.
    fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                panic!("the app did not exit; its log ends:\n{tail}");
            }
            // The process gives no event to wait on here; a short poll bounded by the deadline.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn until(&self, what: &str, within: Duration, f: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if f(&line) => return,
                Ok(_) => {}
                Err(e) => panic!("waiting for {what}: {e}"),
            }
        }
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Counts of the test pattern's bar colours on the X screen (each channel within 24 of it).
fn bar_colours_on_screen(display: &str) -> Vec<(&'static str, usize)> {
    let (conn, screen) = x11rb::connect(Some(display)).expect("connects to Xvfb");
    let root = conn.setup().roots[screen].root;
    let image = conn
        .get_image(ImageFormat::Z_PIXMAP, root, 0, 0, WIDTH, HEIGHT, !0)
        .expect("asks for the screen")
        .reply()
        .expect("gets the screen");
    assert_eq!(image.depth, 24);
    let bars: [(&str, [u8; 3]); 6] = [
        ("yellow", [255, 255, 0]),
        ("cyan", [0, 255, 255]),
        ("green", [0, 255, 0]),
        ("magenta", [255, 0, 255]),
        ("red", [255, 0, 0]),
        ("blue", [0, 0, 255]),
    ];
    bars.iter()
        .map(|(name, rgb)| {
            // 32 bits per pixel, blue first.
            let count = image
                .data
                .chunks_exact(4)
                .filter(|p| {
                    [p[2], p[1], p[0]]
                        .iter()
                        .zip(rgb)
                        .all(|(a, b)| a.abs_diff(*b) <= 24)
                })
                .count();
            (*name, count)
        })
        .collect()
}

#[test]
fn the_software_window_shows_a_call_takes_a_key_closes_cleanly_and_remembers_its_size() {
    let xvfb = huddle::xvfb::Xvfb::start(WIDTH.into(), HEIGHT.into())
        .expect("Xvfb runs (scripts/setup --test installs it)");
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut peer = rt.block_on(async {
        let mut peer = TestPeer::start(&url, PeerOptions::new(1, 660.0, dir.path().into()));
        peer.join("window", "peer").await;
        peer
    });
    let settings = dir.path().join("settings.json");
    std::fs::write(
        &settings,
        r#"{"nickname": "app", "camera": "test:640x480", "microphone": "tone:440", "speaker": "none"}"#,
    )
    .unwrap();

    let arg = |s: &'static str| std::ffi::OsStr::new(s);
    let mut app = AppProcess::start(
        &xvfb.display,
        dir.path(),
        "app-in-call",
        &[
            arg("--server"),
            std::ffi::OsStr::new(&url),
            arg("--room"),
            arg("window"),
            arg("--nickname"),
            arg("app"),
            arg("--settings"),
            settings.as_os_str(),
        ],
    );

    // The peer's pictures are painted, frame after frame.
    app.until(
        "the peer's pictures painted",
        Duration::from_secs(60),
        |v| v["streams"][0]["painted"].as_u64() >= Some(15),
    );
    // ... and are on the X screen: the remote tile is large, so each bar covers far more pixels
    // than the self-view's whole picture (about 190x140) could.
    let bars = bar_colours_on_screen(&xvfb.display);
    for (name, count) in &bars {
        assert!(
            *count > 20_000,
            "{name}: {count} pixels on screen ({bars:?})"
        );
    }

    // Ctrl+D in the focused window mutes: the peer hears of it.
    let app_id = rt.block_on(async {
        peer.wait_for(Duration::from_secs(10), |e| match e {
            Event::PeerMediaState {
                peer, audio: true, ..
            } => Some(peer.clone()),
            _ => None,
        })
        .await
    });
    let xdotool = |args: &[&str]| {
        let out = Command::new("xdotool")
            .args(args)
            .env("DISPLAY", &xvfb.display)
            .output()
            .expect("xdotool runs (scripts/setup --test installs it)");
        assert!(out.status.success(), "xdotool {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let window = xdotool(&["search", "--sync", "--name", "^Huddle$"]);
    let window = window.lines().next().unwrap_or_default().to_owned();
    xdotool(&["windowfocus", "--sync", &window]);
    xdotool(&["key", "--clearmodifiers", "ctrl+d"]);
    rt.block_on(async {
        peer.wait_for(Duration::from_secs(10), |e| match e {
            Event::PeerMediaState {
                peer, audio: false, ..
            } if *peer == app_id => Some(()),
            _ => None,
        })
        .await
    });

    // A new size, then the window manager's close (WM_DELETE_WINDOW): the app ends by itself,
    // successfully, having saved where eframe keeps a window's state.
    xdotool(&["windowsize", "--sync", &window, "900", "620"]);
    ask_to_close(&xvfb.display, window.parse().expect("a window id"));
    let status = app.exit_status(Duration::from_secs(20));
    assert!(status.success(), "{status:?}");
    rt.block_on(async {
        peer.wait_for(Duration::from_secs(10), |e| match e {
            Event::PeerLeft { peer, .. } if *peer == app_id => Some(()),
            _ => None,
        })
        .await
    });
    let saved = std::fs::read_to_string(dir.path().join("data/huddle/app.ron"))
        .expect("the window's state is saved");
    let saved: std::collections::HashMap<String, String> =
        ron::from_str(&saved).expect("eframe's format");
    let geometry: egui_winit::WindowSettings =
        ron::from_str(&saved["window"]).expect("the window's geometry");
    assert_eq!(geometry.inner_size_points(), egui::vec2(900.0, 620.0));
    assert!(saved.contains_key("egui"), "egui's memory is saved too");

    // The next start opens at that size.
    let mut again = AppProcess::start(
        &xvfb.display,
        dir.path(),
        "app-restarted",
        &[
            arg("--server"),
            std::ffi::OsStr::new(&url),
            arg("--settings"),
            settings.as_os_str(),
        ],
    );
    again.until("the lobby painted", Duration::from_secs(30), |v| {
        v["passes_painted"].as_u64() >= Some(1)
    });
    let window = xdotool(&["search", "--sync", "--name", "^Huddle$"]);
    let window = window.lines().next().unwrap_or_default().to_owned();
    let geometry = xdotool(&["getwindowgeometry", &window]);
    assert!(geometry.contains("Geometry: 900x620"), "{geometry}");
    ask_to_close(&xvfb.display, window.parse().expect("a window id"));
    assert!(again.exit_status(Duration::from_secs(20)).success());
    rt.block_on(server.shutdown());
}

/// What a window manager sends when the user closes a window.
fn ask_to_close(display: &str, window: u32) {
    use x11rb::protocol::xproto::{ClientMessageEvent, EventMask};
    let (conn, _) = x11rb::connect(Some(display)).expect("connects to Xvfb");
    let (protocols, delete) = (
        x11_atom(&conn, "WM_PROTOCOLS"),
        x11_atom(&conn, "WM_DELETE_WINDOW"),
    );
    let message = ClientMessageEvent::new(32, window, protocols, [delete, 0, 0, 0, 0]);
    conn.send_event(false, window, EventMask::NO_EVENT, message)
        .unwrap()
        .check()
        // A round trip: the message is taken before this connection closes (a plain flush
        // followed by the close lost it on a loaded machine).
        .expect("the X server takes the message");
}

/// Where no GL window can be opened at all, the app asked for GL starts again with the software
/// window instead of failing (winit allows one event loop per process, so it restarts itself).
#[test]
fn without_any_gl_the_app_restarts_itself_in_the_software_window() {
    let xvfb = huddle::xvfb::Xvfb::start(WIDTH.into(), HEIGHT.into())
        .expect("Xvfb runs (scripts/setup --test installs it)");
    let dir = tempfile::tempdir().unwrap();
    let arg = |s: &'static str| std::ffi::OsStr::new(s);
    // Mesa's drivers pointed at nothing: no GLX config is left.
    let no_gl = [("LIBGL_DRIVERS_PATH", "/nonexistent")];
    let mut app = AppProcess::start_with(
        &xvfb.display,
        dir.path(),
        "app-without-gl",
        &[arg("--server"), arg("ws://127.0.0.1:1")],
        "gl",
        &no_gl,
    );
    app.until("a pass painted", Duration::from_secs(30), |v| {
        v["passes_painted"].as_u64() >= Some(1)
    });
    assert!(
        app.child.try_wait().unwrap().is_none(),
        "the app is running"
    );
    let log = std::fs::read_to_string(&app.log).unwrap();
    assert!(
        log.contains("starting again with the software window"),
        "{log}"
    );
    // The second window opened is the software one (the log's fields are coloured).
    let second = log
        .split("opening the window")
        .nth(2)
        .expect("a second window");
    assert!(
        second
            .lines()
            .next()
            .unwrap_or_default()
            .contains("Software"),
        "{log}"
    );
}

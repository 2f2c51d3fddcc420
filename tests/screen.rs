//! Screen sharing on loopback: in-process engines with real PeerConnections and H.264 through
//! the signaling server on 127.0.0.1:0. The synthetic share stands in for a screen where the
//! test is about the call; a real X server (Xvfb) is captured where the test is about pixels.

mod common;

use common::peer::{PeerOptions, TestPeer};
use common::*;
use huddle::engine::{Command, Event, ScreenSource};
use huddle::media::frame::RgbaFrame;
use huddle::media::screen::ScreenPicture;
use huddle::signaling::protocol::PeerId;
use huddle::xvfb::Xvfb;
use std::sync::Arc;
use std::time::Duration;

/// The stamp source of ann's synthetic share, apart from her camera's (1).
const SHARE_SOURCE: u8 = 201;

async fn sharing_state(p: &mut TestPeer, of: &PeerId, sharing: bool) {
    p.wait_for(Duration::from_secs(10), |e| match e {
        Event::PeerMediaState { peer, screen, .. } if peer == of && *screen == sharing => Some(()),
        _ => None,
    })
    .await;
}

/// Waits until `p`'s own share is up, and returns how it describes it.
async fn share_started(p: &mut TestPeer) -> String {
    p.wait_for(Duration::from_secs(10), |e| match e {
        Event::LocalMedia(state) => state.screen_share.clone(),
        _ => None,
    })
    .await
}

/// Waits until `p` has decoded `more` screen pictures from `of` beyond `from`.
async fn screen_frames_beyond(p: &mut TestPeer, of: &PeerId, from: u64, more: u64) -> u64 {
    p.until(Duration::from_secs(30), |p| {
        let decoded = p.screens.get(of)?.stats().frames_decoded;
        (decoded >= from + more).then_some(decoded)
    })
    .await
}

async fn camera_frames_beyond(p: &mut TestPeer, of: &PeerId, from: u64, more: u64) -> u64 {
    p.until(Duration::from_secs(10), |p| {
        let decoded = p.videos.get(of)?.stats().frames_decoded;
        (decoded >= from + more).then_some(decoded)
    })
    .await
}

/// A server and two peers, ann and bob, in `room`, connected both ways.
struct Pair {
    server: huddle::signaling::server::ServerHandle,
    ann: TestPeer,
    bob: TestPeer,
    ann_id: PeerId,
    _dirs: [tempfile::TempDir; 2],
}

async fn pair(room: &str) -> Pair {
    let server = start_server(test_config()).await;
    let url = server.url();
    let dirs = [(); 2].map(|_| tempfile::tempdir().unwrap());
    let mut ann = TestPeer::start(&url, PeerOptions::new(1, 440.0, dirs[0].path().into()));
    let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dirs[1].path().into()));
    ann.join(room, "ann").await;
    bob.join(room, "bob").await;
    let ann_id = ann.id.clone().unwrap();
    let bob_id = bob.id.clone().unwrap();
    bob.connected_to(&ann_id).await;
    ann.connected_to(&bob_id).await;
    Pair {
        server,
        ann,
        bob,
        ann_id,
        _dirs: dirs,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_share_starts_stops_and_restarts_beside_the_camera_and_reaches_a_late_joiner() {
    // Every field bound: the server and the folders must outlive the test.
    let Pair {
        server,
        mut ann,
        mut bob,
        ann_id,
        _dirs,
    } = pair("share").await;
    let carl_dir = tempfile::tempdir().unwrap();
    bob.video_frames(&ann_id, 5, Duration::from_secs(10)).await;

    ann.send(Command::StartScreenShare {
        source: ScreenSource::Test {
            width: 1280,
            height: 720,
            source_id: SHARE_SOURCE,
        },
        fps: 10,
        sound: false,
    });
    let shared = share_started(&mut ann).await;
    eprintln!("ann shares: {shared}");
    sharing_state(&mut bob, &ann_id, true).await;
    screen_frames_beyond(&mut bob, &ann_id, 0, 5).await;
    let screen = bob.screens[&ann_id].stats();
    let camera = bob.videos[&ann_id].stats();
    // Two streams, each with its own pictures: the share's stamps on the screen track, the
    // camera's on the camera track.
    assert_eq!(screen.sources, vec![SHARE_SOURCE]);
    assert_eq!(camera.sources, vec![1]);
    assert_eq!(screen.out_of_order, 0);
    assert!(
        screen.width >= 640 && screen.width * 9 == screen.height * 16,
        "{}x{}",
        screen.width,
        screen.height
    );

    // The frame rate stays within the chosen 10 fps, measured over 3 s of stamps.
    let first = bob.screens[&ann_id].stats().last_stamp.unwrap();
    let started = tokio::time::Instant::now();
    bob.until(Duration::from_secs(5), |_| {
        (started.elapsed() >= Duration::from_secs(3)).then_some(())
    })
    .await;
    let last = bob.screens[&ann_id].stats().last_stamp.unwrap();
    let seconds = (last.capture_us - first.capture_us) as f64 / 1e6;
    let captured_fps = (last.number - first.number) as f64 / seconds;
    eprintln!("share captured at {captured_fps:.1} fps over {seconds:.1} s");
    assert!(
        captured_fps > 2.0 && captured_fps <= 11.0,
        "{captured_fps} fps"
    );

    // A late joiner gets the share too.
    let mut carl = TestPeer::start(
        &server.url(),
        PeerOptions::new(3, 880.0, carl_dir.path().into()),
    );
    carl.join("share", "carl").await;
    carl.connected_to(&ann_id).await;
    screen_frames_beyond(&mut carl, &ann_id, 0, 3).await;
    // A late joiner's keyframe may start the share's reveal over (`media::reveal`): the first
    // pictures can be the blurred page, the stamp at its top sharp a few frames later.
    carl.until(Duration::from_secs(20), |p| {
        (!p.screens.get(&ann_id)?.stats().sources.is_empty()).then_some(())
    })
    .await;
    assert_eq!(carl.screens[&ann_id].stats().sources, vec![SHARE_SOURCE]);

    // Stopping: the others are told, the camera keeps coming, the share's pictures stop.
    ann.send(Command::StopScreenShare);
    sharing_state(&mut bob, &ann_id, false).await;
    let screen_at_stop = bob.screens[&ann_id].stats().frames_decoded;
    let camera_at_stop = bob.videos[&ann_id].stats().frames_decoded;
    camera_frames_beyond(&mut bob, &ann_id, camera_at_stop, 45).await;
    let screen_after = bob.screens[&ann_id].stats().frames_decoded;
    // At most a picture that was on its way when the share stopped.
    assert!(
        screen_after <= screen_at_stop + 1,
        "{screen_at_stop} then {screen_after} screen pictures after the stop"
    );

    // And sharing again mid-call works without renegotiation: the same track resumes.
    ann.send(Command::StartScreenShare {
        source: ScreenSource::Test {
            width: 1280,
            height: 720,
            source_id: SHARE_SOURCE,
        },
        fps: 10,
        sound: false,
    });
    sharing_state(&mut bob, &ann_id, true).await;
    screen_frames_beyond(&mut bob, &ann_id, screen_after, 5).await;
    let camera_now = bob.videos[&ann_id].stats().frames_decoded;
    camera_frames_beyond(&mut bob, &ann_id, camera_now, 10).await;
}

/// Draws `rgba` over the whole root window of `display` and puts the pointer in the far corner.
fn draw_on_root(display: &str, rgba: &[u8], width: usize, height: usize) {
    huddle::media::screen::show_on_x11_root(display, rgba, width, height)
        .expect("the picture is drawn");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_x_screen_arrives_sharp() {
    let (width, height) = (1920, 1080);
    let xvfb = Xvfb::start(width, height).expect("Xvfb runs (scripts/setup --test installs it)");
    let picture = RgbaFrame {
        width,
        height,
        pixels: ScreenPicture::rgba(width, height),
        capture_us: 0,
    };
    draw_on_root(&xvfb.display, &picture.pixels, width, height);

    let Pair {
        server: _server,
        ann,
        mut bob,
        ann_id,
        _dirs,
    } = pair("x11").await;
    ann.send(Command::StartScreenShare {
        source: ScreenSource::X11 {
            display: Some(xvfb.display.clone()),
            window: None,
        },
        fps: 15,
        sound: false,
    });
    sharing_state(&mut bob, &ann_id, true).await;

    // The picture is refined frame after frame once it is static: wait (bounded) for one at
    // full size as sharp as the target, and report every full-size picture's PSNR on the way.
    let mut checked = 0;
    let mut best = 0.0f64;
    let psnr = bob
        .until(Duration::from_secs(60), |p| {
            let screen = p.screens.get(&ann_id)?;
            let stats = screen.stats();
            if stats.frames_decoded == checked {
                return None;
            }
            checked = stats.frames_decoded;
            let frame: Arc<RgbaFrame> = screen.latest.peek()?;
            if (frame.width, frame.height) != (width, height) {
                return None;
            }
            let psnr = frame
                .luma_psnr(&picture)
                .expect("pictures of the same size");
            best = best.max(psnr);
            eprintln!("picture {checked}: {psnr:.1} dB");
            (psnr >= 35.0).then_some(psnr)
        })
        .await;
    eprintln!("received X screen at 1920x1080, luma PSNR {psnr:.1} dB (best {best:.1})");

    // Frame rate within the chosen 15 fps: X captures carry no stamp, so count pictures.
    let before = bob.screens[&ann_id].stats().frames_decoded;
    let started = tokio::time::Instant::now();
    bob.until(Duration::from_secs(5), |_| {
        (started.elapsed() >= Duration::from_secs(3)).then_some(())
    })
    .await;
    let after = bob.screens[&ann_id].stats().frames_decoded;
    let fps = (after - before) as f64 / started.elapsed().as_secs_f64();
    eprintln!("{fps:.1} pictures per second decoded");
    assert!(fps <= 16.5, "{fps} fps with 15 chosen");
}

#[test]
fn the_x_capture_reads_what_is_on_the_screen() {
    let (width, height) = (1920, 1080);
    let xvfb = Xvfb::start(width, height).expect("Xvfb runs (scripts/setup --test installs it)");
    let picture = RgbaFrame {
        width,
        height,
        pixels: ScreenPicture::rgba(width, height),
        capture_us: 0,
    };
    draw_on_root(&xvfb.display, &picture.pixels, width, height);
    let mut capturer = huddle::media::screen::open(&ScreenSource::X11 {
        display: Some(xvfb.display.clone()),
        window: None,
    })
    .expect("capture opens");
    let frame = capturer.capture(1).expect("a picture");
    assert_eq!((frame.width, frame.height), (width, height));
    let mut rgba = RgbaFrame::default();
    frame.to_rgba(&mut rgba);
    // Only colour conversion (RGB to I420 and back) stands between them.
    let psnr = rgba.luma_psnr(&picture).expect("pictures of the same size");
    eprintln!("captured luma PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "{psnr:.1} dB");
}

/// Declares RandR monitors on `display` (as `xrandr --setmonitor NAME geometry none` does):
/// each `(name, x, width)` a column of the full height.
fn set_monitors(display: &str, height: u16, monitors: &[(&str, i16, u16)]) {
    use x11rb::connection::Connection;
    use x11rb::protocol::randr::{ConnectionExt as _, MonitorInfo};
    let (conn, screen) = x11rb::connect(Some(display)).expect("connect to Xvfb");
    let root = conn.setup().roots[screen].root;
    conn.randr_query_version(1, 5).unwrap().reply().unwrap();
    for &(name, x, width) in monitors {
        let atom = x11_atom(&conn, name);
        conn.randr_set_monitor(
            root,
            MonitorInfo {
                name: atom,
                primary: false,
                automatic: false,
                x,
                y: 0,
                width,
                height,
                width_in_millimeters: 300,
                height_in_millimeters: 200,
                outputs: vec![],
            },
        )
        .unwrap()
        .check()
        .unwrap();
    }
}

#[test]
fn one_monitor_of_two_is_listed_and_captured_alone() {
    let (width, height) = (2560, 720);
    let xvfb = Xvfb::start(width, height).expect("Xvfb runs (scripts/setup --test installs it)");
    let pixels = ScreenPicture::rgba(width, height);
    draw_on_root(&xvfb.display, &pixels, width, height);
    set_monitors(
        &xvfb.display,
        height as u16,
        &[("HUDDLE-LEFT", 0, 1280), ("HUDDLE-RIGHT", 1280, 1280)],
    );

    let choices = huddle::media::screen::list_x11(Some(&xvfb.display)).expect("list");
    let right = choices
        .iter()
        .find(|c| {
            c.source
                == ScreenSource::X11Monitor {
                    display: Some(xvfb.display.clone()),
                    monitor: "HUDDLE-RIGHT".into(),
                }
        })
        .expect("the right monitor is a choice");
    assert!(
        right.title.contains("HUDDLE-RIGHT (1280x720)"),
        "{}",
        right.title
    );
    assert!(right.thumbnail.is_some(), "the monitor has a thumbnail");

    let mut capturer = huddle::media::screen::open(&right.source).expect("capture opens");
    let frame = capturer.capture(1).expect("a picture");
    assert_eq!((frame.width, frame.height), (1280, 720));
    let mut rgba = RgbaFrame::default();
    frame.to_rgba(&mut rgba);
    // The right half of what was drawn, and nothing of the left.
    let want = RgbaFrame {
        width: 1280,
        height: 720,
        pixels: pixels
            .chunks_exact(width * 4)
            .flat_map(|row| row[1280 * 4..].iter().copied())
            .collect(),
        capture_us: 0,
    };
    let psnr = rgba.luma_psnr(&want).expect("pictures of the same size");
    eprintln!("right monitor luma PSNR {psnr:.1} dB");
    assert!(psnr >= 40.0, "{psnr:.1} dB");

    let missing = match huddle::media::screen::open(&ScreenSource::X11Monitor {
        display: Some(xvfb.display.clone()),
        monitor: "HDMI-9".into(),
    }) {
        Ok(_) => panic!("a monitor that is not there opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        missing.contains("no monitor named HDMI-9") && missing.contains("HUDDLE-LEFT"),
        "{missing}"
    );
}

/// Makes a mapped 640x400 window titled `title` filled with one colour, and lists it in the
/// root's `_NET_CLIENT_LIST` as a window manager would (Xvfb has none). Returns its id.
fn open_window(display: &str, title: &str) -> (x11rb::rust_connection::RustConnection, u32) {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::{
        AtomEnum, ConnectionExt, CreateWindowAux, PropMode, WindowClass,
    };
    use x11rb::wrapper::ConnectionExt as _;
    let (conn, screen) = x11rb::connect(Some(display)).expect("connect to Xvfb");
    let root = conn.setup().roots[screen].root;
    let window = conn.generate_id().unwrap();
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        window,
        root,
        100,
        80,
        640,
        400,
        0,
        WindowClass::INPUT_OUTPUT,
        x11rb::COPY_FROM_PARENT,
        &CreateWindowAux::new().background_pixel(0x00_30_a0_50),
    )
    .unwrap();
    let atom = |name: &str| x11_atom(&conn, name);
    let (net_name, utf8, list) = (
        atom("_NET_WM_NAME"),
        atom("UTF8_STRING"),
        atom("_NET_CLIENT_LIST"),
    );
    conn.change_property8(PropMode::REPLACE, window, net_name, utf8, title.as_bytes())
        .unwrap();
    conn.change_property32(PropMode::REPLACE, root, list, AtomEnum::WINDOW, &[window])
        .unwrap();
    conn.map_window(window).unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();
    // The connection keeps the window; dropping it closes the window.
    (conn, window)
}

/// Whether any pixel of `rgba` within `radius` of `(x, y)` differs from the window's fill.
fn differs_from_fill_near(rgba: &RgbaFrame, x: usize, y: usize, radius: usize) -> bool {
    let fill = [0x30, 0xa0, 0x50];
    (y.saturating_sub(radius)..(y + radius).min(rgba.height)).any(|py| {
        (x.saturating_sub(radius)..(x + radius).min(rgba.width)).any(|px| {
            let i = (py * rgba.width + px) * 4;
            (0..3).any(|c| (rgba.pixels[i + c] as i32 - fill[c]).abs() > 40)
        })
    })
}

#[test]
fn the_pointer_is_drawn_where_it_is_in_a_shared_window() {
    use x11rb::connection::Connection;
    use x11rb::protocol::xproto::ConnectionExt as _;
    let xvfb = Xvfb::start(1280, 720).expect("Xvfb runs (scripts/setup --test installs it)");
    // The window sits at (100, 80) on the root; the pointer goes to (200, 150) inside it.
    let (conn, window) = open_window(&xvfb.display, "Pointer");
    let root = conn.setup().roots[0].root;
    conn.warp_pointer(x11rb::NONE, root, 0, 0, 0, 0, 300, 230)
        .unwrap();
    conn.get_input_focus().unwrap().reply().unwrap();

    let mut capturer = huddle::media::screen::open(&ScreenSource::X11 {
        display: Some(xvfb.display.clone()),
        window: Some(window),
    })
    .expect("capture opens");
    let frame = capturer.capture(1).expect("a picture");
    assert_eq!((frame.width, frame.height), (640, 400));
    let mut rgba = RgbaFrame::default();
    frame.to_rgba(&mut rgba);
    assert!(
        differs_from_fill_near(&rgba, 200, 150, 12),
        "the pointer is drawn where it is in the window"
    );
    // Where root coordinates would put it, the window shows its plain fill.
    assert!(
        !differs_from_fill_near(&rgba, 300, 230, 12),
        "no pointer at the root's coordinates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_offered_with_thumbnails_and_one_is_shared_at_its_size() {
    let xvfb = Xvfb::start(1280, 720).expect("Xvfb runs (scripts/setup --test installs it)");
    let (_keep, window) = open_window(&xvfb.display, "Quarterly report");
    let Pair {
        server: _server,
        mut ann,
        mut bob,
        ann_id,
        _dirs,
    } = pair("windows").await;

    ann.send(Command::ListScreens {
        display: Some(xvfb.display.clone()),
    });
    let choices = ann
        .wait_for(Duration::from_secs(10), |e| match e {
            Event::Screens(c) => Some(c.clone()),
            _ => None,
        })
        .await;
    let titles: Vec<&str> = choices.iter().map(|c| c.title.as_str()).collect();
    assert_eq!(titles, vec!["Entire screen", "Quarterly report"]);
    let screen = choices[0]
        .thumbnail
        .as_ref()
        .expect("a thumbnail of the screen");
    assert_eq!((screen.width, screen.height), (200, 112));
    let thumb = choices[1]
        .thumbnail
        .as_ref()
        .expect("a thumbnail of the window");
    assert_eq!((thumb.width, thumb.height), (200, 124));
    // The thumbnail shows the window: its green fill.
    let centre = (thumb.height / 2 * thumb.width + thumb.width / 2) * 4;
    let [r, g, b] = [0, 1, 2].map(|i| thumb.pixels[centre + i] as i32);
    assert!(
        (r - 0x30).abs() < 12 && (g - 0xa0).abs() < 12 && (b - 0x50).abs() < 12,
        "{r},{g},{b}"
    );

    ann.send(Command::StartScreenShare {
        source: choices[1].source.clone(),
        fps: 15,
        sound: false,
    });
    let shared = share_started(&mut ann).await;
    assert_eq!(
        shared,
        format!("X11 window 0x{window:x} on {}", xvfb.display)
    );
    let size = bob
        .until(Duration::from_secs(30), |p| {
            let s = p.screens.get(&ann_id)?.stats();
            (s.frames_decoded >= 3).then_some((s.width, s.height))
        })
        .await;
    assert_eq!(size, (640, 400));
}

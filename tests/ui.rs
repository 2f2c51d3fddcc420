//! The desktop app driven through its accessible labels with egui_kittest, against a real
//! signaling server and a real peer (an in-process engine with a test pattern and a tone).

mod common;

use common::peer::{PeerOptions, TestPeer};
use common::*;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use huddle::engine::{Command, Event, TransferCommand, TransferState};
use huddle::media::audio::NullSink;
use huddle::services::{Notification, Notifier};
use huddle::settings::Settings;
use huddle::ui::app::{CallLayout, SelfViewPlace};
use huddle::ui::{AppServices, HuddleApp, View};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The app is created inside the first frame so it gets the harness's egui context.
struct TestApp {
    init: Option<(AppServices, Settings)>,
    app: Option<HuddleApp>,
}

impl TestApp {
    fn app(&self) -> &HuddleApp {
        self.app.as_ref().expect("app created")
    }

    fn app_mut(&mut self) -> &mut HuddleApp {
        self.app.as_mut().expect("app created")
    }
}

/// Settings for an app with no camera and no microphone.
fn without_devices(server: String, nickname: &str) -> Settings {
    Settings {
        server,
        nickname: nickname.into(),
        camera: "none".into(),
        microphone: "none".into(),
        ..Default::default()
    }
}

struct Ui<'a> {
    harness: Harness<'a, TestApp>,
    woken: mpsc::Receiver<()>,
}

impl Ui<'_> {
    /// Runs frames until `cond` holds, waking whenever the app asks for a repaint.
    fn until(
        &mut self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&mut Harness<'_, TestApp>) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            self.harness.step();
            if cond(&mut self.harness) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            // Engine events and video frames call request_repaint; the 200 ms repaint-after of
            // the call view also lands here.
            let _ = self
                .woken
                .recv_timeout(left.min(Duration::from_millis(250)));
        }
    }

    /// Clicks a widget the way a screen reader does, wherever it is scrolled to (a pointer
    /// click needs it inside the visible part of its scroll area).
    fn click_in_view(&mut self, label: &str) {
        self.harness.get_by_label(label).click_accesskit();
    }

    /// Presses Tab until the focus comes back round (at most 80 times) and returns the labels
    /// of what got the focus, in order.
    fn tab_through(&mut self) -> Vec<String> {
        let mut seen: Vec<String> = Vec::new();
        for _ in 0..80 {
            self.harness.key_press(egui::Key::Tab);
            self.harness.step();
            let focused = self
                .harness
                .query_all(egui_kittest::kittest::by())
                .find(|n| n.is_focused())
                .map(|n| n.accesskit_node().label().unwrap_or_default());
            let Some(label) = focused else { continue };
            if seen.first() == Some(&label) {
                break;
            }
            seen.push(label);
        }
        seen
    }

    fn double_click(&mut self, label: &str) {
        let pos = self.harness.get_by_label_contains(label).rect().center();
        let events = &mut self.harness.input_mut().events;
        events.push(egui::Event::PointerMoved(pos));
        for _ in 0..2 {
            for pressed in [true, false] {
                events.push(egui::Event::PointerButton {
                    pos,
                    button: egui::PointerButton::Primary,
                    pressed,
                    modifiers: egui::Modifiers::NONE,
                });
            }
        }
        self.harness.step();
    }
}

#[test]
fn the_app_joins_shows_video_chats_mutes_and_receives_a_file() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let url = server.url();
    let bob_dir = tempfile::tempdir().unwrap();
    let app_dir = tempfile::tempdir().unwrap();
    let mut bob = rt.block_on(async {
        let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, bob_dir.path().into()));
        bob.join("standup", "bob").await;
        bob
    });
    let bob_id = bob.id.clone().unwrap();

    let settings = Settings {
        server: url.clone(),
        nickname: "ann".into(),
        camera: "test:640x480".into(),
        microphone: "tone:440".into(),
        download_dir: Some(app_dir.path().to_path_buf()),
        ..Default::default()
    };
    let mut ui = app_harness(&rt, settings, None, None);

    // The lobby lists bob's room with its head count.
    ui.until("the room list", Duration::from_secs(10), |h| {
        h.query_by_label_contains("standup").is_some()
    });
    let row = ui
        .harness
        .get_by_label_contains("standup")
        .accesskit_node()
        .label()
        .unwrap_or_default();
    assert!(row.contains("1 of 6"), "row reads {row:?}");

    // Double-clicking it joins.
    ui.double_click("standup");
    ui.until("the call view", Duration::from_secs(10), |h| {
        h.state().app().view == View::Call
    });

    // Bob's tile appears and its texture keeps updating.
    ui.until("bob's video", Duration::from_secs(15), |h| {
        h.query_by_label_contains("Video of bob").is_some()
            && h.state()
                .app()
                .call
                .as_ref()
                .is_some_and(|c| c.peers.first().is_some_and(|p| p.tile.frames_shown >= 5))
    });
    // The app noted (in its log) when the first remote picture reached a texture.
    assert!(ui.harness.state().app().first_remote_picture_logged);
    let shown = ui.harness.state().app().call.as_ref().unwrap().peers[0]
        .tile
        .frames_shown;
    ui.until("more frames", Duration::from_secs(5), |h| {
        h.state().app().call.as_ref().unwrap().peers[0]
            .tile
            .frames_shown
            >= shown + 10
    });
    assert!(ui.harness.query_by_label("Your video").is_some());
    // The tile carries the connection's grade once two stats samples are in: on loopback, good.
    ui.until("the connection grade", Duration::from_secs(10), |h| {
        h.query_by_label("Video of bob, connection good").is_some()
    });

    // A chat message typed and sent with Enter shows up, and bob receives it.
    ui.harness.get_by_label("Message").focus();
    ui.harness.step();
    ui.harness
        .get_by_label("Message")
        .type_text("hello from the app");
    ui.harness.step();
    ui.harness.key_press(egui::Key::Enter);
    ui.until("the chat echo", Duration::from_secs(10), |h| {
        h.query_by_label("hello from the app").is_some()
    });
    let got = rt.block_on(bob.wait_for(Duration::from_secs(10), |e| match e {
        Event::Chat(m) if m.text == "hello from the app" => Some(m.nickname.clone()),
        _ => None,
    }));
    assert_eq!(got, "ann");

    // The mute control toggles; bob is told and measures silence; unmute brings the tone back.
    let ann_id = ui.harness.state().app().my_id.clone().unwrap();
    hears_the_tone(&rt, &mut bob, &ann_id, Duration::from_secs(10));
    ui.harness.get_by_label("Mute").click();
    ui.until("the Unmute label", Duration::from_secs(5), |h| {
        h.query_by_label("Unmute").is_some()
    });
    assert!(ui.harness.state().app().local.audio_muted);
    hears_silence(&rt, &mut bob, &ann_id, Duration::from_secs(5));
    // Ctrl+D unmutes (the shortcut).
    ui.harness.key_press_modifiers(
        egui::Modifiers::CTRL | egui::Modifiers::COMMAND,
        egui::Key::D,
    );
    ui.until("the Mute label", Duration::from_secs(5), |h| {
        h.query_by_label("Mute").is_some()
    });
    hears_the_tone(&rt, &mut bob, &ann_id, Duration::from_secs(5));

    // Push to talk: muted again, holding Space speaks, letting go mutes; the button keeps
    // saying "Unmute" throughout (the user's choice is unchanged).
    ui.harness.get_by_label("Mute").click();
    ui.until("the Unmute label", Duration::from_secs(5), |h| {
        h.query_by_label("Unmute").is_some()
    });
    hears_silence(&rt, &mut bob, &ann_id, Duration::from_secs(5));
    ui.harness.key_down(egui::Key::Space);
    ui.until("push to talk", Duration::from_secs(5), |h| {
        h.state().app().push_to_talk
    });
    hears_the_tone(&rt, &mut bob, &ann_id, Duration::from_secs(5));
    assert!(ui.harness.state().app().local.audio_muted);
    assert!(ui.harness.query_by_label("Unmute").is_some());
    ui.harness.key_up(egui::Key::Space);
    ui.until("push to talk released", Duration::from_secs(5), |h| {
        !h.state().app().push_to_talk
    });
    hears_silence(&rt, &mut bob, &ann_id, Duration::from_secs(5));
    ui.harness.get_by_label("Unmute").click();
    ui.until("the Mute label", Duration::from_secs(5), |h| {
        h.query_by_label("Mute").is_some()
    });

    // Ann raises her hand from the control bar: bob is told; her button now lowers it.
    ui.harness.get_by_label("Raise hand").click();
    ui.until("the Lower hand label", Duration::from_secs(5), |h| {
        h.query_by_label("Lower hand").is_some()
    });
    let ann_raised_at = rt.block_on(bob.wait_for(Duration::from_secs(10), |e| match e {
        Event::HandChanged {
            peer,
            raised_at_ms: Some(at),
        } if *peer == ann_id => Some(*at),
        _ => None,
    }));
    ui.until("the Lower hand label", Duration::from_secs(5), |h| {
        h.query_by_label("Lower hand").is_some()
    });
    // Bob raises his after her: his tile says so, and the people list has them in that order.
    bob.send(Command::SetHandRaised(true));
    ui.until("bob's hand on his tile", Duration::from_secs(5), |h| {
        h.query_by_label("Video of bob, connection good, hand raised")
            .is_some()
    });
    ui.harness.get_by_label("People").click();
    ui.until(
        "the people list in order of raising",
        Duration::from_secs(5),
        |h| {
            h.query_by_label("ann (you), hand raised, 1 in line")
                .is_some()
                && h.query_by_label("bob, hand raised, 2 in line").is_some()
        },
    );
    let bob_raised_at = ui.harness.state().app().call.as_ref().unwrap().peers[0]
        .info
        .hand_raised_at_ms
        .unwrap();
    assert!(ann_raised_at < bob_raised_at);
    // Ctrl+H lowers ann's hand; bob moves up to first.
    ui.harness.key_press_modifiers(
        egui::Modifiers::CTRL | egui::Modifiers::COMMAND,
        egui::Key::H,
    );
    ui.until("ann's hand down", Duration::from_secs(5), |h| {
        h.state()
            .app()
            .call
            .as_ref()
            .unwrap()
            .me
            .hand_raised_at_ms
            .is_none()
    });
    rt.block_on(bob.wait_for(Duration::from_secs(10), |e| match e {
        Event::HandChanged {
            peer,
            raised_at_ms: None,
        } if *peer == ann_id => Some(()),
        _ => None,
    }));
    ui.until("bob first in line", Duration::from_secs(5), |h| {
        h.query_by_label("bob, hand raised, 1 in line").is_some()
            && h.query_by_label("ann (you)").is_some()
    });
    // Bob reacts: it floats over his tile. Ann reacts from the bar: bob gets it.
    bob.send(Command::React("🎉".into()));
    ui.until("bob's reaction", Duration::from_secs(5), |h| {
        let call = h.state().app().call.as_ref().unwrap();
        call.reactions_of(&bob_id, Instant::now())
            .iter()
            .any(|(emoji, _)| *emoji == "🎉")
    });
    ui.harness.get_by_label("React").click();
    ui.until("the reactions menu", Duration::from_secs(5), |h| {
        h.query_by_label("React 👍").is_some()
    });
    ui.harness.get_by_label("React 👍").click();
    ui.until(
        "ann's own reaction over her self-view",
        Duration::from_secs(5),
        |h| {
            let call = h.state().app().call.as_ref().unwrap();
            call.reactions_of(&ann_id, Instant::now())
                .iter()
                .any(|(emoji, _)| *emoji == "👍")
        },
    );
    let got = rt.block_on(bob.wait_for(Duration::from_secs(10), |e| match e {
        Event::Reaction { peer, emoji } if *peer == ann_id => Some(emoji.clone()),
        _ => None,
    }));
    assert_eq!(got, "👍");

    // Bob offers a file: Accept / Decline appear; accepting completes it.
    let file = bob_dir.path().join("agenda.txt");
    std::fs::write(&file, "1. video\n2. chat\n3. files\n").unwrap();
    bob.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![file],
        to: Some(ann_id.clone()),
    }));
    ui.until("the offer", Duration::from_secs(10), |h| {
        h.query_by_label("Accept").is_some() && h.query_by_label("Decline").is_some()
    });
    ui.harness.get_by_label("Accept").click();
    ui.until("the finished transfer", Duration::from_secs(10), |h| {
        h.query_by_label("Open folder").is_some()
    });
    let saved = app_dir.path().join("agenda.txt");
    assert_eq!(
        std::fs::read_to_string(saved).unwrap(),
        "1. video\n2. chat\n3. files\n"
    );

    // Leaving returns to the lobby.
    ui.harness.get_by_label("Leave").click();
    ui.until("the lobby", Duration::from_secs(5), |h| {
        h.state().app().view == View::Lobby
    });

    drop(ui);
    rt.block_on(async {
        bob.engine.shutdown().await;
        server.shutdown().await;
    });
}

/// Waits until `peer` hears `from`'s tone (above -30 dBFS).
fn hears_the_tone(
    rt: &tokio::runtime::Runtime,
    peer: &mut TestPeer,
    from: &huddle::engine::PeerId,
    within: Duration,
) {
    rt.block_on(peer.until(within, |p| {
        let s = p.engine.media().remote_audio(from)?;
        (s.level_dbfs > -30.0).then_some(())
    }));
}

/// Waits until `peer` hears silence from `from` (at or below -90 dBFS).
fn hears_silence(
    rt: &tokio::runtime::Runtime,
    peer: &mut TestPeer,
    from: &huddle::engine::PeerId,
    within: Duration,
) {
    rt.block_on(peer.until(within, |p| {
        let s = p.engine.media().remote_audio(from)?;
        (s.level_dbfs <= -90.0).then_some(())
    }));
}

fn app_harness(
    rt: &tokio::runtime::Runtime,
    settings: Settings,
    embedded_url: Option<String>,
    pending_join: Option<String>,
) -> Ui<'static> {
    app_harness_with(
        rt,
        settings,
        embedded_url,
        pending_join,
        Notifier::none(),
        None,
    )
}

fn app_harness_with(
    rt: &tokio::runtime::Runtime,
    settings: Settings,
    embedded_url: Option<String>,
    pending_join: Option<String>,
    notifier: Notifier,
    settings_path: Option<std::path::PathBuf>,
) -> Ui<'static> {
    let services = AppServices {
        runtime: rt.handle().clone(),
        settings_path,
        embedded_url,
        speaker_override: Some(Box::new(|| Box::new(NullSink::new()))),
        bind_addrs: vec!["127.0.0.1:0".into()],
        discover_lan: false,
        read_stamps: false,
        notifier,
    };
    harness_for(services, settings, pending_join)
}

/// The app with these services in a test window of 1180x760.
fn harness_for(
    services: AppServices,
    settings: Settings,
    pending_join: Option<String>,
) -> Ui<'static> {
    let harness = Harness::builder()
        .with_size([1180.0, 760.0])
        .build_ui_state(
            move |ui: &mut egui::Ui, state: &mut TestApp| {
                // Like `huddle huddle://...`: the room is known before the first frame, so
                // the server's welcome can never arrive before it.
                if state.app.is_none()
                    && let Some((services, settings)) = state.init.take()
                {
                    let mut app = HuddleApp::new(ui.ctx().clone(), services, settings);
                    app.pending_join = pending_join.clone();
                    state.app = Some(app);
                }
                if let Some(app) = state.app.as_mut() {
                    app.draw(ui);
                }
            },
            TestApp {
                init: Some((services, settings)),
                app: None,
            },
        );
    // One pending wake is as good as many: a full channel already holds one.
    let (wake_tx, woken) = mpsc::sync_channel(1);
    harness.ctx.set_request_repaint_callback(move |_| {
        let _ = wake_tx.try_send(());
    });
    Ui { harness, woken }
}

#[test]
fn chat_groups_senders_links_jumps_to_new_messages_and_notifies_in_the_background() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let url = server.url();
    let bob_dir = tempfile::tempdir().unwrap();
    let app_dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(async {
        let mut options = PeerOptions::new(2, 660.0, bob_dir.path().into());
        options.video = None;
        let mut bob = TestPeer::start(&url, options);
        bob.join("chatroom", "bob").await;
        bob
    });
    let settings = Settings {
        download_dir: Some(app_dir.path().to_path_buf()),
        ..without_devices(url.clone(), "ann")
    };
    let (notified, notifications) = mpsc::sync_channel::<Notification>(16);
    let mut ui = app_harness_with(
        &rt,
        settings,
        None,
        Some("chatroom".into()),
        Notifier::channel(notified),
        None,
    );
    ui.until("bob in the call", Duration::from_secs(15), |h| {
        h.state()
            .app()
            .call
            .as_ref()
            .is_some_and(|c| c.peers.iter().any(|p| p.connected))
    });
    let ann_id = ui.harness.state().app().my_id.clone().unwrap();

    // Two messages in a row from bob share one header; the link in the second is a link, and
    // clicking it asks the system to open it.
    bob.send(Command::SendChat("first".into()));
    bob.send(Command::SendChat(
        "notes at https://example.org/notes?id=7 today".into(),
    ));
    ui.until("bob's link", Duration::from_secs(10), |h| {
        h.query_by_label("https://example.org/notes?id=7").is_some()
    });
    let call = ui.harness.state().app().call.as_ref().unwrap();
    assert_eq!(call.chat.entries().len(), 2);
    assert!(!call.chat.continues_group(0) && call.chat.continues_group(1));
    assert!(
        ui.harness.query_by_label_contains("today").is_some(),
        "text after the link"
    );
    ui.harness
        .get_by_label("https://example.org/notes?id=7")
        .click();
    ui.harness.step();
    let opened: Vec<String> = ui
        .harness
        .output()
        .platform_output
        .commands
        .iter()
        .filter_map(|c| match c {
            egui::OutputCommand::OpenUrl(open) => Some(open.url.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(opened, ["https://example.org/notes?id=7"]);
    assert!(
        notifications.try_recv().is_err(),
        "no notification while the window is in front"
    );

    // Enough long messages to scroll; scrolled up to read, a new one does not pull the view
    // down but offers a jump to it; the jump goes there and the offer goes away.
    for i in 0..6 {
        bob.send(Command::SendChat(format!(
            "{i} {}",
            "long words ".repeat(60)
        )));
    }
    ui.until("the long messages", Duration::from_secs(10), |h| {
        h.state().app().call.as_ref().unwrap().chat.entries().len() == 8
    });
    for _ in 0..3 {
        ui.harness.step();
    }
    let log = ui
        .harness
        .get_by_label_contains("5 long words")
        .rect()
        .center();
    ui.harness.input_mut().events.extend([
        egui::Event::PointerMoved(log),
        egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, 5000.0),
            modifiers: egui::Modifiers::NONE,
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Wheel,
        },
    ]);
    ui.harness.step();
    bob.send(Command::SendChat("news while you read".into()));
    ui.until("the new-messages jump", Duration::from_secs(10), |h| {
        h.query_by_label_contains("1 new message").is_some()
    });
    ui.harness.get_by_label_contains("1 new message").click();
    ui.until("the jump taken", Duration::from_secs(5), |h| {
        h.query_by_label_contains("new message").is_none()
    });
    let call = ui.harness.state().app().call.as_ref().unwrap();
    assert_eq!(call.chat_seen, call.chat.arrived_from_others());

    // In the background, a message and a file offer each become a desktop notification.
    ui.harness
        .input_mut()
        .viewports
        .entry(egui::ViewportId::ROOT)
        .or_default()
        .focused = Some(false);
    ui.harness.step();
    bob.send(Command::SendChat("are you there?".into()));
    let file = bob_dir.path().join("slides.pdf");
    std::fs::write(&file, vec![7u8; 1500]).unwrap();
    bob.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![file],
        to: Some(ann_id.clone()),
    }));
    let mut seen = Vec::new();
    ui.until("two notifications", Duration::from_secs(10), |_| {
        seen.extend(notifications.try_iter());
        seen.len() >= 2
    });
    // The offer travels peer to peer and the message through the server: either may be first.
    seen.sort_by(|a, b| a.summary.cmp(&b.summary));
    assert_eq!(
        seen,
        [
            Notification {
                summary: "bob in chatroom".into(),
                body: "are you there?".into(),
            },
            Notification {
                summary: "bob wants to send you a file".into(),
                body: "slides.pdf (1.5 KB)".into(),
            },
        ]
    );

    drop(ui);
    rt.block_on(async {
        bob.engine.shutdown().await;
        server.shutdown().await;
    });
}

#[test]
fn the_settings_window_renames_in_a_call_sets_who_sends_files_freely_and_the_theme_and_they_are_saved()
 {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let url = server.url();
    let bob_dir = tempfile::tempdir().unwrap();
    let app_dir = tempfile::tempdir().unwrap();
    let mut bob = rt.block_on(async {
        let mut options = PeerOptions::new(3, 660.0, bob_dir.path().into());
        options.video = None;
        let mut bob = TestPeer::start(&url, options);
        bob.join("settings", "bob").await;
        bob
    });
    let settings = Settings {
        download_dir: Some(app_dir.path().to_path_buf()),
        ..without_devices(url.clone(), "ann")
    };
    let settings_file = app_dir.path().join("settings.json");
    let mut ui = app_harness_with(
        &rt,
        settings,
        None,
        None,
        Notifier::none(),
        Some(settings_file.clone()),
    );

    // From the lobby: the theme changes at once; the shortcuts are listed.
    ui.until("the lobby", Duration::from_secs(10), |h| {
        h.query_by_label("Settings").is_some()
    });
    ui.harness
        .get_by_role_and_label(egui::accesskit::Role::Button, "Settings")
        .click();
    ui.until("the settings window", Duration::from_secs(5), |h| {
        h.query_by_label("Light").is_some()
    });
    assert!(ui.harness.query_by_label_contains("Hold Space").is_some());
    ui.click_in_view("Light");
    ui.until("the light theme", Duration::from_secs(5), |h| {
        h.ctx.theme() == egui::Theme::Light
    });
    assert_eq!(
        ui.harness.state().app().settings.theme,
        huddle::settings::Theme::Light
    );
    // Ctrl+, closes it (and opens it).
    ui.harness.key_press_modifiers(
        egui::Modifiers::CTRL | egui::Modifiers::COMMAND,
        egui::Key::Comma,
    );
    ui.until("the window closed", Duration::from_secs(5), |h| {
        h.query_by_label("Light").is_none()
    });

    // In the call: a new nickname reaches bob.
    ui.until("the room list", Duration::from_secs(10), |h| {
        h.query_by_label_contains("settings").is_some()
    });
    ui.double_click("settings");
    ui.until("bob connected", Duration::from_secs(15), |h| {
        h.state()
            .app()
            .call
            .as_ref()
            .is_some_and(|c| c.peers.iter().any(|p| p.connected))
    });
    let ann_id = ui.harness.state().app().my_id.clone().unwrap();
    ui.harness
        .get_by_role_and_label(egui::accesskit::Role::Button, "Settings")
        .click();
    ui.until("the settings window", Duration::from_secs(5), |h| {
        h.query_by_label("Nickname").is_some()
    });
    let field = ui.harness.get_by_label("Nickname");
    field.focus();
    ui.harness.step();
    ui.harness
        .key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    ui.harness.step();
    ui.harness.get_by_label("Nickname").type_text("annie");
    ui.harness.step();
    ui.harness.get_by_label("Change").click();
    ui.harness.step();
    let renamed = rt.block_on(bob.wait_for(Duration::from_secs(10), |e| match e {
        Event::NicknameChanged { peer, nickname } if *peer == ann_id => Some(nickname.clone()),
        _ => None,
    }));
    assert_eq!(renamed, "annie");
    ui.until("her own new name", Duration::from_secs(5), |h| {
        let app = h.state().app();
        app.call.as_ref().unwrap().me.nickname == "annie" && app.settings.nickname == "annie"
    });

    // Files from everyone in the room arrive without asking, from the next offer on; back to
    // "nobody", the next one asks again.
    ui.click_in_view("Everyone in the room");
    ui.until("the policy set", Duration::from_secs(5), |h| {
        h.state().app().settings.auto_accept_files
    });
    policy_in_force(&rt, &mut ui, &mut bob, app_dir.path(), "ping-1.txt");
    let send = |bob: &TestPeer, name: &str| {
        let file = bob_dir.path().join(name);
        std::fs::write(&file, name.repeat(100)).unwrap();
        bob.send(Command::Transfer(TransferCommand::SendFiles {
            paths: vec![file],
            to: Some(ann_id.clone()),
        }));
    };
    send(&bob, "free.txt");
    ui.until("the unasked file saved", Duration::from_secs(10), |h| {
        let call = h.state().app().call.as_ref().unwrap();
        let states: Vec<_> = call
            .transfers
            .values()
            .filter(|r| r.update.name == "free.txt")
            .map(|r| &r.update.state)
            .collect();
        assert!(
            !states.contains(&&TransferState::AwaitingConsent),
            "the file was never offered for a decision"
        );
        states == [&TransferState::Completed]
    });
    assert_eq!(
        std::fs::read_to_string(app_dir.path().join("free.txt")).unwrap(),
        "free.txt".repeat(100)
    );
    ui.click_in_view("Nobody: ask me every time");
    ui.until("the policy unset", Duration::from_secs(5), |h| {
        !h.state().app().settings.auto_accept_files
    });
    policy_in_force(&rt, &mut ui, &mut bob, app_dir.path(), "ping-2.txt");
    send(&bob, "asked.txt");
    ui.until("the offer asking", Duration::from_secs(10), |h| {
        let call = h.state().app().call.as_ref().unwrap();
        // Shown only if the test fails: what the app had instead.
        eprintln!(
            "transfers: {:?}",
            call.transfers
                .values()
                .map(|r| (&r.update.name, &r.update.state))
                .collect::<Vec<_>>()
        );
        call.transfers.values().any(|r| {
            r.update.name == "asked.txt" && r.update.state == TransferState::AwaitingConsent
        })
    });
    assert!(!app_dir.path().join("asked.txt").exists());

    // The call's layout is remembered too. Everything chosen is in the settings file, and an
    // app started from that file opens with it.
    ui.harness.get_by_label("Speaker view").click();
    let saved = |path: &std::path::Path| Settings::load(path).unwrap_or_default();
    ui.until("the settings saved", Duration::from_secs(10), |_| {
        let s = saved(&settings_file);
        s.speaker_view && s.nickname == "annie"
    });
    let s = saved(&settings_file);
    assert_eq!(s.theme, huddle::settings::Theme::Light);
    assert!(!s.auto_accept_files);
    assert_eq!(s.download_dir.as_deref(), Some(app_dir.path()));
    drop(ui);
    // Another room: the server keeps the first app's place in "settings" for a while.
    let mut again = app_harness(&rt, s, None, Some("elsewhere".into()));
    again.until("the remembered call", Duration::from_secs(15), |h| {
        h.state()
            .app()
            .call
            .as_ref()
            .is_some_and(|c| c.layout == CallLayout::Speaker)
    });
    assert_eq!(again.harness.ctx.theme(), egui::Theme::Light);
    assert_eq!(
        again
            .harness
            .state()
            .app()
            .call
            .as_ref()
            .unwrap()
            .me
            .nickname,
        "annie"
    );

    drop(again);
    rt.block_on(async {
        bob.engine.shutdown().await;
        server.shutdown().await;
    });
}

/// The file policy goes UI → engine → transfer manager, a peer's offer straight to the
/// manager: on a busy machine the offer could overtake it. A file from the app to `bob` goes
/// through the same manager queue after the policy, so once bob hears of it the policy is in
/// force.
fn policy_in_force(
    rt: &tokio::runtime::Runtime,
    ui: &mut Ui<'_>,
    bob: &mut TestPeer,
    dir: &std::path::Path,
    name: &str,
) {
    let ping = dir.join(name);
    std::fs::write(&ping, "ping").unwrap();
    let bob_id = bob.id.clone().unwrap();
    // To bob by name: the offer waits for the file channel if it is not open yet.
    ui.harness
        .state_mut()
        .app
        .as_mut()
        .unwrap()
        .command(Command::Transfer(TransferCommand::SendFiles {
            paths: vec![ping],
            to: Some(bob_id),
        }));
    ui.harness.step();
    rt.block_on(bob.wait_for(Duration::from_secs(10), |e| match e {
        Event::Transfer(huddle::engine::TransferEvent::Update { update, .. })
            if update.name == name =>
        {
            Some(())
        }
        _ => None,
    }));
}

/// Every one of `wanted` got the focus, in this order, and nothing that got it is named with an
/// icon's private-use character (a screen reader would read it out).
fn assert_reached_in_order(focused: &[String], wanted: &[&str]) {
    let mut rest = focused.iter();
    for w in wanted {
        assert!(
            rest.any(|f| f == w),
            "{w:?} not reached with Tab (in order); focus went to {focused:?}"
        );
    }
    for f in focused {
        assert!(
            !f.chars().any(|c| ('\u{e000}'..='\u{f8ff}').contains(&c)),
            "{f:?} is spoken with an icon's character"
        );
    }
}

#[test]
fn every_control_of_the_lobby_and_the_call_is_reached_with_tab() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let mut ui = app_harness(&rt, without_devices(server.url(), "ann"), None, None);
    ui.until("the lobby", Duration::from_secs(10), |h| {
        h.state().app().connection == huddle::ui::app::Connection::Connected
    });
    let lobby = ui.tab_through();
    assert_reached_in_order(
        &lobby,
        &[
            "Turn camera on",
            "Mute",
            "Play test sound",
            "Camera",
            "Microphone",
            "Speaker",
            "Settings",
            "Server",
            "Connect",
            "Nickname",
            "Filter",
            "Host on this network",
            "New room",
            "Private",
            "Password",
        ],
    );
    drop(ui);
    let mut ui = app_harness(
        &rt,
        without_devices(server.url(), "ann"),
        None,
        Some("tabbing".into()),
    );
    ui.until("the call", Duration::from_secs(10), |h| {
        h.state().app().view == View::Call
    });
    let call = ui.tab_through();
    assert_reached_in_order(
        &call,
        &[
            "Copy invite link",
            "Speaker view",
            "Hide self-view",
            "Stats",
            "Mute",
            "Camera on",
            "Raise hand",
            "React",
            "Hide chat",
            "People",
            "Send files",
            "Devices",
            "Settings",
            "Leave",
            "Send to",
            "Send file…",
            "Message",
            "Send",
        ],
    );
    drop(ui);
    rt.block_on(server.shutdown());
}

#[test]
fn an_invite_link_opens_straight_into_its_room() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let link = format!("huddle://{}/Design%20review", server.local_addr());
    // What `huddle huddle://...` does with the link.
    let invite = huddle::invite::Invite::parse(&link).unwrap();
    let settings = without_devices(invite.server_url(), "ann");
    let mut ui = app_harness(&rt, settings, None, Some(invite.room.clone()));
    ui.until("the call", Duration::from_secs(10), |h| {
        h.state().app().view == View::Call
    });
    assert_eq!(
        ui.harness.state().app().call.as_ref().unwrap().room,
        "Design review"
    );
    // The call offers the same kind of link back, and a browser link to the guest page.
    ui.harness.get_by_label("Copy invite link").click();
    ui.harness.run_steps(2);
    ui.harness.get_by_label("Copy app link").click();
    ui.until("the copied link", Duration::from_secs(5), |h| {
        h.state().app().last_invite.is_some()
    });
    let copied = ui.harness.state().app().last_invite.clone().unwrap();
    ui.harness.state_mut().app.as_mut().unwrap().last_invite = None;
    assert_eq!(huddle::invite::Invite::parse(&copied).unwrap(), invite);
    ui.harness.get_by_label("Copy invite link").click();
    ui.harness.run_steps(2);
    ui.harness.get_by_label("Copy browser link").click();
    ui.until("the copied browser link", Duration::from_secs(5), |h| {
        h.state().app().last_invite.is_some()
    });
    let guest = ui.harness.state().app().last_invite.clone().unwrap();
    assert_eq!(
        guest,
        format!("http://{}/Design%20review", server.local_addr())
    );
    // The server answers that link with the guest page.
    let page = rt.block_on(http_get(&guest));
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(page.contains("<title>Huddle</title>"), "{page}");
    drop(ui);
    rt.block_on(server.shutdown());
}

#[test]
fn a_first_time_link_asks_only_for_a_nickname() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let settings = Settings {
        server: server.url(),
        camera: "none".into(),
        microphone: "none".into(),
        ..Default::default()
    };
    let mut ui = app_harness(&rt, settings, None, Some("Standup".into()));
    ui.until("the nickname prompt", Duration::from_secs(10), |h| {
        h.query_by_label("Join Standup").is_some()
            && h.state().app().connection == huddle::ui::app::Connection::Connected
    });
    assert_eq!(ui.harness.state().app().view, View::Lobby);
    ui.harness.get_by_label("Nickname").focus();
    ui.harness.step();
    ui.harness.get_by_label("Nickname").type_text("cat");
    ui.harness.step();
    ui.harness.get_by_label("Join Standup").click();
    ui.until("the call", Duration::from_secs(10), |h| {
        h.state().app().view == View::Call
    });
    assert_eq!(
        ui.harness.state().app().call.as_ref().unwrap().me.nickname,
        "cat"
    );
    drop(ui);
    rt.block_on(server.shutdown());
}

#[test]
fn the_embedded_server_starts_when_none_is_configured() {
    let rt = runtime();
    let settings = Settings {
        nickname: "solo".into(),
        camera: "none".into(),
        microphone: "none".into(),
        ..Default::default()
    };
    assert_eq!(settings.server, huddle::settings::EMBEDDED_SERVER);
    // Port 0 here; the app asks for 8787.
    let (embedded, url) = huddle::services::start_embedded_server(&rt, &settings, 0);
    let embedded = embedded.expect("the built-in server started");
    let url = url.unwrap();
    assert_eq!(url, embedded.url());
    let mut ui = app_harness(&rt, settings.clone(), Some(url), Some("Alone".into()));
    ui.until(
        "a call on the built-in server",
        Duration::from_secs(10),
        |h| h.state().app().view == View::Call,
    );
    // With a server configured, nothing is started.
    let configured = Settings {
        server: "ws://127.0.0.1:9".into(),
        ..settings
    };
    assert!(
        huddle::services::start_embedded_server(&rt, &configured, 0)
            .0
            .is_none()
    );
    drop(ui);
    rt.block_on(embedded.shutdown());
}

/// The lobby's device check shows the camera preview, the microphone level (moving with the
/// test tone) and a test sound; typing in the filter narrows the room list.
#[test]
fn the_lobby_checks_devices_and_filters_rooms() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let holders = rt.block_on(async {
        let mut holders = Vec::new();
        for (room, nick) in [("Standup", "sam"), ("Design review", "dee")] {
            let mut c = TestClient::connect(&server.url()).await;
            c.join(room, nick).await;
            holders.push(c);
        }
        holders
    });
    let settings = Settings {
        server: server.url(),
        nickname: "ann".into(),
        camera: "test:640x480".into(),
        microphone: "tone:440".into(),
        speaker: "none".into(),
        ..Default::default()
    };
    let mut ui = app_harness(&rt, settings, None, None);
    ui.until("both rooms", Duration::from_secs(10), |h| {
        h.query_by_label_contains("Standup").is_some()
            && h.query_by_label_contains("Design review").is_some()
    });
    // The preview shows the camera's picture, and the tone moves the level meter.
    ui.until("the camera preview", Duration::from_secs(10), |h| {
        h.query_by_label("Your camera preview").is_some()
            && h.state().app().lobby.preview.has_picture()
    });
    ui.until("the microphone level", Duration::from_secs(10), |h| {
        h.query_by_label("Microphone level").is_some()
            && h.state()
                .app()
                .engine
                .as_ref()
                .is_some_and(|e| e.media().local_level_dbfs() > -30.0)
    });
    ui.harness.get_by_label_contains("Play test sound").click();
    ui.harness.step();
    assert!(ui.harness.state().app().toasts.is_empty());
    // Turning the camera off shows initials instead.
    ui.harness.get_by_label_contains("Turn camera off").click();
    ui.until("the camera off", Duration::from_secs(5), |h| {
        h.query_by_label_contains("Turn camera on").is_some()
            && !h.state().app().lobby.preview.has_picture()
    });

    // The filter keeps the rooms whose names contain what is typed, in any case.
    ui.harness.get_by_label("Filter").focus();
    ui.harness.step();
    ui.harness.get_by_label("Filter").type_text("STAND");
    ui.until("only Standup", Duration::from_secs(5), |h| {
        h.query_by_label_contains("Standup").is_some()
            && h.query_by_label_contains("Design review").is_none()
    });
    ui.harness.get_by_label("Filter").type_text("zzz");
    ui.until("nothing matches", Duration::from_secs(5), |h| {
        h.query_by_label_contains("No room matches").is_some()
    });
    drop(ui);
    drop(holders);
    rt.block_on(server.shutdown());
}

#[test]
fn a_locked_room_asks_for_its_password_in_the_lobby() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    // Someone already holds the room, with a password.
    let mut owner = rt.block_on(async {
        let mut c = TestClient::connect(&server.url()).await;
        let access = huddle::signaling::protocol::JoinAccess {
            password: Some("hunter two".into()),
            ..Default::default()
        };
        let joined = c.join_with("Vault", "owner", access).await;
        assert!(matches!(
            joined,
            huddle::signaling::protocol::ServerMessage::Joined { .. }
        ));
        c
    });
    let settings = without_devices(server.url(), "ann");
    let mut ui = app_harness(&rt, settings, None, None);
    ui.until(
        "the locked room in the list",
        Duration::from_secs(10),
        |h| h.query_by_label_contains("Vault").is_some(),
    );
    let row = ui
        .harness
        .get_by_label_contains("Vault")
        .accesskit_node()
        .label()
        .unwrap_or_default();
    assert!(
        row.contains("1 of 6") && row.contains("password"),
        "row reads {row:?}"
    );

    // Without the password: the lobby says what is missing, and the app stays there.
    ui.double_click("Vault");
    ui.until("the password prompt", Duration::from_secs(10), |h| {
        h.state()
            .app()
            .lobby
            .error
            .as_deref()
            .is_some_and(|e| e.contains("Password field"))
    });
    assert_eq!(ui.harness.state().app().view, View::Lobby);

    // With it: into the call, and the owner sees ann arrive.
    ui.harness.get_by_label("Password").focus();
    ui.harness.step();
    ui.harness.get_by_label("Password").type_text("hunter two");
    ui.harness.step();
    ui.double_click("Vault");
    ui.until("the call", Duration::from_secs(10), |h| {
        h.state().app().view == View::Call
    });
    rt.block_on(async {
        let arrived = owner
            .recv_until(|m| {
                matches!(
                    m,
                    huddle::signaling::protocol::ServerMessage::PeerJoined { .. }
                )
            })
            .await;
        let huddle::signaling::protocol::ServerMessage::PeerJoined { peer, .. } = arrived else {
            unreachable!()
        };
        assert_eq!(peer.nickname, "ann");
    });
    drop(ui);
    rt.block_on(server.shutdown());
}

#[test]
fn a_first_run_without_a_camera_starts_with_it_off_and_no_test_pattern_chosen() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    // A first run: nothing chosen for the camera.
    let settings = Settings {
        server: server.url(),
        nickname: "ada".into(),
        microphone: "none".into(),
        ..Default::default()
    };
    assert!(settings.camera.is_empty());
    let mut ui = app_harness(&rt, settings, None, Some("first day".into()));
    ui.until("the call", Duration::from_secs(10), |h| {
        h.state().app().view == View::Call
    });
    ui.until("the device list", Duration::from_secs(10), |h| {
        h.state().app().devices_listed
    });
    ui.harness.step();
    let app = ui.harness.state().app();
    if app.devices.cameras.is_empty() {
        assert!(!app.local.video_enabled, "no camera, yet the camera is on");
        assert!(app.settings.camera.is_empty(), "{}", app.settings.camera);
    }
    // Whatever the machine has, the test pattern is never picked for the user.
    assert!(!app.settings.camera.starts_with("test:"));
    assert!(ui.harness.query_by_label_contains("Test pattern").is_none());
    drop(ui);
    rt.block_on(server.shutdown());
}

#[test]
fn the_self_view_hides_comes_back_and_moves_and_f11_asks_for_full_screen() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let settings = without_devices(server.url(), "cy");
    let mut ui = app_harness(&rt, settings, None, Some("layout".into()));
    ui.until(
        "the call with the self-view",
        Duration::from_secs(10),
        |h| h.state().app().view == View::Call && h.query_by_label("Your video").is_some(),
    );
    ui.harness.get_by_label("Hide self-view").click();
    ui.until("no self-view", Duration::from_secs(5), |h| {
        h.query_by_label("Your video").is_none() && h.query_by_label("Show self-view").is_some()
    });
    assert_eq!(ui.harness.state().app().self_view, SelfViewPlace::Hidden);
    ui.harness.get_by_label("Show self-view").click();
    ui.until("the self-view again", Duration::from_secs(5), |h| {
        h.query_by_label("Your video").is_some()
    });
    // Its context menu moves it to another corner.
    ui.harness.get_by_label("Your video").click_secondary();
    ui.until("the self-view's menu", Duration::from_secs(5), |h| {
        h.query_by_label("Move to Top left").is_some()
    });
    ui.harness.get_by_label("Move to Top left").click();
    ui.until(
        "the self-view at the top left",
        Duration::from_secs(5),
        |h| h.state().app().self_view == SelfViewPlace::TopLeft,
    );
    assert!(!ui.harness.state().app().fullscreen);
    ui.harness.key_press(egui::Key::F11);
    ui.until("full screen asked for", Duration::from_secs(5), |h| {
        h.state().app().fullscreen
    });
    drop(ui);
    rt.block_on(server.shutdown());
}

#[test]
fn pinning_someone_shows_them_large_in_speaker_view_and_grid_view_evens_out() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let (bob, dee) = rt.block_on(async {
        let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dir.path().into()));
        bob.join("layout", "bob").await;
        let mut dee = TestPeer::start(&url, PeerOptions::new(3, 880.0, dir.path().into()));
        dee.join("layout", "dee").await;
        (bob, dee)
    });
    let settings = without_devices(url, "cy");
    let mut ui = app_harness(&rt, settings, None, Some("layout".into()));
    ui.until("both tiles", Duration::from_secs(15), |h| {
        h.query_by_label_contains("Video of bob").is_some()
            && h.query_by_label_contains("Video of dee").is_some()
    });
    let area = |ui: &Ui<'_>, who: &str| {
        ui.harness
            .get_by_label_contains(&format!("Video of {who}"))
            .rect()
            .area()
    };
    assert!(
        (area(&ui, "bob") - area(&ui, "dee")).abs() < 1.0,
        "the grid"
    );
    // Dee's tile menu pins her: speaker view, dee large, bob in the strip.
    ui.harness
        .get_by_label_contains("Video of dee")
        .click_secondary();
    ui.until("the tile's menu", Duration::from_secs(5), |h| {
        h.query_by_label("Pin dee").is_some()
    });
    ui.harness.get_by_label("Pin dee").click();
    ui.until("speaker view", Duration::from_secs(5), |h| {
        let call = h.state().app().call.as_ref().unwrap();
        call.layout == CallLayout::Speaker && call.pinned.as_ref() == dee.id.as_ref()
    });
    ui.harness.step();
    assert!(
        area(&ui, "dee") > 4.0 * area(&ui, "bob"),
        "dee {} against bob {}",
        area(&ui, "dee"),
        area(&ui, "bob")
    );
    // Back to the grid: the same size again.
    ui.harness.get_by_label("Grid view").click();
    ui.until("the grid", Duration::from_secs(5), |h| {
        h.state().app().call.as_ref().unwrap().layout == CallLayout::Grid
    });
    ui.harness.step();
    assert!((area(&ui, "bob") - area(&ui, "dee")).abs() < 1.0);
    drop(ui);
    rt.block_on(async {
        bob.engine.shutdown().await;
        dee.engine.shutdown().await;
        server.shutdown().await;
    });
}

#[test]
fn a_nickname_the_server_would_refuse_is_explained_in_the_lobby_and_can_be_fixed() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let settings = without_devices(server.url(), "ada (new)");
    let mut ui = app_harness(&rt, settings, None, Some("names".into()));
    ui.until("the explanation", Duration::from_secs(10), |h| {
        h.query_by_label_contains("may not contain '('").is_some()
    });
    assert_eq!(ui.harness.state().app().view, View::Lobby);
    // Fixing the name joins the room the link asked for.
    let field = ui.harness.get_by_label("Nickname");
    field.focus();
    ui.harness.step();
    for _ in 0.."ada (new)".len() {
        ui.harness.key_press(egui::Key::Backspace);
    }
    ui.harness.get_by_label("Nickname").type_text("ada new");
    ui.harness.step();
    ui.until("the join button", Duration::from_secs(10), |h| {
        h.query_by_label("Join names").is_some()
            && h.state().app().connection == huddle::ui::app::Connection::Connected
    });
    ui.harness.get_by_label("Join names").click();
    ui.until("the call", Duration::from_secs(10), |h| {
        h.state().app().view == View::Call
    });
    assert_eq!(
        ui.harness.state().app().call.as_ref().unwrap().me.nickname,
        "ada new"
    );
    drop(ui);
    rt.block_on(server.shutdown());
}

#[test]
fn a_shared_screen_is_shown_large_and_the_layout_comes_back_when_it_ends() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(async {
        let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dir.path().into()));
        bob.join("present", "bob").await;
        bob
    });
    let settings = without_devices(url, "cy");
    let mut ui = app_harness(&rt, settings, None, Some("present".into()));
    ui.until("bob's camera", Duration::from_secs(15), |h| {
        h.query_by_label_contains("Video of bob").is_some()
    });
    assert_eq!(
        ui.harness.state().app().call.as_ref().unwrap().layout,
        CallLayout::Grid
    );
    bob.send(Command::StartScreenShare {
        source: huddle::engine::ScreenSource::Test {
            width: 1280,
            height: 720,
            source_id: 9,
        },
        fps: 10,
        sound: false,
    });
    // The share comes up large in speaker view, bob's camera in the strip below it.
    ui.until("bob's screen", Duration::from_secs(20), |h| {
        h.query_by_label_contains("Screen shared by bob").is_some()
    });
    ui.harness.step();
    assert_eq!(
        ui.harness.state().app().call.as_ref().unwrap().layout,
        CallLayout::Speaker
    );
    let area = |ui: &Ui<'_>, label: &str| ui.harness.get_by_label_contains(label).rect().area();
    assert!(
        area(&ui, "Screen shared by bob") > 4.0 * area(&ui, "Video of bob"),
        "screen {} against camera {}",
        area(&ui, "Screen shared by bob"),
        area(&ui, "Video of bob")
    );
    // When it ends, the share goes and the grid comes back.
    bob.send(Command::StopScreenShare);
    ui.until("the share gone", Duration::from_secs(10), |h| {
        h.query_by_label_contains("Screen shared by bob").is_none()
            && h.state().app().call.as_ref().unwrap().layout == CallLayout::Grid
    });
    drop(ui);
    rt.block_on(async {
        bob.engine.shutdown().await;
        server.shutdown().await;
    });
}

/// The app shares the X display it runs on (a private Xvfb here) from the Share button.
#[test]
fn the_share_button_shares_this_display_and_stop_ends_it() {
    let xvfb =
        huddle::xvfb::Xvfb::start(1280, 720).expect("Xvfb runs (scripts/setup --test installs it)");
    run_inner_test(
        "the_share_button_inner",
        &[("DISPLAY", std::ffi::OsStr::new(&xvfb.display))],
    );
}

#[test]
#[ignore = "run by the_share_button_shares_this_display_and_stop_ends_it with DISPLAY set"]
fn the_share_button_inner() {
    let rt = runtime();
    let server = rt.block_on(start_server(test_config()));
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut bob = rt.block_on(async {
        let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dir.path().into()));
        bob.join("share", "bob").await;
        bob
    });
    let settings = without_devices(url, "cy");
    let mut ui = app_harness(&rt, settings, None, Some("share".into()));
    ui.until("bob's camera", Duration::from_secs(15), |h| {
        h.query_by_label_contains("Video of bob").is_some()
    });
    let me = ui.harness.state().app().my_id.clone().unwrap();
    // Through AccessKit: a pointer click can land before the call view's layout has settled.
    ui.click_in_view("Share screen");
    ui.until("the share menu", Duration::from_secs(5), |h| {
        h.query_by_label("Share entire screen").is_some()
    });
    ui.click_in_view("Share entire screen");
    ui.until("the sharing banner", Duration::from_secs(10), |h| {
        h.query_by_label_contains("You are sharing X11 screen")
            .is_some()
    });
    // Bob receives the app's screen: 1280x720 pictures of this display.
    let (width, height) = rt.block_on(bob.until(Duration::from_secs(30), |p| {
        let s = p.screens.get(&me)?.stats();
        (s.frames_decoded >= 3).then_some((s.width, s.height))
    }));
    assert_eq!((width, height), (1280, 720));
    // The banner's Stop ends it for everyone.
    ui.click_in_view("Stop");
    ui.until("the banner gone", Duration::from_secs(10), |h| {
        h.query_by_label_contains("You are sharing").is_none()
            && h.query_by_label("Share screen").is_some()
    });
    rt.block_on(bob.wait_for(Duration::from_secs(10), |e| match e {
        Event::PeerMediaState {
            peer,
            screen: false,
            ..
        } if peer == &me => Some(()),
        _ => None,
    }));
    drop(ui);
    rt.block_on(async {
        bob.engine.shutdown().await;
        server.shutdown().await;
    });
}

#[test]
fn a_hidden_window_takes_the_smallest_pictures_on_the_sfu_and_the_tiles_sizes_once_shown() {
    let rt = runtime();
    let janus = rt.block_on(common::janus::JanusProcess::start());
    let config = common::janus::server_config(&[&janus], 0);
    let server = rt.block_on(start_server(config));
    let url = server.url();
    // Janus (libnice) offers no loopback candidates: everyone binds the machine's addresses.
    let any = vec!["0.0.0.0:0".to_string()];
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = rt.block_on(async {
        let mut options = PeerOptions::new(2, 660.0, bob_dir.path().into());
        options.bind_addrs = Some(any.clone());
        let mut bob = TestPeer::start(&url, options);
        bob.join("hidden", "bob").await;
        bob
    });
    let settings = Settings {
        server: url.clone(),
        nickname: "ann".into(),
        camera: "test:640x480".into(),
        microphone: "tone:440".into(),
        ..Default::default()
    };
    let services = AppServices {
        runtime: rt.handle().clone(),
        settings_path: None,
        embedded_url: None,
        speaker_override: Some(Box::new(|| Box::new(NullSink::new()))),
        bind_addrs: any,
        discover_lan: false,
        read_stamps: false,
        notifier: Notifier::none(),
    };
    let mut ui = harness_for(services, settings, Some("hidden".into()));
    // Bob's picture, in the layer its tile needs: wider than the smallest (the 1180 px
    // window gives one remote tile far more than 200 px).
    let width = |h: &Harness<'_, TestApp>| {
        h.state()
            .app()
            .call
            .as_ref()
            .and_then(|c| c.peers.first())
            .map_or(0, |p| p.tile.decoded_width())
    };
    ui.until("bob at his tile's size", Duration::from_secs(30), |h| {
        width(h) > 160
    });
    // Minimised: the smallest layer, still moving.
    ui.harness.state_mut().app_mut().set_window_hidden(true);
    ui.until("bob at the smallest size", Duration::from_secs(20), |h| {
        width(h) == 160
    });
    let decoded = |h: &Harness<'_, TestApp>| {
        h.state().app().call.as_ref().unwrap().peers[0]
            .tile
            .frames_decoded()
    };
    let before = decoded(&ui.harness);
    ui.until("bob still moving", Duration::from_secs(10), |h| {
        decoded(h) >= before + 10
    });
    // Shown again: the tile's size again.
    ui.harness.state_mut().app_mut().set_window_hidden(false);
    ui.until(
        "bob at his tile's size again",
        Duration::from_secs(20),
        |h| width(h) > 160,
    );
    rt.block_on(bob.engine.shutdown());
    drop(ui);
    rt.block_on(server.shutdown());
}

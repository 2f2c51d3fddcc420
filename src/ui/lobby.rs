//! The lobby: server and nickname (remembered), the live list of rooms with head counts,
//! capacity and a lock for password rooms, filtered by typing, double-click (or Enter on a
//! selected room) to join, a field to create a room, connection or join problems shown plainly
//! with a retry; beside it a device check (camera preview, microphone level, a test sound for the
//! speaker, the three device pickers).

use super::app::{Connection, HuddleApp};
use super::controls::icon_text_button;
use egui_material_icons::icons::{
    ICON_LOCK, ICON_MIC, ICON_MIC_OFF, ICON_SETTINGS, ICON_VIDEOCAM, ICON_VIDEOCAM_OFF,
    ICON_VOLUME_UP,
};

const LOBBY_PREVIEW_PERIOD: std::time::Duration = std::time::Duration::from_millis(66);
const LOBBY_METER_PERIOD: std::time::Duration = std::time::Duration::from_millis(200);

/// The server and nickname fields: wide enough for `wss://huddle.example.org:8787`.
const FIELD: [f32; 2] = [320.0, 22.0];

pub fn lobby_ui(app: &mut HuddleApp, ui: &mut egui::Ui) {
    egui::Panel::right("device-check")
        .resizable(false)
        .exact_size(360.0)
        .show(ui, |ui| device_check(app, ui));
    egui::CentralPanel::default().show(ui, |ui| {
        ui.add_space(8.0);
        ui.horizontal(|ui| {
            ui.heading("Huddle");
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let settings = icon_text_button(ui, ICON_SETTINGS, "Settings", false)
                    .on_hover_text(super::controls::settings_hint(ui.ctx()));
                if settings.clicked() {
                    app.toggle_settings();
                }
            });
        });
        ui.add_space(8.0);
        egui::Grid::new("lobby-fields")
            .num_columns(3)
            .spacing([12.0, 8.0])
            .show(ui, |ui| {
                let label = ui.label("Server");
                // Sized, not `desired_width`: inside a grid a text field gets only the width
                // its column had in the previous pass, which on the first was a few letters.
                let server = ui
                    .add_sized(
                        FIELD,
                        egui::TextEdit::singleline(&mut app.lobby.server_field)
                            .hint_text("embedded, or ws://host:8787"),
                    )
                    .labelled_by(label.id);
                let enter = server.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                if ui.button("Connect").clicked() || enter {
                    let wanted = app.lobby.server_field.clone();
                    app.use_server(&wanted);
                }
                ui.end_row();

                let label = ui.label("Nickname");
                let nick = ui
                    .add_sized(
                        FIELD,
                        egui::TextEdit::singleline(&mut app.lobby.nickname_field)
                            .hint_text("how others see you"),
                    )
                    .labelled_by(label.id);
                // Arrived through an invite link: the nickname is all that is missing.
                if let Some(room) = app.pending_join.clone() {
                    let enter = nick.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                    let ready = !app.lobby.nickname_field.trim().is_empty()
                        && app.connection == Connection::Connected;
                    if ui
                        .add_enabled(ready, egui::Button::new(format!("Join {room}")))
                        .clicked()
                        || (enter && ready)
                    {
                        app.pending_join = None;
                        app.join(&room);
                    }
                } else {
                    ui.label("");
                }
                ui.end_row();
            });
        ui.add_space(6.0);
        connection_line(app, ui);
        if let Some(err) = app.lobby.error.clone() {
            ui.colored_label(egui::Color32::from_rgb(230, 110, 90), err);
        }
        ui.separator();
        ui.horizontal(|ui| {
            ui.heading("Rooms");
            ui.add_space(12.0);
            let label = ui.label("Filter");
            ui.add(
                egui::TextEdit::singleline(&mut app.lobby.filter)
                    .hint_text("type part of a name")
                    .desired_width(200.0),
            )
            .labelled_by(label.id);
        });
        rooms_ui(app, ui);
        lan_ui(app, ui);
        ui.add_space(8.0);
        ui.horizontal(|ui| {
            let label = ui.label("New room");
            let field = ui
                .add(
                    egui::TextEdit::singleline(&mut app.lobby.new_room)
                        .hint_text("room name")
                        .desired_width(320.0),
                )
                .labelled_by(label.id);
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            ui.checkbox(&mut app.lobby.private_new_room, "Private")
                .on_hover_text("Keep the room out of the public list; share an invite link");
            ui.checkbox(&mut app.lobby.large_new_room, "Large")
                .on_hover_text(
                    "For many people: everyone's video goes through the server (if it has an SFU)",
                );
            let can =
                !app.lobby.new_room.trim().is_empty() && app.connection == Connection::Connected;
            if (ui
                .add_enabled(can, egui::Button::new("Create and join"))
                .clicked()
                || (enter && can))
                && app.lobby.joining.is_none()
            {
                let room = app.lobby.new_room.trim().to_owned();
                let (private, large) = (app.lobby.private_new_room, app.lobby.large_new_room);
                app.join_with(&room, private, large);
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Password");
            ui.add(
                egui::TextEdit::singleline(&mut app.lobby.password_field)
                    .password(true)
                    .hint_text("for locked rooms, or to lock a new one")
                    .desired_width(320.0),
            )
            .labelled_by(label.id);
        });
    });
}

fn connection_line(app: &mut HuddleApp, ui: &mut egui::Ui) {
    ui.horizontal(|ui| match app.connection.clone() {
        Connection::Connecting => {
            ui.label(format!("Connecting to {}…", app.server_url()));
        }
        Connection::Connected => {
            ui.label(format!("Connected to {}", app.server_url()));
        }
        Connection::Disconnected { reason, retry_in } => {
            let text = match retry_in {
                Some(d) => format!(
                    "Not connected: {reason}. Retrying in {:.0} s.",
                    d.as_secs_f32().ceil()
                ),
                None => format!("Not connected: {reason}."),
            };
            ui.colored_label(egui::Color32::from_rgb(230, 110, 90), text);
            if ui.button("Retry").clicked() {
                app.connect();
            }
        }
    });
}

fn rooms_ui(app: &mut HuddleApp, ui: &mut egui::Ui) {
    if app.lobby.rooms.is_empty() {
        let text = match app.connection {
            Connection::Connected => {
                "No public rooms on this server yet. Type a name under New room below to start \
                 one; people who join the server will see it here."
            }
            _ => "The rooms appear here once the server is connected.",
        };
        ui.label(text);
        return;
    }
    let filter = app.lobby.filter.trim().to_lowercase();
    let shown: Vec<(&String, &crate::engine::RoomInfo)> = app
        .lobby
        .rooms
        .iter()
        .filter(|(key, _)| key.contains(&filter))
        .collect();
    if shown.is_empty() {
        ui.label(format!(
            "No room matches \u{201c}{}\u{201d}.",
            app.lobby.filter.trim()
        ));
        return;
    }
    let mut join: Option<String> = None;
    egui::ScrollArea::vertical()
        .id_salt("rooms")
        .max_height(ui.available_height() - 60.0)
        .auto_shrink([false, true])
        .show(ui, |ui| {
            for (key, room) in shown {
                let selected = app.lobby.selected.as_deref() == Some(key.as_str());
                let full = room.people >= room.capacity;
                let text = format!(
                    "{}{}  —  {} of {}{}",
                    if room.locked {
                        format!("{} ", ICON_LOCK.codepoint)
                    } else {
                        String::new()
                    },
                    room.name,
                    room.people,
                    room.capacity,
                    if full { " (full)" } else { "" },
                );
                let response = ui.add(
                    egui::Button::selectable(selected, text)
                        .min_size(egui::vec2(ui.available_width(), 26.0)),
                );
                // Read out without the icon's private-use character.
                let spoken = format!(
                    "{}, {} of {}{}{}",
                    room.name,
                    room.people,
                    room.capacity,
                    if full { ", full" } else { "" },
                    if room.locked {
                        ", needs a password"
                    } else {
                        ""
                    }
                );
                response.widget_info(|| {
                    egui::WidgetInfo::selected(egui::Role::Button, true, selected, &spoken)
                });
                let response = if room.locked {
                    response.on_hover_text("Needs the room's password (the Password field below)")
                } else {
                    response
                };
                if response.clicked() {
                    app.lobby.selected = Some(key.clone());
                }
                if response.double_clicked() {
                    join = Some(room.name.clone());
                }
            }
        });
    let enter =
        ui.input(|i| i.key_pressed(egui::Key::Enter)) && !ui.ctx().egui_wants_keyboard_input();
    if enter
        && join.is_none()
        && let Some(sel) = &app.lobby.selected
        && let Some(room) = app.lobby.rooms.get(sel)
    {
        join = Some(room.name.clone());
    }
    if let Some(room) = join
        && app.lobby.joining.is_none()
    {
        app.join(&room);
    }
    if let Some(room) = &app.lobby.joining {
        ui.label(format!("Joining {room}…"));
    }
}

/// Rooms other Huddles host on this network, and hosting our own.
fn lan_ui(app: &mut HuddleApp, ui: &mut egui::Ui) {
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        ui.strong("On this network");
        match &app.hosting {
            Some(h) => {
                ui.label(format!("You are hosting at {}", h.lan_url));
            }
            None if app.hosting_pending => {
                ui.label("Starting…");
            }
            None => {
                if ui
                    .button("Host on this network")
                    .on_hover_text("Let people on this network join your rooms, with no server")
                    .clicked()
                {
                    app.host_on_network();
                }
            }
        }
    });
    let mut join: Option<crate::services::LanRoom> = None;
    let own = app.hosting.as_ref().map(|h| h.lan_url.clone());
    for room in app
        .lan_rooms
        .iter()
        .filter(|r| Some(&r.server_url) != own.as_ref())
    {
        let text = format!(
            "{}  —  {} of {}  ({})",
            room.room, room.people, room.capacity, room.host
        );
        let response = ui.add_sized(
            [ui.available_width(), 22.0],
            egui::Button::selectable(false, text),
        );
        if response.double_clicked() {
            join = Some(room.clone());
        }
    }
    if let Some(room) = join {
        app.settings.server = room.server_url.clone();
        app.lobby.server_field = room.server_url.clone();
        app.connect();
        app.pending_join = Some(room.room);
    }
}

/// Camera preview (initials when off), microphone level, a test sound for the speaker and the
/// device pickers, so a person knows their devices work before joining.
fn device_check(app: &mut HuddleApp, ui: &mut egui::Ui) {
    ui.add_space(8.0);
    ui.heading("Check your devices");
    ui.add_space(6.0);
    let frame = app
        .engine
        .as_ref()
        .filter(|_| app.local.video_enabled)
        .and_then(|e| e.media().self_view());
    let ctx = ui.ctx().clone();
    app.lobby.preview.refresh_from(&ctx, frame);
    let width = ui.available_width();
    let (rect, _) = ui.allocate_exact_size(egui::vec2(width, width * 0.75), egui::Sense::hover());
    let nickname = match app.lobby.nickname_field.trim() {
        "" => "You",
        name => name,
    };
    super::call::draw_preview(
        ui,
        rect,
        &app.lobby.preview,
        nickname,
        app.local.video_enabled,
        app.local.audio_muted,
    );
    // The preview and the meter move, so the lobby keeps drawing; at 15 and 5 passes a second,
    // not the camera's 30: under a software rasteriser every pass paints the whole window
    // (the lobby idled at 0.69 core with a 30 fps preview, 0.23 with a 10 Hz meter alone).
    ui.ctx().request_repaint_after(if app.local.video_enabled {
        LOBBY_PREVIEW_PERIOD
    } else {
        LOBBY_METER_PERIOD
    });
    ui.add_space(6.0);
    ui.horizontal(|ui| {
        let on = app.local.video_enabled;
        let (icon, label) = if on {
            (ICON_VIDEOCAM, "Turn camera off")
        } else {
            (ICON_VIDEOCAM_OFF, "Turn camera on")
        };
        if icon_text_button(ui, icon, label, !on).clicked() {
            app.set_camera_on(!on);
        }
        let muted = app.local.audio_muted;
        let (icon, label) = if muted {
            (ICON_MIC_OFF, "Unmute")
        } else {
            (ICON_MIC, "Mute")
        };
        if icon_text_button(ui, icon, label, muted).clicked() {
            app.set_muted(!muted);
        }
    });
    ui.add_space(6.0);
    let (dbfs, fill) = app.mic_level();
    ui.horizontal(|ui| {
        ui.label("Microphone");
        ui.add(
            egui::ProgressBar::new(fill)
                .desired_width(ui.available_width())
                .fill(egui::Color32::from_rgb(60, 170, 90)),
        )
        .on_hover_text(format!("{dbfs:.0} dB: speak and watch it move"))
        .widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::ProgressIndicator, true, "Microphone level")
        });
    });
    ui.add_space(4.0);
    if icon_text_button(ui, ICON_VOLUME_UP, "Play test sound", false)
        .on_hover_text("A short chime through the chosen speaker")
        .clicked()
    {
        app.play_test_sound();
    }
    ui.add_space(8.0);
    egui::Grid::new("lobby-devices")
        .num_columns(2)
        .spacing([8.0, 6.0])
        .show(ui, |ui| super::controls::device_pickers(app, ui));
}

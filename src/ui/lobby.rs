//! The lobby: server and nickname (remembered), the live list of rooms with head counts,
//! double-click (or Enter on a selected room) to join, a field to create a room, and connection
//! or join problems shown plainly with a retry.

use super::app::{Connection, HuddleApp};

pub fn lobby_ui(app: &mut HuddleApp, ui: &mut egui::Ui) {
    egui::CentralPanel::default().show(ui, |ui| {
        ui.add_space(8.0);
        ui.heading("Huddle");
        ui.add_space(8.0);
        egui::Grid::new("lobby-fields")
            .num_columns(3)
            .spacing([12.0, 8.0])
            .show(ui, |ui| {
                let label = ui.label("Server");
                let server = ui
                    .add(
                        egui::TextEdit::singleline(&mut app.lobby.server_field)
                            .hint_text("embedded, or ws://host:8787")
                            .desired_width(280.0),
                    )
                    .labelled_by(label.id);
                let enter = server.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                if ui.button("Connect").clicked() || enter {
                    let wanted = app.lobby.server_field.trim().to_owned();
                    app.settings.server = if wanted.is_empty() {
                        crate::settings::EMBEDDED_SERVER.to_owned()
                    } else {
                        wanted
                    };
                    app.save_settings();
                    app.connect();
                }
                ui.end_row();

                let label = ui.label("Nickname");
                let nick = ui
                    .add(
                        egui::TextEdit::singleline(&mut app.lobby.nickname_field)
                            .hint_text("how others see you")
                            .desired_width(280.0),
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
        ui.heading("Rooms");
        rooms_ui(app, ui);
        lan_ui(app, ui);
        ui.add_space(8.0);
        ui.horizontal(|ui| {
            let label = ui.label("New room");
            let field = ui
                .add(
                    egui::TextEdit::singleline(&mut app.lobby.new_room)
                        .hint_text("room name")
                        .desired_width(220.0),
                )
                .labelled_by(label.id);
            let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            ui.checkbox(&mut app.lobby.private_new_room, "Private")
                .on_hover_text("Keep the room out of the public list; share an invite link");
            let can =
                !app.lobby.new_room.trim().is_empty() && app.connection == Connection::Connected;
            if (ui
                .add_enabled(can, egui::Button::new("Create and join"))
                .clicked()
                || (enter && can))
                && app.lobby.joining.is_none()
            {
                let room = app.lobby.new_room.trim().to_owned();
                let private = app.lobby.private_new_room;
                app.join_with(&room, private);
            }
        });
        ui.horizontal(|ui| {
            let label = ui.label("Password");
            ui.add(
                egui::TextEdit::singleline(&mut app.lobby.password_field)
                    .password(true)
                    .hint_text("for locked rooms, or to lock a new one")
                    .desired_width(220.0),
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
        ui.label("No rooms yet. Create one below.");
        return;
    }
    let mut join: Option<String> = None;
    egui::ScrollArea::vertical()
        .id_salt("rooms")
        .max_height(ui.available_height() - 60.0)
        .auto_shrink([false, true])
        .show(ui, |ui| {
            for (key, room) in &app.lobby.rooms {
                let selected = app.lobby.selected.as_deref() == Some(key.as_str());
                let full = room.people >= room.capacity;
                // Words, not a padlock emoji: egui's built-in fonts have no glyph for it.
                let text = format!(
                    "{}  —  {} of {}{}{}",
                    room.name,
                    room.people,
                    room.capacity,
                    if full { " (full)" } else { "" },
                    if room.locked { "  · password" } else { "" }
                );
                let response = ui.add_sized(
                    [ui.available_width(), 24.0],
                    egui::Button::selectable(selected, text),
                );
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

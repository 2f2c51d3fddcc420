//! The settings window: nickname (changeable during a call), server, download folder, who may
//! send files without asking and up to what size, trusted certificate, devices, audio
//! processing, theme, and the keyboard shortcuts. Changes apply at once and are saved; the
//! window's size and position, like the main window's, are kept by eframe. Reads and changes
//! `HuddleApp` only; imports nothing below `engine`.

use super::app::{HuddleApp, SettingsDraft};
use super::controls::{self, CAMERA, HAND, MUTE, PUSH_TO_TALK, SETTINGS};
use crate::settings::Theme;

/// Every keyboard shortcut, as the window lists them.
pub fn shortcuts(ctx: &egui::Context) -> Vec<(String, &'static str)> {
    let name = |s: egui::KeyboardShortcut| ctx.format_shortcut(&s);
    vec![
        (name(MUTE), "Mute or unmute"),
        (name(CAMERA), "Camera on or off"),
        (name(HAND), "Raise or lower your hand"),
        (
            format!("Hold {}", PUSH_TO_TALK.name()),
            "Speak while muted (push to talk)",
        ),
        ("F11".into(), "Full screen"),
        ("Double-click a tile".into(), "Full screen"),
        ("Enter".into(), "Send the chat message"),
        (name(SETTINGS), "Open or close these settings"),
    ]
}

pub fn settings_window(app: &mut HuddleApp, ctx: &egui::Context) {
    let Some(mut draft) = app.settings_draft.take() else {
        return;
    };
    let mut open = true;
    egui::Window::new("Settings")
        .open(&mut open)
        .collapsible(false)
        .resizable(true)
        .default_width(480.0)
        .default_height(560.0)
        .show(ctx, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| contents(app, &mut draft, ui));
        });
    if open {
        app.settings_draft = Some(draft);
    }
}

fn contents(app: &mut HuddleApp, draft: &mut SettingsDraft, ui: &mut egui::Ui) {
    let in_call = app.call.is_some();
    ui.heading("You");
    ui.horizontal(|ui| {
        let label = ui.label("Nickname");
        let field = ui
            .add(egui::TextEdit::singleline(&mut draft.nickname).desired_width(220.0))
            .labelled_by(label.id);
        let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if field.changed() {
            draft.nickname_error = None;
        }
        let changed = draft.nickname.trim() != app.current_nickname();
        if (ui
            .add_enabled(changed, egui::Button::new("Change"))
            .clicked()
            || (enter && changed))
            && let Err(why) = app.change_nickname(&draft.nickname)
        {
            draft.nickname_error = Some(why);
        }
    });
    if let Some(why) = &draft.nickname_error {
        ui.colored_label(egui::Color32::from_rgb(230, 110, 90), why);
    }

    ui.separator();
    ui.heading("Server");
    ui.horizontal(|ui| {
        let label = ui.label("Address");
        ui.add_enabled(
            !in_call,
            egui::TextEdit::singleline(&mut draft.server)
                .hint_text("embedded, or ws://host:8787")
                .desired_width(260.0),
        )
        .labelled_by(label.id);
        if ui
            .add_enabled(!in_call, egui::Button::new("Connect"))
            .on_disabled_hover_text("Leave the call to change servers")
            .clicked()
        {
            app.use_server(&draft.server);
        }
    });
    ui.horizontal(|ui| {
        ui.label("Trusted certificate");
        match app.settings.trusted_cert.clone() {
            Some(path) => {
                ui.monospace(path.display().to_string());
                if ui.button("Clear").clicked() {
                    app.settings.trusted_cert = None;
                    app.save_settings();
                }
            }
            None => {
                ui.weak("none (the system's roots only)");
            }
        }
        if ui.button("Choose…").clicked() {
            app.pick_trusted_certificate();
        }
    });
    ui.weak("Used for wss:// servers from the next connection.");

    ui.separator();
    ui.heading("Files");
    ui.horizontal(|ui| {
        ui.label("Download folder");
        ui.monospace(app.settings.download_dir().display().to_string());
    });
    ui.horizontal(|ui| {
        if ui.button("Choose…").clicked() {
            app.pick_download_folder();
        }
        if ui.button("Open").clicked() {
            app.open_download_folder();
        }
    });
    let (mut everyone, mut up_to) = (
        app.settings.auto_accept_files,
        app.settings.auto_accept_max_mib,
    );
    ui.label("Who may send you files without asking");
    ui.radio_value(&mut everyone, false, "Nobody: ask me every time");
    ui.radio_value(&mut everyone, true, "Everyone in the room");
    ui.add_enabled_ui(everyone, |ui| {
        ui.horizontal(|ui| {
            let label = ui.label("Largest file accepted without asking");
            ui.add(
                egui::DragValue::new(&mut up_to)
                    .range(1..=app.settings.max_incoming_mib.max(1))
                    .suffix(" MB"),
            )
            .labelled_by(label.id);
        });
    });
    if (everyone, up_to)
        != (
            app.settings.auto_accept_files,
            app.settings.auto_accept_max_mib,
        )
    {
        app.set_auto_accept(everyone, up_to);
    }

    ui.separator();
    ui.heading("Devices");
    egui::Grid::new("settings-devices")
        .num_columns(2)
        .spacing([12.0, 8.0])
        .show(ui, |ui| controls::device_pickers(app, ui));
    ui.label("Audio processing");
    controls::processing_toggles(app, ui);

    ui.separator();
    ui.heading("Appearance");
    let mut theme = app.settings.theme;
    ui.horizontal(|ui| {
        ui.radio_value(&mut theme, Theme::FollowSystem, "Follow the system");
        ui.radio_value(&mut theme, Theme::Dark, "Dark");
        ui.radio_value(&mut theme, Theme::Light, "Light");
    });
    if theme != app.settings.theme {
        app.set_theme(theme);
    }

    ui.separator();
    ui.heading("Keyboard shortcuts");
    egui::Grid::new("settings-shortcuts")
        .num_columns(2)
        .spacing([16.0, 4.0])
        .striped(true)
        .show(ui, |ui| {
            for (keys, what) in shortcuts(ui.ctx()) {
                ui.monospace(keys);
                ui.label(what);
                ui.end_row();
            }
        });
}

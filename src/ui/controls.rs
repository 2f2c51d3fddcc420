//! The call's control bar (icon buttons for microphone, camera, hand, reactions, chat, people,
//! files, devices, settings and leave, centred, with tooltips that name their shortcuts) and the
//! participants list. Reads and changes `HuddleApp` only; imports nothing below `engine`.

use super::app::{CallState, HuddleApp};
use crate::engine::REACTIONS;
use crate::services::devices;
use egui_material_icons::MaterialIcon;
use egui_material_icons::icons::{
    ICON_ADD_REACTION, ICON_ATTACH_FILE, ICON_CALL_END, ICON_CHAT, ICON_GROUP, ICON_MIC,
    ICON_MIC_OFF, ICON_PAN_TOOL, ICON_SCREEN_SHARE, ICON_SETTINGS, ICON_STOP_SCREEN_SHARE,
    ICON_TUNE, ICON_VIDEOCAM, ICON_VIDEOCAM_OFF,
};

pub const MUTE: egui::KeyboardShortcut =
    egui::KeyboardShortcut::new(egui::Modifiers::CTRL, egui::Key::D);
pub const CAMERA: egui::KeyboardShortcut =
    egui::KeyboardShortcut::new(egui::Modifiers::CTRL, egui::Key::E);
pub const HAND: egui::KeyboardShortcut =
    egui::KeyboardShortcut::new(egui::Modifiers::CTRL, egui::Key::H);
/// Opens or closes the settings window (the usual shortcut for preferences).
pub const SETTINGS: egui::KeyboardShortcut =
    egui::KeyboardShortcut::new(egui::Modifiers::CTRL, egui::Key::Comma);
/// Held while muted, speaks (push to talk).
pub const PUSH_TO_TALK: egui::Key = egui::Key::Space;

/// Red for "off" (muted, camera off) and for leaving.
const OFF_FILL: egui::Color32 = egui::Color32::from_rgb(190, 55, 50);
const LEAVE_FILL: egui::Color32 = egui::Color32::from_rgb(205, 45, 40);
/// A raised hand and the hand badge on tiles.
pub const HAND_COLOUR: egui::Color32 = egui::Color32::from_rgb(245, 190, 60);

#[derive(Clone, Copy, PartialEq)]
enum Look {
    Plain,
    /// Something the user turned off: red, white icon.
    Off,
    /// Something the user turned on (hand up, a panel open).
    On,
}

/// An icon button; `label` is what screen readers (and tests) call it, `hint` its tooltip.
fn control_button(
    ui: &mut egui::Ui,
    icon: MaterialIcon,
    label: &str,
    hint: &str,
    look: Look,
) -> egui::Response {
    let mut text = icon.rich_text().size(22.0);
    if look == Look::Off {
        text = text.color(egui::Color32::WHITE);
    }
    let mut button = egui::Button::new(text)
        .min_size(egui::vec2(46.0, 40.0))
        .corner_radius(20.0)
        .selected(look == Look::On);
    if look == Look::Off {
        button = button.fill(OFF_FILL);
    }
    let response = ui.add(button).on_hover_text(hint);
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, label));
    response
}

/// The settings button's tooltip, in the lobby and in the call bar.
pub fn settings_hint(ctx: &egui::Context) -> String {
    format!(
        "Nickname, files, theme, shortcuts and more ({})",
        ctx.format_shortcut(&SETTINGS)
    )
}

/// A button with an icon before its text; screen readers hear the text alone (the icon is a
/// private-use character).
pub fn icon_text_button(
    ui: &mut egui::Ui,
    icon: MaterialIcon,
    text: &str,
    selected: bool,
) -> egui::Response {
    let response =
        ui.add(egui::Button::new(format!("{}  {text}", icon.codepoint)).selected(selected));
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, text));
    response
}

/// Lays `add` out in a row centred in the available width. The row's width is known only after
/// it is drawn, so it is remembered for the next pass (and one more pass is asked for when it
/// changed).
fn centred_row(ui: &mut egui::Ui, add: impl FnOnce(&mut egui::Ui)) {
    let id = egui::Id::unique("centred-row-width");
    let known: f32 = ui.ctx().data(|d| d.get_temp(id)).unwrap_or(0.0);
    ui.horizontal(|ui| {
        ui.add_space(((ui.available_width() - known) / 2.0).max(0.0));
        let start = ui.cursor().min.x;
        add(ui);
        let width = ui.min_rect().max.x - start;
        if (width - known).abs() > 0.5 {
            ui.ctx().data_mut(|d| d.insert_temp(id, width));
            ui.ctx().request_repaint();
        }
    });
}

pub fn controls_bar(app: &mut HuddleApp, ui: &mut egui::Ui) {
    egui::Panel::bottom("call-controls")
        .frame(super::call::unfilled(egui::Frame::side_top_panel(
            ui.style(),
        )))
        .show(ui, |ui| {
            ui.add_space(6.0);
            centred_row(ui, |ui| {
                microphone_and_camera(app, ui);
                share_button(app, ui);
                ui.separator();
                hand_and_reactions(app, ui);
                ui.separator();
                panels_and_files(app, ui);
                devices_button(app, ui);
                if control_button(
                    ui,
                    ICON_SETTINGS,
                    "Settings",
                    &settings_hint(ui.ctx()),
                    if app.settings_draft.is_some() {
                        Look::On
                    } else {
                        Look::Plain
                    },
                )
                .clicked()
                {
                    app.toggle_settings();
                }
                ui.separator();
                let leave = egui::Button::new(
                    egui::RichText::new(format!("{}  Leave", ICON_CALL_END.codepoint))
                        .size(17.0)
                        .color(egui::Color32::WHITE),
                )
                .min_size(egui::vec2(96.0, 40.0))
                .corner_radius(20.0)
                .fill(LEAVE_FILL);
                let response = ui.add(leave).on_hover_text("Leave the call");
                response
                    .widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, "Leave"));
                if response.clicked() {
                    app.leave();
                }
            });
            ui.add_space(6.0);
        });
}

fn microphone_and_camera(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let muted = app.local.audio_muted;
    let (icon, label, look) = if app.push_to_talk {
        (ICON_MIC, "Unmute", Look::On)
    } else if muted {
        (ICON_MIC_OFF, "Unmute", Look::Off)
    } else {
        (ICON_MIC, "Mute", Look::Plain)
    };
    let hint = if app.push_to_talk {
        "Talking while Space is held".to_owned()
    } else if muted {
        format!(
            "Unmute ({}) · hold Space to talk",
            ui.ctx().format_shortcut(&MUTE)
        )
    } else {
        format!("Mute ({})", ui.ctx().format_shortcut(&MUTE))
    };
    if control_button(ui, icon, label, &hint, look).clicked() {
        app.set_muted(!muted);
    }
    level_meter(app, ui);
    let on = app.local.video_enabled;
    let (icon, label, look, hint) = if on {
        (
            ICON_VIDEOCAM,
            "Camera off",
            Look::Plain,
            "Turn the camera off",
        )
    } else {
        (
            ICON_VIDEOCAM_OFF,
            "Camera on",
            Look::Off,
            "Turn the camera on",
        )
    };
    let hint = format!("{hint} ({})", ui.ctx().format_shortcut(&CAMERA));
    if control_button(ui, icon, label, &hint, look).clicked() {
        app.set_camera_on(!on);
    }
}

/// Share the screen (a menu: as it is, or smooth motion), or stop sharing.
fn share_button(app: &mut HuddleApp, ui: &mut egui::Ui) {
    if app.local.screen_share.is_some() {
        if control_button(
            ui,
            ICON_STOP_SCREEN_SHARE,
            "Stop sharing",
            "Stop sharing your screen",
            Look::On,
        )
        .clicked()
        {
            app.stop_screen_share();
        }
        return;
    }
    let response = control_button(
        ui,
        ICON_SCREEN_SHARE,
        "Share screen",
        "Share your screen or a window",
        Look::Plain,
    );
    if response.clicked() {
        app.list_screens();
    }
    egui::Popup::menu(&response)
        .align(egui::RectAlign::TOP)
        .show(|ui| {
            // On Wayland the desktop's own dialog (the portal) chooses a screen or a window.
            let by_desktop =
                crate::engine::ScreenSource::for_this_desktop().is_chosen_by_the_desktop();
            ui.checkbox(&mut app.share_sound, "Share computer sound")
                .on_hover_text(
                    "What this computer plays goes with the screen. The others' voices that \
                     Huddle plays are taken out of it, so nobody hears themselves back",
                );
            ui.separator();
            let (still, smooth) = if by_desktop {
                (
                    "Choose a screen or window…",
                    "Choose a screen or window, smooth motion (video)…",
                )
            } else {
                (
                    "Share entire screen",
                    "Share entire screen, smooth motion (video)",
                )
            };
            let still = ui.button(still);
            let still = if by_desktop {
                still.on_hover_text("Your desktop asks what to share")
            } else {
                still
            };
            if still.clicked() {
                app.start_screen_share(crate::engine::DEFAULT_SHARE_FPS);
            }
            if ui
                .button(smooth)
                .on_hover_text("Up to 30 frames a second; text is less sharp on a slow link")
                .clicked()
            {
                app.start_screen_share(crate::engine::SMOOTH_SHARE_FPS);
            }
            window_choices(app, ui);
        });
}

/// The display's monitors (when it has more than one), then its windows, each with its
/// thumbnail; a click shares it.
fn window_choices(app: &mut HuddleApp, ui: &mut egui::Ui) {
    use crate::engine::ScreenSource;
    let mut chosen = None;
    type Belongs = fn(&ScreenSource) -> bool;
    let sections: [(&str, Belongs); 2] = [
        ("Or one monitor:", |s| {
            matches!(s, ScreenSource::X11Monitor { .. })
        }),
        ("Or a window:", |s| {
            matches!(
                s,
                ScreenSource::X11 {
                    window: Some(_),
                    ..
                }
            )
        }),
    ];
    for (heading, belongs) in sections {
        let listed: Vec<_> = app
            .screen_choices
            .iter()
            .filter(|(c, _)| belongs(&c.source))
            .collect();
        if listed.is_empty() {
            continue;
        }
        ui.separator();
        ui.label(heading);
        egui::ScrollArea::vertical()
            .id_salt(heading)
            .max_height(320.0)
            .show(ui, |ui| {
                for (choice, texture) in listed {
                    ui.horizontal(|ui| {
                        if let Some(t) = texture {
                            let size = t.size_vec2() * (96.0 / t.size_vec2().x.max(1.0));
                            ui.add(egui::Image::new((t.id(), size)));
                        }
                        let response = ui.button(format!("Share {}", choice.title));
                        if response.clicked() {
                            chosen = Some(choice.source.clone());
                        }
                    });
                }
            });
    }
    if let Some(source) = chosen {
        app.share(source, crate::engine::DEFAULT_SHARE_FPS);
    }
}

/// A thin vertical bar showing the microphone's level (measured even while muted).
fn level_meter(app: &HuddleApp, ui: &mut egui::Ui) {
    let (dbfs, fill) = app.mic_level();
    let (rect, response) = ui.allocate_exact_size(egui::vec2(6.0, 32.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, egui::Color32::from_gray(60));
    let lit = egui::Rect::from_min_max(
        egui::pos2(rect.min.x, rect.max.y - rect.height() * fill),
        rect.max,
    );
    painter.rect_filled(lit, 3.0, egui::Color32::from_rgb(80, 210, 110));
    response
        .on_hover_text(format!("Your microphone: {dbfs:.0} dB"))
        .widget_info(|| {
            egui::WidgetInfo::labeled(egui::Role::ProgressIndicator, true, "Microphone level")
        });
}

fn hand_and_reactions(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let raised = app
        .call
        .as_ref()
        .is_some_and(|c| c.me.hand_raised_at_ms.is_some());
    let (label, hint) = if raised {
        ("Lower hand", "Lower your hand")
    } else {
        ("Raise hand", "Raise your hand")
    };
    let hint = format!("{hint} ({})", ui.ctx().format_shortcut(&HAND));
    let look = if raised { Look::On } else { Look::Plain };
    if control_button(ui, ICON_PAN_TOOL, label, &hint, look).clicked() {
        app.set_hand_raised(!raised);
    }
    let react = control_button(
        ui,
        ICON_ADD_REACTION,
        "React",
        "Send a reaction",
        Look::Plain,
    );
    egui::Popup::menu(&react)
        .align(egui::RectAlign::TOP)
        .show(|ui| {
            ui.horizontal(|ui| {
                for emoji in REACTIONS {
                    let button = egui::Button::new(egui::RichText::new(*emoji).size(26.0))
                        .min_size(egui::vec2(40.0, 40.0));
                    let response = ui.add(button);
                    response.widget_info(|| {
                        egui::WidgetInfo::labeled(
                            egui::Role::Button,
                            true,
                            format!("React {emoji}"),
                        )
                    });
                    if response.clicked() {
                        app.react(emoji);
                    }
                }
            });
        });
}

fn panels_and_files(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let Some(call) = app.call.as_mut() else {
        return;
    };
    let open = call.chat.is_open();
    let unread = call.chat.unread();
    let (label, hint) = if open {
        ("Hide chat".to_owned(), "Hide the chat and files".to_owned())
    } else if unread > 0 {
        (
            format!("Chat ({unread} unread)"),
            format!("Chat: {unread} unread"),
        )
    } else {
        ("Chat".to_owned(), "Show the chat and files".to_owned())
    };
    let look = if open { Look::On } else { Look::Plain };
    let response = control_button(ui, ICON_CHAT, &label, &hint, look);
    if unread > 0 && !open {
        unread_badge(ui, response.rect, unread);
    }
    if response.clicked() {
        call.chat.set_open(!open);
    }
    let people_open = call.people_open;
    let look = if people_open { Look::On } else { Look::Plain };
    let count = call.peers.len() + 1;
    let hint = format!("People in the call ({count}) and raised hands");
    if control_button(ui, ICON_GROUP, "People", &hint, look).clicked() {
        call.people_open = !people_open;
    }
    let hint = "Send files to everyone (or drop them on the window)";
    if control_button(ui, ICON_ATTACH_FILE, "Send files", hint, Look::Plain).clicked() {
        app.pick_files_to_send();
    }
}

fn unread_badge(ui: &egui::Ui, button: egui::Rect, unread: usize) {
    let centre = button.right_top() + egui::vec2(-6.0, 6.0);
    let painter = ui.painter();
    painter.circle_filled(centre, 8.0, OFF_FILL);
    painter.text(
        centre,
        egui::Align2::CENTER_CENTER,
        if unread > 9 {
            "9+".to_owned()
        } else {
            unread.to_string()
        },
        egui::FontId::proportional(10.0),
        egui::Color32::WHITE,
    );
}

/// Camera, microphone and speaker pickers and audio processing, in a popup above the bar.
fn devices_button(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let response = control_button(
        ui,
        ICON_TUNE,
        "Devices",
        "Camera, microphone, speaker and audio processing",
        Look::Plain,
    );
    egui::Popup::menu(&response)
        .align(egui::RectAlign::TOP)
        .close_behavior(egui::PopupCloseBehavior::CloseOnClickOutside)
        .show(|ui| {
            egui::Grid::new("devices-grid")
                .num_columns(2)
                .spacing([8.0, 6.0])
                .show(ui, |ui| device_pickers(app, ui));
            ui.separator();
            processing_toggles(app, ui);
        });
}

/// The three device pickers as grid rows (label, combo box); also used by the lobby.
pub fn device_pickers(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let cameras = devices::cameras(&app.devices.cameras);
    let mics = devices::microphones(&app.devices.microphones);
    let speakers = devices::speakers(&app.devices.speakers);
    device_picker(
        app,
        ui,
        "Camera",
        cameras,
        |a| a.settings.camera.clone(),
        HuddleApp::switch_camera,
        // A first run without a camera: the test pattern is a choice, not a default.
        Some("No camera found"),
    );
    device_picker(
        app,
        ui,
        "Microphone",
        mics,
        |a| a.settings.microphone.clone(),
        HuddleApp::switch_microphone,
        None,
    );
    device_picker(
        app,
        ui,
        "Speaker",
        speakers,
        |a| a.settings.speaker.clone(),
        HuddleApp::switch_speaker,
        None,
    );
}

pub fn processing_toggles(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let mut s = crate::services::ProcessingSettings {
        echo_cancellation: app.settings.echo_cancellation,
        noise_suppression: app.settings.noise_suppression,
        gain_control: app.settings.gain_control,
    };
    let before = s;
    ui.checkbox(&mut s.echo_cancellation, "Echo cancellation");
    ui.checkbox(&mut s.noise_suppression, "Noise suppression");
    ui.checkbox(&mut s.gain_control, "Automatic gain");
    if s != before {
        app.set_processing(s);
    }
}

/// One grid row: the label, then a combo box of `choices`.
fn device_picker(
    app: &mut HuddleApp,
    ui: &mut egui::Ui,
    label: &str,
    choices: Vec<devices::DeviceChoice>,
    current: impl Fn(&HuddleApp) -> String,
    switch: fn(&mut HuddleApp, String),
    unset_label: Option<&str>,
) {
    let now = current(app);
    let shown = if now.is_empty() {
        // Nothing chosen yet: what is used then (the system default), or what the caller says.
        unset_label
            .map(str::to_owned)
            .or_else(|| choices.first().map(|c| c.label.clone()))
            .unwrap_or_default()
    } else {
        devices::label_of(&choices, &now)
    };
    let mut picked = None;
    let label = ui.label(label);
    egui::ComboBox::from_id_salt(label.id)
        .selected_text(shown)
        .width(240.0)
        .show_ui(ui, |ui| {
            for c in &choices {
                if ui.selectable_label(c.id == now, &c.label).clicked() {
                    picked = Some(c.id.clone());
                }
            }
        })
        .response
        .labelled_by(label.id);
    ui.end_row();
    if let Some(id) = picked
        && id != now
    {
        switch(app, id);
    }
}

/// Everyone in the call: raised hands first, in the order they went up (numbered), then the
/// rest by name; with their microphone and camera state.
pub fn people_ui(call: &CallState, ui: &mut egui::Ui) {
    ui.heading(format!("People ({})", call.peers.len() + 1));
    ui.add_space(4.0);
    let hands = call.raised_hands();
    let mut others: Vec<(&crate::engine::PeerInfo, bool, bool)> = call
        .peers
        .iter()
        .filter(|p| p.info.hand_raised_at_ms.is_none())
        .map(|p| (&p.info, p.audio_on, p.video_on))
        .collect();
    others.sort_by_key(|(info, ..)| info.nickname.to_lowercase());
    let state_of = |id: &crate::engine::PeerId| -> (bool, bool) {
        call.peers
            .iter()
            .find(|p| &p.info.id == id)
            .map(|p| (p.audio_on, p.video_on))
            .unwrap_or((true, true))
    };
    egui::ScrollArea::vertical().show(ui, |ui| {
        for (i, info) in hands.iter().enumerate() {
            let (audio, video) = state_of(&info.id);
            person_row(ui, call, info, Some(i + 1), audio, video);
        }
        if call.me.hand_raised_at_ms.is_none() {
            person_row(ui, call, &call.me, None, true, true);
        }
        for (info, audio, video) in others {
            person_row(ui, call, info, None, audio, video);
        }
    });
}

fn person_row(
    ui: &mut egui::Ui,
    call: &CallState,
    info: &crate::engine::PeerInfo,
    hand: Option<usize>,
    audio: bool,
    video: bool,
) {
    let you = info.id == call.me.id;
    ui.horizontal(|ui| {
        if let Some(n) = hand {
            ui.label(
                egui::RichText::new(format!("{} {n}", ICON_PAN_TOOL.codepoint)).color(HAND_COLOUR),
            );
        }
        let name = if you {
            format!("{} (you)", info.nickname)
        } else {
            info.nickname.clone()
        };
        let row = ui.label(&name);
        let accessible = match hand {
            Some(n) => format!("{name}, hand raised, {n} in line"),
            None => name.clone(),
        };
        row.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Label, true, &accessible));
        if !you {
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let mic = if audio { ICON_MIC } else { ICON_MIC_OFF };
                let cam = if video {
                    ICON_VIDEOCAM
                } else {
                    ICON_VIDEOCAM_OFF
                };
                let grey = egui::Color32::from_gray(170);
                ui.label(cam.rich_text().color(if video { grey } else { OFF_FILL }));
                ui.label(mic.rich_text().color(if audio { grey } else { OFF_FILL }));
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use egui_material_icons::icons::ICON_SCREEN_SHARE;

    /// egui 0.37's default fonts draw no emoji at all unless its `monochrome_emoji_fonts`
    /// feature is on (a padlock once came out as a box): every reaction offered, and every
    /// icon the call uses, must have a glyph in the app's fonts.
    #[test]
    fn every_reaction_offered_and_every_icon_used_has_a_glyph() {
        let ctx = egui::Context::default();
        egui_material_icons::initialize(&ctx);
        // The first pass loads the fonts; its texture upload is not needed here.
        let mut output = ctx.run_ui(egui::RawInput::default(), |_| {});
        output.textures_delta.clear();
        ctx.fonts_mut(|fonts| {
            for emoji in REACTIONS {
                assert!(
                    fonts.has_glyphs(&egui::FontId::proportional(26.0), emoji),
                    "no glyph for {emoji}"
                );
            }
            for icon in [
                ICON_ADD_REACTION,
                ICON_ATTACH_FILE,
                ICON_CALL_END,
                ICON_CHAT,
                ICON_GROUP,
                ICON_MIC,
                ICON_MIC_OFF,
                ICON_PAN_TOOL,
                ICON_TUNE,
                ICON_VIDEOCAM,
                ICON_VIDEOCAM_OFF,
            ] {
                let font = egui::FontId::new(22.0, icon.font_family());
                assert!(fonts.has_glyphs(&font, icon.codepoint), "{icon:?}");
                // Also through the ordinary text font, as the Leave button writes it.
                let font = egui::FontId::proportional(17.0);
                assert!(fonts.has_glyphs(&font, icon.codepoint), "{icon:?}");
            }
            // A glyph no font has is reported as missing (the check can fail).
            let font = egui::FontId::new(22.0, ICON_SCREEN_SHARE.font_family());
            assert!(!fonts.has_glyphs(&font, "\u{10FFFD}"));
        });
    }
}

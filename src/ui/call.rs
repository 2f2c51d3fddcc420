//! The call view: remote videos in a grid that adapts to the number of people (aspect kept,
//! nickname on each tile with a muted mark, raised-hand badge, floating reactions, speaking
//! indicator, initials when the camera is off), a small mirrored self-view, the chat panel, the
//! file panel, the people list, the call controls (`controls`) and an optional stats view.

use super::app::CallLayout;
use super::app::{HuddleApp, Participant, SelfViewPlace, TransferRow};
use super::controls::{self, CAMERA, HAND, HAND_COLOUR, MUTE, PUSH_TO_TALK};
use super::video::{VideoTile, fit, tile_rects};
use crate::chat::{ChatEntry, TextPiece, clock_time, split_links};
use crate::engine::{
    ChatMessage, Direction, LinkQuality, PeerId, TransferCommand, TransferId, TransferState,
};
use egui_material_icons::icons::{ICON_ARROW_DOWNWARD, ICON_MIC_OFF, ICON_PAN_TOOL};
/// Above this level a remote peer counts as speaking.
const SPEAKING_DBFS: f32 = -45.0;

pub fn call_ui(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let ctx = ui.ctx().clone();
    if ctx.input_mut(|i| i.consume_shortcut(&MUTE)) {
        let muted = !app.local.audio_muted;
        app.set_muted(muted);
    }
    if ctx.input_mut(|i| i.consume_shortcut(&CAMERA)) {
        let on = !app.local.video_enabled;
        app.set_camera_on(on);
    }
    if ctx.input_mut(|i| i.consume_shortcut(&HAND))
        && let Some(call) = app.call.as_ref()
    {
        let raised = call.me.hand_raised_at_ms.is_some();
        app.set_hand_raised(!raised);
    }
    // Full screen: the window manager may have taken it away (or given it) meanwhile.
    if let Some(fullscreen) = ctx.input(|i| i.viewport().fullscreen) {
        app.fullscreen = fullscreen;
    }
    if ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, egui::Key::F11)) {
        app.toggle_fullscreen();
    }
    // Push to talk; not while typing (Space belongs to the chat box then). While muted the
    // press is taken here, so it does not also press whichever button has the focus.
    let typing = ctx.egui_wants_keyboard_input();
    let space_held = !typing && ctx.input(|i| i.key_down(PUSH_TO_TALK));
    if !typing && app.local.audio_muted {
        ctx.input_mut(|i| i.consume_key(egui::Modifiers::NONE, PUSH_TO_TALK));
    }
    app.set_push_to_talk(space_held);
    let dropped: Vec<std::path::PathBuf> = ctx.input(|i| {
        i.raw
            .dropped_files
            .iter()
            .map(|f| f.path().to_path_buf())
            .collect()
    });
    if !dropped.is_empty() {
        app.send_files(dropped);
    }
    // New frames into textures before drawing.
    let self_frame = app.engine.as_ref().and_then(|e| e.media().self_view());
    if let Some(call) = app.call.as_mut() {
        let mut uploaded = false;
        for p in &mut call.peers {
            uploaded |= p.tile.refresh(&ctx);
            if p.sharing {
                p.screen.refresh(&ctx);
            }
        }
        if uploaded && !app.first_remote_picture_logged {
            app.first_remote_picture_logged = true;
            // Join time as a person sees it: from the app's start (exec) to the first remote
            // picture in a texture, in the app's log (good to about 20 ms).
            let since_start = crate::services::process_age();
            tracing::info!(
                since_process_start_ms = since_start.map(|a| a.as_millis() as u64),
                "first remote picture uploaded for display"
            );
            if let (Some(meter), Some(age)) = (app.display_meter.as_mut(), since_start) {
                meter.note_first_remote_picture(age);
            }
        }
        let frame = if app.local.video_enabled {
            self_frame
        } else {
            None
        };
        call.self_tile.refresh_from(&ctx, frame);
    }

    top_bar(app, ui);
    sharing_banner(app, ui);
    controls::controls_bar(app, ui);
    if let Some(call) = app.call.as_ref().filter(|c| c.people_open) {
        egui::Panel::left("people")
            .frame(unfilled(egui::Frame::side_top_panel(ui.style())))
            .resizable(true)
            .default_size(220.0)
            .min_size(180.0)
            .show(ui, |ui| controls::people_ui(call, ui));
    }
    if app.call.as_ref().is_some_and(|c| c.chat.is_open()) {
        egui::Panel::right("side")
            .frame(unfilled(egui::Frame::side_top_panel(ui.style())))
            .resizable(true)
            .default_size(320.0)
            .min_size(240.0)
            .show(ui, |ui| {
                egui::Panel::bottom("files")
                    .frame(unfilled(egui::Frame::side_top_panel(ui.style())))
                    .resizable(true)
                    .default_size(230.0)
                    .min_size(120.0)
                    .show(ui, |ui| files_ui(app, ui));
                egui::CentralPanel::default()
                    .frame(unfilled(egui::Frame::central_panel(ui.style())))
                    .show(ui, |ui| chat_ui(app, ui));
            });
    }
    egui::CentralPanel::default()
        .frame(unfilled(egui::Frame::central_panel(ui.style())))
        .show(ui, |ui| video_grid(app, ui));
}

/// "You are sharing …" with Stop, across the top while we share.
fn sharing_banner(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let Some(what) = app.local.screen_share.clone() else {
        return;
    };
    let mut stop = false;
    egui::Panel::top("sharing-banner")
        .frame(
            egui::Frame::new()
                .fill(egui::Color32::from_rgb(38, 70, 140))
                .inner_margin(egui::Margin::symmetric(12, 6)),
        )
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(
                    egui::RichText::new(format!("You are sharing {what}"))
                        .color(egui::Color32::WHITE)
                        .strong(),
                );
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    stop = ui.button("Stop").clicked();
                });
            });
        });
    if stop {
        app.stop_screen_share();
    }
}

/// A panel frame without its fill. The window is cleared to the panel colour
/// (`HuddleApp::clear_color`), so the fill would paint the same pixels again; under a software
/// rasteriser every panel fill costs about as much per pixel as the video beside it.
pub(super) fn unfilled(frame: egui::Frame) -> egui::Frame {
    frame.fill(egui::Color32::TRANSPARENT)
}

fn top_bar(app: &mut HuddleApp, ui: &mut egui::Ui) {
    egui::Panel::top("call-top")
        .frame(unfilled(egui::Frame::side_top_panel(ui.style())))
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                let Some(call) = app.call.as_mut() else {
                    return;
                };
                ui.strong(&call.room);
                ui.label(format!("{} in the call", call.peers.len() + 1));
                if let super::app::Connection::Disconnected { reason, .. } = &app.connection {
                    ui.colored_label(
                        egui::Color32::from_rgb(230, 110, 90),
                        format!("Server: {reason}"),
                    );
                }
                ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                    ui.menu_button("Copy invite link", |ui| {
                        let links = [
                            (
                                "Copy app link",
                                "A huddle:// link that opens this room in Huddle",
                                app.invite_link(),
                            ),
                            (
                                "Copy browser link",
                                "A web link: a guest without Huddle joins from a browser",
                                app.guest_link(),
                            ),
                        ];
                        for (label, hint, link) in links {
                            if ui.button(label).on_hover_text(hint).clicked()
                                && let Some(link) = link
                            {
                                ui.ctx().copy_text(link.clone());
                                app.toast(format!("Copied {link}"));
                                app.last_invite = Some(link);
                                ui.close();
                            }
                        }
                    });
                    if let Some(call) = app.call.as_mut() {
                        let (label, hint, next) = match call.layout {
                            CallLayout::Grid => (
                                "Speaker view",
                                "Whoever speaks (or whoever you pin) large, the others in a strip",
                                CallLayout::Speaker,
                            ),
                            CallLayout::Speaker => {
                                ("Grid view", "Everyone the same size", CallLayout::Grid)
                            }
                        };
                        if ui.button(label).on_hover_text(hint).clicked() {
                            call.layout = next;
                            // The next call opens the way this one was left.
                            app.settings.speaker_view = next == CallLayout::Speaker;
                            app.save_settings();
                        }
                    }
                    let hidden = app.self_view == SelfViewPlace::Hidden;
                    let self_label = if hidden {
                        "Show self-view"
                    } else {
                        "Hide self-view"
                    };
                    if ui.button(self_label).clicked() {
                        app.self_view = if hidden {
                            SelfViewPlace::default()
                        } else {
                            SelfViewPlace::Hidden
                        };
                    }
                    let mut stats = app.show_stats;
                    if ui.toggle_value(&mut stats, "Stats").changed() {
                        app.show_stats = stats;
                        app.settings.show_stats = stats;
                        app.save_settings();
                    }
                });
            });
        });
}

/// Up to two initials: the first letter or digit of the first two words that have one
/// ("(you)", emoji and punctuation give none).
fn initials(name: &str) -> String {
    name.split_whitespace()
        .filter_map(|w| w.chars().next().filter(|c| c.is_alphanumeric()))
        .take(2)
        .flat_map(char::to_uppercase)
        .collect()
}

struct TileLook<'a> {
    /// The label under the picture.
    name: &'a str,
    /// Whose initials stand in for the picture (the nickname, without the label's "(you)").
    nickname: &'a str,
    accessible: String,
    camera_on: bool,
    speaking: bool,
    muted: bool,
    mirrored: bool,
    overlay: Option<String>,
    connecting: bool,
    /// The connection's grade, drawn as signal bars in the top right corner.
    quality: Option<LinkQuality>,
    /// Painted right after the picture (the display meter's mark).
    after_picture: Option<egui::Shape>,
    /// The hand is up: its place in line (1 = first).
    hand: Option<usize>,
    /// Reactions floating up from the name plate, each with how far it has risen (0 to 1).
    reactions: Vec<(&'a str, f32)>,
}

fn draw_tile(
    ui: &mut egui::Ui,
    rect: egui::Rect,
    tile: &VideoTile,
    look: TileLook<'_>,
) -> egui::Response {
    let response = ui.allocate_rect(rect, egui::Sense::click());
    let painter = ui.painter_at(rect);
    let background = egui::Color32::from_gray(28);
    match tile.texture() {
        Some(texture) if look.camera_on => {
            let uv = if look.mirrored {
                egui::Rect::from_min_max(egui::pos2(1.0, 0.0), egui::pos2(0.0, 1.0))
            } else {
                egui::Rect::from_min_max(egui::Pos2::ZERO, egui::pos2(1.0, 1.0))
            };
            let picture = fit(texture.size_vec2(), rect);
            // The plate shows only around a letterboxed picture: painting it under one that
            // covers the tile doubles the tile's cost on a software rasteriser.
            let covers =
                picture.width() >= rect.width() - 0.5 && picture.height() >= rect.height() - 0.5;
            if !covers {
                painter.rect_filled(rect, 8.0, background);
            }
            painter.image(texture.id(), picture, uv, egui::Color32::WHITE);
            if let Some(mark) = look.after_picture {
                painter.add(mark);
            }
        }
        _ => {
            painter.rect_filled(rect, 8.0, background);
            let r = (rect.height().min(rect.width()) * 0.18).clamp(16.0, 60.0);
            painter.circle_filled(rect.center(), r, egui::Color32::from_rgb(70, 90, 140));
            painter.text(
                rect.center(),
                egui::Align2::CENTER_CENTER,
                initials(look.nickname),
                egui::FontId::proportional(r * 0.8),
                egui::Color32::WHITE,
            );
            let status = if look.connecting {
                "connecting…"
            } else if look.camera_on {
                ""
            } else {
                "camera off"
            };
            if !status.is_empty() {
                painter.text(
                    rect.center() + egui::vec2(0.0, r + 14.0),
                    egui::Align2::CENTER_CENTER,
                    status,
                    egui::FontId::proportional(13.0),
                    egui::Color32::from_gray(200),
                );
            }
        }
    }
    if look.speaking {
        painter.rect_stroke(
            rect.shrink(1.0),
            8.0,
            egui::Stroke::new(3.0, egui::Color32::from_rgb(80, 210, 110)),
            egui::StrokeKind::Inside,
        );
    }
    name_plate(&painter, rect, look.name, look.muted);
    if let Some(place) = look.hand {
        hand_badge(&painter, rect, place);
    }
    for (emoji, risen) in &look.reactions {
        // Rises from the name plate to mid-tile, fading out over its last third.
        let start = rect.center_bottom() + egui::vec2(0.0, -40.0);
        let pos = start + egui::vec2(0.0, -risen * rect.height() * 0.45);
        let alpha = ((1.0 - risen) * 3.0).clamp(0.0, 1.0);
        painter.text(
            pos,
            egui::Align2::CENTER_CENTER,
            *emoji,
            egui::FontId::proportional((rect.height() * 0.14).clamp(24.0, 48.0)),
            egui::Color32::WHITE.gamma_multiply(alpha),
        );
    }
    if let Some(quality) = look.quality {
        draw_quality_bars(
            &painter,
            rect.right_top() + egui::vec2(-10.0, 10.0),
            quality,
        );
    }
    if let Some(overlay) = &look.overlay {
        let below_hand = if look.hand.is_some() { 34.0 } else { 8.0 };
        let pos = rect.left_top() + egui::vec2(8.0, below_hand);
        let r = painter.text(
            pos,
            egui::Align2::LEFT_TOP,
            overlay,
            egui::FontId::monospace(11.0),
            egui::Color32::WHITE,
        );
        painter.rect_filled(r.expand(3.0), 4.0, egui::Color32::from_black_alpha(150));
        painter.text(
            pos,
            egui::Align2::LEFT_TOP,
            overlay,
            egui::FontId::monospace(11.0),
            egui::Color32::WHITE,
        );
    }
    let accessible = look.accessible;
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, accessible.clone()));
    response
}

/// The name in the bottom left corner on a dark plate, after a red crossed-out microphone when
/// muted.
fn name_plate(painter: &egui::Painter, rect: egui::Rect, name: &str, muted: bool) {
    let font = egui::FontId::proportional(14.0);
    let mut job = egui::text::LayoutJob::default();
    if muted {
        job.append(
            ICON_MIC_OFF.codepoint,
            0.0,
            egui::TextFormat::simple(
                egui::FontId::new(15.0, ICON_MIC_OFF.font_family()),
                egui::Color32::from_rgb(240, 90, 80),
            ),
        );
    }
    job.append(
        name,
        if muted { 4.0 } else { 0.0 },
        egui::TextFormat::simple(font, egui::Color32::WHITE),
    );
    let galley = painter.layout_job(job);
    let pos = rect.left_bottom() + egui::vec2(8.0, -8.0 - galley.size().y);
    painter.rect_filled(
        egui::Rect::from_min_size(pos, galley.size()).expand(3.0),
        4.0,
        egui::Color32::from_black_alpha(120),
    );
    painter.galley(pos, galley, egui::Color32::WHITE);
}

/// A raised hand and its place in line, top left.
fn hand_badge(painter: &egui::Painter, rect: egui::Rect, place: usize) {
    let pos = rect.left_top() + egui::vec2(8.0, 8.0);
    let mut job = egui::text::LayoutJob::default();
    job.append(
        ICON_PAN_TOOL.codepoint,
        0.0,
        egui::TextFormat::simple(
            egui::FontId::new(18.0, ICON_PAN_TOOL.font_family()),
            egui::Color32::from_gray(20),
        ),
    );
    job.append(
        &place.to_string(),
        4.0,
        egui::TextFormat::simple(
            egui::FontId::proportional(15.0),
            egui::Color32::from_gray(20),
        ),
    );
    let galley = painter.layout_job(job);
    painter.rect_filled(
        egui::Rect::from_min_size(pos, galley.size()).expand(4.0),
        6.0,
        HAND_COLOUR,
    );
    painter.galley(pos, galley, egui::Color32::from_gray(20));
}

/// Three signal bars ending at `top_right`: all lit green when good, two amber when fair, one
/// red when poor, on a dark plate so they read over any picture.
fn draw_quality_bars(painter: &egui::Painter, top_right: egui::Pos2, quality: LinkQuality) {
    let (lit, colour) = match quality {
        LinkQuality::Good => (3, egui::Color32::from_rgb(80, 210, 110)),
        LinkQuality::Fair => (2, egui::Color32::from_rgb(240, 190, 60)),
        LinkQuality::Poor => (1, egui::Color32::from_rgb(235, 80, 70)),
    };
    let (bar_w, gap, height) = (4.0, 2.0, 14.0);
    let width = 3.0 * bar_w + 2.0 * gap;
    let plate = egui::Rect::from_min_size(
        top_right - egui::vec2(width, 0.0),
        egui::vec2(width, height),
    );
    painter.rect_filled(plate.expand(4.0), 4.0, egui::Color32::from_black_alpha(120));
    for i in 0..3 {
        let h = height * (i as f32 + 1.0) / 3.0;
        let x = plate.left() + i as f32 * (bar_w + gap);
        let bar = egui::Rect::from_min_max(
            egui::pos2(x, plate.bottom() - h),
            egui::pos2(x + bar_w, plate.bottom()),
        );
        let fill = if i < lit {
            colour
        } else {
            egui::Color32::from_white_alpha(60)
        };
        painter.rect_filled(bar, 1.0, fill);
    }
}

fn stats_text(p: &Participant) -> String {
    let [w, h] = p.tile.resolution();
    let mut s = format!("in  {w}x{h} {:.0} fps", p.fps);
    let Some(st) = &p.stats else {
        return s;
    };
    s.push_str(&format!(" {:.0} kbit/s", st.receive_kbps));
    match &st.sending {
        Some(out) => s.push_str(&format!(
            "\nout {}x{} {} fps {:.0} kbit/s",
            out.width, out.height, out.fps, st.send_kbps
        )),
        None => s.push_str(&format!("\nout {:.0} kbit/s", st.send_kbps)),
    }
    s.push_str(&format!(
        "\nestimate {:.0} kbit/s (video {:.0})",
        st.estimate_kbps, st.video_budget_kbps
    ));
    if let Some(rtt) = st.rtt_ms {
        s.push_str(&format!("\nRTT {rtt:.0} ms"));
    }
    if let Some(j) = st.jitter_ms {
        s.push_str(&format!("  jitter {j:.0} ms"));
    }
    let received = st.packets_received as f64 + st.packets_lost.max(0) as f64;
    let loss_in = if received > 0.0 {
        st.packets_lost.max(0) as f64 * 100.0 / received
    } else {
        0.0
    };
    s.push_str(&format!("\nloss in {loss_in:.1}%"));
    if let Some(out) = st.loss_reported {
        s.push_str(&format!("  out {:.1}%", out * 100.0));
    }
    s.push_str(&format!(
        "\nretransmits in {} out {}",
        st.retransmissions_received, st.retransmissions_sent
    ));
    s.push_str(&format!(
        "\nfreezes {} ({:.1} s)",
        st.freezes,
        st.frozen_ms as f64 / 1000.0
    ));
    if let Some(q) = st.quality {
        s.push_str(&format!("\nconnection {}", q.label()));
    }
    s
}

fn video_grid(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let media = app.engine.as_ref().map(|e| e.media().clone());
    let show_stats = app.show_stats;
    let local_video = app.local.video_enabled;
    let self_place = app.self_view;
    let mut toggle_fullscreen = false;
    let mut new_self_place = None;
    let meter = app.display_meter.as_ref();
    let muted = app.local.audio_muted && !app.push_to_talk;
    let now = std::time::Instant::now();
    let pixels_per_point = ui.ctx().pixels_per_point();
    let mut tile_widths = std::collections::HashMap::new();
    let Some(call) = app.call.as_mut() else {
        return;
    };
    if !call.reactions.is_empty() {
        // Reactions move: keep drawing while one floats.
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(33));
    }
    let area = ui.available_rect_before_wrap();
    if let Some(m) = meter {
        ui.painter().add(m.pass_marker(area));
    }
    if call.peers.is_empty() {
        ui.painter().text(
            area.center(),
            egui::Align2::CENTER_CENTER,
            "Waiting for others to join…",
            egui::FontId::proportional(18.0),
            egui::Color32::from_gray(180),
        );
    } else {
        let speaking: Vec<bool> = call
            .peers
            .iter()
            .map(|p| {
                let level = media
                    .as_ref()
                    .and_then(|m| m.remote_audio(&p.info.id))
                    .map(|s| s.level_dbfs)
                    .unwrap_or(-100.0);
                p.audio_on && level > SPEAKING_DBFS
            })
            .collect();
        let speakers: Vec<PeerId> = call
            .peers
            .iter()
            .zip(&speaking)
            .filter(|(_, speaking)| **speaking)
            .map(|(p, _)| p.info.id.clone())
            .collect();
        call.note_speaking(&speakers, now);
        // Cameras first, then screens being shared; a share is shown large in speaker view
        // unless someone is pinned.
        let shares: Vec<usize> = (0..call.peers.len())
            .filter(|&i| call.peers[i].sharing && call.peers[i].screen.has_picture())
            .collect();
        let main = match (call.layout, &call.pinned, call.presented_share()) {
            (CallLayout::Speaker, None, Some(share)) => shares
                .iter()
                .position(|&i| i == share)
                .map(|k| call.peers.len() + k),
            _ => call.main_tile(),
        };
        let rects = tile_rects(area, call.peers.len() + shares.len(), main);
        for (&i, &rect) in shares.iter().zip(&rects[call.peers.len()..]) {
            let p = &call.peers[i];
            let name = format!("{}'s screen", p.info.nickname);
            let tile = draw_tile(
                ui,
                rect,
                &p.screen,
                TileLook {
                    name: &name,
                    nickname: &p.info.nickname,
                    accessible: format!("Screen shared by {}", p.info.nickname),
                    camera_on: true,
                    speaking: false,
                    muted: false,
                    mirrored: false,
                    overlay: None,
                    connecting: false,
                    quality: None,
                    after_picture: None,
                    hand: None,
                    reactions: Vec::new(),
                },
            );
            toggle_fullscreen |= tile.double_clicked();
        }
        let mut pin = None;
        for ((p, rect), speaking) in call.peers.iter().zip(rects).zip(speaking) {
            tile_widths.insert(
                p.info.id.clone(),
                (rect.width() * pixels_per_point).round().max(0.0) as u32,
            );
            let hand = call.hand_position(&p.info.id);
            let tile = draw_tile(
                ui,
                rect,
                &p.tile,
                TileLook {
                    name: &p.info.nickname,
                    nickname: &p.info.nickname,
                    accessible: {
                        let mut a = format!("Video of {}", p.info.nickname);
                        if let Some(q) = p.stats.as_ref().and_then(|s| s.quality) {
                            a.push_str(&format!(", connection {}", q.label()));
                        }
                        if hand.is_some() {
                            a.push_str(", hand raised");
                        }
                        a
                    },
                    camera_on: p.video_on,
                    speaking,
                    muted: !p.audio_on,
                    mirrored: false,
                    overlay: show_stats.then(|| stats_text(p)),
                    connecting: !p.connected && !p.tile.has_picture(),
                    quality: p.stats.as_ref().and_then(|s| s.quality),
                    after_picture: meter.map(|m| {
                        let id = p.info.id.to_string();
                        m.tile_marker(rect, &id, p.tile.frames_shown, p.tile.shown_capture_us())
                    }),
                    hand,
                    reactions: call.reactions_of(&p.info.id, now),
                },
            );
            toggle_fullscreen |= tile.double_clicked();
            let pinned = call.pinned.as_ref() == Some(&p.info.id);
            tile.context_menu(|ui| {
                let label = if pinned {
                    "Unpin".to_owned()
                } else {
                    format!("Pin {}", p.info.nickname)
                };
                if ui.button(label).clicked() {
                    pin = Some((!pinned).then(|| p.info.id.clone()));
                }
            });
        }
        if let Some(pinned) = pin {
            // Pinning shows the person large; unpinning leaves the layout as it is.
            if pinned.is_some() {
                call.layout = CallLayout::Speaker;
            }
            call.pinned = pinned;
        }
    }
    // The self-view: small, mirrored, in the corner the user chose (bottom right at first).
    let w = (area.width() * 0.22).clamp(120.0, 260.0);
    let size = egui::vec2(w, w * 0.75);
    if let Some(corner) = self_place.corner() {
        let rect = corner.align_size_within_rect(size, area.shrink(10.0));
        let name = format!("{} (you)", call.me.nickname);
        let tile = draw_self_view(ui, rect, call, &name, local_video, muted, now);
        tile.context_menu(|ui| {
            if ui.button("Hide self-view").clicked() {
                new_self_place = Some(SelfViewPlace::Hidden);
            }
            ui.separator();
            for (place, label) in SelfViewPlace::CORNERS {
                if ui
                    .selectable_label(place == self_place, format!("Move to {label}"))
                    .clicked()
                {
                    new_self_place = Some(place);
                }
            }
        });
    }
    if let Some(place) = new_self_place {
        app.self_view = place;
    }
    // In a room on the SFU each peer's picture comes in the size its tile needs: tell the
    // engine when a tile changes size noticeably (a window dragged wider sends a few, not one
    // per frame).
    let changed = tile_widths.len() != app.tile_widths_sent.len()
        || tile_widths.iter().any(|(peer, w)| {
            app.tile_widths_sent
                .get(peer)
                .is_none_or(|old| (*w as f32 - *old as f32).abs() > *old as f32 * 0.15)
        });
    // A hidden window keeps the smallest layers (`HuddleApp::set_window_hidden`).
    if changed && !app.window_hidden {
        app.tile_widths_sent = tile_widths.clone();
        app.command(crate::engine::Command::SetTileWidths(tile_widths));
    }
    if toggle_fullscreen {
        app.toggle_fullscreen();
    }
}

/// The lobby's camera preview: mirrored like the self-view, initials when the camera is off.
pub(super) fn draw_preview(
    ui: &mut egui::Ui,
    rect: egui::Rect,
    tile: &VideoTile,
    nickname: &str,
    camera_on: bool,
    muted: bool,
) -> egui::Response {
    let look = own_look(nickname, nickname, "Your camera preview", camera_on, muted);
    draw_tile(ui, rect, tile, look)
}

/// How one's own picture looks (the lobby's preview, the call's self-view): mirrored, never
/// "speaking", no connection to grade.
fn own_look<'a>(
    name: &'a str,
    nickname: &'a str,
    accessible: &str,
    camera_on: bool,
    muted: bool,
) -> TileLook<'a> {
    TileLook {
        name,
        nickname,
        accessible: accessible.into(),
        camera_on,
        speaking: false,
        muted,
        mirrored: true,
        overlay: None,
        connecting: false,
        quality: None,
        after_picture: None,
        hand: None,
        reactions: Vec::new(),
    }
}

fn draw_self_view(
    ui: &mut egui::Ui,
    rect: egui::Rect,
    call: &super::app::CallState,
    name: &str,
    local_video: bool,
    muted: bool,
    now: std::time::Instant,
) -> egui::Response {
    draw_tile(
        ui,
        rect,
        &call.self_tile,
        TileLook {
            hand: call.hand_position(&call.me.id),
            reactions: call.reactions_of(&call.me.id, now),
            ..own_look(name, &call.me.nickname, "Your video", local_video, muted)
        },
    )
}

fn chat_ui(app: &mut HuddleApp, ui: &mut egui::Ui) {
    let offset = super::utc_offset_secs();
    let Some(call) = app.call.as_mut() else {
        return;
    };
    ui.heading("Chat");
    let input_height = 36.0;
    let jump = std::mem::take(&mut call.chat_jump);
    let log = egui::ScrollArea::vertical()
        .id_salt("chat-log")
        .stick_to_bottom(true)
        .auto_shrink([false, false])
        .max_height(ui.available_height() - input_height)
        .show(ui, |ui| {
            for (index, entry) in call.chat.entries().iter().enumerate() {
                match entry {
                    ChatEntry::Message { message, own } => {
                        if !call.chat.continues_group(index) {
                            if index > 0 {
                                ui.add_space(6.0);
                            }
                            message_header(ui, message, *own, offset);
                        }
                        message_text(ui, &message.text);
                    }
                    ChatEntry::Notice { text, .. } => {
                        ui.add_space(2.0);
                        ui.label(egui::RichText::new(text).italics().weak());
                    }
                }
            }
            if jump {
                ui.scroll_to_cursor(Some(egui::Align::BOTTOM));
            }
        });
    // Scrolled up to read, new messages from others do not pull the view away; a button over
    // the log's bottom says how many came and jumps to them.
    let arrived = call.chat.arrived_from_others();
    let at_bottom = log.state.clamped_offset().y + log.inner_rect.height()
        >= log.content_size.y - NEAR_BOTTOM_PX;
    if at_bottom || jump {
        call.chat_seen = arrived;
    }
    let unseen = arrived.saturating_sub(call.chat_seen);
    if unseen > 0 {
        let spoken = format!("{unseen} new message{}", if unseen == 1 { "" } else { "s" });
        let text = format!("{} {spoken}", ICON_ARROW_DOWNWARD.codepoint);
        let size = egui::vec2(170.0, 26.0);
        let rect = egui::Rect::from_center_size(
            log.inner_rect.center_bottom() - egui::vec2(0.0, size.y),
            size,
        );
        let jump = ui.place(rect, egui::Button::new(text));
        jump.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &spoken));
        if jump.clicked() {
            call.chat_jump = true;
            ui.ctx().request_repaint();
        }
    }
    let mut send = false;
    ui.horizontal(|ui| {
        let field = ui.add(
            egui::TextEdit::singleline(&mut call.draft)
                .hint_text("Message")
                .desired_width(ui.available_width() - 60.0),
        );
        let field = field.accessible_name("Message");
        if field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
            send = true;
            field.request_focus();
        }
        if ui.button("Send").clicked() {
            send = true;
        }
    });
    if send {
        app.send_chat();
    }
}

/// How close to the end of the chat log counts as "at the newest message".
const NEAR_BOTTOM_PX: f32 = 4.0;

/// A sender's name and the time, above the first of their messages in a row.
fn message_header(ui: &mut egui::Ui, message: &ChatMessage, own: bool, utc_offset: i64) {
    let who = if own {
        "You".to_owned()
    } else {
        message.nickname.clone()
    };
    let colour = if own {
        egui::Color32::from_rgb(120, 180, 255)
    } else {
        egui::Color32::from_rgb(230, 200, 120)
    };
    ui.horizontal_wrapped(|ui| {
        ui.colored_label(colour, egui::RichText::new(who).strong());
        ui.weak(clock_time(message.time_ms, utc_offset));
    });
}

/// A message's text, selectable, with its web links clickable (opened by the system's
/// handler through eframe).
fn message_text(ui: &mut egui::Ui, text: &str) {
    let pieces = split_links(text);
    if let [TextPiece::Text(plain)] = pieces.as_slice() {
        ui.add(egui::Label::new(*plain).selectable(true));
        return;
    }
    ui.horizontal_wrapped(|ui| {
        ui.spacing_mut().item_spacing.x = 0.0;
        for piece in pieces {
            match piece {
                TextPiece::Text(plain) => {
                    ui.add(egui::Label::new(plain).selectable(true));
                }
                TextPiece::Link(url) => {
                    ui.hyperlink_to(url, url).on_hover_text(url);
                }
            }
        }
    });
}

pub(super) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn files_ui(app: &mut HuddleApp, ui: &mut egui::Ui) {
    ui.heading("Files");
    let Some(call) = app.call.as_mut() else {
        return;
    };
    let target_name = call
        .send_target
        .as_ref()
        .and_then(|t| call.peers.iter().find(|p| &p.info.id == t))
        .map(|p| p.info.nickname.clone())
        .unwrap_or_else(|| "Everyone".into());
    let mut pick = false;
    ui.horizontal(|ui| {
        let label = ui.label("Send to");
        egui::ComboBox::from_id_salt("send-to")
            .selected_text(target_name)
            .width(120.0)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut call.send_target, None, "Everyone");
                for p in &call.peers {
                    ui.selectable_value(
                        &mut call.send_target,
                        Some(p.info.id.clone()),
                        &p.info.nickname,
                    );
                }
            })
            .response
            .labelled_by(label.id);
        if ui.button("Send file…").clicked() {
            pick = true;
        }
    });
    ui.weak("or drop files on the window");
    let mut actions: Vec<(PeerId, TransferAction)> = Vec::new();
    egui::ScrollArea::vertical()
        .id_salt("transfers")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            for row in call.transfers.values().rev() {
                transfer_row(ui, row, &mut actions);
                ui.separator();
            }
        });
    if pick {
        app.pick_files_to_send();
    }
    for (peer, action) in actions {
        match action {
            TransferAction::Command(make) => {
                app.command(crate::engine::Command::Transfer(make(peer)))
            }
            TransferAction::OpenFolder => app.open_download_folder(),
        }
    }
}

enum TransferAction {
    Command(Box<dyn FnOnce(PeerId) -> TransferCommand>),
    OpenFolder,
}

fn transfer_row(ui: &mut egui::Ui, row: &TransferRow, actions: &mut Vec<(PeerId, TransferAction)>) {
    let u = &row.update;
    let id = u.id;
    let arrow = match u.direction {
        Direction::Outgoing => format!("to {}", row.peer_name),
        Direction::Incoming => format!("from {}", row.peer_name),
    };
    ui.horizontal_wrapped(|ui| {
        ui.strong(&u.name);
        ui.weak(format!("{} · {arrow}", human_bytes(u.size)));
    });
    let fraction = if u.size == 0 {
        1.0
    } else {
        u.bytes_done as f32 / u.size as f32
    };
    let status = match &u.state {
        TransferState::Offered => "waiting for them to accept".to_owned(),
        TransferState::AwaitingConsent => "wants to send you this file".to_owned(),
        TransferState::Transferring => {
            let mut s = format!("{:.0} %", fraction * 100.0);
            if u.bytes_per_sec > 0.0 {
                s.push_str(&format!(" · {}/s", human_bytes(u.bytes_per_sec as u64)));
            }
            if let Some(eta) = u.eta_secs {
                s.push_str(&format!(" · {eta:.0} s left"));
            }
            s
        }
        TransferState::Interrupted => "connection lost; will resume".to_owned(),
        TransferState::Paused(r) => format!("paused: {r}"),
        TransferState::Verifying => "checking…".to_owned(),
        TransferState::Completed => "done".to_owned(),
        TransferState::Declined(r) => format!("declined: {r}"),
        TransferState::Cancelled(r) => format!("cancelled: {r}"),
        TransferState::Failed(r) => format!("failed: {r}"),
    };
    if !u.state.is_final() && u.state != TransferState::AwaitingConsent {
        ui.add(egui::ProgressBar::new(fraction).text(status.clone()));
    } else {
        ui.label(&status);
    }
    let incoming = u.direction == Direction::Incoming;
    let (consent, retry, cancel, open) = match &u.state {
        TransferState::AwaitingConsent => (true, false, false, false),
        TransferState::Paused(_) if incoming => (false, true, true, false),
        TransferState::Completed if incoming => (false, false, false, true),
        s => (false, false, !s.is_final(), false),
    };
    let command = |make: fn(PeerId, TransferId) -> TransferCommand| {
        TransferAction::Command(Box::new(move |p| make(p, id)))
    };
    ui.horizontal(|ui| {
        let peer = row.peer.clone();
        if consent && ui.button("Accept").clicked() {
            actions.push((
                peer.clone(),
                command(|peer, id| TransferCommand::Accept { peer, id }),
            ));
        }
        if consent && ui.button("Decline").clicked() {
            actions.push((
                peer.clone(),
                command(|peer, id| TransferCommand::Decline { peer, id }),
            ));
        }
        if retry && ui.button("Retry").clicked() {
            actions.push((
                peer.clone(),
                command(|peer, id| TransferCommand::Retry { peer, id }),
            ));
        }
        if cancel && ui.button("Cancel").clicked() {
            actions.push((
                peer.clone(),
                command(|peer, id| TransferCommand::Cancel { peer, id }),
            ));
        }
        if open && ui.button("Open folder").clicked() {
            actions.push((peer, TransferAction::OpenFolder));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::initials;

    #[test]
    fn initials_come_from_letters_and_digits_only() {
        assert_eq!(initials("newbie"), "N");
        assert_eq!(initials("ada lovelace byron"), "AL");
        assert_eq!(initials("(bob) ✨ 7up"), "7");
        assert_eq!(initials(""), "");
    }
}

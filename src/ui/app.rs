//! The app's state and its single bridge to the engine: it drains engine events at the start of
//! each frame (within a time budget) into view state, and turns user intents into engine
//! commands without waiting. Drawing lives in `lobby.rs` and `call.rs`.

use super::display_meter::DisplayMeter;
use super::video::VideoTile;
use crate::chat::ChatLog;
use crate::engine::{
    self, AudioInput, AudioOutput, ChatMessage, Command, DeviceList, EngineConfig, EngineHandle,
    ErrorCode, Event, JoinAccess, LeaveReason, LocalMediaState, PeerId, PeerInfo, PeerStats,
    RoomInfo, TransferCommand, TransferEvent, TransferId, TransferState, TransferUpdate,
};
use crate::services::{
    self, AudioSink, CameraState, Hosting, LanRoom, MicChoice, Notifier, NullSink,
    ProcessingSettings, SpeakerChoice, ToneSource, devices,
};
use crate::settings::{Settings, Theme};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the app needs from its surroundings; tests provide their own.
pub struct AppServices {
    pub runtime: tokio::runtime::Handle,
    /// Where settings are saved (`None`: not saved, e.g. in tests).
    pub settings_path: Option<PathBuf>,
    /// URL of the server built into the app, when it runs one.
    pub embedded_url: Option<String>,
    /// Replaces every speaker choice with this sink (tests record or discard what is played).
    pub speaker_override: Option<Box<dyn Fn() -> Box<dyn AudioSink>>>,
    /// Bind addresses for peer connections (`127.0.0.1:0` in tests).
    pub bind_addrs: Vec<String>,
    /// Look for rooms on the local network (mDNS).
    pub discover_lan: bool,
    /// Read the capture stamp drawn into remote test pictures (for the display meter).
    pub read_stamps: bool,
    /// Tells the person about chat and file offers while the window is in the background.
    pub notifier: Notifier,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Connection {
    Connecting,
    Connected,
    Disconnected {
        reason: String,
        retry_in: Option<Duration>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Lobby,
    Call,
}

pub struct LobbyState {
    pub rooms: BTreeMap<String, RoomInfo>,
    pub selected: Option<String>,
    pub new_room: String,
    pub server_field: String,
    pub nickname_field: String,
    pub error: Option<String>,
    /// A join is on its way (button disabled, spinner text).
    pub joining: Option<String>,
    /// Room password: for joining a locked room, or set on a room being created.
    pub password_field: String,
    /// Create the new room private (not listed).
    pub private_new_room: bool,
    /// Create the new room large (through the server's SFU, for many people).
    pub large_new_room: bool,
    /// A join token from an invite link, sent with joins.
    pub token: Option<String>,
    /// Only rooms whose name contains this (any case) are listed.
    pub filter: String,
    /// The device check's camera preview.
    pub preview: VideoTile,
}

pub struct Participant {
    pub info: PeerInfo,
    pub tile: VideoTile,
    pub audio_on: bool,
    pub video_on: bool,
    pub connected: bool,
    pub stats: Option<PeerStats>,
    /// Frames decoded at the last stats update, for fps.
    pub frames_at_last_stats: (u64, Option<Instant>),
    pub fps: f64,
    /// When this peer was last heard above the speaking level.
    pub spoke_at: Option<Instant>,
    /// The peer's screen share (pictures come while `sharing`).
    pub screen: VideoTile,
    pub sharing: bool,
}

pub struct TransferRow {
    pub peer: PeerId,
    pub peer_name: String,
    pub update: TransferUpdate,
}

pub struct CallState {
    pub room: String,
    pub me: PeerInfo,
    pub peers: Vec<Participant>,
    pub chat: ChatLog,
    pub draft: String,
    /// `ChatLog::arrived_from_others` when the chat last showed its newest message; more than
    /// that while scrolled up offers a jump to the new ones.
    pub chat_seen: u64,
    /// Scroll the chat to its newest message on the next pass (the jump, or our own send).
    pub chat_jump: bool,
    pub transfers: BTreeMap<(PeerId, TransferId), TransferRow>,
    /// `None` sends to everyone.
    pub send_target: Option<PeerId>,
    pub self_tile: VideoTile,
    pub left_notice: Option<String>,
    /// Reactions still floating over their sender's tile, oldest first.
    pub reactions: VecDeque<FloatingReaction>,
    /// The participants list is open beside the video.
    pub people_open: bool,
    pub layout: CallLayout,
    /// Shown large in speaker view whoever speaks.
    pub pinned: Option<PeerId>,
    /// Shown large in speaker view when no one is pinned.
    pub active_speaker: Option<PeerId>,
    /// The layout chosen before someone started sharing a screen (which switched to speaker
    /// view), restored when the last share ends.
    pub layout_before_share: Option<CallLayout>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CallLayout {
    /// Everyone the same size.
    #[default]
    Grid,
    /// One person large (pinned, or whoever speaks), the others in a strip.
    Speaker,
}

/// The active speaker changes only after they have been quiet this long, so a cough from
/// someone else does not swap the big picture.
const SPEAKER_HOLD: Duration = Duration::from_millis(1500);

pub struct FloatingReaction {
    pub peer: PeerId,
    pub emoji: String,
    pub at: Instant,
}

/// How long a reaction floats, and how many may float at once (older ones go first).
pub const REACTION_SHOWN_FOR: Duration = Duration::from_secs(3);
const MAX_FLOATING_REACTIONS: usize = 24;

impl CallState {
    fn new(room: String, me: PeerInfo, peers: Vec<PeerInfo>, chat: ChatLog) -> Self {
        CallState {
            room,
            me,
            peers: peers.into_iter().map(Participant::new).collect(),
            chat,
            draft: String::new(),
            chat_seen: 0,
            chat_jump: false,
            transfers: BTreeMap::new(),
            send_target: None,
            self_tile: VideoTile::new("self"),
            left_notice: None,
            reactions: VecDeque::new(),
            people_open: false,
            layout: CallLayout::default(),
            pinned: None,
            active_speaker: None,
            layout_before_share: None,
        }
    }

    /// A peer started or stopped sharing a screen. The first share switches to speaker view
    /// with the share large; when the last one ends, the layout chosen before comes back.
    pub fn note_sharing(&mut self, peer: &PeerId, sharing: bool) {
        let Some(p) = self.peers.iter_mut().find(|p| &p.info.id == peer) else {
            return;
        };
        p.sharing = sharing;
        let anyone = self.peers.iter().any(|p| p.sharing);
        if anyone && self.layout_before_share.is_none() {
            self.layout_before_share = Some(self.layout);
            self.layout = CallLayout::Speaker;
        } else if !anyone && let Some(before) = self.layout_before_share.take() {
            self.layout = before;
        }
    }

    /// The screen shown large: the first peer sharing whose picture has arrived.
    pub fn presented_share(&self) -> Option<usize> {
        self.peers
            .iter()
            .position(|p| p.sharing && p.screen.has_picture())
    }

    /// Notes who is speaking now and moves the active speaker to the latest one once the
    /// current one has been quiet for `SPEAKER_HOLD`.
    pub fn note_speaking(&mut self, speaking: &[PeerId], now: Instant) {
        for p in &mut self.peers {
            if speaking.contains(&p.info.id) {
                p.spoke_at = Some(now);
            }
        }
        let spoke_at = |id: &PeerId| {
            self.peers
                .iter()
                .find(|p| &p.info.id == id)
                .and_then(|p| p.spoke_at)
        };
        let current_quiet = self
            .active_speaker
            .as_ref()
            .and_then(spoke_at)
            .is_none_or(|t| now.duration_since(t) >= SPEAKER_HOLD);
        if current_quiet
            && let Some(latest) = self
                .peers
                .iter()
                .filter(|p| p.spoke_at.is_some())
                .max_by_key(|p| p.spoke_at)
        {
            self.active_speaker = Some(latest.info.id.clone());
        }
    }

    /// Which peer (by index) is shown large: in speaker view, the pinned one, else the active
    /// speaker, else the first; in the grid, none.
    pub fn main_tile(&self) -> Option<usize> {
        if self.layout != CallLayout::Speaker || self.peers.is_empty() {
            return None;
        }
        let index_of = |id: &PeerId| self.peers.iter().position(|p| &p.info.id == id);
        self.pinned
            .as_ref()
            .and_then(index_of)
            .or_else(|| self.active_speaker.as_ref().and_then(index_of))
            .or(Some(0))
    }

    /// Everyone whose hand is up (us too), first raised first.
    pub fn raised_hands(&self) -> Vec<&PeerInfo> {
        let mut raised: Vec<&PeerInfo> = std::iter::once(&self.me)
            .chain(self.peers.iter().map(|p| &p.info))
            .filter(|p| p.hand_raised_at_ms.is_some())
            .collect();
        raised.sort_by(|a, b| {
            (a.hand_raised_at_ms, a.id.as_str()).cmp(&(b.hand_raised_at_ms, b.id.as_str()))
        });
        raised
    }

    /// 1 for the first hand raised, and so on.
    pub fn hand_position(&self, peer: &PeerId) -> Option<usize> {
        self.raised_hands()
            .iter()
            .position(|p| &p.id == peer)
            .map(|i| i + 1)
    }

    fn forget_old_reactions(&mut self, now: Instant) {
        while self
            .reactions
            .front()
            .is_some_and(|r| now.duration_since(r.at) >= REACTION_SHOWN_FOR)
            || self.reactions.len() > MAX_FLOATING_REACTIONS
        {
            self.reactions.pop_front();
        }
    }

    /// Reactions floating over `peer`'s tile now, each with how far it has risen (0 to 1).
    pub fn reactions_of(&self, peer: &PeerId, now: Instant) -> Vec<(&str, f32)> {
        self.reactions
            .iter()
            .filter(|r| &r.peer == peer)
            .map(|r| {
                let age = now.duration_since(r.at).as_secs_f32();
                (
                    r.emoji.as_str(),
                    (age / REACTION_SHOWN_FOR.as_secs_f32()).min(1.0),
                )
            })
            .collect()
    }
}

pub struct Toast {
    pub text: String,
    pub until: f64,
}

/// Results from background work (file dialogs, hosting) back to the UI thread.
pub enum UiMessage {
    FilesPicked(Vec<PathBuf>),
    DownloadFolderPicked(PathBuf),
    CertificatePicked(PathBuf),
    Hosting(Result<Hosting, String>),
}

/// The self-view's corner of the video area, or hidden.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SelfViewPlace {
    #[default]
    BottomRight,
    BottomLeft,
    TopRight,
    TopLeft,
    Hidden,
}

impl SelfViewPlace {
    /// The corner as an alignment within the video area; `None` when hidden.
    pub fn corner(self) -> Option<egui::Align2> {
        match self {
            SelfViewPlace::BottomRight => Some(egui::Align2::RIGHT_BOTTOM),
            SelfViewPlace::BottomLeft => Some(egui::Align2::LEFT_BOTTOM),
            SelfViewPlace::TopRight => Some(egui::Align2::RIGHT_TOP),
            SelfViewPlace::TopLeft => Some(egui::Align2::LEFT_TOP),
            SelfViewPlace::Hidden => None,
        }
    }

    pub const CORNERS: [(SelfViewPlace, &'static str); 4] = [
        (SelfViewPlace::TopLeft, "Top left"),
        (SelfViewPlace::TopRight, "Top right"),
        (SelfViewPlace::BottomLeft, "Bottom left"),
        (SelfViewPlace::BottomRight, "Bottom right"),
    ];
}

/// What the settings window is editing before it is applied (`None`: the window is closed).
#[derive(Debug, Default)]
pub struct SettingsDraft {
    pub nickname: String,
    pub nickname_error: Option<String>,
    pub server: String,
}

pub struct HuddleApp {
    pub services: AppServices,
    pub settings_draft: Option<SettingsDraft>,
    pub settings: Settings,
    pub ctx: egui::Context,
    pub engine: Option<EngineHandle>,
    events: Option<mpsc::Receiver<Event>>,
    pub connection: Connection,
    pub my_id: Option<PeerId>,
    /// Share what the computer plays with the next screen share.
    pub share_sound: bool,
    /// What the Share menu offers (the screen, then windows), with thumbnails.
    pub screen_choices: Vec<(crate::engine::ScreenChoice, Option<egui::TextureHandle>)>,
    pub view: View,
    pub lobby: LobbyState,
    pub call: Option<CallState>,
    pub local: LocalMediaState,
    pub toasts: Vec<Toast>,
    pub ui_tx: std_mpsc::SyncSender<UiMessage>,
    ui_rx: std_mpsc::Receiver<UiMessage>,
    /// A room to join as soon as the server connection is up (from the command line or a link).
    pub pending_join: Option<String>,
    pub show_stats: bool,
    /// The tile widths last sent to the engine (physical pixels), for the SFU's layers.
    pub tile_widths_sent: std::collections::HashMap<PeerId, u32>,
    /// The window is minimised or hidden: no picture is seen (`set_window_hidden`).
    pub window_hidden: bool,
    /// Frame counter, for tests and the stats view.
    pub frames_drawn: u64,
    /// The first remote picture's time from process start has been logged.
    pub first_remote_picture_logged: bool,
    /// Real devices found on this machine (listed off the UI thread).
    pub devices: DeviceList,
    /// The list above has arrived at least once.
    pub devices_listed: bool,
    /// Where the self-view sits in the call, or hidden.
    pub self_view: SelfViewPlace,
    /// Full screen was asked for (F11, or a double-click on a tile).
    pub fullscreen: bool,
    /// Space is held while muted: the microphone is open until it is let go (push to talk).
    /// `local.audio_muted` keeps the user's own choice meanwhile.
    pub push_to_talk: bool,
    pub camera_state: CameraState,
    /// Rooms announced on the local network.
    pub lan_rooms: Vec<LanRoom>,
    lan_updates: Option<mpsc::Receiver<Vec<LanRoom>>>,
    /// Set while this app hosts its server for the local network.
    pub hosting: Option<Hosting>,
    pub hosting_pending: bool,
    /// The last invite link copied (also on the clipboard).
    pub last_invite: Option<String>,
    /// What reached the screen, when asked for (`--display-stats`).
    pub display_meter: Option<DisplayMeter>,
    /// The engine asked for a pass that has not yet run (cleared by `pump`).
    wake_pending: Arc<AtomicBool>,
}

/// Results of background work (file dialog, hosting) waiting for the UI.
const UI_MESSAGES: usize = 32;

/// The engine's wake-up asks for a pass this soon. Not zero: egui answers a zero-delay request
/// with two passes, and each pass costs a full paint.
const WAKE_DELAY: Duration = Duration::from_millis(1);

/// How long one frame may spend applying engine events before drawing.
const EVENT_BUDGET: Duration = Duration::from_millis(8);

impl HuddleApp {
    pub fn new(ctx: egui::Context, services: AppServices, settings: Settings) -> Self {
        // The control bar's icons.
        egui_material_icons::initialize(&ctx);
        apply_theme(&ctx, settings.theme);
        // One message per user action (a file pick, hosting started): never near full.
        let (ui_tx, ui_rx) = std_mpsc::sync_channel(UI_MESSAGES);
        let lobby = LobbyState {
            rooms: BTreeMap::new(),
            selected: None,
            new_room: String::new(),
            server_field: settings.server.clone(),
            nickname_field: settings.nickname.clone(),
            error: None,
            joining: None,
            password_field: String::new(),
            private_new_room: false,
            large_new_room: false,
            token: None,
            filter: String::new(),
            preview: VideoTile::new("preview"),
        };
        let mut app = HuddleApp {
            show_stats: settings.show_stats,
            tile_widths_sent: Default::default(),
            window_hidden: false,
            services,
            settings_draft: None,
            settings,
            ctx,
            engine: None,
            events: None,
            connection: Connection::Connecting,
            my_id: None,
            share_sound: false,
            screen_choices: Vec::new(),
            view: View::Lobby,
            lobby,
            call: None,
            local: LocalMediaState {
                audio_muted: false,
                video_enabled: true,
                video_source: String::new(),
                audio_source: String::new(),
                audio_sink: String::new(),
                screen_share: None,
            },
            toasts: Vec::new(),
            ui_tx,
            ui_rx,
            pending_join: None,
            frames_drawn: 0,
            first_remote_picture_logged: false,
            devices: DeviceList::default(),
            devices_listed: false,
            push_to_talk: false,
            self_view: SelfViewPlace::default(),
            fullscreen: false,
            camera_state: CameraState::Off,
            lan_rooms: Vec::new(),
            lan_updates: None,
            hosting: None,
            display_meter: None,
            wake_pending: Arc::default(),
            hosting_pending: false,
            last_invite: None,
        };
        if app.services.discover_lan {
            let _entered = app.services.runtime.enter();
            match services::browse_lan() {
                Ok(rx) => app.lan_updates = Some(rx),
                Err(e) => tracing::info!(error = %e, "no local network discovery"),
            }
        }
        app.connect();
        app
    }

    /// The server address others can reach: the LAN address while hosting, else ours.
    pub fn shareable_server_url(&self) -> String {
        match &self.hosting {
            Some(h) if self.settings.server == crate::settings::EMBEDDED_SERVER => {
                h.lan_url.clone()
            }
            _ => self.server_url(),
        }
    }

    fn invite(&self) -> Option<crate::invite::Invite> {
        let room = self.call.as_ref()?.room.clone();
        crate::invite::Invite::for_server(&self.shareable_server_url(), &room)
    }

    /// A `huddle://` invite link to the current room, for the clipboard.
    pub fn invite_link(&self) -> Option<String> {
        self.invite().map(|i| i.to_string())
    }

    /// The current room's guest page, for someone with only a browser.
    pub fn guest_link(&self) -> Option<String> {
        self.invite().map(|i| i.guest_url())
    }

    /// Offers the built-in server to the local network: listens on all interfaces and announces
    /// its rooms over mDNS. The result arrives as a message; nothing blocks here.
    pub fn host_on_network(&mut self) {
        if self.hosting.is_some() || self.hosting_pending {
            return;
        }
        self.hosting_pending = true;
        let tx = self.ui_tx.clone();
        let ctx = self.ctx.clone();
        let name = if self.settings.nickname.is_empty() {
            "Huddle".to_owned()
        } else {
            format!("{}'s Huddle", self.settings.nickname)
        };
        self.services.runtime.spawn(async move {
            let result = services::start_lan_hosting(&name).await;
            if tx.try_send(UiMessage::Hosting(result)).is_err() {
                tracing::warn!("the window is gone or not reading: hosting result dropped");
            }
            ctx.request_repaint();
        });
    }

    /// The URL the engine should use for the current server setting.
    pub fn server_url(&self) -> String {
        if self.settings.server == crate::settings::EMBEDDED_SERVER {
            self.services
                .embedded_url
                .clone()
                .unwrap_or_else(|| "ws://127.0.0.1:8787".into())
        } else {
            self.settings.server.clone()
        }
    }

    /// (Re)starts the engine for the current server and devices.
    pub fn connect(&mut self) {
        if let Some(old) = self.engine.take() {
            // Let the old engine leave and close in the background.
            self.services.runtime.spawn(old.shutdown());
        }
        self.events = None;
        self.call = None;
        self.view = View::Lobby;
        self.lobby.rooms.clear();
        self.connection = Connection::Connecting;
        let (speaker, open_later) = match self.speaker_output(&self.settings.speaker.clone()) {
            AudioOutput::Sink(sink) => (sink, None),
            device => (
                Box::new(NullSink::new()) as Box<dyn AudioSink>,
                Some(device),
            ),
        };
        let mut config =
            EngineConfig::new(self.server_url(), speaker, self.settings.download_dir());
        config.trusted_cert = self.settings.trusted_cert.clone();
        config.bind_addrs = self.services.bind_addrs.clone();
        config.self_view = true;
        config.read_stamps = self.services.read_stamps;
        config.video =
            devices::camera_spec(&self.settings.camera, &self.devices.cameras, rand::random());
        config.audio = Self::microphone_input(&self.settings.microphone);
        config.processing = Some(ProcessingSettings {
            echo_cancellation: self.settings.echo_cancellation,
            noise_suppression: self.settings.noise_suppression,
            gain_control: self.settings.gain_control,
        });
        config.transfers.machine.auto_accept = self.settings.auto_accept_files;
        config.transfers.machine.auto_accept_max = mib_to_bytes(self.settings.auto_accept_max_mib);
        config.transfers.machine.max_incoming = mib_to_bytes(self.settings.max_incoming_mib);
        let ctx = self.ctx.clone();
        let pending = self.wake_pending.clone();
        // One pass per burst of wake-ups: a zero-delay request makes egui paint twice, and
        // decoders wake once per frame each.
        let wake = Arc::new(move || {
            if !pending.swap(true, Ordering::AcqRel) {
                ctx.request_repaint_after(WAKE_DELAY);
            }
        });
        let _entered = self.services.runtime.enter();
        match engine::spawn(config, wake) {
            Ok((handle, events)) => {
                let _ = handle.send(Command::SubscribeRooms);
                let _ = handle.send(Command::ListDevices);
                if let Some(output) = open_later {
                    let _ = handle.send(Command::SetAudioOutput(output));
                }
                self.engine = Some(handle);
                self.events = Some(events);
            }
            Err(e) => {
                self.connection = Connection::Disconnected {
                    reason: format!("cannot start: {e}"),
                    retry_in: None,
                };
            }
        }
    }

    /// Sends a command to the engine, never waiting; a full queue becomes a toast.
    pub fn command(&mut self, command: Command) {
        let result = match &self.engine {
            Some(e) => e.send(command),
            None => Err(engine::EngineError::Stopped),
        };
        if let Err(e) = result {
            self.toast(format!("Not sent: {e}"));
        }
    }

    pub fn toast(&mut self, text: impl Into<String>) {
        let now = self.ctx.input(|i| i.time);
        self.toasts.push(Toast {
            text: text.into(),
            until: now + 5.0,
        });
    }

    /// Saves settings off the UI thread.
    pub fn save_settings(&self) {
        let Some(path) = self.services.settings_path.clone() else {
            return;
        };
        let settings = self.settings.clone();
        self.services.runtime.spawn_blocking(move || {
            if let Err(e) = settings.save(&path) {
                tracing::warn!(error = %e, "settings not saved");
            }
        });
    }

    pub fn join(&mut self, room: &str) {
        self.join_with(room, false, false);
    }

    /// Joins (or creates, `private` and `large` if asked) a room with the lobby's password and
    /// token.
    pub fn join_with(&mut self, room: &str, private: bool, large: bool) {
        let nickname = self.lobby.nickname_field.trim().to_owned();
        if nickname.is_empty() {
            // Keep the room: joining goes ahead once a nickname is chosen.
            self.pending_join = Some(room.to_owned());
            self.lobby.error = Some(format!("Choose a nickname to join {room}."));
            return;
        }
        if let Err(why) = crate::services::validate_nickname(&nickname) {
            // The server would refuse it: say why here, and join once it is fixed.
            self.pending_join = Some(room.to_owned());
            let mut why = why.chars();
            let first = why.next().map(|c| c.to_uppercase().to_string());
            self.lobby.error = Some(format!(
                "{}{}. A nickname takes letters, digits, spaces and - _ . ' #.",
                first.unwrap_or_default(),
                why.as_str()
            ));
            return;
        }
        if self.settings.nickname != nickname {
            self.settings.nickname = nickname.clone();
            self.save_settings();
        }
        self.lobby.error = None;
        self.lobby.joining = Some(room.to_owned());
        let password = Some(self.lobby.password_field.clone()).filter(|p| !p.is_empty());
        self.command(Command::Join {
            room: room.to_owned(),
            nickname,
            access: JoinAccess {
                password,
                token: self.lobby.token.clone(),
                rejoin_token: None,
                private,
                large,
                ..Default::default()
            },
        });
    }

    pub fn leave(&mut self) {
        self.command(Command::Leave);
        self.call = None;
        self.view = View::Lobby;
        self.lobby.joining = None;
    }

    pub fn set_hand_raised(&mut self, raised: bool) {
        self.command(Command::SetHandRaised(raised));
    }

    pub fn react(&mut self, emoji: &str) {
        self.command(Command::React(emoji.to_owned()));
    }

    pub fn set_muted(&mut self, muted: bool) {
        self.local.audio_muted = muted;
        self.push_to_talk = false;
        self.command(Command::SetAudioMuted(muted));
    }

    /// Full screen on or off (F11, or a double-click on a remote tile).
    pub fn toggle_fullscreen(&mut self) {
        self.fullscreen = !self.fullscreen;
        self.ctx
            .send_viewport_cmd(egui::ViewportCommand::Fullscreen(self.fullscreen));
    }

    /// Push to talk: while muted, holding the key opens the microphone; letting go restores
    /// the user's choice (still muted, unless they unmuted meanwhile).
    pub fn set_push_to_talk(&mut self, held: bool) {
        let held = held && self.local.audio_muted;
        if held == self.push_to_talk {
            return;
        }
        self.push_to_talk = held;
        let muted = !held && self.local.audio_muted;
        self.command(Command::SetAudioMuted(muted));
    }

    /// The microphone's level in dBFS (measured even while muted), and as a 0-1 meter fill
    /// over the 60 dB below full scale.
    pub fn mic_level(&self) -> (f32, f32) {
        let dbfs = self
            .engine
            .as_ref()
            .map(|e| e.media().local_level_dbfs())
            .unwrap_or(-100.0);
        (dbfs, ((dbfs + 60.0) / 60.0).clamp(0.0, 1.0))
    }

    pub fn play_test_sound(&mut self) {
        self.command(Command::PlayTestSound);
    }

    /// Shares the whole screen the app runs on (on Wayland: what the desktop's own dialog
    /// chooses), at most `fps` frames a second.
    pub fn start_screen_share(&mut self, fps: u32) {
        self.share(crate::engine::ScreenSource::for_this_desktop(), fps);
    }

    /// Shares `source` (a screen or a window from the Share menu).
    pub fn share(&mut self, source: crate::engine::ScreenSource, fps: u32) {
        self.command(Command::StartScreenShare {
            source,
            fps,
            sound: self.share_sound,
        });
    }

    /// Asks for the windows the Share menu offers (answered with `Event::Screens`).
    pub fn list_screens(&mut self) {
        self.command(Command::ListScreens { display: None });
    }

    pub fn stop_screen_share(&mut self) {
        self.command(Command::StopScreenShare);
    }

    pub fn set_camera_on(&mut self, on: bool) {
        self.local.video_enabled = on;
        self.command(Command::SetVideoEnabled(on));
    }

    pub fn send_chat(&mut self) {
        let Some(call) = self.call.as_mut() else {
            return;
        };
        let text = call.draft.trim().to_owned();
        if text.is_empty() {
            return;
        }
        call.draft.clear();
        // Whoever sends wants to see their message, even if they had scrolled up.
        call.chat_jump = true;
        self.command(Command::SendChat(text));
    }

    pub fn send_files(&mut self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        let to = self.call.as_ref().and_then(|c| c.send_target.clone());
        self.command(Command::Transfer(TransferCommand::SendFiles { paths, to }));
    }

    /// Opens the native file dialog on another thread; the answer comes back as a message.
    pub fn pick_files_to_send(&self) {
        self.in_dialog(|| {
            rfd::FileDialog::new()
                .set_title("Send files")
                .pick_files()
                .map(UiMessage::FilesPicked)
        });
    }

    pub fn pick_download_folder(&self) {
        let start = self.settings.download_dir();
        self.in_dialog(move || {
            rfd::FileDialog::new()
                .set_title("Download folder")
                .set_directory(start)
                .pick_folder()
                .map(UiMessage::DownloadFolderPicked)
        });
    }

    pub fn pick_trusted_certificate(&self) {
        self.in_dialog(|| {
            rfd::FileDialog::new()
                .set_title("Trusted certificate (PEM)")
                .add_filter("PEM certificate", &["pem", "crt", "cer"])
                .pick_file()
                .map(UiMessage::CertificatePicked)
        });
    }

    /// Runs a modal system dialog on its own thread (it blocks until the person answers) and
    /// hands its answer back through the UI queue.
    fn in_dialog(&self, dialog: impl FnOnce() -> Option<UiMessage> + Send + 'static) {
        let tx = self.ui_tx.clone();
        let ctx = self.ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("file-dialog".into())
            .spawn(move || {
                if let Some(answer) = dialog()
                    && tx.try_send(answer).is_err()
                {
                    tracing::warn!("the window is gone or not reading: a dialog's answer dropped");
                }
                ctx.request_repaint();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no file dialog");
        }
    }

    pub fn set_download_dir(&mut self, dir: PathBuf) {
        self.settings.download_dir = Some(dir.clone());
        self.save_settings();
        self.command(Command::Transfer(TransferCommand::SetDownloadDir(dir)));
    }

    /// Who may send files without asking, and up to what size; applies at once.
    pub fn set_auto_accept(&mut self, everyone: bool, up_to_mib: u64) {
        self.settings.auto_accept_files = everyone;
        self.settings.auto_accept_max_mib = up_to_mib;
        self.save_settings();
        self.command(Command::Transfer(TransferCommand::SetAutoAccept {
            auto_accept: everyone,
            up_to: mib_to_bytes(up_to_mib),
        }));
    }

    /// Asks the server for a new nickname (in a call: the room sees it at once); the lobby's
    /// field and the saved settings follow once the server agrees.
    pub fn change_nickname(&mut self, nickname: &str) -> Result<(), String> {
        let nickname = crate::services::validate_nickname(nickname.trim())?;
        if self.call.is_some() {
            self.command(Command::SetNickname(nickname));
        } else {
            self.remember_nickname(nickname);
        }
        Ok(())
    }

    /// Our nickname as agreed: in the lobby's field and the saved settings.
    fn remember_nickname(&mut self, nickname: String) {
        self.lobby.nickname_field = nickname.clone();
        self.settings.nickname = nickname;
        self.save_settings();
    }

    pub fn toggle_settings(&mut self) {
        if self.settings_draft.take().is_none() {
            self.open_settings();
        }
    }

    /// The name others see: in a call, the one the server agreed to; else the saved one.
    pub fn current_nickname(&self) -> &str {
        match &self.call {
            Some(call) => &call.me.nickname,
            None => &self.settings.nickname,
        }
    }

    /// Opens the settings window, its fields filled from the current settings.
    pub fn open_settings(&mut self) {
        self.settings_draft = Some(SettingsDraft {
            nickname: self.current_nickname().to_owned(),
            nickname_error: None,
            server: self.settings.server.clone(),
        });
    }

    /// Connects to `server` (`embedded` or a URL; nothing means `embedded`) and remembers it.
    pub fn use_server(&mut self, server: &str) {
        let server = match server.trim() {
            "" => crate::settings::EMBEDDED_SERVER,
            wanted => wanted,
        };
        self.settings.server = server.to_owned();
        self.lobby.server_field = server.to_owned();
        self.save_settings();
        self.connect();
    }

    pub fn set_theme(&mut self, theme: Theme) {
        self.settings.theme = theme;
        self.save_settings();
        apply_theme(&self.ctx, theme);
    }

    /// Opens the download folder in the system's file manager, off the UI thread.
    pub fn open_download_folder(&self) {
        let dir = self.settings.download_dir();
        let _ = std::thread::Builder::new()
            .name("open-folder".into())
            .spawn(move || {
                let _ = std::process::Command::new("xdg-open").arg(dir).status();
            });
    }

    /// The engine input for a microphone choice (real devices open in the engine, off this thread).
    pub fn microphone_input(id: &str) -> AudioInput {
        match devices::mic_choice(id) {
            MicChoice::None => AudioInput::None,
            MicChoice::Tone(hz) => AudioInput::Source(Box::new(ToneSource::new(hz, 0.3))),
            MicChoice::Device(dev) => AudioInput::Device(dev),
        }
    }

    /// The engine output for a speaker choice.
    pub fn speaker_output(&self, id: &str) -> AudioOutput {
        if let Some(make) = &self.services.speaker_override {
            return AudioOutput::Sink(make());
        }
        match devices::speaker_choice(id) {
            SpeakerChoice::Null => AudioOutput::Sink(Box::new(NullSink::new())),
            SpeakerChoice::Device(dev) => AudioOutput::Device(dev),
        }
    }

    pub fn switch_camera(&mut self, id: String) {
        self.settings.camera = id.clone();
        self.save_settings();
        match devices::camera_spec(&id, &self.devices.cameras, rand::random()) {
            Some(spec) => {
                self.command(Command::SetVideoSource(spec));
                if !self.local.video_enabled {
                    self.set_camera_on(true);
                }
            }
            None => self.set_camera_on(false),
        }
    }

    pub fn switch_microphone(&mut self, id: String) {
        self.settings.microphone = id.clone();
        self.save_settings();
        self.command(Command::SetAudioSource(Self::microphone_input(&id)));
    }

    pub fn switch_speaker(&mut self, id: String) {
        self.settings.speaker = id.clone();
        self.save_settings();
        let output = self.speaker_output(&id);
        self.command(Command::SetAudioOutput(output));
    }

    pub fn set_processing(&mut self, settings: ProcessingSettings) {
        self.settings.echo_cancellation = settings.echo_cancellation;
        self.settings.noise_suppression = settings.noise_suppression;
        self.settings.gain_control = settings.gain_control;
        self.save_settings();
        self.command(Command::SetProcessing(settings));
    }

    /// Applies engine events and background results, spending at most `EVENT_BUDGET`.
    pub fn pump(&mut self) {
        // Before draining: a wake-up from here on asks for another pass.
        self.wake_pending.store(false, Ordering::Release);
        while let Ok(msg) = self.ui_rx.try_recv() {
            match msg {
                UiMessage::FilesPicked(paths) => self.send_files(paths),
                UiMessage::DownloadFolderPicked(dir) => self.set_download_dir(dir),
                UiMessage::CertificatePicked(path) => {
                    self.settings.trusted_cert = Some(path);
                    self.save_settings();
                }
                UiMessage::Hosting(Ok(hosting)) => {
                    self.hosting_pending = false;
                    self.toast(format!(
                        "Others on this network can join at {}",
                        hosting.lan_url
                    ));
                    // Move ourselves to the hosted server, back into the same room.
                    let room = self.call.as_ref().map(|c| c.room.clone());
                    self.services.embedded_url = Some(hosting.local_url.clone());
                    self.hosting = Some(hosting);
                    self.settings.server = crate::settings::EMBEDDED_SERVER.into();
                    self.lobby.server_field = self.settings.server.clone();
                    self.connect();
                    self.pending_join = room;
                }
                UiMessage::Hosting(Err(e)) => {
                    self.hosting_pending = false;
                    self.toast(format!("Cannot host on this network: {e}"));
                }
            }
        }
        if let Some(rx) = self.lan_updates.as_mut() {
            while let Ok(rooms) = rx.try_recv() {
                self.lan_rooms = rooms;
            }
        }
        let started = Instant::now();
        while started.elapsed() < EVENT_BUDGET {
            let Some(events) = self.events.as_mut() else {
                return;
            };
            match events.try_recv() {
                Ok(event) => self.apply(event),
                Err(mpsc::error::TryRecvError::Empty) => return,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.events = None;
                    self.connection = Connection::Disconnected {
                        reason: "the engine stopped".into(),
                        retry_in: None,
                    };
                    return;
                }
            }
        }
        // Budget spent: come back next frame for the rest.
        self.ctx.request_repaint();
    }

    /// Whether the window is minimised or hidden, said before each pass and whenever the
    /// engine wakes the app meanwhile. While hidden, nothing of the call is seen: in a room on
    /// the SFU every peer's picture comes in its smallest layer (a 1-pixel tile, newcomers
    /// included), saving the downlink and the decoding; once shown, the next pass sends the
    /// tiles' real widths.
    pub fn set_window_hidden(&mut self, hidden: bool) {
        let was_hidden = std::mem::replace(&mut self.window_hidden, hidden);
        if !hidden {
            if was_hidden {
                self.tile_widths_sent.clear();
            }
            return;
        }
        let smallest: std::collections::HashMap<PeerId, u32> = self
            .call
            .iter()
            .flat_map(|c| &c.peers)
            .map(|p| (p.info.id.clone(), 1))
            .collect();
        if smallest != self.tile_widths_sent {
            self.tile_widths_sent = smallest.clone();
            self.command(crate::engine::Command::SetTileWidths(smallest));
        }
    }

    fn peer_name(&self, id: &PeerId) -> String {
        self.call
            .as_ref()
            .and_then(|c| c.peers.iter().find(|p| &p.info.id == id))
            .map(|p| p.info.nickname.clone())
            .unwrap_or_else(|| "someone".into())
    }

    fn participant(&mut self, id: &PeerId) -> Option<&mut Participant> {
        self.call
            .as_mut()?
            .peers
            .iter_mut()
            .find(|p| &p.info.id == id)
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    pub fn apply(&mut self, event: Event) {
        match event {
            Event::ServerConnected { peer_id } => {
                self.connection = Connection::Connected;
                self.my_id = Some(peer_id);
                if let Some(room) = self.pending_join.take() {
                    self.join(&room);
                }
            }
            Event::ServerDisconnected { reason, retry_in } => {
                self.connection = Connection::Disconnected { reason, retry_in };
            }
            Event::Rooms(rooms) => {
                self.lobby.rooms = rooms
                    .into_iter()
                    .map(|r| (r.name.to_lowercase(), r))
                    .collect();
            }
            Event::RoomUpdated(room) => {
                self.lobby.rooms.insert(room.name.to_lowercase(), room);
            }
            Event::RoomClosed(name) => {
                self.lobby.rooms.remove(&name.to_lowercase());
            }
            Event::Joined {
                room,
                you,
                peers,
                history,
            } => self.on_joined(room, you, peers, history),
            Event::ServerError { code, message } => {
                let text = server_error_text(code, &message);
                if self.lobby.joining.take().is_some() || self.view == View::Lobby {
                    self.lobby.error = Some(text);
                } else {
                    self.toast(text);
                }
            }
            Event::Left => {}
            Event::Resumed { .. } => {
                if let Some(call) = self.call.as_mut() {
                    call.chat.notice(
                        "Back on the server; the call went on".into(),
                        Self::now_ms(),
                    );
                }
            }
            Event::PeerJoined(info) => {
                let name = info.nickname.clone();
                if let Some(call) = self.call.as_mut() {
                    call.peers.push(Participant::new(info));
                    call.chat.notice(format!("{name} joined"), Self::now_ms());
                }
            }
            Event::PeerLeft { peer, reason } => self.on_peer_left(peer, reason),
            Event::NicknameChanged { peer, nickname } => {
                if let Some(call) = self.call.as_mut()
                    && call.me.id == peer
                {
                    call.me.nickname = nickname.clone();
                    self.remember_nickname(nickname);
                } else if let Some(p) = self.participant(&peer) {
                    p.info.nickname = nickname;
                }
            }
            Event::HandChanged { peer, raised_at_ms } => self.on_hand(peer, raised_at_ms),
            Event::Reaction { peer, emoji } => {
                if let Some(call) = self.call.as_mut() {
                    let now = Instant::now();
                    call.reactions.push_back(FloatingReaction {
                        peer,
                        emoji,
                        at: now,
                    });
                    call.forget_old_reactions(now);
                }
            }
            Event::PeerConnecting { peer } | Event::PeerDisconnected { peer } => {
                if let Some(p) = self.participant(&peer) {
                    p.connected = false;
                }
            }
            Event::PeerConnected { peer, .. } => {
                if let Some(p) = self.participant(&peer) {
                    p.connected = true;
                }
            }
            Event::PeerConnectionClosed { peer, .. } => {
                if let Some(p) = self.participant(&peer) {
                    p.connected = false;
                    p.tile.clear_source();
                }
            }
            Event::PeerVideo { peer, video } => {
                if let Some(p) = self.participant(&peer) {
                    p.tile.set_source(video);
                }
            }
            Event::Screens(choices) => {
                self.screen_choices = choices
                    .into_iter()
                    .map(|choice| {
                        let texture = choice.thumbnail.as_ref().map(|t| {
                            self.ctx.load_texture(
                                format!("share-choice-{}", choice.title),
                                egui::ColorImage::from_rgba_unmultiplied(
                                    [t.width, t.height],
                                    &t.pixels,
                                ),
                                egui::TextureOptions::LINEAR,
                            )
                        });
                        (choice, texture)
                    })
                    .collect();
            }
            Event::PeerScreen { peer, video } => {
                if let Some(p) = self.participant(&peer) {
                    p.screen.set_source(video);
                }
            }
            Event::PeerMediaState {
                peer,
                audio,
                video,
                screen,
            } => {
                if let Some(p) = self.participant(&peer) {
                    p.audio_on = audio;
                    p.video_on = video;
                }
                if let Some(call) = self.call.as_mut() {
                    call.note_sharing(&peer, screen);
                }
            }
            Event::PeerStats { peer, stats } => self.on_peer_stats(&peer, *stats),
            Event::Chat(message) => self.on_chat(message),
            Event::ChatNotSent(text) => self.toast(format!("Not sent (offline): {text}")),
            Event::LocalMedia(state) => {
                // While Space is held the engine is unmuted on purpose; the user's own choice
                // (muted) stands until it is let go.
                let chosen_mute = self.local.audio_muted;
                self.local = state;
                if self.push_to_talk {
                    self.local.audio_muted = chosen_mute;
                }
            }
            Event::Devices(list) => self.on_devices(list),
            Event::Camera(state) => self.on_camera(state),
            Event::Transfer(TransferEvent::Update { peer, update }) => {
                self.on_transfer_update(peer, update)
            }
            Event::Transfer(TransferEvent::Problem(p)) | Event::Problem(p) => self.toast(p),
        }
    }

    fn on_joined(
        &mut self,
        room: String,
        you: PeerInfo,
        peers: Vec<PeerInfo>,
        history: Vec<ChatMessage>,
    ) {
        self.lobby.joining = None;
        self.lobby.error = None;
        self.my_id = Some(you.id.clone());
        let mut chat = ChatLog::new(true);
        chat.load_history(&history, &you.id);
        let mut call = CallState::new(room, you, peers, chat);
        if self.settings.speaker_view {
            call.layout = CallLayout::Speaker;
        }
        self.call = Some(call);
        self.view = View::Call;
    }

    fn on_hand(&mut self, peer: PeerId, raised_at_ms: Option<u64>) {
        let name = self.peer_name(&peer);
        let Some(call) = self.call.as_mut() else {
            return;
        };
        let info = if call.me.id == peer {
            Some(&mut call.me)
        } else {
            call.peers
                .iter_mut()
                .find(|p| p.info.id == peer)
                .map(|p| &mut p.info)
        };
        let Some(info) = info else {
            return;
        };
        let newly_raised = info.hand_raised_at_ms.is_none() && raised_at_ms.is_some();
        info.hand_raised_at_ms = raised_at_ms;
        if newly_raised && call.me.id != peer {
            call.chat
                .notice(format!("{name} raised a hand"), Self::now_ms());
        }
    }

    fn on_peer_left(&mut self, peer: PeerId, reason: LeaveReason) {
        let name = self.peer_name(&peer);
        if let Some(call) = self.call.as_mut() {
            call.peers.retain(|p| p.info.id != peer);
            let how = match reason {
                LeaveReason::Left => "left",
                LeaveReason::Disconnected | LeaveReason::Dropped => "disconnected",
                LeaveReason::TimedOut => "lost connection",
            };
            call.chat.notice(format!("{name} {how}"), Self::now_ms());
            if call.send_target.as_ref() == Some(&peer) {
                call.send_target = None;
            }
        }
    }

    /// The peer's figures, and its tile's frame rate since the last ones.
    fn on_peer_stats(&mut self, peer: &PeerId, stats: PeerStats) {
        if let Some(p) = self.participant(peer) {
            let frames = p.tile.frames_decoded();
            let now = Instant::now();
            if let (prev, Some(then)) = p.frames_at_last_stats {
                let secs = now.duration_since(then).as_secs_f64().max(0.001);
                p.fps = frames.saturating_sub(prev) as f64 / secs;
            }
            p.frames_at_last_stats = (frames, Some(now));
            p.stats = Some(stats);
        }
    }

    fn on_devices(&mut self, list: DeviceList) {
        // With no camera chosen yet (a first run starts with it off), use the first real one
        // found.
        let first_real = list.cameras.first().map(|c| format!("camera:{}", c.index));
        self.devices = list;
        self.devices_listed = true;
        if self.settings.camera.is_empty()
            && let Some(id) = first_real
        {
            self.switch_camera(id);
        }
    }

    fn on_camera(&mut self, state: CameraState) {
        match &state {
            CameraState::NoCamera(why) => self.toast(format!("No camera: {why}")),
            CameraState::Busy(why) => self.toast(format!("The camera is busy: {why}")),
            CameraState::Disconnected(why) => self.toast(format!("Camera disconnected: {why}")),
            _ => {}
        }
        self.camera_state = state;
    }

    fn on_transfer_update(&mut self, peer: PeerId, update: TransferUpdate) {
        let peer_name = self.peer_name(&peer);
        let in_background = self.in_background();
        if let Some(call) = self.call.as_mut() {
            let asks_now = update.state == TransferState::AwaitingConsent
                && !call
                    .transfers
                    .get(&(peer.clone(), update.id))
                    .is_some_and(|row| row.update.state == TransferState::AwaitingConsent);
            if asks_now && in_background {
                self.services.notifier.notify(
                    format!("{peer_name} wants to send you a file"),
                    &format!(
                        "{} ({})",
                        update.name,
                        super::call::human_bytes(update.size)
                    ),
                );
            }
            call.transfers.insert(
                (peer.clone(), update.id),
                TransferRow {
                    peer,
                    peer_name,
                    update,
                },
            );
        }
    }

    fn on_chat(&mut self, message: ChatMessage) {
        let Some(me) = self.my_id.clone() else { return };
        let in_background = self.in_background();
        if let Some(call) = self.call.as_mut() {
            let (from_other, nickname, text) = (
                message.from != me,
                message.nickname.clone(),
                message.text.clone(),
            );
            if call.chat.push(message, &me) && from_other && in_background {
                self.services
                    .notifier
                    .notify(format!("{nickname} in {}", call.room), &text);
            }
        }
    }

    /// The window is known not to have the keyboard focus (in another window, minimised):
    /// news gets a desktop notification. Unknown counts as in front.
    fn in_background(&self) -> bool {
        self.ctx.input(|i| i.viewport().focused) == Some(false)
    }
}

impl Participant {
    fn new(info: PeerInfo) -> Self {
        Participant {
            tile: VideoTile::new(info.id.as_str()),
            screen: VideoTile::new(&format!("{}-screen", info.id)),
            sharing: false,
            info,
            audio_on: true,
            video_on: true,
            connected: false,
            stats: None,
            frames_at_last_stats: (0, None),
            fps: 0.0,
            spoke_at: None,
        }
    }
}

/// What a refusal from the server means to the person who asked, in their words.
fn server_error_text(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::RoomFull => format!("That room is full. {message}"),
        ErrorCode::NicknameTaken => {
            format!("Someone in that room already uses that nickname. {message}")
        }
        ErrorCode::BadNickname => format!("That nickname cannot be used: {message}"),
        ErrorCode::BadRoomName => format!("That room name cannot be used: {message}"),
        ErrorCode::PasswordRequired => {
            "That room has a password: type it in the Password field and join again.".to_owned()
        }
        ErrorCode::WrongPassword => "That password is not right for the room.".to_owned(),
        ErrorCode::TokenRequired
        | ErrorCode::BadToken
        | ErrorCode::TokenExpired
        | ErrorCode::TokenWrongRoom => {
            format!("This server only lets in people with an invitation: {message}")
        }
        _ => format!("{message} ({code})"),
    }
}

/// The settings count file sizes in MiB; the transfer machine in bytes.
fn mib_to_bytes(mib: u64) -> u64 {
    mib.saturating_mul(1 << 20)
}

/// Sets egui's colours for `theme`.
fn apply_theme(ctx: &egui::Context, theme: Theme) {
    ctx.set_theme(match theme {
        Theme::Dark => egui::ThemePreference::Dark,
        Theme::Light => egui::ThemePreference::Light,
        Theme::FollowSystem => egui::ThemePreference::System,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_with(peers: &[&str]) -> CallState {
        let info = |id: &str| PeerInfo {
            id: PeerId(id.into()),
            nickname: id.into(),
            hand_raised_at_ms: None,
        };
        let mut call = CallState::new(
            "r".into(),
            info("me"),
            peers.iter().map(|p| info(p)).collect(),
            ChatLog::new(true),
        );
        call.layout = CallLayout::Speaker;
        call
    }

    #[test]
    fn the_active_speaker_holds_through_a_short_interruption_and_a_pin_wins() {
        let mut call = call_with(&["a", "b"]);
        let (a, b) = (PeerId("a".into()), PeerId("b".into()));
        let t0 = Instant::now();
        assert_eq!(call.main_tile(), Some(0), "no one has spoken: the first");
        call.note_speaking(std::slice::from_ref(&b), t0);
        assert_eq!(call.main_tile(), Some(1));
        // A speaks up while b paused for half a second: b stays large.
        call.note_speaking(std::slice::from_ref(&a), t0 + Duration::from_millis(500));
        assert_eq!(call.active_speaker.as_ref(), Some(&b));
        // B quiet for the hold: a takes over.
        call.note_speaking(std::slice::from_ref(&a), t0 + Duration::from_millis(1600));
        assert_eq!(call.active_speaker.as_ref(), Some(&a));
        assert_eq!(call.main_tile(), Some(0));
        // Pinned b is large whoever speaks; the grid has no large tile.
        call.pinned = Some(b);
        assert_eq!(call.main_tile(), Some(1));
        call.layout = CallLayout::Grid;
        assert_eq!(call.main_tile(), None);
    }
}

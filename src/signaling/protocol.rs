//! Signaling protocol v1: the typed JSON messages between client and server, their limits and
//! validation rules. Pure data and parsing; depends only on `ids`.
//! The wire format is documented in `docs/protocol.md`; `tests/protocol_doc.rs` keeps the two in step.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this build speaks. A client's `hello` must carry exactly this number.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest WebSocket message (and frame) either side accepts.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Longest chat message, in characters.
pub const MAX_CHAT_CHARS: usize = 2000;
/// Longest nickname, in characters.
pub const MAX_NICKNAME_CHARS: usize = 32;
/// Longest room name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 64;
/// How many chat messages a room keeps for late joiners.
pub const CHAT_HISTORY_LEN: usize = 100;
/// The reactions a client may send (`react`); anything else is refused. Single code points
/// without variation selectors, so that every client's emoji font can draw them.
pub const REACTIONS: &[&str] = &["👍", "👏", "😂", "😮", "❤", "🎉"];

pub use crate::ids::{IceServer, PeerId};

/// Messages a client sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Must be the first message on a connection.
    Hello {
        version: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// After a reconnect: the latest rejoin token, to be given the same peer id again (if
        /// the token is valid and no live connection holds that id), so that the others keep
        /// their connections to this client instead of seeing a new participant.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<String>,
    },
    /// One-shot list of public rooms, answered with `room_list`.
    ListRooms,
    /// `room_list` now, then `room_updated` / `room_closed` as rooms change.
    SubscribeRooms,
    UnsubscribeRooms,
    /// Join (creating it if needed) a room under a nickname.
    Join {
        room: String,
        nickname: String,
        /// Password, token, rejoin token and, for a new room, its privacy.
        #[serde(flatten)]
        access: JoinAccess,
    },
    Leave,
    Chat {
        text: String,
    },
    /// Signaling payload for another peer in the same room. `from` is optional and, if present,
    /// must be the sender's own id: the server always stamps the real sender.
    Relay {
        to: PeerId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<PeerId>,
        payload: serde_json::Value,
    },
    SetNickname {
        nickname: String,
    },
    /// Raise or lower your hand in your room.
    SetHand {
        raised: bool,
    },
    /// A reaction shown briefly over your tile to everyone in the room: one of [`REACTIONS`].
    React {
        emoji: String,
    },
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    /// In a room on the SFU: our offer to publish camera and microphone, as a complete SDP
    /// (candidates gathered), answered with `sfu_published`.
    SfuPublish {
        sdp: String,
    },
    /// In a room on the SFU: our answer to the latest `sfu_offer`.
    SfuAnswer {
        sdp: String,
    },
    /// In a room on the SFU: a trickled ICE candidate of our publishing or subscribing
    /// connection (clients that send complete SDPs need none).
    SfuCandidate {
        target: SfuTarget,
        candidate: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mline_index: Option<u16>,
    },
    /// In a room on the SFU: which simulcast layer of `peer_id`'s camera to receive, 0 the
    /// smallest to 2 the largest (as its tile's size and our downlink allow).
    SfuLayer {
        peer_id: PeerId,
        layer: u8,
    },
    /// In a room on the SFU: `peer_id`'s camera arrived damaged here; the server asks its
    /// encoder for a keyframe (at most twice a second per publisher).
    SfuKeyframe {
        peer_id: PeerId,
    },
    /// In a room on the SFU: our connections with it failed (a path that stopped carrying
    /// media); the server starts our membership over and answers `sfu_moved`.
    SfuRestart,
}

/// The highest `sfu_layer` (layers are 0, 1 and 2).
pub const SFU_TOP_LAYER: u8 = 2;

/// Which of a client's two connections with the SFU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SfuTarget {
    Publisher,
    Subscriber,
}

/// One media section of an `sfu_offer`: whose media it carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SfuStream {
    pub mid: String,
    pub peer_id: PeerId,
    /// `audio`, `video` (the camera) or `screen` (a screen share's video).
    pub kind: String,
}

/// The `type` tags of [`ClientMessage`], used to tell an unknown type from a malformed message.
pub const CLIENT_MESSAGE_TYPES: &[&str] = &[
    "hello",
    "list_rooms",
    "subscribe_rooms",
    "unsubscribe_rooms",
    "join",
    "leave",
    "chat",
    "relay",
    "set_nickname",
    "set_hand",
    "react",
    "ping",
    "sfu_publish",
    "sfu_answer",
    "sfu_candidate",
    "sfu_layer",
    "sfu_keyframe",
    "sfu_restart",
];

/// Messages the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome {
        version: u32,
        peer_id: PeerId,
        ice_servers: Vec<IceServer>,
        limits: Limits,
    },
    RoomList {
        rooms: Vec<RoomInfo>,
    },
    /// A room appeared or its head count changed (sent to room-list subscribers).
    RoomUpdated {
        room: RoomInfo,
    },
    /// A room emptied and no longer exists (sent to room-list subscribers).
    RoomClosed {
        name: String,
    },
    Joined {
        room: String,
        you: PeerInfo,
        peers: Vec<PeerInfo>,
        history: Vec<ChatMessage>,
        capacity: usize,
        /// The room is not in the public list.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        private: bool,
        /// Lets this client come back to the room after a reconnect without the password or
        /// join token, for a few minutes. Send it as `rejoin_token` in `join`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejoin_token: Option<String>,
        /// The room is on the SFU (`room_mode` follows): connect to no one; publish instead.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        sfu: bool,
    },
    /// A fresh rejoin token replacing the one from `joined`, sent while you stay in the room
    /// so a reconnect after a long call still gets back in.
    RejoinToken {
        token: String,
    },
    PeerJoined {
        room: String,
        peer: PeerInfo,
    },
    PeerLeft {
        room: String,
        peer_id: PeerId,
        reason: LeaveReason,
    },
    /// Confirms your own `leave`.
    Left {
        room: String,
    },
    Chat {
        message: ChatMessage,
    },
    Relay {
        from: PeerId,
        payload: serde_json::Value,
    },
    NicknameChanged {
        peer_id: PeerId,
        nickname: String,
    },
    /// A peer in your room (you too) raised or lowered their hand.
    HandChanged {
        peer_id: PeerId,
        /// Server time the hand went up, milliseconds since the Unix epoch: raised hands are
        /// taken in this order. Absent when the hand is down.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raised_at_ms: Option<u64>,
    },
    /// A peer in your room (you too) reacted.
    Reaction {
        peer_id: PeerId,
        emoji: String,
    },
    /// Your room runs on the SFU (`sfu: true`): publish with `sfu_publish` and take the
    /// others' media from `sfu_offer`, instead of connecting to each peer.
    RoomMode {
        sfu: bool,
    },
    /// Your room's media moved to another SFU (the one it was on was lost): close both SFU
    /// connections and publish again; `sfu_offer` follows as after `room_mode`.
    SfuMoved,
    /// The SFU's answer to your `sfu_publish`.
    SfuPublished {
        sdp: String,
    },
    /// The others' media on one connection: answer with `sfu_answer`. Sent again whenever a
    /// publisher comes or goes.
    SfuOffer {
        sdp: String,
        streams: Vec<SfuStream>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<u64>,
    },
    Error {
        code: ErrorCode,
        message: String,
        /// True when the server closes the connection right after this error.
        fatal: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub name: String,
    pub people: usize,
    pub capacity: usize,
    /// Joining needs the room's password.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
}

/// The optional parts of a `join`. Its `Debug` hides the secrets.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccess {
    /// The room's password; when the room is created, sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// A join token (`huddle token`), needed when the server requires tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The `rejoin_token` from an earlier `joined`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin_token: Option<String>,
    /// When the room is created: keep it out of the public list.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// When the room is created on a server with an SFU: a large room, on the SFU from its
    /// first member, up to the server's large-room capacity. Ignored without an SFU.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub large: bool,
    /// Server-side only, never on the wire: the password's hash, put here (and the password
    /// taken out) by the connection before the join reaches the hub, so the slow hashing runs
    /// off the hub (`access::hash_join_password`).
    #[serde(skip)]
    pub password_hash: Option<String>,
}

impl fmt::Debug for JoinAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |s: &Option<String>| if s.is_some() { "Some(…)" } else { "None" };
        f.debug_struct("JoinAccess")
            .field("password", &shown(&self.password))
            .field("token", &shown(&self.token))
            .field("rejoin_token", &shown(&self.rejoin_token))
            .field("private", &self.private)
            .field("password_hash", &shown(&self.password_hash))
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub id: PeerId,
    pub nickname: String,
    /// When this peer's hand went up (see `hand_changed`), if it is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hand_raised_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Server-wide increasing id.
    pub id: u64,
    pub from: PeerId,
    pub nickname: String,
    pub text: String,
    /// Server time, milliseconds since the Unix epoch.
    pub time_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// The peer sent `leave`.
    Left,
    /// The peer's connection closed.
    Disconnected,
    /// The peer stopped answering heartbeats.
    TimedOut,
    /// The server dropped the peer (flooding, too slow to read, ...).
    Dropped,
}

/// The server's limits, announced in `welcome` so clients can check before sending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_chat_chars: usize,
    pub max_nickname_chars: usize,
    pub max_room_name_chars: usize,
    pub max_room_size: usize,
}

/// Stable, machine-readable error codes. `docs/protocol.md` lists what each means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    VersionMismatch,
    HelloRequired,
    HelloTimeout,
    Malformed,
    UnknownType,
    BinaryNotSupported,
    TooLarge,
    RoomFull,
    BadRoomName,
    BadNickname,
    NicknameTaken,
    NotInRoom,
    AlreadyInRoom,
    PeerNotFound,
    ForgedSender,
    BadChat,
    RateLimited,
    TooManyRooms,
    ServerFull,
    SlowReader,
    ShuttingDown,
    PasswordRequired,
    WrongPassword,
    TokenRequired,
    BadToken,
    TokenExpired,
    TokenWrongRoom,
    TooManyJoins,
    TooManyConnections,
    Unavailable,
    NotSfuRoom,
    SfuUnavailable,
}

impl ErrorCode {
    /// Every code, for documentation checks. Keep in step with the enum.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::VersionMismatch,
        ErrorCode::HelloRequired,
        ErrorCode::HelloTimeout,
        ErrorCode::Malformed,
        ErrorCode::UnknownType,
        ErrorCode::BinaryNotSupported,
        ErrorCode::TooLarge,
        ErrorCode::RoomFull,
        ErrorCode::BadRoomName,
        ErrorCode::BadNickname,
        ErrorCode::NicknameTaken,
        ErrorCode::NotInRoom,
        ErrorCode::AlreadyInRoom,
        ErrorCode::PeerNotFound,
        ErrorCode::ForgedSender,
        ErrorCode::BadChat,
        ErrorCode::RateLimited,
        ErrorCode::TooManyRooms,
        ErrorCode::ServerFull,
        ErrorCode::SlowReader,
        ErrorCode::ShuttingDown,
        ErrorCode::PasswordRequired,
        ErrorCode::WrongPassword,
        ErrorCode::TokenRequired,
        ErrorCode::BadToken,
        ErrorCode::TokenExpired,
        ErrorCode::TokenWrongRoom,
        ErrorCode::TooManyJoins,
        ErrorCode::TooManyConnections,
        ErrorCode::Unavailable,
        ErrorCode::NotSfuRoom,
        ErrorCode::SfuUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::HelloTimeout => "hello_timeout",
            ErrorCode::Malformed => "malformed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::BadRoomName => "bad_room_name",
            ErrorCode::BadNickname => "bad_nickname",
            ErrorCode::NicknameTaken => "nickname_taken",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::AlreadyInRoom => "already_in_room",
            ErrorCode::PeerNotFound => "peer_not_found",
            ErrorCode::ForgedSender => "forged_sender",
            ErrorCode::BadChat => "bad_chat",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::SlowReader => "slow_reader",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::PasswordRequired => "password_required",
            ErrorCode::WrongPassword => "wrong_password",
            ErrorCode::TokenRequired => "token_required",
            ErrorCode::BadToken => "bad_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenWrongRoom => "token_wrong_room",
            ErrorCode::TooManyJoins => "too_many_joins",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotSfuRoom => "not_sfu_room",
            ErrorCode::SfuUnavailable => "sfu_unavailable",
        }
    }

    /// Errors that refuse a `join`: retrying the same join unchanged would fail again.
    pub fn refuses_join(self) -> bool {
        matches!(
            self,
            ErrorCode::RoomFull
                | ErrorCode::BadRoomName
                | ErrorCode::BadNickname
                | ErrorCode::NicknameTaken
                | ErrorCode::TooManyRooms
                | ErrorCode::PasswordRequired
                | ErrorCode::WrongPassword
                | ErrorCode::TokenRequired
                | ErrorCode::BadToken
                | ErrorCode::TokenExpired
                | ErrorCode::TokenWrongRoom
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an incoming text frame is not a valid client message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("message has no string field \"type\"")]
    MissingType,
    #[error("unknown message type \"{0}\"")]
    UnknownType(String),
    #[error("invalid \"{kind}\" message: {detail}")]
    Invalid { kind: String, detail: String },
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownType(_) => ErrorCode::UnknownType,
            _ => ErrorCode::Malformed,
        }
    }
}

/// Decodes one client text frame. The fast path is a single typed parse; only a failure pays
/// for a second, untyped parse to say precisely what was wrong.
pub fn decode_client(text: &str) -> Result<ClientMessage, DecodeError> {
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(msg) => Ok(msg),
        Err(typed_err) => Err(classify(text, typed_err)),
    }
}

/// Decodes one server text frame (used by clients).
pub fn decode_server(text: &str) -> Result<ServerMessage, DecodeError> {
    serde_json::from_str::<ServerMessage>(text).map_err(|e| DecodeError::Invalid {
        kind: "server".into(),
        detail: e.to_string(),
    })
}

fn classify(text: &str, typed_err: serde_json::Error) -> DecodeError {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return DecodeError::NotJson(e.to_string()),
    };
    let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
        return DecodeError::MissingType;
    };
    if !CLIENT_MESSAGE_TYPES.contains(&kind) {
        // Cap what we echo back: the type string came from the network.
        return DecodeError::UnknownType(kind.chars().take(64).collect());
    }
    DecodeError::Invalid {
        kind: kind.to_owned(),
        detail: typed_err.to_string(),
    }
}

/// Serializes a message. Our message types contain only strings, numbers and JSON values, so
/// serialization cannot fail; the fallback exists only to avoid a panic path.
pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).unwrap_or_else(|e| {
        format!(
            r#"{{"type":"error","code":"malformed","message":"encode failed: {e}","fatal":false}}"#
        )
    })
}

/// Checks and normalises a room name: trimmed, 1..=64 characters, letters, digits, spaces and
/// `-_.'#` only. Returns the name as it will be shown.
pub fn validate_room_name(name: &str) -> Result<String, String> {
    validate_name(name, MAX_ROOM_NAME_CHARS, "room name")
}

/// Checks and normalises a nickname: same rules as room names, at most 32 characters.
pub fn validate_reaction(emoji: &str) -> Result<(), String> {
    if REACTIONS.contains(&emoji) {
        Ok(())
    } else {
        Err(format!("unknown reaction; one of {}", REACTIONS.join(" ")))
    }
}

pub fn validate_nickname(name: &str) -> Result<String, String> {
    validate_name(name, MAX_NICKNAME_CHARS, "nickname")
}

fn validate_name(name: &str, max_chars: usize, what: &str) -> Result<String, String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(format!("{what} is empty"));
    }
    let count = trimmed.chars().count();
    if count > max_chars {
        return Err(format!(
            "{what} is {count} characters; the limit is {max_chars}"
        ));
    }
    if let Some(bad) = trimmed
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '\'' | '#')))
    {
        return Err(format!("{what} may not contain {bad:?}"));
    }
    // Collapse runs of spaces so "a  b" and "a b" cannot look alike but differ.
    let mut normalised = String::with_capacity(trimmed.len());
    let mut last_space = false;
    for c in trimmed.chars() {
        if c == ' ' {
            if !last_space {
                normalised.push(c);
            }
            last_space = true;
        } else {
            normalised.push(c);
            last_space = false;
        }
    }
    Ok(normalised)
}

/// Checks a chat text: non-empty after trimming, at most [`MAX_CHAT_CHARS`] characters, no
/// control characters other than newline and tab.
pub fn validate_chat(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("chat message is empty".into());
    }
    let count = trimmed.chars().count();
    if count > MAX_CHAT_CHARS {
        return Err(format!(
            "chat message is {count} characters; the limit is {MAX_CHAT_CHARS}"
        ));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err("chat message contains control characters".into());
    }
    Ok(trimmed.to_owned())
}

/// Parses an `--ice-server` argument: `stun:HOST:PORT`, or `turn:USER:PASS@HOST:PORT[?query]`
/// (also `turns:`), where user and password may be percent-encoded.
pub fn parse_ice_server(arg: &str) -> Result<IceServer, String> {
    let (scheme, rest) = arg
        .split_once(':')
        .ok_or_else(|| format!("ICE server {arg:?} has no scheme (stun:, turn: or turns:)"))?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "stun" | "stuns" | "turn" | "turns") {
        return Err(format!("ICE server {arg:?}: unknown scheme {scheme:?}"));
    }
    let rest = rest.trim_start_matches("//");
    let (userinfo, host) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    if host.is_empty() {
        return Err(format!("ICE server {arg:?} has no host"));
    }
    let (username, credential) = match userinfo {
        Some(u) => {
            let (user, pass) = u
                .split_once(':')
                .ok_or_else(|| format!("ICE server {arg:?}: credentials must be USER:PASS"))?;
            (Some(percent_decode(user)?), Some(percent_decode(pass)?))
        }
        None => (None, None),
    };
    if scheme.starts_with("turn") && username.is_none() {
        return Err(format!("TURN server {arg:?} needs USER:PASS@ credentials"));
    }
    Ok(IceServer {
        urls: vec![format!("{scheme}:{host}")],
        username,
        credential,
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("credentials in {s:?} are not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_tells_malformed_from_unknown() {
        assert!(matches!(
            decode_client("{not json"),
            Err(DecodeError::NotJson(_))
        ));
        assert_eq!(decode_client(r#"{"x":1}"#), Err(DecodeError::MissingType));
        assert_eq!(
            decode_client(r#"{"type":"launch_missiles"}"#),
            Err(DecodeError::UnknownType("launch_missiles".into()))
        );
        let err = decode_client(r#"{"type":"join","room":5}"#).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Malformed);
        assert!(matches!(err, DecodeError::Invalid { ref kind, .. } if kind == "join"));
    }

    #[test]
    fn every_client_type_is_listed() {
        let samples = [
            ClientMessage::Hello {
                version: 1,
                client: None,
                resume: None,
            },
            ClientMessage::ListRooms,
            ClientMessage::SubscribeRooms,
            ClientMessage::UnsubscribeRooms,
            ClientMessage::Join {
                room: "r".into(),
                nickname: "n".into(),
                access: JoinAccess::default(),
            },
            ClientMessage::Leave,
            ClientMessage::Chat { text: "t".into() },
            ClientMessage::Relay {
                to: "p".into(),
                from: None,
                payload: serde_json::json!({}),
            },
            ClientMessage::SetNickname {
                nickname: "n".into(),
            },
            ClientMessage::SetHand { raised: true },
            ClientMessage::React {
                emoji: "👍".into()
            },
            ClientMessage::Ping { nonce: None },
            ClientMessage::SfuPublish { sdp: "o".into() },
            ClientMessage::SfuAnswer { sdp: "a".into() },
            ClientMessage::SfuCandidate {
                target: SfuTarget::Subscriber,
                candidate: "candidate:1".into(),
                sdp_mid: None,
                sdp_mline_index: None,
            },
            ClientMessage::SfuLayer {
                peer_id: "p".into(),
                layer: 1,
            },
            ClientMessage::SfuKeyframe {
                peer_id: "p".into(),
            },
            ClientMessage::SfuRestart,
        ];
        assert_eq!(samples.len(), CLIENT_MESSAGE_TYPES.len());
        for msg in samples {
            let v: serde_json::Value = serde_json::from_str(&encode(&msg)).unwrap();
            let kind = v["type"].as_str().unwrap();
            assert!(CLIENT_MESSAGE_TYPES.contains(&kind), "{kind} not listed");
        }
    }

    #[test]
    fn relayed_numbers_survive_decode_and_encode_bit_exact() {
        // Found by the decode fuzzer: without serde_json's float_roundtrip this came back as 3e37.
        let text = r#"{"type":"relay","to":"p","payload":{"x":2.9999999999999997e37,"y":0.1}}"#;
        let msg = decode_client(text).unwrap();
        let ClientMessage::Relay { payload, .. } = &msg else {
            panic!("{msg:?}")
        };
        assert_eq!(payload["x"].as_f64(), Some(2.9999999999999997e37));
        assert_eq!(decode_client(&encode(&msg)).unwrap(), msg);
    }

    #[test]
    fn join_access_is_flat_optional_and_hidden_from_debug() {
        let plain = decode_client(r#"{"type":"join","room":"r","nickname":"n"}"#).unwrap();
        assert_eq!(
            plain,
            ClientMessage::Join {
                room: "r".into(),
                nickname: "n".into(),
                access: JoinAccess::default(),
            }
        );
        let full = decode_client(
            r#"{"type":"join","room":"r","nickname":"n","password":"pw","token":"t","private":true}"#,
        )
        .unwrap();
        let ClientMessage::Join { access, .. } = &full else {
            panic!("not a join: {full:?}");
        };
        assert_eq!(access.password.as_deref(), Some("pw"));
        assert_eq!(access.token.as_deref(), Some("t"));
        assert!(access.private);
        let debug = format!("{full:?}");
        assert!(
            !debug.contains("pw\"") && !debug.contains("\"t\""),
            "{debug}"
        );
        // Round trip keeps the wire format flat.
        let v: serde_json::Value = serde_json::from_str(&encode(&full)).unwrap();
        assert_eq!(v["password"], "pw");
        assert!(
            decode_client(r#"{"type":"join","room":"r","nickname":"n","private":"yes"}"#).is_err()
        );
    }

    #[test]
    fn names_are_checked_and_normalised() {
        assert_eq!(validate_room_name("  Team  Sync ").unwrap(), "Team Sync");
        assert_eq!(validate_nickname("Zoë").unwrap(), "Zoë");
        assert!(validate_nickname("").is_err());
        assert!(validate_nickname("   ").is_err());
        assert!(validate_nickname("a\u{0}b").is_err());
        assert!(validate_nickname("<script>").is_err());
        assert!(validate_nickname(&"x".repeat(33)).is_err());
        assert!(validate_nickname(&"x".repeat(32)).is_ok());
        assert!(validate_room_name(&"r".repeat(65)).is_err());
    }

    #[test]
    fn chat_rules() {
        assert_eq!(validate_chat("  hi there \n").unwrap(), "hi there");
        assert!(validate_chat(" \n ").is_err());
        assert!(validate_chat("bell\u{7}").is_err());
        assert!(validate_chat("line\nbreak").is_ok());
        assert!(validate_chat(&"é".repeat(MAX_CHAT_CHARS)).is_ok());
        assert!(validate_chat(&"é".repeat(MAX_CHAT_CHARS + 1)).is_err());
    }

    #[test]
    fn ice_server_arguments() {
        let stun = parse_ice_server("stun:stun.example.org:3478").unwrap();
        assert_eq!(stun.urls, vec!["stun:stun.example.org:3478"]);
        assert_eq!(stun.username, None);
        let turn =
            parse_ice_server("turn:al%40x:p%3Ass@turn.example.org:3478?transport=udp").unwrap();
        assert_eq!(turn.urls, vec!["turn:turn.example.org:3478?transport=udp"]);
        assert_eq!(turn.username.as_deref(), Some("al@x"));
        assert_eq!(turn.credential.as_deref(), Some("p:ss"));
        assert!(parse_ice_server("turn:turn.example.org").is_err());
        assert!(parse_ice_server("http://x").is_err());
        assert!(parse_ice_server("stun:").is_err());
        assert!(parse_ice_server("turn:u:%zz@h").is_err());
    }
}

//! Huddle: native desktop video chat.
//!
//! Module map (dependencies point down the list only):
//! - `signaling`: WebSocket protocol, room server, client actor.
//! - `media`: sources, codecs, conversion, pipeline threads, jitter buffer, mixing.

pub mod media;
pub mod signaling;

//! Identities and settings shared below the front ends: a peer's id on the signaling server
//! and an ICE server's address and credentials. Plain data; imports nothing from the crate, so
//! `signaling`, `rtc`, `transfer` and `chat` can all use it without importing each other.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A connection's identity on the server, assigned in `welcome`. Opaque to clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerId(pub String);

impl PeerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for PeerId {
    fn from(s: &str) -> Self {
        PeerId(s.to_owned())
    }
}

/// An ICE server (STUN or TURN) as WebRTC's `RTCIceServer` expects it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

//! Signaling: the WebSocket protocol (`protocol`), the room state machine (`hub`), the server
//! (`server`), join rules (`access`), the Redis cluster hub (`cluster`), what connections and a
//! hub backend exchange (`hub_link`, which keeps `server` and `cluster` from using each other),
//! TURN credentials (`turn`), the guest page served on the same port (`web`), webhooks for
//! operators (`webhook`), the Janus SFU's control client (`janus`) and the
//! orchestrator that puts big rooms on it (`sfu`), and the client actor
//! (`client`). Depends on nothing else in the crate.

pub mod access;
pub mod client;
pub mod cluster;
pub mod hub;
mod hub_link;
pub mod janus;
pub mod protocol;
pub mod server;
pub mod sfu;
pub mod turn;
pub mod web;
pub mod webhook;

pub use protocol::{PROTOCOL_VERSION, PeerId};
pub use server::{ServerConfig, ServerHandle};

//! What connection tasks and a hub backend (the in-memory hub actor or the Redis cluster hub)
//! say to each other, and the wall clock they stamp with. Depends on `signaling::{hub,
//! protocol}` only, so the server and the cluster hub both use it without using each other.

use super::hub::{ConnId, HubInput};
use super::protocol::{ErrorCode, PeerId};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// What a connection task sends the hub actor. Registration carries the outbox, which the
/// state machine never sees.
pub(super) enum HubMsg {
    /// A connection finished its hello. The backend gives it `resume` if that id is free
    /// here (a client taking its id back after a reconnect), else `fresh`, and answers with
    /// the id given.
    Register {
        conn: ConnId,
        fresh: PeerId,
        resume: Option<PeerId>,
        outbox: mpsc::Sender<Outgoing>,
        assigned: oneshot::Sender<PeerId>,
    },
    Input(HubInput),
}

/// What the hub puts in a connection's outbox.
pub(super) enum Outgoing {
    /// An encoded message to write.
    Frame(Utf8Bytes),
    /// Send this fatal error and close (the cluster lost Redis, ...).
    Close(ErrorCode, &'static str),
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

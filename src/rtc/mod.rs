//! WebRTC: one `PeerSession` actor per remote peer around a webrtc 0.21 PeerConnection,
//! the negotiation state machine, RTP frame reassembly, the bandwidth estimator and the RTCP
//! feedback taps, and the runtime whose sockets send DTLS handshake datagrams twice.
//! Depends on `media` (pipelines) and `ids` (peer ids, ICE servers).

pub mod assembler;
pub mod estimator;
pub mod feedback;
pub mod handshake_copies;
pub mod negotiation;
pub mod published_estimate;
pub mod quality;
pub mod session;

use negotiation::Signal;
use serde::{Deserialize, Serialize};

/// A signal addressed to one session between two peers: the relay `payload` Huddle peers send.
/// A new `session` id in an offer means the sender started over with a fresh connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub session: u32,
    #[serde(flatten)]
    pub signal: Signal,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RtcError {
    /// Building the connection failed (sockets, codecs); retrying may help if sockets were short.
    #[error("cannot set up the peer connection: {0}")]
    Setup(String),
    /// The remote's offer/answer was unusable or out of step.
    #[error("negotiation failed: {0}")]
    Negotiation(String),
}

impl RtcError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RtcError::Setup(_))
    }
}

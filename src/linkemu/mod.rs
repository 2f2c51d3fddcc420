//! A userspace link emulator for tests and benchmarks (this kernel has no `netem`): two network
//! namespaces, each with a TUN device, and a forwarder that moves IP packets between them through
//! `model`'s per-direction impairments (delay, jitter, loss, bursts, bottleneck, outages).
//! Side A is `198.18.0.1`, side B `198.18.0.2` (RFC 2544 benchmark range); nothing leaves the
//! machine. Needs root (namespaces, TUN). Depends on nothing else in the crate.

pub mod model;
mod tun;

pub use model::{DirectionStats, LinkProfile, LinkSpec, Loss};
pub use tun::LinkEmulator;

/// Address of side A inside its namespace.
pub const ADDR_A: &str = "198.18.0.1";
/// Address of side B inside its namespace.
pub const ADDR_B: &str = "198.18.0.2";

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Not root, no `ip`, no `/dev/net/tun`: the emulator cannot run on this machine.
    #[error("the link emulator cannot run here: {0}")]
    Unavailable(String),
    #[error("link emulator setup failed: {0}")]
    Setup(String),
}

/// One end of the emulated link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn addr(self) -> &'static str {
        match self {
            Side::A => ADDR_A,
            Side::B => ADDR_B,
        }
    }
}

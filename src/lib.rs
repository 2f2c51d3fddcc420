//! Huddle: native desktop video chat.
//!
//! Module map (dependencies point down the list only):
//! - `signaling`: WebSocket protocol, room server, client actor.
//! - `bench`: `huddle bench`, the benchmark over real processes on loopback.
//! - `headless`: the headless peer (`huddle join --headless`), JSON-lines event log.
//! - `engine`: the bridge front ends drive (commands in, events out).
//! - `transfer`: file transfer protocol, state machine and I/O actor.
//! - `rtc`: peer sessions (webrtc), negotiation, RTP reassembly.
//! - `procstat`: a process's CPU and memory from /proc (reporting, benchmarks).
//! - `media`: sources, codecs, conversion, pipeline threads, jitter buffer, mixing.

pub mod bench;
pub mod engine;
pub mod headless;
pub mod media;
pub mod procstat;
pub mod rtc;
pub mod signaling;
pub mod transfer;

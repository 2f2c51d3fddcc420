//! Huddle: native desktop video chat.
//!
//! Module map, front ends first; dependencies point down the list only:
//! - `ui`: the desktop app (egui); talks to the engine and `services` only.
//! - `services`: what the app needs besides the engine (hosted server, LAN rooms, device choices).
//! - `headless`: the headless peer (`huddle join --headless`), JSON-lines event log.
//! - `bench`: `huddle bench`: a real server and headless peer processes on loopback, measured.
//! - `engine`: the bridge front ends drive (commands in, events out); owns the mesh.
//! - `chat`, `settings`, `invite`: plain models the front ends use.
//! - `lan`: rooms announced and found on the local network (mDNS).
//! - `rtc`: peer sessions (webrtc), negotiation, RTP reassembly.
//! - `transfer`: file-transfer protocol, state machine and I/O actor.
//! - `signaling`: WebSocket protocol, room server, client actor.
//! - `media`: sources, codecs, conversion, pipeline threads, jitter buffer, mixing.
//! - `procstat`: a process's CPU and memory from /proc.
//! - `ids`: peer ids and ICE server settings, shared by everything below the engine.
//! - `linkemu`: a userspace link emulator (namespaces, TUN) for network tests and benchmarks.
//! - `xvfb`: a virtual X display for the benchmark and tests.

// House rule: no unwrap outside tests (clippy.toml allows it in tests).
#![warn(clippy::unwrap_used)]

pub mod bench;
pub mod chat;
pub mod engine;
pub mod headless;
pub mod ids;
pub mod invite;
pub mod lan;
pub mod linkemu;
pub mod media;
pub mod notify;
pub mod procstat;
pub mod rtc;
pub mod services;
pub mod settings;
pub mod signaling;
pub mod transfer;
pub mod ui;
pub mod xvfb;

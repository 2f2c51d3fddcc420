//! The pure signaling modules of Huddle, compiled from the main crate's own sources so the
//! fuzzers exercise exactly the code the server runs, without the media and UI dependencies.
//! They sit at this crate's root, so their `super::` imports find each other.
#![allow(dead_code)]

#[path = "../../src/signaling/access.rs"]
pub mod access;
#[path = "../../src/signaling/hub.rs"]
pub mod hub;
#[path = "../../src/signaling/protocol.rs"]
pub mod protocol;

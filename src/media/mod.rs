//! Media: capture sources (synthetic, and devices later), codecs, conversion, the send and
//! receive pipeline threads, jitter buffering, mixing and playback. Depends on nothing else in
//! the crate.

pub mod analysis;
pub mod apm;
pub mod audio;
pub mod audio_pipeline;
pub mod camera;
pub mod codec;
pub mod convert;
pub mod devices;
pub mod frame;
pub mod jitter;
pub mod ladder;
pub mod own_playout;
pub mod pattern;
pub mod playout;
pub mod resample;
pub mod reveal;
pub mod samples;
pub mod scene;
pub mod screen;
pub mod simulcast;
pub mod slot;
pub mod sound;
pub mod stamp;
pub mod video;
pub mod video_send;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, thiserror::Error)]
pub enum MediaError {
    #[error("codec error: {0}")]
    Codec(String),
    #[error("audio/video source: {0}")]
    Source(String),
    #[error("audio output: {0}")]
    Sink(String),
    #[error("cannot start a media thread: {0}")]
    Thread(String),
}

impl MediaError {
    /// Device and source errors may clear up (a device comes back); codec errors do not.
    pub fn is_retryable(&self) -> bool {
        matches!(self, MediaError::Source(_) | MediaError::Sink(_))
    }
}

/// Wall-clock time in microseconds since the Unix epoch (frame stamps use it).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A shared stop flag for a worker thread.
#[derive(Clone, Default)]
pub struct Stopper(Arc<AtomicBool>);

impl Stopper {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn stop(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

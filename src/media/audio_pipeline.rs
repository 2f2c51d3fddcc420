//! The audio pipeline threads. Sending: one thread pulls 10 ms blocks from the source, measures
//! the level, and (unless muted) encodes them once with Opus for every peer, in 10 ms packets
//! where the links have room and 20 ms ones where they do not. Receiving: one playout thread
//! takes a 10 ms block from each remote stream every 10 ms (decoding the stream's next packet
//! from its jitter buffer when the last is used up, concealing losses), measures each stream,
//! mixes them and hands the mix to the sink.

use super::analysis::{click_onsets, dbfs, estimate_frequency};
use super::apm::AudioProcessor;
use super::audio::{AudioSink, AudioSource, BLOCK_DURATION, BLOCK_SAMPLES};
use super::codec::{
    EncodedAudio, FRAME_SAMPLES, MAX_PACKET_SAMPLES, OpusDecoder, OpusEncoder, SAMPLE_RATE,
    SHORT_FRAME_SAMPLES,
};
use super::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use super::own_playout::{OwnPlayoutRemover, PlayoutHistory};
use super::samples::Samples;
use super::{MediaError, Stopper, now_us};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::broadcast;

/// Opus bitrate for voice on a link with room for it.
pub const VOICE_BITRATE: i32 = 32_000;
/// The Opus bitrate for a link whose estimate is `estimate_bps`: full voice quality where there
/// is room, down to what still sounds clear on the slowest links.
pub fn voice_bitrate_for(estimate_bps: u64) -> i32 {
    match estimate_bps {
        0..200_000 => 16_000,
        200_000..400_000 => 24_000,
        _ => VOICE_BITRATE,
    }
}

/// Estimates from which a call that sends video uses 10 ms audio packets. Half the packet
/// accumulation, playout granularity and speaker queue of 20 ms ones (about 15 ms of
/// mouth-to-ear) cost twice the packets: ~24 kbit/s more headers, 2 % of such a link, but 12 %
/// of a 200 kbit/s uplink that video needs. Below `SHORT_PACKETS_UNTIL_BPS`, 20 ms packets again.
pub const SHORT_PACKETS_FROM_BPS: u64 = 1_000_000;
/// An audio-only call keeps 10 ms packets down to this estimate (its estimate stays near the
/// start value, 300 kbit/s, as audio alone never probes for more).
pub const SHORT_PACKETS_UNTIL_BPS: u64 = 200_000;

/// Samples per Opus packet for a link whose estimate is `estimate_bps`: 10 ms where there is
/// room, 20 ms where header overhead would take what video needs.
pub fn voice_packet_samples_for(estimate_bps: u64, sending_video: bool) -> usize {
    let floor = if sending_video {
        SHORT_PACKETS_FROM_BPS
    } else {
        SHORT_PACKETS_UNTIL_BPS
    };
    if estimate_bps >= floor {
        SHORT_FRAME_SAMPLES
    } else {
        FRAME_SAMPLES
    }
}

/// Loss Opus prepares its in-band FEC for before any receiver has reported.
pub const DEFAULT_EXPECTED_LOSS: i32 = 5;
/// Speaker-to-microphone delay assumed before the echo canceller has measured it: the device
/// buffers on both sides (10 ms each) plus the playout queue.
const ECHO_DELAY_HINT_MS: i32 = 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Shared state of the sending thread.
struct SendShared {
    muted: AtomicBool,
    /// dBFS of the last captured frame, as f32 bits (before muting: drives the local meter).
    level: AtomicU32,
    next_source: Mutex<Option<Option<Box<dyn AudioSource>>>>,
    description: Mutex<String>,
    /// Wall-clock times (µs) at which click frames were captured, for latency measurement.
    clicks: Mutex<Samples>,
    frames_sent: AtomicU32,
    /// What the network asks of the encoder.
    network: Mutex<VoiceNetwork>,
    /// Computer sound to mix in (a screen share's), replacing the current one at the next frame.
    next_system: Mutex<Option<Option<SystemSound>>>,
}

/// What the links ask of the one voice encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VoiceNetwork {
    pub bitrate_bps: i32,
    /// Loss Opus sizes its in-band FEC for (percent).
    pub expected_loss_percent: i32,
    /// Samples per packet: `SHORT_FRAME_SAMPLES` or `FRAME_SAMPLES`.
    pub packet_samples: usize,
}

impl Default for VoiceNetwork {
    fn default() -> Self {
        VoiceNetwork {
            bitrate_bps: VOICE_BITRATE,
            expected_loss_percent: DEFAULT_EXPECTED_LOSS,
            // Until a link has been measured: what a slow one needs.
            packet_samples: FRAME_SAMPLES,
        }
    }
}

/// What the computer plays, shared with a screen share: the speaker's monitor. It holds what
/// Huddle itself plays too (the others' voices); `remover` takes that out so nobody hears
/// themselves back.
pub struct SystemSound {
    pub source: Box<dyn AudioSource>,
    pub remover: Option<OwnPlayoutRemover>,
}

/// Local audio: source → Opus → subscribers. Dropping it stops the thread.
pub struct AudioSender {
    thread: Option<JoinHandle<()>>,
    stop: Stopper,
    shared: Arc<SendShared>,
    encoded: broadcast::Sender<Arc<EncodedAudio>>,
}

impl AudioSender {
    /// `source: None` sends nothing (no microphone) but keeps the pipeline ready for one.
    /// Real microphones go through `processor` (echo cancellation, noise suppression, gain).
    pub fn start(
        source: Option<Box<dyn AudioSource>>,
        processor: Option<Arc<AudioProcessor>>,
    ) -> Result<Self, MediaError> {
        let (encoded, _) = broadcast::channel(16);
        let shared = Arc::new(SendShared {
            muted: AtomicBool::new(false),
            level: AtomicU32::new((-100.0f32).to_bits()),
            next_source: Mutex::new(None),
            description: Mutex::new(
                source
                    .as_ref()
                    .map(|s| s.describe())
                    .unwrap_or_else(|| "none".into()),
            ),
            clicks: Mutex::new(Samples::with_capacity(10_000)),
            frames_sent: AtomicU32::new(0),
            network: Mutex::new(VoiceNetwork::default()),
            next_system: Mutex::new(None),
        });
        let stop = Stopper::new();
        let encoder = OpusEncoder::new(VOICE_BITRATE)?;
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            let encoded = encoded.clone();
            std::thread::Builder::new()
                .name("audio-send".into())
                .spawn(move || send_loop(source, &shared, &stop, processor, encoder, &encoded))
                .map_err(|e| MediaError::Thread(e.to_string()))?
        };
        Ok(AudioSender {
            thread: Some(thread),
            stop,
            shared,
            encoded,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EncodedAudio>> {
        self.encoded.subscribe()
    }

    /// Adapts the encoder to the worst link among the peers (one encoding serves all).
    pub fn set_network(&self, network: VoiceNetwork) {
        *lock(&self.shared.network) = network;
    }

    /// Muted: frames are still captured (for the local meter) but nothing is sent.
    pub fn set_muted(&self, muted: bool) {
        self.shared.muted.store(muted, Ordering::Relaxed);
    }

    pub fn is_muted(&self) -> bool {
        self.shared.muted.load(Ordering::Relaxed)
    }

    /// Level of the local microphone in dBFS.
    pub fn level_dbfs(&self) -> f32 {
        f32::from_bits(self.shared.level.load(Ordering::Relaxed))
    }

    /// Mixes computer sound into what is sent (`None`: stops), from the next frame on.
    pub fn set_system_sound(&self, system: Option<SystemSound>) {
        *lock(&self.shared.next_system) = Some(system);
    }

    /// Replaces the source at the next frame boundary; the Opus stream continues unbroken.
    pub fn set_source(&self, source: Option<Box<dyn AudioSource>>) {
        *lock(&self.shared.next_source) = Some(source);
    }

    pub fn source_description(&self) -> String {
        lock(&self.shared.description).clone()
    }

    /// Capture times (µs since the epoch) of the click frames sent so far.
    pub fn click_times(&self) -> Vec<i64> {
        lock(&self.shared.clicks).values()
    }

    pub fn frames_sent(&self) -> u32 {
        self.shared.frames_sent.load(Ordering::Relaxed)
    }
}

impl Drop for AudioSender {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sending thread: blocks from the source, processed, metered, mixed with computer sound,
/// gathered into packets of the length the network asks for, encoded once for every peer.
fn send_loop(
    mut source: Option<Box<dyn AudioSource>>,
    shared: &SendShared,
    stop: &Stopper,
    processor: Option<Arc<AudioProcessor>>,
    mut encoder: OpusEncoder,
    encoded: &broadcast::Sender<Arc<EncodedAudio>>,
) {
    let mut system: Option<SystemSound> = None;
    let mut silence = super::audio::SilenceSource::new();
    let mut block = vec![0f32; BLOCK_SAMPLES];
    let mut system_block = vec![0f32; BLOCK_SAMPLES];
    let mut network = VoiceNetwork::default();
    // The packet being gathered, whether any of its blocks carries sound to send, and when
    // its click (if any) was captured.
    let mut packet: Vec<f32> = Vec::with_capacity(FRAME_SAMPLES);
    let mut packet_has_sound = false;
    let mut packet_click_us: Option<u64> = None;
    while !stop.is_stopped() {
        // The packet length changes only between packets.
        if packet.is_empty() {
            let wanted = *lock(&shared.network);
            if wanted != network {
                if (wanted.bitrate_bps, wanted.expected_loss_percent)
                    != (network.bitrate_bps, network.expected_loss_percent)
                {
                    encoder.set_network(wanted.bitrate_bps, wanted.expected_loss_percent);
                }
                network = wanted;
            }
        }
        if let Some(replacement) = lock(&shared.next_source).take() {
            *lock(&shared.description) = replacement
                .as_ref()
                .map(|s| s.describe())
                .unwrap_or_else(|| "none".into());
            source = replacement;
        }
        if let Some(replacement) = lock(&shared.next_system).take() {
            system = replacement;
        }
        let is_click = source.as_ref().is_some_and(|s| s.next_frame_is_marker());
        let captured = match source.as_mut() {
            Some(s) => s.next_frame(&mut block),
            None => silence.next_frame(&mut block),
        };
        let capture_us = now_us();
        if let Err(e) = captured {
            tracing::warn!(error = %e, "audio source failed; sending silence");
            source = None;
            continue;
        }
        if let Some(apm) = &processor
            && source.as_ref().is_some_and(|s| s.wants_processing())
        {
            apm.capture(&mut block, ECHO_DELAY_HINT_MS);
        }
        shared
            .level
            .store(dbfs(&block).to_bits(), Ordering::Relaxed);
        let voice = source.is_some() && !shared.muted.load(Ordering::Relaxed);
        if !voice {
            block.fill(0.0);
        }
        // Computer sound is mixed in after the voice's processing, so the microphone's echo
        // canceller never takes it out; it is sent while the microphone is muted too.
        let mut shared_sound = false;
        if let Some(sys) = system.as_mut() {
            match sys.source.next_frame(&mut system_block) {
                Ok(()) => {
                    if let Some(remover) = sys.remover.as_mut() {
                        remover.process(&mut system_block);
                    }
                    for (f, s) in block.iter_mut().zip(&system_block) {
                        *f = (*f + s).clamp(-1.0, 1.0);
                    }
                    shared_sound = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "computer sound failed; no longer shared");
                    system = None;
                }
            }
        }
        packet.extend_from_slice(&block);
        packet_has_sound |= voice || shared_sound;
        if is_click {
            packet_click_us.get_or_insert(capture_us);
        }
        if packet.len() < network.packet_samples {
            continue;
        }
        let click_us = packet_click_us.take();
        if std::mem::take(&mut packet_has_sound) {
            match encoder.encode(&packet) {
                Ok(data) => {
                    if let Some(at) = click_us {
                        lock(&shared.clicks).push(at as i64);
                    }
                    shared.frames_sent.fetch_add(1, Ordering::Relaxed);
                    let _ = encoded.send(Arc::new(EncodedAudio {
                        data,
                        capture_us,
                        samples: packet.len(),
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "opus encode failed"),
            }
        }
        packet.clear();
    }
}

/// Measurements of one remote audio stream.
#[derive(Debug, Clone, Default)]
pub struct RemoteAudioStats {
    /// dBFS of the last played frame (-100 for silence).
    pub level_dbfs: f32,
    /// Estimated tone frequency over the last second, if there is a steady tone.
    pub frequency: Option<f32>,
    /// Frames with sound (not silence) played.
    pub frames_played: u64,
    pub jitter: JitterStats,
    pub target_delay_ms: u32,
    /// Inter-arrival jitter (RFC 3550) and the spread of transit times behind the target, ms.
    pub arrival_jitter_ms: f32,
    pub transit_spread_ms: f32,
}

struct RemoteStream {
    jitter: JitterBuffer,
    decoder: OpusDecoder,
    /// Decoded (or concealed) samples not played yet: a packet of 20 ms is played as two
    /// blocks.
    pending: VecDeque<f32>,
    recent: VecDeque<f32>,
    stats: RemoteAudioStats,
    samples_since_estimate: usize,
}

impl RemoteStream {
    /// Decodes packets from the jitter buffer until a block's worth is pending.
    fn fill(&mut self, scratch: &mut [f32]) {
        while self.pending.len() < BLOCK_SAMPLES {
            // A lost frame is concealed at the length of the stream's packets.
            let frame = self
                .jitter
                .frame_samples()
                .clamp(BLOCK_SAMPLES, scratch.len());
            let decoded = match self.jitter.pop() {
                Playout::Frame(packet) => self.decoder.decode(Some(&packet), scratch),
                Playout::Conceal { next: Some(next) } => {
                    self.decoder.decode_fec(&next, &mut scratch[..frame])
                }
                Playout::Conceal { next: None } => self.decoder.decode(None, &mut scratch[..frame]),
                // One block at a time: a talk spurt that starts is not held behind a frame
                // of silence.
                Playout::Silence => {
                    scratch[..BLOCK_SAMPLES].fill(0.0);
                    Ok(BLOCK_SAMPLES)
                }
            };
            let n = match decoded {
                Ok(n) if n > 0 => n.min(scratch.len()),
                // A packet that does not decode plays as a frame of silence.
                _ => {
                    scratch[..frame].fill(0.0);
                    frame
                }
            };
            measure(self, n, scratch);
            self.pending.extend(&scratch[..n]);
        }
    }
}

struct PlayoutShared {
    streams: Mutex<HashMap<String, RemoteStream>>,
    next_sink: Mutex<Option<Box<dyn AudioSink>>>,
    sink_description: Mutex<String>,
    detect_clicks: bool,
    /// Wall-clock times (µs) at which click onsets were played.
    onsets: Mutex<Samples>,
    /// A local sound (the speaker test) still to be mixed into what is played.
    cue: Mutex<VecDeque<f32>>,
    /// What was handed to the sink, for taking it out of shared computer sound.
    history: Arc<PlayoutHistory>,
}

/// The speaker test's chime: two soft notes (660 Hz, then 880 Hz), 0.3 s each, faded in and
/// out so they do not click, at about -14 dBFS.
pub fn test_chime() -> Vec<f32> {
    let note = |hz: f32| {
        let n = SAMPLE_RATE as usize * 3 / 10;
        let fade = SAMPLE_RATE as usize / 50;
        (0..n).map(move |i| {
            let envelope = (i.min(n - 1 - i) as f32 / fade as f32).min(1.0);
            let t = i as f32 / SAMPLE_RATE as f32;
            0.2 * envelope * (2.0 * std::f32::consts::PI * hz * t).sin()
        })
    };
    note(660.0).chain(note(880.0)).collect()
}

/// Remote audio: jitter buffers, decoding, mixing, sink. Dropping it stops the thread.
pub struct AudioPlayout {
    thread: Option<JoinHandle<()>>,
    stop: Stopper,
    shared: Arc<PlayoutShared>,
}

impl AudioPlayout {
    /// With `processor`, what is played is also its echo reference.
    pub fn start(
        sink: Box<dyn AudioSink>,
        detect_clicks: bool,
        processor: Option<Arc<AudioProcessor>>,
    ) -> Result<Self, MediaError> {
        let shared = Arc::new(PlayoutShared {
            streams: Mutex::new(HashMap::new()),
            next_sink: Mutex::new(None),
            sink_description: Mutex::new(sink.describe()),
            detect_clicks,
            onsets: Mutex::new(Samples::with_capacity(10_000)),
            cue: Mutex::new(VecDeque::new()),
            history: PlayoutHistory::new(),
        });
        let stop = Stopper::new();
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("audio-playout".into())
                .spawn(move || playout_loop(sink, shared, stop, processor))
                .map_err(|e| MediaError::Thread(e.to_string()))?
        };
        Ok(AudioPlayout {
            thread: Some(thread),
            stop,
            shared,
        })
    }

    pub fn add_stream(&self, key: &str) -> Result<(), MediaError> {
        let stream = RemoteStream {
            jitter: JitterBuffer::new(JitterConfig::default()),
            decoder: OpusDecoder::new()?,
            pending: VecDeque::with_capacity(MAX_PACKET_SAMPLES + BLOCK_SAMPLES),
            recent: VecDeque::with_capacity(SAMPLE_RATE as usize),
            stats: RemoteAudioStats {
                level_dbfs: -100.0,
                ..Default::default()
            },
            samples_since_estimate: 0,
        };
        lock(&self.shared.streams).insert(key.to_owned(), stream);
        Ok(())
    }

    pub fn remove_stream(&self, key: &str) {
        lock(&self.shared.streams).remove(key);
    }

    /// Hands a received Opus packet to its stream's jitter buffer.
    pub fn push(&self, key: &str, seq: u16, rtp_timestamp: u32, payload: Bytes) {
        if let Some(stream) = lock(&self.shared.streams).get_mut(key) {
            stream
                .jitter
                .push(seq, rtp_timestamp, payload, Instant::now());
        }
    }

    pub fn stream_stats(&self, key: &str) -> Option<RemoteAudioStats> {
        lock(&self.shared.streams).get(key).map(|s| s.stats.clone())
    }

    /// Replaces the sink at the next frame boundary.
    pub fn set_sink(&self, sink: Box<dyn AudioSink>) {
        *lock(&self.shared.sink_description) = sink.describe();
        *lock(&self.shared.next_sink) = Some(sink);
    }

    pub fn sink_description(&self) -> String {
        lock(&self.shared.sink_description).clone()
    }

    /// Plays `samples` (48 kHz mono) through the sink, mixed with the call; replaces a sound
    /// still playing.
    pub fn play_local(&self, samples: Vec<f32>) {
        *lock(&self.shared.cue) = samples.into();
    }

    /// What this playout has handed to its sink lately.
    pub fn history(&self) -> Arc<PlayoutHistory> {
        self.shared.history.clone()
    }

    /// Wall-clock times (µs since the epoch) at which click onsets reached the sink.
    pub fn click_onset_times(&self) -> Vec<i64> {
        lock(&self.shared.onsets).values()
    }
}

impl Drop for AudioPlayout {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn playout_loop(
    mut sink: Box<dyn AudioSink>,
    shared: Arc<PlayoutShared>,
    stop: Stopper,
    processor: Option<Arc<AudioProcessor>>,
) {
    let mut mix = vec![0f32; BLOCK_SAMPLES];
    let mut scratch = vec![0f32; MAX_PACKET_SAMPLES];
    // Samples since the last click seen, so one click is not counted twice across blocks.
    let mut quiet_run = usize::MAX / 2;
    while !stop.is_stopped() {
        if let Some(replacement) = lock(&shared.next_sink).take() {
            sink = replacement;
        }
        sink.wait_ready(BLOCK_SAMPLES);
        mix.fill(0.0);
        {
            let mut streams = lock(&shared.streams);
            for stream in streams.values_mut() {
                stream.fill(&mut scratch);
                let take = BLOCK_SAMPLES.min(stream.pending.len());
                for (m, s) in mix.iter_mut().zip(stream.pending.drain(..take)) {
                    *m += s;
                }
            }
        }
        {
            let mut cue = lock(&shared.cue);
            let take = BLOCK_SAMPLES.min(cue.len());
            for (m, s) in mix.iter_mut().zip(cue.drain(..take)) {
                *m += s;
            }
        }
        for m in mix.iter_mut() {
            *m = m.clamp(-1.0, 1.0);
        }
        if let Some(apm) = &processor {
            apm.render(&mix);
        }
        shared.history.push(&mix);
        let played_at = now_us();
        if shared.detect_clicks {
            let onsets = click_onsets(&mix, 0.2, 0);
            if let Some(&first) = onsets.first() {
                if quiet_run >= SAMPLE_RATE as usize / 10 {
                    let at = played_at + first as u64 * 1_000_000 / SAMPLE_RATE as u64;
                    lock(&shared.onsets).push(at as i64);
                }
                quiet_run = 0;
            } else {
                quiet_run += BLOCK_SAMPLES;
            }
        }
        if let Err(e) = sink.play(&mix) {
            tracing::warn!(error = %e, "audio output failed");
            // Keep time moving so jitter buffers do not overflow while the sink is broken.
            std::thread::sleep(BLOCK_DURATION);
        }
    }
}

/// Meters one decoded (or concealed) frame of `n` samples at the front of `decoded`.
fn measure(stream: &mut RemoteStream, n: usize, decoded: &[f32]) {
    let frame = &decoded[..n];
    let level = dbfs(frame);
    stream.stats.level_dbfs = level;
    if level > -90.0 {
        stream.stats.frames_played += 1;
    }
    for &s in frame {
        if stream.recent.len() == SAMPLE_RATE as usize {
            stream.recent.pop_front();
        }
        stream.recent.push_back(s);
    }
    stream.samples_since_estimate += n;
    // Once every 250 ms is plenty for a meter and for tests.
    if stream.samples_since_estimate >= SAMPLE_RATE as usize / 4 {
        stream.samples_since_estimate = 0;
        let (a, b) = stream.recent.as_slices();
        let mut joined = Vec::with_capacity(a.len() + b.len());
        joined.extend_from_slice(a);
        joined.extend_from_slice(b);
        stream.stats.frequency = estimate_frequency(&joined, SAMPLE_RATE);
        stream.stats.jitter = stream.jitter.stats().clone();
        stream.stats.target_delay_ms = stream.jitter.target_delay().as_millis() as u32;
        let (jitter, spread) = stream.jitter.arrival_variation();
        stream.stats.arrival_jitter_ms = jitter.as_secs_f32() * 1000.0;
        stream.stats.transit_spread_ms = spread.as_secs_f32() * 1000.0;
    }
}

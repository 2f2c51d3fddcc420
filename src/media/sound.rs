//! Real microphones and speakers through cpal (the PulseAudio host when a sound server runs, else
//! ALSA). Device callbacks only move samples through preallocated lock-free rings; mixing down,
//! resampling to or from 48 kHz and recovery happen outside them. A device that fails or
//! disappears is replaced by the default one, with a notice for the user.

use super::MediaError;
use super::audio::{AudioSink, AudioSource, BLOCK_DURATION, Pacer, span_of};
use super::codec::{FRAME_SAMPLES, SAMPLE_RATE};
use super::resample::StreamResampler;
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoundDevice {
    /// Stable id (`pulseaudio:alsa_output.pci...`), saved in settings.
    pub id: String,
    pub name: String,
}

/// Messages for the user about devices ("Headset unplugged; using the default speaker").
#[derive(Clone, Default)]
pub struct Notices(Arc<Mutex<VecDeque<String>>>);

impl Notices {
    pub fn push(&self, text: String) {
        if let Ok(mut q) = self.0.lock()
            && q.len() < 32
        {
            q.push_back(text);
        }
    }
    pub fn drain(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|mut q| q.drain(..).collect())
            .unwrap_or_default()
    }
}

/// The host to use: PulseAudio when a sound server is reachable, else the platform default.
pub fn host() -> cpal::Host {
    #[cfg(target_os = "linux")]
    if cpal::available_hosts().contains(&cpal::HostId::PulseAudio)
        && let Ok(h) = cpal::host_from_id(cpal::HostId::PulseAudio)
    {
        return h;
    }
    cpal::default_host()
}

fn describe(device: &cpal::Device) -> Option<SoundDevice> {
    let id = device.id().ok()?.to_string();
    let name = device
        .description()
        .map(|d| d.name().to_owned())
        .unwrap_or_else(|_| id.clone());
    Some(SoundDevice { id, name })
}

/// Runs `f` with alsa-lib's own error messages on this thread sent to `tracing` at debug level
/// instead of stderr. Without a sound card, probing the default device prints a screenful of
/// `ALSA lib conf.c:...` lines before anything useful, and they say nothing the error we
/// return does not.
fn quiet_alsa<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_os = "linux")]
    {
        // Installs a handler for this thread that collects into a fresh buffer.
        let buffer = alsa::Output::local_error_handler().ok();
        let out = f();
        if let Some(buffer) = buffer
            && let Ok(buffer) = buffer.try_borrow()
        {
            for line in buffer.to_string().lines().filter(|l| !l.is_empty()) {
                tracing::debug!(target: "huddle::alsa", "{line}");
            }
        }
        out
    }
    #[cfg(not(target_os = "linux"))]
    f()
}

/// Microphones. Blocking (asks the sound server): call it off the UI thread.
pub fn list_inputs() -> Vec<SoundDevice> {
    quiet_alsa(|| {
        host()
            .input_devices()
            .map(|d| d.filter_map(|d| describe(&d)).collect())
            .unwrap_or_default()
    })
}

/// The monitor of the default speaker: what the computer plays, as an input (PulseAudio and
/// PipeWire's Pulse server offer one per output). Blocking. `None` without a sound server that
/// has monitors.
pub fn default_output_monitor() -> Option<String> {
    quiet_alsa(|| {
        let host = host();
        let speaker = host.default_output_device()?.id().ok()?.to_string();
        let inputs: Vec<String> = host
            .input_devices()
            .ok()?
            .filter_map(|d| d.id().ok().map(|id| id.to_string()))
            .collect();
        let wanted = format!("{speaker}.monitor");
        inputs
            .iter()
            .find(|id| **id == wanted)
            .or_else(|| inputs.iter().find(|id| id.ends_with(".monitor")))
            .cloned()
    })
}

/// Speakers. Blocking: call it off the UI thread.
pub fn list_outputs() -> Vec<SoundDevice> {
    quiet_alsa(|| {
        host()
            .output_devices()
            .map(|d| d.filter_map(|d| describe(&d)).collect())
            .unwrap_or_default()
    })
}

fn find(host: &cpal::Host, id: Option<&str>, input: bool) -> Option<cpal::Device> {
    if let Some(id) = id
        && let Ok(id) = cpal::DeviceId::from_str(id)
        && let Some(d) = host.device_by_id(&id)
    {
        return Some(d);
    }
    if input {
        host.default_input_device()
    } else {
        host.default_output_device()
    }
}

/// Failure reported by a stream's error callback (rare; this callback may lock).
#[derive(Default)]
struct StreamHealth {
    failed: AtomicBool,
    reason: Mutex<Option<String>>,
    dropped_samples: AtomicU64,
    /// Samples the device took (output): shows whether it is still consuming.
    consumed: AtomicU64,
    /// The most samples (interleaved) one callback asked for.
    largest_callback: AtomicU64,
    /// Callbacks so far: with `consumed`, the device's typical period. (The largest callback
    /// is not it: PulseAudio's first request fills its whole buffer, twice a period.)
    callbacks: AtomicU64,
    /// The thread waiting for the device (samples captured, or room to play into): woken by
    /// each callback, so it acts within a fraction of a millisecond instead of at its next
    /// poll (a 5 ms poll cost the speaker a whole period of queue to be safe).
    waiter: Mutex<Option<std::thread::Thread>>,
}

impl StreamHealth {
    /// Samples (interleaved) the device takes per callback on average; 0 before the first.
    fn typical_period(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed) / self.callbacks.load(Ordering::Relaxed).max(1)
    }
    /// Called by the stream's callback: wakes the waiting thread. `try_lock`, so the callback
    /// never waits; a wake missed while the waiter registers is caught by its timeout.
    fn wake_waiter(&self) {
        if let Ok(waiter) = self.waiter.try_lock()
            && let Some(thread) = waiter.as_ref()
        {
            thread.unpark();
        }
    }

    /// Waits until the next callback, or `at_most`.
    fn wait_for_callback(&self, at_most: Duration) {
        let me = std::thread::current();
        if let Ok(mut waiter) = self.waiter.lock()
            && waiter.as_ref().map(|t| t.id()) != Some(me.id())
        {
            *waiter = Some(me);
        }
        std::thread::park_timeout(at_most);
    }

    fn fail(&self, e: cpal::Error) {
        if let Ok(mut r) = self.reason.lock() {
            *r = Some(e.to_string());
        }
        self.failed.store(true, Ordering::Release);
    }
    fn reason(&self) -> String {
        self.reason
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .unwrap_or_else(|| "device error".into())
    }
}

/// Device buffers, in frames at 48 kHz (the PulseAudio default, 2 s, is unusable). Capture:
/// 10 ms fragments; with 5 ms ones the microphone's first frames came as a burst on the null
/// sinks of `tests/devices.rs`, and the far end's jitter buffer held 60-220 ms for seconds after.
const CAPTURE_FRAMES: u32 = 480;
/// Playback: 10 ms requests, PulseAudio holding two of them. 5 ms ones took 14 ms off the
/// speaker path there (34 against 48 ms), but PulseAudio would then hold only 10 ms: a 10 ms
/// stall of the client thread on a busy desktop is an audible gap that no underrun counter of
/// ours sees, and that the extra periods of `SpeakerSink` cannot answer.
const PLAYBACK_FRAMES: u32 = 480;
/// A speaker that takes no samples for this long is treated as gone.
const STALL_TIMEOUT: Duration = Duration::from_secs(2);

fn stream_config(device: &cpal::Device, input: bool) -> Result<cpal::StreamConfig, MediaError> {
    let default = if input {
        device.default_input_config()
    } else {
        device.default_output_config()
    }
    .map_err(|e| MediaError::Source(format!("device has no usable format: {e}")))?;
    // PulseAudio converts anything; ask for what we use. ALSA hardware may insist on its own rate.
    let pulse = device
        .id()
        .map(|id| id.host() == cpal::HostId::PulseAudio)
        .unwrap_or(false);
    let (channels, rate) = if pulse {
        (1, SAMPLE_RATE)
    } else {
        (default.channels(), default.sample_rate())
    };
    Ok(cpal::StreamConfig {
        channels,
        sample_rate: rate,
        buffer_size: cpal::BufferSize::Fixed(if input {
            CAPTURE_FRAMES
        } else {
            PLAYBACK_FRAMES
        }),
    })
}

/// An open device stream, input or output.
trait OpenDevice: Sized {
    /// "microphone" or "speaker", for notices.
    const KIND: &'static str;
    fn health(&self) -> &StreamHealth;
    fn name(&self) -> &str;
    /// Opens the device `id`, or the default one.
    fn open(id: Option<&str>) -> Result<Self, MediaError>;
}

/// A device stream failed: closes it and, at most every 2 s, falls back to the default device,
/// telling the user. Returns whether it tried.
fn fall_back<D: OpenDevice>(
    open: &mut Option<D>,
    next_retry: &mut Instant,
    notices: &Notices,
) -> bool {
    let reason = open.take().map(|o| o.health().reason()).unwrap_or_default();
    if Instant::now() < *next_retry {
        return false;
    }
    *next_retry = Instant::now() + Duration::from_secs(2);
    match D::open(None) {
        Ok(o) => {
            notices.push(format!(
                "The {} stopped ({reason}); now using {}.",
                D::KIND,
                o.name()
            ));
            *open = Some(o);
        }
        Err(e) => notices.push(format!("No {} available ({e}).", D::KIND)),
    }
    true
}

struct OpenInput {
    /// Held for its lifetime: dropping it stops the device.
    _stream: cpal::Stream,
    ring: rtrb::Consumer<f32>,
    health: Arc<StreamHealth>,
    channels: usize,
    resampler: Option<StreamResampler>,
    name: String,
}

impl OpenDevice for OpenInput {
    const KIND: &'static str = "microphone";
    fn health(&self) -> &StreamHealth {
        &self.health
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn open(id: Option<&str>) -> Result<Self, MediaError> {
        quiet_alsa(|| open_input(id))
    }
}

fn open_input(id: Option<&str>) -> Result<OpenInput, MediaError> {
    let host = host();
    let device = find(&host, id, true).ok_or_else(|| MediaError::Source("no microphone".into()))?;
    let name = describe(&device)
        .map(|d| d.name)
        .unwrap_or_else(|| "microphone".into());
    let config = stream_config(&device, true)?;
    let channels = config.channels.max(1) as usize;
    // Half a second of headroom, allocated once.
    let (mut producer, ring) = rtrb::RingBuffer::new(config.sample_rate as usize * channels / 2);
    let health = Arc::new(StreamHealth::default());
    let cb_health = health.clone();
    let err_health = health.clone();
    let stream = device
        .build_input_stream::<f32, _, _>(
            config,
            move |data: &[f32], _: &cpal::InputCallbackInfo| {
                // Only move samples: no allocation, no lock, no logging.
                let mut dropped = 0u64;
                for &s in data {
                    if producer.push(s).is_err() {
                        dropped += 1;
                    }
                }
                if dropped > 0 {
                    cb_health
                        .dropped_samples
                        .fetch_add(dropped, Ordering::Relaxed);
                }
                cb_health.wake_waiter();
            },
            move |e| err_health.fail(e),
            Some(Duration::from_secs(3)),
        )
        .map_err(|e| MediaError::Source(format!("cannot open {name}: {e}")))?;
    stream
        .play()
        .map_err(|e| MediaError::Source(format!("cannot start {name}: {e}")))?;
    let resampler = if config.sample_rate == SAMPLE_RATE {
        None
    } else {
        Some(StreamResampler::new(config.sample_rate, 480)?)
    };
    Ok(OpenInput {
        _stream: stream,
        ring,
        health,
        channels,
        resampler,
        name,
    })
}

/// A real microphone as an `AudioSource`.
pub struct MicSource {
    wanted: Option<String>,
    open: Option<OpenInput>,
    /// 48 kHz mono samples ready to hand out.
    ready: VecDeque<f32>,
    scratch: Vec<f32>,
    notices: Notices,
    /// Paces silence while no device works.
    pacer: Pacer,
    next_retry: Instant,
}

impl MicSource {
    /// Opens the microphone `id` (or the default one). Blocking: call it off the UI thread.
    pub fn open(id: Option<&str>, notices: Notices) -> Result<MicSource, MediaError> {
        let open = quiet_alsa(|| open_input(id))?;
        Ok(MicSource {
            wanted: id.map(str::to_owned),
            open: Some(open),
            ready: VecDeque::with_capacity(FRAME_SAMPLES * 4),
            scratch: Vec::with_capacity(4096),
            notices,
            pacer: Pacer::new(BLOCK_DURATION),
            next_retry: Instant::now(),
        })
    }

    fn recover(&mut self) {
        if fall_back(&mut self.open, &mut self.next_retry, &self.notices) {
            // The chosen device is gone for good.
            self.wanted = None;
        }
    }

    /// Moves what the device captured into `ready`, mixed to mono and at 48 kHz.
    fn pull(&mut self) -> Result<usize, MediaError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(0);
        };
        let available = open.ring.slots();
        if available == 0 {
            return Ok(0);
        }
        let chunk = open
            .ring
            .read_chunk(available)
            .map_err(|e| MediaError::Source(e.to_string()))?;
        let (a, b) = chunk.as_slices();
        self.scratch.clear();
        let ch = open.channels;
        for frame in a
            .iter()
            .chain(b.iter())
            .copied()
            .collect::<Vec<_>>()
            .chunks(ch)
        {
            self.scratch
                .push(frame.iter().sum::<f32>() / frame.len() as f32);
        }
        chunk.commit_all();
        let before = self.ready.len();
        match open.resampler.as_mut() {
            Some(r) => {
                let mut out = Vec::with_capacity(self.scratch.len() * 2);
                r.push(&self.scratch, &mut out)?;
                self.ready.extend(out);
            }
            None => self.ready.extend(self.scratch.iter().copied()),
        }
        Ok(self.ready.len() - before)
    }
}

impl AudioSource for MicSource {
    fn next_frame(&mut self, out: &mut [f32]) -> Result<(), MediaError> {
        // Stalls count from when we start waiting, not from the last read: a caller that
        // paused reading is not a dead device.
        let mut waiting_since = Instant::now();
        loop {
            if self.ready.len() >= out.len() {
                for s in out.iter_mut() {
                    *s = self.ready.pop_front().unwrap_or(0.0);
                }
                return Ok(());
            }
            let failed = self
                .open
                .as_ref()
                .is_none_or(|o| o.health.failed.load(Ordering::Acquire));
            // A stream that delivers nothing for a second while we wait is as good as gone.
            if failed || waiting_since.elapsed() > Duration::from_secs(1) {
                self.recover();
                if self.open.is_none() {
                    self.pacer.wait_span(span_of(out.len()));
                    out.fill(0.0);
                    return Ok(());
                }
            }
            if self.pull()? > 0 {
                waiting_since = Instant::now();
            } else if let Some(open) = self.open.as_ref() {
                open.health.wait_for_callback(Duration::from_millis(5));
            }
        }
    }

    fn describe(&self) -> String {
        self.open
            .as_ref()
            .map(|o| o.name.clone())
            .unwrap_or_else(|| "no microphone".into())
    }

    fn wants_processing(&self) -> bool {
        true
    }
}

struct OpenOutput {
    /// Held for its lifetime: dropping it stops the device.
    _stream: cpal::Stream,
    ring: rtrb::Producer<f32>,
    health: Arc<StreamHealth>,
    channels: usize,
    rate: u32,
    resampler: Option<StreamResampler>,
    name: String,
}

impl OpenDevice for OpenOutput {
    const KIND: &'static str = "speaker";
    fn health(&self) -> &StreamHealth {
        &self.health
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn open(id: Option<&str>) -> Result<Self, MediaError> {
        quiet_alsa(|| open_output(id))
    }
}

fn open_output(id: Option<&str>) -> Result<OpenOutput, MediaError> {
    let host = host();
    let device = find(&host, id, false).ok_or_else(|| MediaError::Sink("no speaker".into()))?;
    let name = describe(&device)
        .map(|d| d.name)
        .unwrap_or_else(|| "speaker".into());
    let config = stream_config(&device, false).map_err(|e| MediaError::Sink(e.to_string()))?;
    let channels = config.channels.max(1) as usize;
    // Room for 100 ms, as slack for the PulseAudio client's bursty pulls; `SpeakerSink::play`
    // keeps only a few periods of it filled.
    let capacity = config.sample_rate as usize * channels / 10;
    let (ring, mut consumer) = rtrb::RingBuffer::new(capacity);
    let health = Arc::new(StreamHealth::default());
    let cb_health = health.clone();
    let err_health = health.clone();
    let stream = device
        .build_output_stream::<f32, _, _>(
            config,
            move |out: &mut [f32], _: &cpal::OutputCallbackInfo| {
                let mut missing = 0u64;
                for s in out.iter_mut() {
                    *s = match consumer.pop() {
                        Ok(v) => v,
                        Err(_) => {
                            missing += 1;
                            0.0
                        }
                    };
                }
                if missing > 0 {
                    cb_health
                        .dropped_samples
                        .fetch_add(missing, Ordering::Relaxed);
                }
                cb_health
                    .consumed
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                cb_health
                    .largest_callback
                    .fetch_max(out.len() as u64, Ordering::Relaxed);
                cb_health.callbacks.fetch_add(1, Ordering::Relaxed);
                cb_health.wake_waiter();
            },
            move |e| err_health.fail(e),
            Some(Duration::from_secs(3)),
        )
        .map_err(|e| MediaError::Sink(format!("cannot open {name}: {e}")))?;
    stream
        .play()
        .map_err(|e| MediaError::Sink(format!("cannot start {name}: {e}")))?;
    let resampler = None;
    Ok(OpenOutput {
        _stream: stream,
        ring,
        health,
        channels,
        rate: config.sample_rate,
        resampler,
        name,
    })
}

/// Device periods kept queued for the speaker before the next block is added. None: the device's
/// callback wakes the playout thread when it has taken the queue, and the thread has the rest of
/// the device's period (10 ms) to write the next block; underruns add periods
/// (`MAX_EXTRA_PERIODS`). One period had been the margin for a thread that polled every 5 ms;
/// blocking only when the 100 ms ring was full had kept it full (100 ms of delay no figure
/// showed).
const TARGET_PERIODS: usize = 0;
/// After underruns, up to this many periods more, one per burst; one less after each
/// `CALM_AFTER` without any.
const MAX_EXTRA_PERIODS: usize = 4;
const CALM_AFTER: Duration = Duration::from_secs(10);

/// A real speaker as an `AudioSink`. `play` blocks until the device queue has drained to a
/// few periods, which paces the playout thread at the device's rate.
pub struct SpeakerSink {
    open: Option<OpenOutput>,
    notices: Notices,
    pacer: Pacer,
    next_retry: Instant,
    interleaved: Vec<f32>,
    /// Extra periods queued after underruns, and the underrun count they answered.
    extra_periods: usize,
    underruns_seen: Option<u64>,
    calm_since: Instant,
    /// The queue target `wait_ready` waited for, which `play` then uses: worked out once per
    /// block, since working it out also counts the underruns.
    ready_target: Option<usize>,
}

impl SpeakerSink {
    /// Opens the speaker `id` (or the default one). Blocking: call it off the UI thread.
    pub fn open(id: Option<&str>, notices: Notices) -> Result<SpeakerSink, MediaError> {
        let open = quiet_alsa(|| open_output(id))?;
        Ok(SpeakerSink {
            open: Some(open),
            notices,
            pacer: Pacer::new(BLOCK_DURATION),
            next_retry: Instant::now(),
            interleaved: Vec::with_capacity(FRAME_SAMPLES * 2),
            extra_periods: 0,
            underruns_seen: None,
            calm_since: Instant::now(),
            ready_target: None,
        })
    }

    /// Samples the device could not be given in time (underruns), for diagnostics.
    pub fn underrun_samples(&self) -> u64 {
        self.open
            .as_ref()
            .map(|o| o.health.dropped_samples.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The device's period as seen in its callbacks (samples per channel, on average), and the
    /// largest one callback asked for; for diagnostics.
    pub fn device_period(&self) -> (usize, usize) {
        self.open
            .as_ref()
            .map(|o| {
                (
                    o.health.typical_period() as usize / o.channels,
                    o.health.largest_callback.load(Ordering::Relaxed) as usize / o.channels,
                )
            })
            .unwrap_or((0, 0))
    }

    fn recover(&mut self) {
        fall_back(&mut self.open, &mut self.next_retry, &self.notices);
    }

    /// Periods (interleaved samples) to keep queued before `samples` more are added, after
    /// taking account of underruns since the last look.
    fn queue_target(&mut self, samples: usize) -> Option<usize> {
        let open = self.open.as_ref()?;
        // Underruns since the last block (the device found the queue empty): keep a period
        // more queued. A new device starts its own count.
        let underruns = open.health.dropped_samples.load(Ordering::Relaxed);
        let seen = *self.underruns_seen.get_or_insert(underruns);
        if underruns > seen {
            self.extra_periods = (self.extra_periods + 1).min(MAX_EXTRA_PERIODS);
            self.calm_since = Instant::now();
        } else if self.extra_periods > 0 && self.calm_since.elapsed() >= CALM_AFTER {
            self.extra_periods -= 1;
            self.calm_since = Instant::now();
        }
        self.underruns_seen = Some(underruns);
        let capacity = open.ring.buffer().capacity();
        let period =
            (open.health.typical_period() as usize).max(PLAYBACK_FRAMES as usize * open.channels);
        Some(
            (period * (TARGET_PERIODS + self.extra_periods))
                .min(capacity.saturating_sub(samples * open.channels)),
        )
    }
}

/// Waits until the device has drained `open`'s queue to `target` (interleaved samples). False
/// when the device failed or stopped taking samples (it is then marked failed).
fn wait_for_drain(open: &OpenOutput, target: usize) -> bool {
    let capacity = open.ring.buffer().capacity();
    let samples_per_ms = (open.rate as usize * open.channels / 1000).max(1);
    let mut consumed = open.health.consumed.load(Ordering::Relaxed);
    let mut progress_at = Instant::now();
    loop {
        let fill = capacity - open.ring.slots();
        if fill <= target {
            return true;
        }
        let now_consumed = open.health.consumed.load(Ordering::Relaxed);
        if now_consumed != consumed {
            consumed = now_consumed;
            progress_at = Instant::now();
        }
        if open.health.failed.load(Ordering::Acquire) {
            return false;
        }
        if progress_at.elapsed() > STALL_TIMEOUT {
            // The device took nothing for this long: treat it as gone.
            if let Ok(mut r) = open.health.reason.lock() {
                *r = Some("it stopped taking audio".into());
            }
            open.health.failed.store(true, Ordering::Release);
            return false;
        }
        // Until the device's next pull, or the queue has drained to the target at the
        // device's rate.
        let excess = (fill - target).max(samples_per_ms);
        let until_drained = Duration::from_millis((excess / samples_per_ms) as u64);
        open.health
            .wait_for_callback(until_drained.min(Duration::from_millis(5)));
    }
}

impl AudioSink for SpeakerSink {
    fn wait_ready(&mut self, samples: usize) {
        self.ready_target = self.queue_target(samples);
        if let Some(target) = self.ready_target
            && let Some(open) = self.open.as_ref()
        {
            wait_for_drain(open, target);
        }
    }

    fn play(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        if self
            .open
            .as_ref()
            .is_none_or(|o| o.health.failed.load(Ordering::Acquire))
        {
            self.recover();
            // A target worked out for the device that failed says nothing of its successor.
            self.ready_target = None;
        }
        let Some(open) = self.open.as_mut() else {
            // Nothing to play to: keep time so the call goes on.
            self.pacer.wait_span(span_of(frame.len()));
            return Ok(());
        };
        // Convert outside the callback: resample if the device is not at 48 kHz, then
        // duplicate mono into every channel.
        let mono: Vec<f32> = match open.resampler.as_mut() {
            Some(r) => {
                let mut out = Vec::new();
                r.push(frame, &mut out)
                    .map_err(|e| MediaError::Sink(e.to_string()))?;
                out
            }
            None if open.rate != SAMPLE_RATE => {
                open.resampler = Some(
                    StreamResampler::new_to(SAMPLE_RATE, open.rate, 480)
                        .map_err(|e| MediaError::Sink(e.to_string()))?,
                );
                return self.play(frame);
            }
            None => frame.to_vec(),
        };
        self.interleaved.clear();
        for s in mono {
            for _ in 0..open.channels {
                self.interleaved.push(s);
            }
        }
        // Normally `wait_ready` has waited already and this returns at once.
        let Some(target) = self
            .ready_target
            .take()
            .or_else(|| self.queue_target(frame.len()))
        else {
            return Ok(());
        };
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if !wait_for_drain(open, target) {
            return Ok(());
        }
        let mut written = 0;
        while written < self.interleaved.len() {
            let n = open.ring.slots().min(self.interleaved.len() - written);
            if n > 0 {
                if let Ok(mut chunk) = open.ring.write_chunk_uninit(n) {
                    let (a, b) = chunk.as_mut_slices();
                    let src = &self.interleaved[written..written + n];
                    for (d, s) in a.iter_mut().chain(b.iter_mut()).zip(src) {
                        d.write(*s);
                    }
                    // SAFETY: every slot of the chunk was written just above.
                    unsafe { chunk.commit_all() };
                }
                written += n;
                continue;
            }
            // The frame is larger than the room left: wait for the device to take some.
            let capacity = open.ring.buffer().capacity();
            if !wait_for_drain(open, capacity - (self.interleaved.len() - written)) {
                break;
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        self.open
            .as_ref()
            .map(|o| o.name.clone())
            .unwrap_or_else(|| "no speaker".into())
    }
}

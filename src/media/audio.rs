//! Audio sources and sinks at 48 kHz mono, in blocks of any length (the pipeline moves 10 ms
//! ones, `BLOCK_SAMPLES`): the synthetic tone, a WAV file,
//! silence, and a recording sink that keeps what would have been played. Sources and sinks that
//! stand in for devices pace themselves against the wall clock, as a sound card would.

use super::MediaError;
use super::codec::SAMPLE_RATE;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The unit audio moves through the pipeline in: 10 ms at 48 kHz. An Opus packet is one or two
/// blocks (`codec::OpusEncoder`); the playout mixes and plays one block at a time.
pub const BLOCK_SAMPLES: usize = 480;
pub const BLOCK_DURATION: Duration = Duration::from_millis(10);

/// How long `samples` at 48 kHz last.
pub fn span_of(samples: usize) -> Duration {
    Duration::from_micros(samples as u64 * 1_000_000 / SAMPLE_RATE as u64)
}

/// Produces blocks of sound. `next_frame` fills `out` (any length; the pipeline asks for
/// `BLOCK_SAMPLES`) and blocks until its last sample is due.
pub trait AudioSource: Send {
    fn next_frame(&mut self, out: &mut [f32]) -> Result<(), MediaError>;
    /// A short description for logs and the UI.
    fn describe(&self) -> String;
    /// True when the next frame carries a timing marker (a click), for latency measurement.
    fn next_frame_is_marker(&self) -> bool {
        false
    }
    /// True for real microphones, whose sound should go through echo cancellation and noise
    /// suppression (synthetic sources are already clean, and a test tone would be "noise").
    fn wants_processing(&self) -> bool {
        false
    }
}

/// Consumes blocks of sound (any length). `play` blocks until the device (or clock) has room.
pub trait AudioSink: Send {
    /// Blocks until the sink takes `samples` more without waiting. The playout calls it before
    /// it mixes a block, so the block holds what arrived until the last moment (mixed first and
    /// then held back by a full queue, it left behind packets that came meanwhile: up to a
    /// block of delay).
    fn wait_ready(&mut self, _samples: usize) {}
    fn play(&mut self, frame: &[f32]) -> Result<(), MediaError>;
    fn describe(&self) -> String;
}

/// Keeps a thread on a cadence against the monotonic clock, without drift; after a long stall
/// it skips ahead instead of bursting to catch up.
pub struct Pacer {
    next: Option<Instant>,
    period: Duration,
}

impl Pacer {
    pub fn new(period: Duration) -> Self {
        Pacer { next: None, period }
    }

    /// Waits for the next tick of the set period.
    pub fn wait(&mut self) {
        self.wait_span(self.period);
    }

    /// Waits until the current tick is due; the next comes `span` after it (a sound source
    /// paces by what it hands out, which need not be the same every time).
    pub fn wait_span(&mut self, span: Duration) {
        let now = Instant::now();
        let due = *self.next.get_or_insert(now);
        if due > now {
            std::thread::sleep(due - now);
        }
        let mut next = due + span;
        if Instant::now() > next + span.max(self.period) * 5 {
            next = Instant::now() + span;
        }
        self.next = Some(next);
    }
}

/// A sine tone, optionally with a short click every `click_every` for latency measurement.
pub struct ToneSource {
    frequency: f32,
    amplitude: f32,
    phase: f64,
    pacer: Pacer,
    click: Option<ClickTrain>,
}

struct ClickTrain {
    every_frames: u64,
    frame: u64,
}

impl ToneSource {
    pub fn new(frequency: f32, amplitude: f32) -> Self {
        ToneSource {
            frequency,
            amplitude,
            phase: 0.0,
            pacer: Pacer::new(BLOCK_DURATION),
            click: None,
        }
    }

    /// Silence broken by a full-scale 1 kHz burst (one block, 10 ms) every `every`. The
    /// receiver finds the bursts in its output to measure mouth-to-ear latency.
    pub fn clicks(every: Duration) -> Self {
        let mut tone = ToneSource::new(1000.0, 0.0);
        tone.click = Some(ClickTrain {
            every_frames: (every.as_millis() / BLOCK_DURATION.as_millis()).max(2) as u64,
            frame: 0,
        });
        tone
    }

    /// True when the frame about to be produced carries a click.
    pub fn next_is_click(&self) -> bool {
        self.click
            .as_ref()
            .is_some_and(|c| c.frame % c.every_frames == 0)
    }

    fn fill(&mut self, out: &mut [f32]) {
        let amplitude = match &mut self.click {
            Some(c) => {
                let a = if c.frame % c.every_frames == 0 {
                    0.9
                } else {
                    0.0
                };
                c.frame += 1;
                a
            }
            None => self.amplitude,
        };
        let step = 2.0 * std::f64::consts::PI * self.frequency as f64 / SAMPLE_RATE as f64;
        for s in out.iter_mut() {
            *s = amplitude * self.phase.sin() as f32;
            self.phase = (self.phase + step) % (2.0 * std::f64::consts::PI);
        }
    }
}

impl AudioSource for ToneSource {
    fn next_frame(&mut self, out: &mut [f32]) -> Result<(), MediaError> {
        self.pacer.wait_span(span_of(out.len()));
        self.fill(out);
        Ok(())
    }

    fn describe(&self) -> String {
        match self.click {
            Some(_) => "click train".into(),
            None => format!("tone {} Hz", self.frequency),
        }
    }

    fn next_frame_is_marker(&self) -> bool {
        self.next_is_click()
    }
}

/// Silence (a muted or absent microphone), paced like a device.
pub struct SilenceSource {
    pacer: Pacer,
}

impl SilenceSource {
    pub fn new() -> Self {
        SilenceSource {
            pacer: Pacer::new(BLOCK_DURATION),
        }
    }
}

impl Default for SilenceSource {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioSource for SilenceSource {
    fn next_frame(&mut self, out: &mut [f32]) -> Result<(), MediaError> {
        self.pacer.wait_span(span_of(out.len()));
        out.fill(0.0);
        Ok(())
    }
    fn describe(&self) -> String {
        "silence".into()
    }
}

/// A WAV file, mixed down to mono, resampled to 48 kHz, looped.
pub struct WavSource {
    samples: Arc<[f32]>,
    pos: usize,
    pacer: Pacer,
    name: String,
}

/// Longest WAV file we load into memory (10 minutes at 48 kHz).
const MAX_WAV_SAMPLES: usize = 48_000 * 600;

impl WavSource {
    pub fn open(path: &Path) -> Result<Self, MediaError> {
        let reader = hound::WavReader::open(path)
            .map_err(|e| MediaError::Source(format!("cannot read {}: {e}", path.display())))?;
        let spec = reader.spec();
        let channels = spec.channels.max(1) as usize;
        if reader.duration() as usize > MAX_WAV_SAMPLES * 2 {
            return Err(MediaError::Source(format!(
                "{} is longer than 10 minutes",
                path.display()
            )));
        }
        let interleaved: Vec<f32> = match spec.sample_format {
            hound::SampleFormat::Float => reader
                .into_samples::<f32>()
                .collect::<Result<_, _>>()
                .map_err(|e| MediaError::Source(format!("{}: {e}", path.display())))?,
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|v| v as f32 * scale))
                    .collect::<Result<_, _>>()
                    .map_err(|e| MediaError::Source(format!("{}: {e}", path.display())))?
            }
        };
        let mono: Vec<f32> = interleaved
            .chunks(channels)
            .map(|c| c.iter().sum::<f32>() / channels as f32)
            .collect();
        let samples = super::resample::to_48k(&mono, spec.sample_rate)?;
        if samples.is_empty() {
            return Err(MediaError::Source(format!(
                "{} has no audio",
                path.display()
            )));
        }
        Ok(WavSource {
            samples: samples.into(),
            pos: 0,
            pacer: Pacer::new(BLOCK_DURATION),
            name: path.display().to_string(),
        })
    }
}

impl AudioSource for WavSource {
    fn next_frame(&mut self, out: &mut [f32]) -> Result<(), MediaError> {
        self.pacer.wait_span(span_of(out.len()));
        for s in out.iter_mut() {
            *s = self.samples[self.pos];
            self.pos = (self.pos + 1) % self.samples.len();
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("file {}", self.name)
    }
}

/// Keeps the most recent `capacity` samples that would have been played, paced like a device.
/// Clones share the recording, so a test can read what the engine's playout thread wrote.
#[derive(Clone)]
pub struct RecordingSink {
    recording: Arc<Mutex<Recording>>,
    pacer: Arc<Mutex<Pacer>>,
    /// `wait_ready` has waited for the next block already.
    waited: bool,
}

pub struct Recording {
    pub samples: VecDeque<f32>,
    pub capacity: usize,
    /// Total samples ever played.
    pub played: u64,
}

impl RecordingSink {
    pub fn new(capacity_samples: usize) -> Self {
        RecordingSink {
            recording: Arc::new(Mutex::new(Recording {
                samples: VecDeque::with_capacity(capacity_samples),
                capacity: capacity_samples,
                played: 0,
            })),
            pacer: Arc::new(Mutex::new(Pacer::new(BLOCK_DURATION))),
            waited: false,
        }
    }

    /// The last `n` samples played (fewer if fewer were played).
    pub fn last(&self, n: usize) -> Vec<f32> {
        let Ok(rec) = self.recording.lock() else {
            return Vec::new();
        };
        let skip = rec.samples.len().saturating_sub(n);
        rec.samples.iter().skip(skip).copied().collect()
    }

    pub fn played(&self) -> u64 {
        self.recording.lock().map(|r| r.played).unwrap_or(0)
    }
}

impl AudioSink for RecordingSink {
    /// Waits until the block before has been "heard" for its length, like a device with one
    /// block of buffer.
    fn wait_ready(&mut self, samples: usize) {
        if let Ok(mut pacer) = self.pacer.lock() {
            pacer.wait_span(span_of(samples));
        }
        self.waited = true;
    }

    /// Records the block at once: this is when it is "heard".
    fn play(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        if !std::mem::take(&mut self.waited) {
            self.wait_ready(frame.len());
        }
        {
            let mut rec = self
                .recording
                .lock()
                .map_err(|_| MediaError::Sink("recording lock poisoned".into()))?;
            for &s in frame {
                if rec.samples.len() == rec.capacity {
                    rec.samples.pop_front();
                }
                rec.samples.push_back(s);
            }
            rec.played += frame.len() as u64;
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "recording".into()
    }
}

/// Discards what it is given, paced like a device (the app's speaker until one is chosen).
pub struct NullSink {
    pacer: Pacer,
    waited: bool,
}

impl NullSink {
    pub fn new() -> Self {
        NullSink {
            pacer: Pacer::new(BLOCK_DURATION),
            waited: false,
        }
    }
}

impl Default for NullSink {
    fn default() -> Self {
        Self::new()
    }
}

impl AudioSink for NullSink {
    fn wait_ready(&mut self, samples: usize) {
        self.pacer.wait_span(span_of(samples));
        self.waited = true;
    }

    fn play(&mut self, frame: &[f32]) -> Result<(), MediaError> {
        if !std::mem::take(&mut self.waited) {
            self.wait_ready(frame.len());
        }
        Ok(())
    }
    fn describe(&self) -> String {
        "no speaker".into()
    }
}

/// Parses a headless audio source argument: `tone`, `tone:HZ`, `clicks`, `none`, or a WAV path.
pub fn source_from_arg(arg: &str) -> Result<Option<Box<dyn AudioSource>>, MediaError> {
    match arg {
        "none" => Ok(None),
        "tone" => Ok(Some(Box::new(ToneSource::new(440.0, 0.5)))),
        "clicks" => Ok(Some(Box::new(ToneSource::clicks(Duration::from_millis(
            500,
        ))))),
        _ => {
            if let Some(hz) = arg.strip_prefix("tone:") {
                let hz: f32 = hz
                    .parse()
                    .map_err(|_| MediaError::Source(format!("bad tone frequency {hz:?}")))?;
                if !(20.0..=20_000.0).contains(&hz) {
                    return Err(MediaError::Source(format!(
                        "tone frequency {hz} Hz is outside 20..20000"
                    )));
                }
                Ok(Some(Box::new(ToneSource::new(hz, 0.5))))
            } else {
                Ok(Some(Box::new(WavSource::open(Path::new(arg))?)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::analysis::estimate_frequency;

    #[test]
    fn tone_has_its_frequency() {
        let mut tone = ToneSource::new(523.25, 0.5);
        let mut all = Vec::new();
        let mut frame = vec![0.0; BLOCK_SAMPLES];
        for _ in 0..25 {
            tone.fill(&mut frame);
            all.extend_from_slice(&frame);
        }
        let f = estimate_frequency(&all, SAMPLE_RATE).unwrap();
        assert!((f - 523.25).abs() < 1.0, "{f}");
    }

    #[test]
    fn clicks_are_spaced() {
        let mut clicks = ToneSource::clicks(Duration::from_millis(100));
        let mut frame = vec![0.0; BLOCK_SAMPLES];
        let loud: Vec<bool> = (0..20)
            .map(|_| {
                let flagged = clicks.next_is_click();
                clicks.fill(&mut frame);
                let loud = frame.iter().any(|s| s.abs() > 0.5);
                assert_eq!(flagged, loud);
                loud
            })
            .collect();
        // One 10 ms block in ten.
        let expected: Vec<bool> = (0..20).map(|i| i % 10 == 0).collect();
        assert_eq!(loud, expected);
    }

    #[test]
    fn wav_files_load_mixed_and_resampled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..16_000 {
            let v = (0.5
                * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 16_000.0).sin()
                * i16::MAX as f32) as i16;
            w.write_sample(v).unwrap();
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        let src = WavSource::open(&path).unwrap();
        assert!((src.samples.len() as i64 - 48_000).abs() < 1_000);
        let f = estimate_frequency(&src.samples[4_800..43_200], SAMPLE_RATE).unwrap();
        assert!((f - 300.0).abs() < 3.0, "{f}");

        std::fs::write(dir.path().join("bad.wav"), b"RIFF nonsense").unwrap();
        assert!(WavSource::open(&dir.path().join("bad.wav")).is_err());
        assert!(source_from_arg("tone:5").is_err());
        assert!(source_from_arg("tone:abc").is_err());
        assert!(source_from_arg("none").unwrap().is_none());
    }

    #[test]
    fn recording_sink_keeps_the_tail() {
        let mut sink = RecordingSink::new(1500);
        let reader = sink.clone();
        // Blocks of any length: 20 ms ones here.
        sink.play(&[0.25; 960]).unwrap();
        sink.play(&[0.5; 960]).unwrap();
        assert_eq!(reader.played(), 2 * 960);
        let tail = reader.last(2000);
        assert_eq!(tail.len(), 1500);
        assert_eq!(tail[0], 0.25);
        assert_eq!(tail[1499], 0.5);
    }
}

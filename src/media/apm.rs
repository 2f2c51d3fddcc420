//! Echo cancellation, noise suppression and gain control on the microphone path, with sonora (a
//! pure-Rust port of WebRTC's audio processing). What the speaker plays is fed as the echo
//! reference ("render"), what the microphone hears is cleaned ("capture"), 10 ms at a time. One
//! processor is shared by the playout thread and the capture thread.

use super::codec::SAMPLE_RATE;
use sonora::config::{
    AdaptiveDigital, EchoCanceller, GainController2, HighPassFilter, NoiseSuppression,
    NoiseSuppressionLevel,
};
use sonora::{AudioProcessing, Config, StreamConfig};
use std::sync::Mutex;

/// Which parts are on. All on by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessingSettings {
    pub echo_cancellation: bool,
    pub noise_suppression: bool,
    pub gain_control: bool,
}

impl Default for ProcessingSettings {
    fn default() -> Self {
        ProcessingSettings {
            echo_cancellation: true,
            noise_suppression: true,
            gain_control: true,
        }
    }
}

fn config(s: ProcessingSettings) -> Config {
    Config {
        high_pass_filter: Some(HighPassFilter::default()),
        echo_canceller: s.echo_cancellation.then(EchoCanceller::default),
        noise_suppression: s.noise_suppression.then(|| NoiseSuppression {
            level: NoiseSuppressionLevel::High,
            ..Default::default()
        }),
        gain_controller2: s.gain_control.then(|| GainController2 {
            adaptive_digital: Some(AdaptiveDigital::default()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// 10 ms at 48 kHz.
const BLOCK: usize = SAMPLE_RATE as usize / 100;

pub struct AudioProcessor {
    inner: Mutex<AudioProcessing>,
    settings: Mutex<ProcessingSettings>,
}

impl AudioProcessor {
    pub fn new(settings: ProcessingSettings) -> Self {
        let stream = StreamConfig::new(SAMPLE_RATE, 1);
        let inner = AudioProcessing::builder()
            .capture_config(stream)
            .render_config(stream)
            .config(config(settings))
            .build();
        AudioProcessor {
            inner: Mutex::new(inner),
            settings: Mutex::new(settings),
        }
    }

    pub fn settings(&self) -> ProcessingSettings {
        self.settings.lock().map(|s| *s).unwrap_or_default()
    }

    pub fn set(&self, settings: ProcessingSettings) {
        if let Ok(mut s) = self.settings.lock() {
            *s = settings;
        }
        if let Ok(mut apm) = self.inner.lock() {
            apm.apply_config(config(settings));
        }
    }

    /// Feeds what is being played (any multiple of 10 ms) as the echo reference.
    pub fn render(&self, frame: &[f32]) {
        let Ok(mut apm) = self.inner.lock() else {
            return;
        };
        let mut scratch = [0f32; BLOCK];
        for block in frame.chunks_exact(BLOCK) {
            let _ = apm.process_render_f32(&[block], &mut [&mut scratch[..]]);
        }
    }

    /// Cleans a captured frame (any multiple of 10 ms) in place. `delay_ms` is a hint for the
    /// time from the render call to the sound reaching the microphone.
    pub fn capture(&self, frame: &mut [f32], delay_ms: i32) {
        let Ok(mut apm) = self.inner.lock() else {
            return;
        };
        let mut out = [0f32; BLOCK];
        for block in frame.chunks_exact_mut(BLOCK) {
            let _ = apm.set_stream_delay_ms(delay_ms);
            if apm
                .process_capture_f32(&[&block[..]], &mut [&mut out[..]])
                .is_ok()
            {
                block.copy_from_slice(&out);
            }
        }
    }

    /// The canceller's own echo-return-loss-enhancement estimate, in dB.
    pub fn erle_db(&self) -> Option<f64> {
        self.inner
            .lock()
            .ok()
            .and_then(|a| a.statistics().echo_return_loss_enhancement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::analysis::rms;

    /// Speech-like test signal: noise shaped by two resonances, switched on and off at a
    /// syllabic rate, so it is broadband and bursty like a voice (a pure tone is not).
    struct Talker {
        state: u64,
        y1: f32,
        y2: f32,
        z1: f32,
        z2: f32,
        n: usize,
        rate_hz: f32,
        seed_phase: f32,
    }

    impl Talker {
        fn new(seed: u64, rate_hz: f32, seed_phase: f32) -> Self {
            Talker {
                state: seed | 1,
                y1: 0.0,
                y2: 0.0,
                z1: 0.0,
                z2: 0.0,
                n: 0,
                rate_hz,
                seed_phase,
            }
        }
        fn noise(&mut self) -> f32 {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            (self.state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn sample(&mut self, on: bool) -> f32 {
            let x = self.noise();
            // Two-pole resonators around 500 Hz and 1500 Hz.
            let y = x + 1.85 * self.y1 - 0.92 * self.y2;
            self.y2 = self.y1;
            self.y1 = y;
            let z = x + 1.2 * self.z1 - 0.85 * self.z2;
            self.z2 = self.z1;
            self.z1 = z;
            let t = self.n as f32 / SAMPLE_RATE as f32;
            self.n += 1;
            let envelope =
                0.5 + 0.5 * (2.0 * std::f32::consts::PI * self.rate_hz * t + self.seed_phase).sin();
            if on {
                0.02 * (0.7 * y + 0.3 * z) * envelope
            } else {
                0.0
            }
        }
    }

    /// Far-end speech plays; the microphone hears a delayed, attenuated copy plus, at times,
    /// near-end speech. Measures echo reduction when only the far end talks, and how the
    /// near-end level survives when only the near end talks.
    #[test]
    fn echo_drops_by_20_db_and_near_speech_stays() {
        let apm = AudioProcessor::new(ProcessingSettings {
            echo_cancellation: true,
            noise_suppression: false,
            gain_control: false,
        });
        let mut far = Talker::new(11, 3.3, 0.0);
        let mut near = Talker::new(97, 4.1, 1.0);
        let delay = 60 * SAMPLE_RATE as usize / 1000;
        let mut history = std::collections::VecDeque::from(vec![0f32; delay]);
        let mut echo_in = 0f64;
        let mut echo_out = 0f64;
        let mut near_in = 0f64;
        let mut near_out = 0f64;
        let seconds = 30;
        for block in 0..seconds * 100 {
            let t = block as f32 / 100.0;
            // 0-20 s: far end only (the canceller converges; we measure 5-20 s).
            // 20-25 s: near end only. 25-30 s: far end only again.
            let far_on = !(20.0..25.0).contains(&t);
            let near_on = (20.0..25.0).contains(&t);
            let far_block: Vec<f32> = (0..BLOCK).map(|_| far.sample(far_on)).collect();
            apm.render(&far_block);
            let mut mic: Vec<f32> = Vec::with_capacity(BLOCK);
            let mut near_part = Vec::with_capacity(BLOCK);
            for &f in &far_block {
                history.push_back(f);
                let echo = 0.5 * history.pop_front().unwrap_or(0.0);
                let n = near.sample(near_on);
                near_part.push(n);
                mic.push(echo + n);
            }
            let before = rms(&mic) as f64;
            apm.capture(&mut mic, 60);
            let after = rms(&mic) as f64;
            if (5.0..20.0).contains(&t) || t >= 26.0 {
                echo_in += before * before;
                echo_out += after * after;
            } else if (20.5..25.0).contains(&t) {
                near_in += (rms(&near_part) as f64).powi(2);
                near_out += after * after;
            }
        }
        let erle = 10.0 * (echo_in / echo_out.max(1e-20)).log10();
        let near_change = 10.0 * (near_out / near_in).log10();
        eprintln!(
            "ERLE {erle:.1} dB (canceller's estimate {:?}); near-end level change {near_change:.2} dB",
            apm.erle_db()
        );
        assert!(erle >= 20.0, "echo reduced by only {erle:.1} dB");
        assert!(
            near_change.abs() <= 3.0,
            "near-end speech changed by {near_change:.2} dB"
        );
    }

    #[test]
    fn switching_parts_off_passes_audio_through() {
        let apm = AudioProcessor::new(ProcessingSettings {
            echo_cancellation: false,
            noise_suppression: false,
            gain_control: false,
        });
        let mut talker = Talker::new(5, 3.0, 0.0);
        let mut level_in = 0f64;
        let mut level_out = 0f64;
        for _ in 0..200 {
            let mut block: Vec<f32> = (0..BLOCK).map(|_| talker.sample(true)).collect();
            level_in += (rms(&block) as f64).powi(2);
            apm.capture(&mut block, 0);
            level_out += (rms(&block) as f64).powi(2);
        }
        let change = 10.0 * (level_out / level_in).log10();
        assert!(change.abs() < 1.5, "{change}");
        assert!(!apm.settings().echo_cancellation);
    }
}

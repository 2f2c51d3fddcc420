//! Takes Huddle's own playout (the other people's voices) out of the computer sound a screen
//! share sends. The speaker's monitor carries everything the computer plays, ours included; the
//! far end must not hear itself back. Unlike acoustic echo this is a digital copy: the same
//! samples after the sound server's buffers (a delay), its volume (a gain) and maybe two
//! resamplings (a short filter). So: find the delay by cross-correlation (FFT), fit a short
//! filter around it by least squares over the last seconds of our playout, and subtract its
//! estimate. Other programs' sound does not correlate with ours, so over seconds it averages out
//! of the fit and passes through. Pure DSP, no threads:
//! the playout thread writes [`PlayoutHistory`], the sending thread runs [`OwnPlayoutRemover`].

use realfft::RealFftPlanner;
use realfft::num_complex::Complex;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

/// Playout kept for matching: the longest sound-server delay we can find (PulseAudio's buffers
/// plus ours) plus the search window.
const HISTORY_SAMPLES: usize = 96_000;
/// Monitor samples matched against the history in a delay search (about 170 ms at 48 kHz).
const SEARCH_WINDOW: usize = 8_192;
/// Playout searched for the window: delays up to about 1 s minus the window.
const SEARCH_SPAN: usize = 57_344;
/// Filter length: a delay found to the sample plus resampling filters on either side.
const TAPS: usize = 32;
/// The tap that weighs the playout sample the found delay points at; later taps weigh earlier
/// samples.
const CENTRE: usize = TAPS / 2;
/// Monitor samples between delay searches while locked (about 1 s).
const RECHECK_EVERY: u64 = 48_000;
/// Below this playout power (mean square, about -60 dBFS) there is nothing of ours to remove,
/// and the filter does not adapt.
const QUIET_POWER: f32 = 1e-6;
/// A delay is believed when the window correlates at least this well with the playout.
const MIN_CORRELATION: f32 = 0.2;
/// Memory of the fit, in samples of our playout being heard (2 s): long enough that other
/// programs' sound averages out of it, short enough to follow a volume change.
const FIT_MEMORY: f64 = 96_000.0;
/// Samples of our playout the fit needs before it replaces the gain the delay search found.
const FIT_MIN_SAMPLES: f64 = 4_800.0;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the playout handed to the speaker, newest last, with a running sample index.
#[derive(Default)]
pub struct PlayoutHistory {
    inner: Mutex<History>,
}

#[derive(Default)]
struct History {
    samples: VecDeque<f32>,
    /// Index of `samples[0]` since the playout started.
    first: u64,
}

impl History {
    fn end(&self) -> u64 {
        self.first + self.samples.len() as u64
    }

    /// Copies samples `from..from + out.len()` if the history still (or already) holds them.
    fn copy(&self, from: u64, out: &mut [f32]) -> bool {
        if from < self.first || from + out.len() as u64 > self.end() {
            return false;
        }
        let start = (from - self.first) as usize;
        let end = start + out.len();
        for (o, s) in out.iter_mut().zip(self.samples.range(start..end)) {
            *o = *s;
        }
        true
    }
}

impl PlayoutHistory {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Called by the playout with every frame it hands to the speaker, in order.
    pub fn push(&self, frame: &[f32]) {
        let mut h = lock(&self.inner);
        h.samples.extend(frame.iter().copied());
        let excess = h.samples.len().saturating_sub(HISTORY_SAMPLES);
        h.samples.drain(..excess);
        h.first += excess as u64;
    }
}

/// What the remover has done so far, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RemoverStats {
    /// Playout index minus monitor index of the same sound, once found.
    pub offset: Option<i64>,
    /// Correlation of the last accepted delay search.
    pub correlation: f32,
    pub searches: u64,
    /// Times the delay was found again somewhere else (an underrun or a device change).
    pub relocks: u64,
}

/// Removes our own playout from monitor frames, one frame at a time.
pub struct OwnPlayoutRemover {
    history: Arc<PlayoutHistory>,
    /// The monitor's recent samples as captured (before removal), for delay searches.
    monitor: VecDeque<f32>,
    /// Monitor samples seen so far.
    monitor_count: u64,
    next_search_at: u64,
    weights: [f32; TAPS],
    /// Least-squares sums over the recent playout (decaying): our playout's autocorrelation by
    /// lag, and the monitor's correlation with each tap's input.
    autocorrelation: [f64; TAPS],
    cross: [f64; TAPS],
    /// Samples in the sums (decaying like them).
    fitted: f64,
    /// The playout around the current frame: TAPS - 1 samples of context plus the frame.
    reference: Vec<f32>,
    stats: RemoverStats,
    planner: RealFftPlanner<f32>,
}

impl OwnPlayoutRemover {
    pub fn new(history: Arc<PlayoutHistory>) -> Self {
        OwnPlayoutRemover {
            history,
            monitor: VecDeque::with_capacity(SEARCH_WINDOW),
            monitor_count: 0,
            next_search_at: SEARCH_WINDOW as u64,
            weights: [0.0; TAPS],
            autocorrelation: [0.0; TAPS],
            cross: [0.0; TAPS],
            fitted: 0.0,
            reference: Vec::new(),
            stats: RemoverStats::default(),
            planner: RealFftPlanner::new(),
        }
    }

    pub fn stats(&self) -> RemoverStats {
        self.stats
    }

    /// Removes our playout from `frame` (monitor samples, in order, 48 kHz mono) in place.
    pub fn process(&mut self, frame: &mut [f32]) {
        self.monitor.extend(frame.iter().copied());
        let excess = self.monitor.len().saturating_sub(SEARCH_WINDOW);
        self.monitor.drain(..excess);
        let frame_start = self.monitor_count;
        self.monitor_count += frame.len() as u64;
        if self.monitor_count >= self.next_search_at {
            self.search();
        }
        let Some(offset) = self.stats.offset else {
            return;
        };
        // Playout index of the first sample the filter reads: tap CENTRE of the frame's first
        // sample is its own delayed playout sample.
        let lead = (TAPS - 1 - CENTRE) as i64;
        let Some(first) = (frame_start as i64 + offset - lead).try_into().ok() else {
            return;
        };
        self.reference.resize(frame.len() + TAPS - 1, 0.0);
        if !lock(&self.history.inner).copy(first, &mut self.reference) {
            // The monitor is further behind (or ahead) than the history reaches: look again.
            self.stats.offset = None;
            self.next_search_at = self.monitor_count;
            return;
        }
        self.cancel(frame);
    }

    /// Subtracts the filter's estimate of our playout from the frame, then adds the frame to the
    /// fit. `reference[n + TAPS - 1 - k]` is tap `k`'s input for sample `n`.
    fn cancel(&mut self, frame: &mut [f32]) {
        let mut frame_auto = [0f64; TAPS];
        let mut frame_cross = [0f64; TAPS];
        let mut active = 0usize;
        for (n, m) in frame.iter_mut().enumerate() {
            let x = &self.reference[n..n + TAPS];
            let newest = x[TAPS - 1];
            let estimate: f32 = self
                .weights
                .iter()
                .zip(x.iter().rev())
                .map(|(w, x)| w * x)
                .sum();
            if newest * newest > QUIET_POWER {
                active += 1;
                for (lag, a) in frame_auto.iter_mut().enumerate() {
                    *a += f64::from(newest * x[TAPS - 1 - lag]);
                }
                for (c, x) in frame_cross.iter_mut().zip(x.iter().rev()) {
                    *c += f64::from(*m * x);
                }
            }
            *m -= estimate;
        }
        if active == 0 {
            return;
        }
        let keep = (-(active as f64) / FIT_MEMORY).exp();
        for (sum, add) in self.autocorrelation.iter_mut().zip(frame_auto) {
            *sum = *sum * keep + add;
        }
        for (sum, add) in self.cross.iter_mut().zip(frame_cross) {
            *sum = *sum * keep + add;
        }
        self.fitted = self.fitted * keep + active as f64;
        if self.fitted >= FIT_MIN_SAMPLES
            && let Some(weights) = solve_toeplitz(&self.autocorrelation, &self.cross)
        {
            self.weights = weights;
        }
    }

    /// Looks for the monitor's recent window in the playout history (FFT cross-correlation).
    /// A clear match sets (or moves) the delay; no match keeps what we have.
    fn search(&mut self) {
        self.next_search_at = self.monitor_count + RECHECK_EVERY;
        if self.monitor.len() < SEARCH_WINDOW {
            return;
        }
        let mut span = vec![0f32; SEARCH_SPAN];
        let span_start = {
            let h = lock(&self.history.inner);
            let Some(start) = h.end().checked_sub(SEARCH_SPAN as u64) else {
                return;
            };
            if !h.copy(start, &mut span) {
                return;
            }
            start
        };
        self.stats.searches += 1;
        let window: Vec<f32> = self.monitor.iter().copied().collect();
        let window_power: f32 = window.iter().map(|x| x * x).sum();
        if window_power < QUIET_POWER * SEARCH_WINDOW as f32 {
            return;
        }
        let Some(Match {
            lag,
            correlation,
            gain,
        }) = self.best_lag(&window, &span, window_power)
        else {
            return;
        };
        if correlation < MIN_CORRELATION {
            return;
        }
        let window_start = self.monitor_count - SEARCH_WINDOW as u64;
        let offset = (span_start + lag as u64) as i64 - window_start as i64;
        self.stats.correlation = correlation;
        match self.stats.offset {
            // Still where it was (the filter covers a few samples either way): keep learning.
            Some(current) if (current - offset).abs() <= (TAPS / 4) as i64 => {}
            previous => {
                if previous.is_some() {
                    self.stats.relocks += 1;
                }
                tracing::debug!(
                    delay_samples = -offset,
                    correlation,
                    "found our own playout in the speaker's monitor"
                );
                self.stats.offset = Some(offset);
                self.weights = [0.0; TAPS];
                self.autocorrelation = [0.0; TAPS];
                self.cross = [0.0; TAPS];
                self.fitted = 0.0;
                // Until the fit has data: the gain the match implies, at the centre tap.
                self.weights[CENTRE] = gain;
            }
        }
    }

    /// The lag into `span` where `window` matches best.
    fn best_lag(&mut self, window: &[f32], span: &[f32], window_power: f32) -> Option<Match> {
        let size = (window.len() + span.len()).next_power_of_two();
        let forward = self.planner.plan_fft_forward(size);
        let inverse = self.planner.plan_fft_inverse(size);
        let mut a = forward.make_input_vec();
        let mut b = forward.make_input_vec();
        a[..window.len()].copy_from_slice(window);
        b[..span.len()].copy_from_slice(span);
        let mut fa = forward.make_output_vec();
        let mut fb = forward.make_output_vec();
        forward.process(&mut a, &mut fa).ok()?;
        forward.process(&mut b, &mut fb).ok()?;
        let mut product: Vec<Complex<f32>> =
            fa.iter().zip(&fb).map(|(x, y)| x.conj() * y).collect();
        // Real signals: the DC and Nyquist bins are real; rounding must not say otherwise.
        for bin in [0, product.len() - 1] {
            product[bin].im = 0.0;
        }
        let mut correlation = inverse.make_output_vec();
        inverse.process(&mut product, &mut correlation).ok()?;
        // Running power of the span under the window at each lag.
        let mut span_power: f32 = span[..window.len()].iter().map(|x| x * x).sum();
        let mut best: Option<Match> = None;
        for lag in 0..=span.len() - window.len() {
            if lag > 0 {
                let gone = span[lag - 1];
                let come = span[lag + window.len() - 1];
                span_power = (span_power + come * come - gone * gone).max(0.0);
            }
            if span_power < QUIET_POWER * window.len() as f32 {
                continue;
            }
            let dot = correlation[lag] / size as f32;
            let rho = dot / (window_power * span_power).sqrt();
            if best.is_none_or(|b| rho > b.correlation) {
                best = Some(Match {
                    lag,
                    correlation: rho,
                    gain: dot / span_power,
                });
            }
        }
        best
    }
}

/// Where the monitor's window sits in the playout span.
#[derive(Clone, Copy)]
struct Match {
    lag: usize,
    /// Normalised correlation of the window with the span there.
    correlation: f32,
    /// The least-squares gain from the span there to the window.
    gain: f32,
}

/// Solves `R w = p` for the symmetric Toeplitz `R` built from `autocorrelation` (by Cholesky,
/// with diagonal loading at -30 dB: our playout is band-limited (Opus), and without it the fit
/// puts large weights where it has no energy, which shows up as noise when it later does).
fn solve_toeplitz(autocorrelation: &[f64; TAPS], p: &[f64; TAPS]) -> Option<[f32; TAPS]> {
    let loading = autocorrelation[0] * 1e-3 + 1e-12;
    let mut l = [[0f64; TAPS]; TAPS];
    for i in 0..TAPS {
        for j in 0..=i {
            let dot: f64 = l[i][..j].iter().zip(&l[j][..j]).map(|(a, b)| a * b).sum();
            let sum = autocorrelation[i - j] + if i == j { loading } else { 0.0 } - dot;
            if i == j {
                if sum <= 0.0 {
                    return None;
                }
                l[i][i] = sum.sqrt();
            } else {
                l[i][j] = sum / l[j][j];
            }
        }
    }
    // L y = p, then Lᵀ w = y.
    let mut y = [0f64; TAPS];
    for i in 0..TAPS {
        let sum: f64 = (0..i).map(|k| l[i][k] * y[k]).sum();
        y[i] = (p[i] - sum) / l[i][i];
    }
    let mut w = [0f32; TAPS];
    let mut solved = [0f64; TAPS];
    for i in (0..TAPS).rev() {
        let sum: f64 = (i + 1..TAPS).map(|k| l[k][i] * solved[k]).sum();
        solved[i] = (y[i] - sum) / l[i][i];
        w[i] = solved[i] as f32;
    }
    w.iter().all(|x| x.is_finite()).then_some(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::analysis::dbfs;

    const FRAME: usize = 960;

    /// Speech-like playout: noise bursts of varying loudness with pauses.
    fn voices(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed;
        let mut noise = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 1.0
        };
        (0..len)
            .map(|i| {
                let syllable = (i / 7200) % 5;
                let loud = [0.3, 0.0, 0.25, 0.15, 0.0][syllable];
                loud * noise()
            })
            .collect()
    }

    fn tone(len: usize, hz: f32, amplitude: f32) -> Vec<f32> {
        (0..len)
            .map(|i| amplitude * (2.0 * std::f32::consts::PI * hz * i as f32 / 48_000.0).sin())
            .collect()
    }

    /// Plays `ours` through the history and a monitor that hears it `delay` samples later at
    /// `gain` plus `other`; returns the remover's output and the remover.
    fn run(
        ours: &[f32],
        other: &[f32],
        delay: usize,
        gain: f32,
        filter: impl Fn(&[f32], usize) -> f32,
    ) -> (Vec<f32>, OwnPlayoutRemover) {
        let history = PlayoutHistory::new();
        let mut remover = OwnPlayoutRemover::new(history.clone());
        let mut out = Vec::new();
        for (k, frame) in ours.chunks(FRAME).enumerate() {
            history.push(frame);
            let start = k * FRAME;
            let mut monitor: Vec<f32> = (start..start + frame.len())
                .map(|i| {
                    let heard = if i >= delay {
                        gain * filter(ours, i - delay)
                    } else {
                        0.0
                    };
                    heard + other[i]
                })
                .collect();
            remover.process(&mut monitor);
            out.extend(monitor);
        }
        (out, remover)
    }

    fn level_after(out: &[f32], from: usize) -> f32 {
        dbfs(&out[from..])
    }

    #[test]
    fn our_voices_are_taken_out_and_the_shared_tone_stays() {
        let len = 48_000 * 8;
        let ours = voices(len, 7);
        let shared = tone(len, 1000.0, 0.1);
        let (out, remover) = run(&ours, &shared, 3_517, 0.6, |s, i| s[i]);
        let stats = remover.stats();
        assert_eq!(stats.offset, Some(-3_517), "{stats:?}");
        // After two seconds to find and learn: what is left of our voices, measured where the
        // shared tone is (the whole second half) and where it is not.
        let half = len / 2;
        let residual: Vec<f32> = out[half..]
            .iter()
            .zip(&shared[half..])
            .map(|(o, s)| o - s)
            .collect();
        let ours_level = dbfs(&ours[half..].iter().map(|x| x * 0.6).collect::<Vec<_>>());
        let left = dbfs(&residual);
        println!(
            "our voices at the monitor {ours_level:.1} dBFS, left after removal {left:.1} dBFS"
        );
        assert!(
            ours_level - left > 30.0,
            "only {:.1} dB removed",
            ours_level - left
        );
        let tone_level = level_after(&shared, half);
        let out_level = level_after(&out, half);
        assert!(
            (out_level - tone_level).abs() < 0.5,
            "tone {tone_level:.1} dBFS came out at {out_level:.1}"
        );
    }

    #[test]
    fn a_resampled_copy_is_removed_by_the_filter() {
        let len = 48_000 * 8;
        let ours = voices(len, 11);
        let silence = vec![0f32; len];
        // A half-sample delay (what a resampler leaves), as a short interpolating filter.
        let smear = |s: &[f32], i: usize| 0.5 * s[i] + 0.5 * s.get(i + 1).copied().unwrap_or(0.0);
        let (out, remover) = run(&ours, &silence, 12_000, 0.9, smear);
        assert!(remover.stats().offset.is_some());
        let half = len / 2;
        let before = dbfs(&ours[half..]);
        let after = level_after(&out, half);
        println!("before {before:.1} dBFS, after {after:.1} dBFS");
        assert!(
            before - after > 25.0,
            "only {:.1} dB removed",
            before - after
        );
    }

    #[test]
    fn a_delay_that_moves_is_found_again() {
        let len = 48_000 * 10;
        let ours = voices(len, 3);
        let silence = vec![0f32; len];
        // An underrun: from 4 s on, the monitor hears ours 480 samples later than before.
        let (out, remover) = run(&ours, &silence, 0, 1.0, |s, i| {
            let delay = if i < 48_000 * 4 { 2_000 } else { 2_480 };
            i.checked_sub(delay).map(|j| s[j]).unwrap_or(0.0)
        });
        let stats = remover.stats();
        assert_eq!(stats.offset, Some(-2_480), "{stats:?}");
        assert!(stats.relocks >= 1, "{stats:?}");
        let tail = len - 48_000 * 2;
        let before = dbfs(&ours[tail..]);
        let after = level_after(&out, tail);
        assert!(
            before - after > 35.0,
            "only {:.1} dB removed after the move",
            before - after
        );
    }

    #[test]
    fn without_our_playout_the_monitor_passes_unchanged() {
        let len = 48_000 * 3;
        let quiet = vec![0f32; len];
        let shared = tone(len, 440.0, 0.2);
        let (out, remover) = run(&quiet, &shared, 1_000, 1.0, |s, i| s[i]);
        assert_eq!(remover.stats().offset, None);
        assert_eq!(out, shared);
    }
}

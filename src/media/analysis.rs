//! Measurements on audio: level (RMS, dBFS), the frequency of a tone, and onsets of clicks. Used
//! for speaking indicators and level meters, and by tests and benchmarks to check what arrived.

/// Root mean square of the samples (0 for none).
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
}

/// Level in dB relative to full scale, floored at -100.
pub fn dbfs(samples: &[f32]) -> f32 {
    let r = rms(samples);
    if r <= 1e-5 { -100.0 } else { 20.0 * r.log10() }
}

/// Estimates the frequency of a steady tone from its rising zero crossings (interpolated between
/// samples). `None` when the signal is too quiet or has too few crossings to tell.
pub fn estimate_frequency(samples: &[f32], sample_rate: u32) -> Option<f32> {
    if rms(samples) < 1e-3 {
        return None;
    }
    let mut first: Option<f64> = None;
    let mut last = 0.0f64;
    let mut count = 0usize;
    for (i, w) in samples.windows(2).enumerate() {
        let (a, b) = (w[0], w[1]);
        if a < 0.0 && b >= 0.0 {
            let t = i as f64 + (-a / (b - a)) as f64;
            if first.is_none() {
                first = Some(t);
            } else {
                count += 1;
            }
            last = t;
        }
    }
    let first = first?;
    if count < 2 || last <= first {
        return None;
    }
    Some((count as f64 * sample_rate as f64 / (last - first)) as f32)
}

/// Finds where loud bursts start: indices of samples whose 1 ms window crosses `threshold` RMS
/// after at least `quiet_gap` samples of quiet.
pub fn click_onsets(samples: &[f32], threshold: f32, quiet_gap: usize) -> Vec<usize> {
    const WINDOW: usize = 48;
    let mut onsets = Vec::new();
    let mut quiet_run = quiet_gap;
    let mut i = 0;
    while i + WINDOW <= samples.len() {
        let loud = rms(&samples[i..i + WINDOW]) >= threshold;
        if loud {
            if quiet_run >= quiet_gap {
                // Refine to the first sample over the threshold inside the window.
                let offset = samples[i..i + WINDOW]
                    .iter()
                    .position(|s| s.abs() >= threshold)
                    .unwrap_or(0);
                onsets.push(i + offset);
            }
            quiet_run = 0;
        } else {
            quiet_run += WINDOW;
        }
        i += WINDOW;
    }
    onsets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * freq * i as f32 / 48_000.0).sin())
            .collect()
    }

    #[test]
    fn levels() {
        assert_eq!(rms(&[]), 0.0);
        assert_eq!(dbfs(&[0.0; 100]), -100.0);
        let full = sine(1000.0, 48_000);
        assert!((dbfs(&full) - 20.0 * (0.3f32 / 2f32.sqrt()).log10()).abs() < 0.1);
    }

    #[test]
    fn frequency_of_tones() {
        for f in [220.0, 440.0, 997.0, 3000.0] {
            let got = estimate_frequency(&sine(f, 48_000), 48_000).unwrap();
            assert!((got - f).abs() / f < 0.002, "{f}: {got}");
        }
        assert_eq!(estimate_frequency(&[0.0; 4800], 48_000), None);
    }

    #[test]
    fn onsets_of_clicks() {
        let mut s = vec![0.0f32; 48_000];
        for start in [1_000usize, 25_000] {
            for (i, v) in sine(1000.0, 960).into_iter().enumerate() {
                s[start + i] = v * 3.0;
            }
        }
        let onsets = click_onsets(&s, 0.2, 4_800);
        assert_eq!(onsets.len(), 2);
        assert!(
            onsets[0].abs_diff(1_000) < 48 && onsets[1].abs_diff(25_000) < 48,
            "{onsets:?}"
        );
    }
}

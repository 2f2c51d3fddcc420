//! Sample-rate conversion to Huddle's 48 kHz with rubato (FFT-based, for whole buffers and for
//! device streams in fixed-size chunks).

use super::MediaError;
use super::codec::SAMPLE_RATE;
use rubato::{FftFixedIn, Resampler};

/// Converts mono samples at `rate` to 48 kHz, compensating the resampler's delay.
pub fn to_48k(samples: &[f32], rate: u32) -> Result<Vec<f32>, MediaError> {
    if rate == SAMPLE_RATE {
        return Ok(samples.to_vec());
    }
    let mut stream = StreamResampler::new(rate, 1024)?;
    let mut out = Vec::with_capacity(samples.len() * SAMPLE_RATE as usize / rate as usize + 1024);
    stream.push(samples, &mut out)?;
    stream.finish(&mut out)?;
    Ok(out)
}

/// Resamples a continuous mono stream to 48 kHz in fixed input chunks.
pub struct StreamResampler {
    inner: FftFixedIn<f32>,
    output_rate: u32,
    pending: Vec<f32>,
    chunk: usize,
    delay_left: usize,
    input_rate: u32,
    consumed: u64,
    produced: u64,
    out_buf: Vec<Vec<f32>>,
}

impl StreamResampler {
    /// To 48 kHz.
    pub fn new(input_rate: u32, chunk: usize) -> Result<Self, MediaError> {
        Self::new_to(input_rate, SAMPLE_RATE, chunk)
    }

    /// Between any two rates.
    pub fn new_to(input_rate: u32, output_rate: u32, chunk: usize) -> Result<Self, MediaError> {
        let inner = FftFixedIn::<f32>::new(input_rate as usize, output_rate as usize, chunk, 1, 1)
            .map_err(|e| {
                MediaError::Source(format!("resampler {input_rate} -> {output_rate} Hz: {e}"))
            })?;
        let delay_left = inner.output_delay();
        let out_buf = inner.output_buffer_allocate(true);
        Ok(StreamResampler {
            inner,
            output_rate,
            pending: Vec::with_capacity(chunk * 2),
            chunk,
            delay_left,
            input_rate,
            consumed: 0,
            produced: 0,
            out_buf,
        })
    }

    /// Feeds samples; appends whatever 48 kHz output is ready to `out`.
    pub fn push(&mut self, samples: &[f32], out: &mut Vec<f32>) -> Result<(), MediaError> {
        self.pending.extend_from_slice(samples);
        while self.pending.len() >= self.chunk {
            let (_, produced) = self
                .inner
                .process_into_buffer(&[&self.pending[..self.chunk]], &mut self.out_buf, None)
                .map_err(|e| MediaError::Source(format!("resample: {e}")))?;
            self.pending.drain(..self.chunk);
            self.consumed += self.chunk as u64;
            self.emit(produced, out);
        }
        Ok(())
    }

    /// Flushes the tail so the output length matches the input duration.
    pub fn finish(&mut self, out: &mut Vec<f32>) -> Result<(), MediaError> {
        let expected = (self.consumed + self.pending.len() as u64) * self.output_rate as u64
            / self.input_rate as u64;
        let tail = std::mem::take(&mut self.pending);
        self.consumed += tail.len() as u64;
        let mut first = true;
        while self.produced < expected {
            // The tail goes in once; after it, empty calls flush the resampler's delay line.
            let input: Option<&[&[f32]]> = if first { Some(&[&tail[..]]) } else { None };
            first = false;
            let (_, produced) = self
                .inner
                .process_partial_into_buffer(input, &mut self.out_buf, None)
                .map_err(|e| MediaError::Source(format!("resample: {e}")))?;
            if produced == 0 {
                break;
            }
            self.emit(produced, out);
        }
        let extra = self.produced.saturating_sub(expected) as usize;
        out.truncate(out.len().saturating_sub(extra));
        Ok(())
    }

    fn emit(&mut self, produced: usize, out: &mut Vec<f32>) {
        let block = &self.out_buf[0][..produced];
        let skip = self.delay_left.min(block.len());
        self.delay_left -= skip;
        out.extend_from_slice(&block[skip..]);
        self.produced += (block.len() - skip) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::analysis::estimate_frequency;

    #[test]
    fn resampling_keeps_duration_and_pitch() {
        for rate in [44_100u32, 16_000, 8_000] {
            let input: Vec<f32> = (0..rate)
                .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
                .collect();
            let out = to_48k(&input, rate).unwrap();
            assert!(
                (out.len() as i64 - 48_000).abs() <= 2,
                "{rate}: {}",
                out.len()
            );
            let f = estimate_frequency(&out[2_000..46_000], SAMPLE_RATE).unwrap();
            assert!((f - 440.0).abs() < 1.0, "{rate}: {f}");
        }
        assert_eq!(to_48k(&[0.1, 0.2], 48_000).unwrap(), vec![0.1, 0.2]);
    }
}

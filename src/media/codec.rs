//! Codecs: H.264 constrained baseline through openh264 (what Chromium negotiates as 42e01f,
//! packetization-mode 1) and Opus at 48 kHz mono in 10 or 20 ms packets.

use super::MediaError;
use super::frame::{I420Frame, RgbaFrame};
use bytes::Bytes;
use openh264::OpenH264API;
use openh264::decoder::Decoder;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level,
    Profile, QpRange, RateControlMode, UsageType,
};
use openh264::formats::YUVSource;

/// Audio sample rate used everywhere inside Huddle.
pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in a 20 ms Opus packet, the longest we send (on slow links: see
/// `audio_pipeline::voice_packet_samples_for`).
pub const FRAME_SAMPLES: usize = 960;
/// Samples in a 10 ms Opus packet, the shortest we send.
pub const SHORT_FRAME_SAMPLES: usize = 480;
/// The longest packet Opus can carry (120 ms): the decoder's output buffer.
pub const MAX_PACKET_SAMPLES: usize = 5760;
/// Largest Opus packet we produce or accept.
pub const MAX_OPUS_PACKET: usize = 1500;

/// One encoded video access unit (Annex-B, SPS/PPS included before keyframes).
#[derive(Clone, Debug)]
pub struct EncodedVideo {
    pub data: Bytes,
    pub keyframe: bool,
    pub capture_us: u64,
    pub width: usize,
    pub height: usize,
}

/// One encoded Opus packet.
#[derive(Clone, Debug)]
pub struct EncodedAudio {
    pub data: Bytes,
    pub capture_us: u64,
    /// Samples at 48 kHz the packet holds (its RTP timestamp step).
    pub samples: usize,
}

struct FrameRef<'a>(&'a I420Frame);

impl YUVSource for FrameRef<'_> {
    fn dimensions(&self) -> (usize, usize) {
        (self.0.width, self.0.height)
    }
    fn strides(&self) -> (usize, usize, usize) {
        let cw = self.0.width.div_ceil(2);
        (self.0.width, cw, cw)
    }
    fn y(&self) -> &[u8] {
        self.0.y()
    }
    fn u(&self) -> &[u8] {
        self.0.u()
    }
    fn v(&self) -> &[u8] {
        self.0.v()
    }
}

pub struct H264Encoder {
    inner: Encoder,
    width: usize,
    height: usize,
    frames: u64,
    fps: f32,
    bitrate_bps: u32,
    /// The per-layer ceiling openh264 holds the target under (it starts equal to the target).
    max_bitrate_bps: u32,
    /// Tuned for screen content (text, flat areas) instead of camera pictures.
    screen: bool,
}

/// The lowest H.264 level whose frame size and macroblock rate hold `width`x`height` at `fps`,
/// from 3.1 (what the SDP offers, `42e01f`, and what every camera size here fits) up. A 1080p
/// share labelled 3.1 (at most 1280x720) claims less than it is, which a decoder that sizes
/// its buffers by the level may reject.
fn level_for(width: usize, height: usize, fps: f32) -> Level {
    // (level, most macroblocks in a frame, most macroblocks per second): H.264 table A-1.
    const LEVELS: [(Level, usize, f32); 7] = [
        (Level::Level_3_1, 3_600, 108_000.0),
        (Level::Level_3_2, 5_120, 216_000.0),
        (Level::Level_4_0, 8_192, 245_760.0),
        (Level::Level_4_2, 8_704, 522_240.0),
        (Level::Level_5_0, 22_080, 589_824.0),
        (Level::Level_5_1, 36_864, 983_040.0),
        (Level::Level_5_2, 36_864, 2_073_600.0),
    ];
    let macroblocks = width.div_ceil(16) * height.div_ceil(16);
    let rate = macroblocks as f32 * fps.max(1.0);
    LEVELS
        .iter()
        .find(|(_, frame, per_second)| macroblocks <= *frame && rate <= *per_second)
        .map_or(Level::Level_5_2, |(level, _, _)| *level)
}

impl H264Encoder {
    /// An encoder for camera pictures.
    pub fn new(
        width: usize,
        height: usize,
        bitrate_bps: u32,
        fps: f32,
    ) -> Result<Self, MediaError> {
        Self::with_content(width, height, bitrate_bps, fps, false)
    }

    /// An encoder for a shared screen: openh264's screen-content mode, which codes text and
    /// flat areas better and sends almost nothing for what did not change.
    pub fn for_screen(
        width: usize,
        height: usize,
        bitrate_bps: u32,
        fps: f32,
    ) -> Result<Self, MediaError> {
        Self::with_content(width, height, bitrate_bps, fps, true)
    }

    fn with_content(
        width: usize,
        height: usize,
        bitrate_bps: u32,
        fps: f32,
        screen: bool,
    ) -> Result<Self, MediaError> {
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) || width == 0 || height == 0 {
            return Err(MediaError::Codec(format!(
                "H.264 needs even, non-zero dimensions, got {width}x{height}"
            )));
        }
        let config = EncoderConfig::new()
            .usage_type(if screen {
                UsageType::ScreenContentRealTime
            } else {
                UsageType::CameraVideoRealTime
            })
            .profile(Profile::Baseline)
            .level(level_for(width, height, fps))
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(fps))
            .complexity(Complexity::Low)
            // No periodic keyframe: receivers ask for one (PLI) whenever they need it and repeat
            // the request until it comes. A keyframe is several times a frame's size, so on a
            // 150 ms path it arrives late enough to freeze the picture (a freeze at every 10 s
            // keyframe in the `4g` benchmark); libwebrtc sends none either. openh264 reads 0 as
            // "only the first".
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            // Up to QP 51: at a few hundred kbit/s a coarser picture beats a skipped frame.
            .qp(QpRange::new(12, 51))
            // A scene cut would force an IDR that nobody asked for.
            .scene_change_detect(false)
            // A screen share keeps its frame rate and lets the quality give instead: skipping
            // frames to pay for a 1080p keyframe of ~500 KB at a starting budget of ~190 kbit/s
            // froze the share for 10-20 s (0.4 fps decoded 6-16 s after the first picture).
            .skip_frames(!screen)
            .num_threads(1);
        let inner = Encoder::with_api_config(OpenH264API::from_source(), config)
            .map_err(|e| MediaError::Codec(format!("openh264 encoder: {e}")))?;
        Ok(H264Encoder {
            inner,
            width,
            height,
            frames: 0,
            fps,
            bitrate_bps,
            max_bitrate_bps: bitrate_bps,
            screen,
        })
    }

    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    pub fn bitrate(&self) -> u32 {
        self.bitrate_bps
    }

    /// Changes the target bitrate from the next frame on, keeping the rate control's state and
    /// forcing no keyframe. Before the first frame the encoder is not initialised yet; the new
    /// rate is then applied once it is.
    pub fn set_bitrate(&mut self, bitrate_bps: u32) -> Result<(), MediaError> {
        let bitrate_bps = bitrate_bps.max(10_000);
        if bitrate_bps == self.bitrate_bps {
            return Ok(());
        }
        if self.frames == 0 {
            // Not initialised: SetOption would be refused. Rebuilding is free at this point.
            let rebuilt = H264Encoder::with_content(
                self.width,
                self.height,
                bitrate_bps,
                self.fps,
                self.screen,
            )?;
            *self = rebuilt;
            return Ok(());
        }
        // A quarter above the target keeps short bursts (keyframes) in check.
        let max = bitrate_bps.saturating_add(bitrate_bps / 4);
        let mut target = openh264_sys2::SBitrateInfo {
            iLayer: openh264_sys2::SPATIAL_LAYER_ALL,
            iBitrate: bitrate_bps as i32,
        };
        // The ceiling is per layer: SPATIAL_LAYER_ALL would set a value rate control never reads.
        let mut ceiling = openh264_sys2::SBitrateInfo {
            iLayer: openh264_sys2::SPATIAL_LAYER_0,
            iBitrate: max as i32,
        };
        // openh264 refuses a target above the ceiling (and a ceiling below the target), so the
        // order depends on the direction.
        let raise = max >= self.bitrate_bps;
        // SAFETY: the encoder is initialised (a frame was encoded); each call reads one
        // SBitrateInfo through a pointer valid for the call and keeps nothing.
        let codes = unsafe {
            let api = self.inner.raw_api();
            let set_target = |api: &openh264::encoder::EncoderRawAPI,
                              t: &mut openh264_sys2::SBitrateInfo| {
                api.set_option(
                    openh264_sys2::ENCODER_OPTION_BITRATE,
                    (t as *mut openh264_sys2::SBitrateInfo).cast(),
                )
            };
            let set_ceiling = |api: &openh264::encoder::EncoderRawAPI,
                               c: &mut openh264_sys2::SBitrateInfo| {
                api.set_option(
                    openh264_sys2::ENCODER_OPTION_MAX_BITRATE,
                    (c as *mut openh264_sys2::SBitrateInfo).cast(),
                )
            };
            if raise {
                [set_ceiling(api, &mut ceiling), set_target(api, &mut target)]
            } else {
                [set_target(api, &mut target), set_ceiling(api, &mut ceiling)]
            }
        };
        if codes != [0, 0] {
            return Err(MediaError::Codec(format!(
                "openh264 refused bitrate {bitrate_bps} (codes {codes:?})"
            )));
        }
        self.bitrate_bps = bitrate_bps;
        self.max_bitrate_bps = max;
        Ok(())
    }

    /// Whether the next frame will be a keyframe: forced, or the encoder's first.
    pub fn next_is_keyframe(&self, force_keyframe: bool) -> bool {
        force_keyframe || self.frames == 0
    }

    /// Encodes one frame; `None` when the encoder chose to skip it.
    pub fn encode(
        &mut self,
        frame: &I420Frame,
        force_keyframe: bool,
    ) -> Result<Option<EncodedVideo>, MediaError> {
        if (frame.width, frame.height) != (self.width, self.height) {
            return Err(MediaError::Codec(format!(
                "frame is {}x{}, encoder is {}x{}",
                frame.width, frame.height, self.width, self.height
            )));
        }
        if self.next_is_keyframe(force_keyframe) {
            self.inner.force_intra_frame();
        }
        self.frames += 1;
        let stream = self
            .inner
            .encode(&FrameRef(frame))
            .map_err(|e| MediaError::Codec(format!("openh264 encode: {e}")))?;
        let kind = stream.frame_type();
        if matches!(kind, FrameType::Skip | FrameType::Invalid) {
            return Ok(None);
        }
        let data = stream.to_vec();
        if data.is_empty() {
            return Ok(None);
        }
        Ok(Some(EncodedVideo {
            data: Bytes::from(data),
            keyframe: matches!(kind, FrameType::IDR | FrameType::I),
            capture_us: frame.capture_us,
            width: self.width,
            height: self.height,
        }))
    }
}

pub struct H264Decoder {
    inner: Decoder,
}

impl H264Decoder {
    pub fn new() -> Result<Self, MediaError> {
        let inner =
            Decoder::new().map_err(|e| MediaError::Codec(format!("openh264 decoder: {e}")))?;
        Ok(H264Decoder { inner })
    }

    /// Decodes one access unit into `out`; `Ok(false)` when it produced no picture yet.
    pub fn decode(&mut self, access_unit: &[u8], out: &mut RgbaFrame) -> Result<bool, MediaError> {
        let decoded = self
            .inner
            .decode(access_unit)
            .map_err(|e| MediaError::Codec(format!("openh264 decode: {e}")))?;
        let Some(yuv) = decoded else {
            return Ok(false);
        };
        let (w, h) = yuv.dimensions();
        out.width = w;
        out.height = h;
        out.pixels.resize(w * h * 4, 0);
        yuv.write_rgba8(&mut out.pixels);
        Ok(true)
    }
}

pub struct OpusEncoder {
    inner: opus::Encoder,
    packet: Vec<u8>,
}

impl OpusEncoder {
    pub fn new(bitrate_bps: i32) -> Result<Self, MediaError> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| MediaError::Codec(format!("opus encoder: {e}")))?;
        inner
            .set_bitrate(opus::Bitrate::Bits(bitrate_bps))
            .map_err(|e| MediaError::Codec(format!("opus bitrate: {e}")))?;
        // In-band FEC lets a receiver rebuild a lost frame from the next one.
        let _ = inner.set_inband_fec(true);
        let _ = inner.set_packet_loss_perc(5);
        Ok(OpusEncoder {
            inner,
            packet: vec![0; MAX_OPUS_PACKET],
        })
    }

    /// Follows the network: a lower bitrate on a slow link, and in-band FEC sized for the loss
    /// the far ends report (Opus spends more of each packet on redundancy as it rises).
    pub fn set_network(&mut self, bitrate_bps: i32, expected_loss_percent: i32) {
        let _ = self.inner.set_bitrate(opus::Bitrate::Bits(bitrate_bps));
        let _ = self
            .inner
            .set_packet_loss_perc(expected_loss_percent.clamp(0, 100));
    }

    /// Encodes one 10 or 20 ms packet of samples in -1.0..=1.0.
    pub fn encode(&mut self, samples: &[f32]) -> Result<Bytes, MediaError> {
        if samples.len() != FRAME_SAMPLES && samples.len() != SHORT_FRAME_SAMPLES {
            return Err(MediaError::Codec(format!(
                "opus packets here are {SHORT_FRAME_SAMPLES} or {FRAME_SAMPLES} samples, got {}",
                samples.len()
            )));
        }
        let n = self
            .inner
            .encode_float(samples, &mut self.packet)
            .map_err(|e| MediaError::Codec(format!("opus encode: {e}")))?;
        Ok(Bytes::copy_from_slice(&self.packet[..n]))
    }
}

pub struct OpusDecoder {
    inner: opus::Decoder,
}

impl OpusDecoder {
    pub fn new() -> Result<Self, MediaError> {
        let inner = opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
            .map_err(|e| MediaError::Codec(format!("opus decoder: {e}")))?;
        Ok(OpusDecoder { inner })
    }

    /// Decodes a packet into `out` (which must hold the packet's samples; `MAX_PACKET_SAMPLES`
    /// holds any). `None` conceals a lost frame of `out.len()` samples.
    pub fn decode(&mut self, packet: Option<&[u8]>, out: &mut [f32]) -> Result<usize, MediaError> {
        self.inner
            .decode_float(packet.unwrap_or(&[]), out, false)
            .map_err(|e| MediaError::Codec(format!("opus decode: {e}")))
    }

    /// Rebuilds the frame before `next_packet` from its in-band FEC data; `out.len()` is that
    /// frame's length.
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [f32]) -> Result<usize, MediaError> {
        self.inner
            .decode_float(next_packet, out, true)
            .map_err(|e| MediaError::Codec(format!("opus fec: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::pattern::TestPattern;
    use crate::media::stamp::read_stamp;

    #[test]
    fn h264_round_trip_keeps_the_stamp() {
        let mut pattern = TestPattern::new(640, 480, 4);
        let mut enc = H264Encoder::new(640, 480, 1_500_000, 30.0).unwrap();
        let mut dec = H264Decoder::new().unwrap();
        let mut out = RgbaFrame::default();
        let mut decoded = 0;
        for i in 0..30u64 {
            let frame = pattern.render(1_000_000 + i * 33_333);
            let encoded = enc.encode(&frame, i == 15).unwrap().expect("not skipped");
            if i == 0 || i == 15 {
                assert!(encoded.keyframe, "frame {i} is a keyframe");
                // SPS (type 7) precedes the IDR.
                assert!(
                    encoded
                        .data
                        .windows(5)
                        .any(|w| w[..4] == [0, 0, 0, 1] && w[4] & 0x1f == 7)
                );
            } else {
                assert!(!encoded.keyframe);
            }
            if dec.decode(&encoded.data, &mut out).unwrap() {
                decoded += 1;
                assert_eq!((out.width, out.height), (640, 480));
                let stamp = read_stamp(&out).expect("stamp survives H.264");
                assert_eq!(stamp.number as u64, i);
                assert_eq!(stamp.source, 4);
            }
        }
        assert_eq!(decoded, 30);
    }

    /// `level_idc` of the SPS in an Annex-B access unit.
    fn sps_level(access_unit: &[u8]) -> Option<u8> {
        access_unit
            .windows(8)
            .find(|w| w[..4] == [0, 0, 0, 1] && w[4] & 0x1f == 7)
            .map(|w| w[7])
    }

    #[test]
    fn the_sps_states_a_level_that_holds_the_picture() {
        for (w, h, fps, screen, level) in [
            (640, 480, 30.0, false, 31),
            (1280, 720, 30.0, false, 31),
            (1920, 1080, 15.0, true, 40),
            (1920, 1080, 30.0, true, 40),
            (1920, 1080, 60.0, true, 42),
        ] {
            let picture = I420Frame::new(w, h);
            let mut enc = if screen {
                H264Encoder::for_screen(w, h, 1_000_000, fps).unwrap()
            } else {
                H264Encoder::new(w, h, 1_000_000, fps).unwrap()
            };
            let unit = enc.encode(&picture, true).unwrap().expect("a keyframe");
            assert_eq!(sps_level(&unit.data), Some(level), "{w}x{h} at {fps} fps");
        }
    }

    #[test]
    fn keyframes_come_only_first_and_when_asked_for() {
        // Past the 10 s a periodic keyframe used to come at (300 frames at 30 fps).
        let mut pattern = TestPattern::new(160, 120, 1);
        let mut enc = H264Encoder::new(160, 120, 300_000, 30.0).unwrap();
        let mut keyframes = Vec::new();
        for i in 0..400u64 {
            let frame = pattern.render(1_000_000 + i * 33_333);
            if let Some(encoded) = enc.encode(&frame, i == 350).unwrap()
                && encoded.keyframe
            {
                keyframes.push(i);
            }
        }
        assert_eq!(keyframes, vec![0, 350]);
    }

    #[test]
    fn encoder_rejects_bad_sizes() {
        assert!(H264Encoder::new(641, 480, 1_000_000, 30.0).is_err());
        let mut enc = H264Encoder::new(320, 240, 400_000, 30.0).unwrap();
        assert!(enc.encode(&I420Frame::new(640, 480), false).is_err());
    }

    #[test]
    fn decoder_survives_garbage() {
        let mut dec = H264Decoder::new().unwrap();
        let mut out = RgbaFrame::default();
        for junk in [
            &[][..],
            &[0, 0, 0, 1, 0xff, 0xff][..],
            &[1, 2, 3, 4, 5, 6, 7, 8][..],
        ] {
            // An error or no picture, never a panic.
            let _ = dec.decode(junk, &mut out);
        }
    }

    /// `packet` samples per packet, 0.5 s of a 440 Hz tone: the decoded RMS after the start.
    fn tone_through_opus(packet: usize) -> f32 {
        let mut enc = OpusEncoder::new(32_000).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut out = vec![0f32; MAX_PACKET_SAMPLES];
        let mut energy = 0.0;
        let packets = SAMPLE_RATE as usize / 2 / packet;
        let skip = packets / 4;
        for f in 0..packets {
            let frame: Vec<f32> = (0..packet)
                .map(|i| {
                    let t = (f * packet + i) as f32 / SAMPLE_RATE as f32;
                    0.5 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                })
                .collect();
            let data = enc.encode(&frame).unwrap();
            assert!(data.len() < 400);
            let n = dec.decode(Some(&data), &mut out).unwrap();
            assert_eq!(n, packet);
            if f >= skip {
                energy += out[..n].iter().map(|s| s * s).sum::<f32>();
            }
        }
        // Concealment of a lost packet produces as many samples as asked for.
        assert_eq!(dec.decode(None, &mut out[..packet]).unwrap(), packet);
        (energy / ((packets - skip) * packet) as f32).sqrt()
    }

    #[test]
    fn opus_round_trip_of_a_tone_in_20_and_10_ms_packets() {
        for packet in [FRAME_SAMPLES, SHORT_FRAME_SAMPLES] {
            let rms = tone_through_opus(packet);
            assert!(
                (rms - 0.354).abs() < 0.05,
                "{packet}-sample packets: rms {rms}"
            );
        }
        let mut enc = OpusEncoder::new(32_000).unwrap();
        assert!(enc.encode(&[0.0; 10]).is_err());
        assert!(enc.encode(&[0.0; 720]).is_err());
    }
}

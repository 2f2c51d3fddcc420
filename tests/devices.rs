//! Huddle's real microphone and speaker code (cpal, PulseAudio host) against a private
//! PulseAudio server with null sinks, started and stopped by each test: a tone played through
//! the speaker path comes back through the microphone path; the output switches mid-stream; a
//! device that goes away produces a fallback notice instead of a panic.
//!
//! cpal finds the server through `XDG_RUNTIME_DIR`, which must be set before the process starts,
//! so each outer test starts the server and re-runs this test binary for one `inner_*` test
//! (ignored in normal runs) with that variable set.

mod common;

use common::{run_inner_test, runtime};
use huddle::media::analysis::{dbfs, estimate_frequency};
use huddle::media::audio::{AudioSink, AudioSource, ToneSource};
use huddle::media::audio_pipeline::AudioPlayout;
use huddle::media::codec::{FRAME_SAMPLES, OpusEncoder, SAMPLE_RATE};
use huddle::media::sound::{self, MicSource, Notices, SpeakerSink};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct SoundServer {
    child: Child,
    dir: tempfile::TempDir,
}

impl SoundServer {
    fn start() -> SoundServer {
        let dir = tempfile::Builder::new()
            .prefix("huddle-pa")
            .tempdir()
            .unwrap();
        let config = dir.path().join("test.pa");
        std::fs::write(
            &config,
            "load-module module-native-protocol-unix auth-anonymous=1\n\
             load-module module-cli-protocol-unix\n\
             load-module module-null-sink sink_name=huddle_out rate=48000 channels=1 sink_properties=device.description=HuddleSpeaker\n\
             load-module module-null-sink sink_name=huddle_mic rate=48000 channels=1 sink_properties=device.description=HuddleMicBus\n\
             set-default-sink huddle_out\n\
             set-default-source huddle_mic.monitor\n",
        )
        .unwrap();
        let child = Command::new("pulseaudio")
            .args(["-n", "-F"])
            .arg(&config)
            .args([
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "--disable-shm=yes",
                "--log-target=stderr",
                "--log-level=error",
            ])
            .env("XDG_RUNTIME_DIR", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pulseaudio is installed (scripts/setup --test installs it)");
        let server = SoundServer { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.pactl(&["info"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "the sound server did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn pactl(&self, args: &[&str]) -> std::process::Output {
        Command::new("pactl")
            .args(args)
            .env("XDG_RUNTIME_DIR", self.dir.path())
            .output()
            .expect("pactl runs")
    }

    /// Runs one inner test in a fresh process that sees this server.
    fn run_inner(&self, name: &str) {
        let text = run_inner_test(name, &[("XDG_RUNTIME_DIR", self.dir.path().as_os_str())]);
        eprintln!(
            "{}",
            // A line may follow libtest's "test inner_x ... " on the same line.
            text.lines()
                .filter_map(|l| l.find("measured:").map(|i| &l[i..]))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

impl Drop for SoundServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_tone_through_the_speaker_comes_back_through_the_microphone() {
    SoundServer::start().run_inner("inner_tone_loop");
}

#[test]
fn clicks_through_the_speaker_come_back_through_the_microphone_in_order() {
    SoundServer::start().run_inner("inner_click_round_trip");
}

#[test]
fn the_speaker_test_chime_comes_out_of_the_speaker() {
    SoundServer::start().run_inner("inner_test_chime");
}

#[test]
fn switching_the_output_mid_stream_keeps_audio_flowing() {
    SoundServer::start().run_inner("inner_output_switch");
}

#[test]
fn a_device_that_goes_away_falls_back_with_a_notice() {
    SoundServer::start().run_inner("inner_device_gone");
}

#[test]
fn without_a_sound_device_alsa_says_nothing_on_stderr() {
    // No sound server to find (an empty runtime folder, a socket that does not exist) and a card
    // that does not exist, so the ALSA host probes and fails as on a machine without a sound card.
    let empty = tempfile::tempdir().unwrap();
    let text = run_inner_test(
        "inner_no_sound_device",
        &[
            ("XDG_RUNTIME_DIR", empty.path().as_os_str()),
            ("PULSE_SERVER", "unix:/nonexistent/huddle-test".as_ref()),
            ("ALSA_CARD", "huddle-no-such-card".as_ref()),
            ("HUDDLE_INNER_NO_SOUND", "1".as_ref()),
        ],
    );
    let noise: Vec<&str> = text.lines().filter(|l| l.contains("ALSA lib")).collect();
    assert!(
        noise.is_empty(),
        "alsa-lib wrote to stderr:\n{}",
        noise.join("\n")
    );
}

// ----- inner tests: run only inside a process started by the tests above -----

/// A `tracing` writer into memory.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
#[ignore = "run by without_a_sound_device_alsa_says_nothing_on_stderr"]
fn inner_no_sound_device() {
    assert!(std::env::var_os("HUDDLE_INNER_NO_SOUND").is_some());
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let notices = Notices::default();
        // Listing finds nothing and opening fails with an error of ours, not a screenful.
        println!("inputs {:?}", sound::list_inputs());
        println!("outputs {:?}", sound::list_outputs());
        let mic = MicSource::open(None, notices.clone());
        let speaker = SpeakerSink::open(None, notices);
        println!("mic: {:?}", mic.as_ref().err());
        println!("speaker: {:?}", speaker.as_ref().err());
        assert!(mic.is_err() && speaker.is_err());
    });
    // alsa-lib's messages went to the log at debug level instead.
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        logged.contains("huddle::alsa") && logged.contains("DEBUG"),
        "nothing from alsa-lib was logged:\n{logged}"
    );
}

fn in_private_server() -> bool {
    std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("test.pa").exists())
}

/// Records `seconds` of the microphone path.
fn record(mic: &mut MicSource, seconds: f32) -> Vec<f32> {
    let mut all = Vec::new();
    let mut frame = vec![0f32; FRAME_SAMPLES];
    for _ in 0..(seconds * 50.0) as usize {
        mic.next_frame(&mut frame).unwrap();
        all.extend_from_slice(&frame);
    }
    all
}

/// Plays a tone through `sink` on a thread for `seconds`.
fn play_tone(
    mut sink: impl AudioSink + 'static,
    hz: f32,
    seconds: f32,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("test-helper".into())
        .spawn(move || {
            let mut tone = ToneSource::new(hz, 0.5);
            let mut frame = vec![0f32; FRAME_SAMPLES];
            let start = Instant::now();
            while start.elapsed().as_secs_f32() < seconds {
                tone.next_frame(&mut frame).unwrap();
                sink.play(&frame).unwrap();
            }
        })
        .unwrap()
}

#[test]
#[ignore = "run by a_tone_through_the_speaker_comes_back_through_the_microphone"]
fn inner_tone_loop() {
    assert!(in_private_server());
    let outputs = sound::list_outputs();
    let inputs = sound::list_inputs();
    println!("measured: outputs {outputs:?}");
    println!("measured: inputs {inputs:?}");
    assert!(
        outputs.iter().any(|d| d.name == "HuddleSpeaker"),
        "{outputs:?}"
    );
    assert!(
        inputs.iter().any(|d| d.id.ends_with("huddle_out.monitor")),
        "{inputs:?}"
    );
    let notices = Notices::default();
    let speaker = SpeakerSink::open(None, notices.clone()).unwrap();
    assert_eq!(speaker.describe(), "HuddleSpeaker");
    let mut mic = MicSource::open(Some("pulseaudio:huddle_out.monitor"), notices.clone()).unwrap();
    let player = play_tone(speaker, 600.0, 3.0);
    let heard = record(&mut mic, 2.5);

    player.join().unwrap();
    let tail = &heard[heard.len() - SAMPLE_RATE as usize..];
    let f = estimate_frequency(tail, SAMPLE_RATE).expect("a tone came back");
    println!(
        "measured: played 600 Hz, heard {f:.1} Hz at {:.1} dBFS",
        dbfs(tail)
    );
    assert!((f - 600.0).abs() / 600.0 < 0.02, "{f}");
    assert!(notices.drain().is_empty());
}

/// The lobby's "Play test sound": the playout mixes the chime into what it plays, through the
/// real speaker path into a null sink; its monitor hears the two notes, in order.
#[test]
#[ignore = "run by the_speaker_test_chime_comes_out_of_the_speaker"]
fn inner_test_chime() {
    assert!(in_private_server());
    let notices = Notices::default();
    let speaker = SpeakerSink::open(Some("pulseaudio:huddle_out"), notices.clone()).unwrap();
    let mut mic = MicSource::open(Some("pulseaudio:huddle_out.monitor"), notices.clone()).unwrap();
    let playout = AudioPlayout::start(Box::new(speaker), false, None).unwrap();
    playout.play_local(huddle::media::audio_pipeline::test_chime());
    let heard = record(&mut mic, 1.5);
    drop(playout);
    // The pitch of each loud 100 ms stretch, in order, with repeats merged.
    let mut notes: Vec<u32> = Vec::new();
    for window in heard.chunks(SAMPLE_RATE as usize / 10) {
        if dbfs(window) < -30.0 {
            continue;
        }
        if let Some(f) = estimate_frequency(window, SAMPLE_RATE) {
            let note = (f / 10.0).round() as u32 * 10;
            if notes.last() != Some(&note) {
                notes.push(note);
            }
        }
    }
    println!("measured: test chime heard as {notes:?} Hz");
    let first_660 = notes.iter().position(|n| n.abs_diff(660) <= 10);
    let first_880 = notes.iter().position(|n| n.abs_diff(880) <= 10);
    assert!(
        matches!((first_660, first_880), (Some(a), Some(b)) if a < b),
        "heard {notes:?}"
    );
    assert!(notices.drain().is_empty());
}

#[test]
#[ignore = "run by switching_the_output_mid_stream_keeps_audio_flowing"]
fn inner_output_switch() {
    assert!(in_private_server());
    let notices = Notices::default();
    // The real playout pipeline, fed with an Opus stream of a 500 Hz tone.
    let playout = AudioPlayout::start(
        Box::new(SpeakerSink::open(Some("pulseaudio:huddle_out"), notices.clone()).unwrap()),
        false,
        None,
    )
    .unwrap();
    playout.add_stream("peer").unwrap();
    let feeder_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let stop = feeder_stop.clone();
        let playout = std::sync::Arc::new(playout);
        let p = playout.clone();
        let handle = std::thread::Builder::new()
            .name("test-helper".into())
            .spawn(move || {
                let mut tone = ToneSource::new(500.0, 0.5);
                let mut enc = OpusEncoder::new(32_000).unwrap();
                let mut frame = vec![0f32; FRAME_SAMPLES];
                let mut seq = 0u16;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    tone.next_frame(&mut frame).unwrap();
                    let packet = enc.encode(&frame).unwrap();
                    p.push("peer", seq, seq as u32 * 960, packet);
                    seq = seq.wrapping_add(1);
                }
            })
            .unwrap();
        (handle, playout)
    };
    let mut out_monitor =
        MicSource::open(Some("pulseaudio:huddle_out.monitor"), notices.clone()).unwrap();
    let before = record(&mut out_monitor, 1.5);
    assert!(
        notices.drain().is_empty(),
        "no device trouble while playing"
    );
    let f = estimate_frequency(&before[24_000..], SAMPLE_RATE).expect("tone on the first output");
    assert!((f - 500.0).abs() < 10.0, "{f}");
    // Switch the speaker under the running stream.
    feeder.1.set_sink(Box::new(
        SpeakerSink::open(Some("pulseaudio:huddle_mic"), notices.clone()).unwrap(),
    ));
    let mut mic_monitor =
        MicSource::open(Some("pulseaudio:huddle_mic.monitor"), notices.clone()).unwrap();
    let after = record(&mut mic_monitor, 1.5);
    assert_eq!(feeder.1.sink_description(), "HuddleMicBus");
    let f2 = estimate_frequency(&after[24_000..], SAMPLE_RATE).expect("tone on the second output");
    println!("measured: before the switch {f:.1} Hz, after {f2:.1} Hz");
    assert!((f2 - 500.0).abs() < 10.0, "{f2}");
    // The first output went quiet (skip what its monitor buffered before the switch).
    let quiet = record(&mut out_monitor, 1.5);
    assert!(dbfs(&quiet[48_000..]) < -60.0, "old output still playing");
    assert!(notices.drain().is_empty());
    feeder_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.0.join().unwrap();
}

fn pactl(args: &[&str]) -> String {
    let out = std::process::Command::new("pactl")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "run by a_device_that_goes_away_falls_back_with_a_notice"]
fn inner_device_gone() {
    assert!(in_private_server());
    let notices = Notices::default();
    let mut mic = MicSource::open(Some("pulseaudio:huddle_mic.monitor"), notices.clone()).unwrap();
    record(&mut mic, 0.3);
    // Kill our capture stream on the server, as happens when its device disappears with
    // nowhere to move the stream to.
    // Ours is the stream recording from huddle_mic.monitor: match it by that source's index
    // (`list short` names sources by index in the source-outputs table).
    let sources = pactl(&["list", "short", "sources"]);
    let source = sources
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&"huddle_mic.monitor"))
        .and_then(|cols| cols.first().map(|c| c.to_string()))
        .unwrap_or_else(|| panic!("huddle_mic.monitor is listed: {sources}"));
    let outputs = pactl(&["list", "short", "source-outputs"]);
    let ours: Vec<String> = outputs
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.get(1) == Some(&source.as_str()))
        .filter_map(|cols| cols.first().map(|c| c.to_string()))
        .collect();
    assert_eq!(ours.len(), 1, "one stream records from it: {outputs}");
    let index = ours[0].clone();
    // pacmd wants a pid file; the CLI socket does the same without one.
    {
        use std::io::{Read, Write};
        let dir = std::env::var("XDG_RUNTIME_DIR").unwrap();
        let mut cli =
            std::os::unix::net::UnixStream::connect(Path::new(&dir).join("pulse/cli")).unwrap();
        // (No "exit": on this socket it stops the whole server.)
        cli.write_all(format!("kill-source-output {index}\n").as_bytes())
            .unwrap();
        cli.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut reply = [0u8; 512];
        let n = cli.read(&mut reply).unwrap_or(0);
        let reply = String::from_utf8_lossy(&reply[..n]);
        assert!(!reply.contains("No source output"), "{reply}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.is_empty() {
        assert!(Instant::now() < deadline, "no fallback notice");
        record(&mut mic, 0.1);
        seen = notices.drain();
    }
    println!("measured: notice {:?}", seen);
    assert!(seen[0].contains("now using"), "{seen:?}");
    // And the microphone keeps delivering frames from the default device.
    let more = record(&mut mic, 0.5);
    assert_eq!(more.len(), 25 * FRAME_SAMPLES);
    // Everything gone (the server stops): no panic, no hang, silence at the frame rate.
    // Only this test's server: its command line holds our private runtime directory.
    let dir = std::env::var("XDG_RUNTIME_DIR").unwrap();
    let pid = Command::new("pgrep")
        .args(["-f", &format!("pulseaudio.*{dir}")])
        .output()
        .unwrap();
    for p in String::from_utf8_lossy(&pid.stdout).split_whitespace() {
        let _ = Command::new("kill").arg(p).status();
    }
    let started = Instant::now();
    let silence = record(&mut mic, 1.0);
    assert_eq!(silence.len(), 50 * FRAME_SAMPLES);
    // Paced like a device: a second of frames takes about a second. Never faster (a path that
    // spins would hand out frames as fast as it is asked), and not stuck either.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "silence not paced: {took:?}"
    );
    assert!(took < Duration::from_secs(8), "the microphone path hung");
    assert!(notices.drain().iter().any(|n| n.contains("No microphone")));
}

/// Clicks played through Huddle's speaker path into a null sink and heard through Huddle's
/// microphone path from its monitor. Checks that each click comes back once, in order; prints
/// the delay from `SpeakerSink::play` of the click's frame to the onset leaving
/// `MicSource::next_frame` (speaker ring, PulseAudio's null sink and monitor, the microphone
/// ring and its 20 ms frame accumulation), a figure, not a target.
#[test]
#[ignore = "run by clicks_through_the_speaker_come_back_through_the_microphone_in_order"]
fn inner_click_round_trip() {
    assert!(in_private_server());
    let notices = Notices::default();
    let mut speaker = SpeakerSink::open(None, notices.clone()).unwrap();
    let mut mic = MicSource::open(Some("pulseaudio:huddle_out.monitor"), notices.clone()).unwrap();
    const CLICKS: usize = 12;
    const EVERY: usize = 25; // frames: one click each 500 ms
    let player = std::thread::Builder::new()
        .name("test-helper".into())
        .spawn(move || {
            let mut sent = Vec::new();
            let silence = vec![0f32; FRAME_SAMPLES];
            let mut click = vec![0f32; FRAME_SAMPLES];
            click[..48].iter_mut().for_each(|s| *s = 0.8);
            for i in 0..(CLICKS + 2) * EVERY {
                let is_click = i % EVERY == EVERY - 1 && sent.len() < CLICKS;
                if is_click {
                    sent.push(Instant::now());
                }
                speaker
                    .play(if is_click { &click } else { &silence })
                    .unwrap();
            }
            (sent, speaker.device_period(), speaker.underrun_samples())
        })
        .unwrap();
    let mut heard = Vec::new();
    let mut frame = vec![0f32; FRAME_SAMPLES];
    let mut above = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while heard.len() < CLICKS && Instant::now() < deadline {
        mic.next_frame(&mut frame).unwrap();
        let now = Instant::now();
        for (i, s) in frame.iter().enumerate() {
            if !above && s.abs() > 0.3 {
                // The onset left the microphone path with the frame that holds it.
                let after_onset = (FRAME_SAMPLES - i) as f64 / SAMPLE_RATE as f64;
                heard.push(now - Duration::from_secs_f64(after_onset));
            }
            above = s.abs() > 0.05 || (above && s.abs() > 0.01);
        }
    }
    let (sent, period, underruns) = player.join().unwrap();
    assert_eq!(heard.len(), CLICKS, "every click came back once");
    let mut delays: Vec<f64> = sent
        .iter()
        .zip(&heard)
        .map(|(s, h)| h.saturating_duration_since(*s).as_secs_f64() * 1000.0)
        .collect();
    // In order and each one click apart: no click lost or doubled on the way.
    for w in heard.windows(2) {
        let apart = w[1].duration_since(w[0]).as_secs_f64();
        assert!((0.35..0.65).contains(&apart), "clicks {apart:.3} s apart");
    }
    delays.sort_by(|a, b| a.total_cmp(b));
    println!(
        "measured: speaker play() -> microphone next_frame() through a null sink, {} clicks: p50 {:.1} ms, max {:.1} ms; speaker period (typical, largest) {period:?} samples, underrun samples {underruns}",
        delays.len(),
        delays[delays.len() / 2],
        delays[delays.len() - 1],
    );
    assert!(notices.drain().is_empty());
}

#[test]
fn clicks_go_mouth_to_ear_through_a_call_on_the_real_device_paths() {
    SoundServer::start().run_inner("inner_mouth_to_ear");
}

/// Onsets (instants) of clicks heard by `mic` until `stop`; each is when the onset sample left
/// the microphone path (the frame holding it returned, less the samples after it).
fn onsets(
    mut mic: MicSource,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Instant>> {
    std::thread::Builder::new()
        .name("test-helper".into())
        .spawn(move || {
            let mut found = Vec::new();
            let mut frame = vec![0f32; FRAME_SAMPLES];
            let mut quiet_for = usize::MAX / 2;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                mic.next_frame(&mut frame).unwrap();
                let now = Instant::now();
                for (i, s) in frame.iter().enumerate() {
                    if s.abs() > 0.15 {
                        if quiet_for > SAMPLE_RATE as usize / 5 {
                            let after = (FRAME_SAMPLES - i) as f64 / SAMPLE_RATE as f64;
                            found.push(now - Duration::from_secs_f64(after));
                        }
                        quiet_for = 0;
                    } else {
                        quiet_for += 1;
                    }
                }
            }
            found
        })
        .unwrap()
}

/// For each onset in `to`, the time since the latest onset in `from` at or before it (ms),
/// sorted.
fn gaps_ms(from: &[Instant], to: &[Instant]) -> Vec<f64> {
    let mut gaps: Vec<f64> = to
        .iter()
        .filter_map(|t| {
            let f = from.iter().rev().find(|f| *f <= t)?;
            Some(t.duration_since(*f).as_secs_f64() * 1000.0)
        })
        .collect();
    gaps.sort_by(|a, b| a.total_cmp(b));
    gaps
}

fn median(sorted: &[f64]) -> Option<f64> {
    sorted.get(sorted.len() / 2).copied()
}

/// Mouth-to-ear in a call through the real device paths: a click played into one null sink
/// ("the mouth"), peer A's microphone on that sink's monitor, Opus over a real PeerConnection on
/// loopback, peer B's jitter buffer and speaker path into another null sink ("the ear"). The
/// figure is the click's onset seen on the mouth's monitor → its onset seen on the ear's
/// monitor, both by the same capture code, so their own capture delay cancels. Printed, not
/// asserted; the test checks the clicks arrive.
#[test]
#[ignore = "run by clicks_go_mouth_to_ear_through_a_call_on_the_real_device_paths"]
fn inner_mouth_to_ear() {
    use huddle::engine::{self, AudioInput, Command, EngineConfig, Event};
    use huddle::media::audio::RecordingSink;
    assert!(in_private_server());
    let rt = runtime();
    let notices = Notices::default();
    let dir = tempfile::tempdir().unwrap();
    let (server, a, b, a_id) = rt.block_on(async {
        let server = huddle::signaling::server::start(huddle::signaling::ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
        let url = server.url();
        let mut ca = EngineConfig::new(
            url.clone(),
            Box::new(RecordingSink::new(48_000)),
            dir.path().into(),
        );
        ca.bind_addrs = vec!["127.0.0.1:0".into()];
        ca.video = None;
        ca.audio = AudioInput::Device(Some("pulseaudio:huddle_mic.monitor".into()));
        let mut cb = EngineConfig::new(
            url,
            Box::new(SpeakerSink::open(Some("pulseaudio:huddle_out"), notices.clone()).unwrap()),
            dir.path().into(),
        );
        cb.bind_addrs = vec!["127.0.0.1:0".into()];
        cb.video = None;
        // Where the click's onset leaves B's jitter buffer and decoder, for the breakdown.
        cb.detect_clicks = true;
        let (a, mut a_events) = engine::spawn(ca, std::sync::Arc::new(|| {})).unwrap();
        let (b, mut b_events) = engine::spawn(cb, std::sync::Arc::new(|| {})).unwrap();
        for (engine, name) in [(&a, "a"), (&b, "b")] {
            engine
                .send(Command::Join {
                    room: "ears".into(),
                    nickname: name.into(),
                    access: Default::default(),
                })
                .unwrap();
        }
        let mut connected_to = Vec::new();
        for events in [&mut a_events, &mut b_events] {
            let peer = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(e) = events.recv().await {
                    if let Event::PeerConnected { peer, .. } = e {
                        return Some(peer);
                    }
                }
                None
            })
            .await
            .expect("the call connects")
            .expect("the engine runs");
            connected_to.push(peer);
        }
        // Keep draining so the engines never wait on us.
        for mut events in [a_events, b_events] {
            tokio::spawn(async move { while events.recv().await.is_some() {} });
        }
        (server, a, b, connected_to.remove(1))
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mouth = onsets(
        MicSource::open(Some("pulseaudio:huddle_mic.monitor"), notices.clone()).unwrap(),
        stop.clone(),
    );
    let ear = onsets(
        MicSource::open(Some("pulseaudio:huddle_out.monitor"), notices.clone()).unwrap(),
        stop.clone(),
    );
    const CLICKS: usize = 10;
    let mut voice = SpeakerSink::open(Some("pulseaudio:huddle_mic"), notices.clone()).unwrap();
    let silence = vec![0f32; FRAME_SAMPLES];
    // A 10 ms 1 kHz burst: survives Opus better than a single-sample click.
    let click: Vec<f32> = (0..FRAME_SAMPLES)
        .map(|i| {
            if i < 480 {
                0.8 * (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / SAMPLE_RATE as f32).sin()
            } else {
                0.0
            }
        })
        .collect();
    // A second of silence to settle, then a click every 600 ms, then silence to hear the last.
    for i in 0..(50 + CLICKS * 30 + 50) {
        let is_click = i >= 50 && (i - 50) % 30 == 0 && i < 50 + CLICKS * 30;
        voice
            .play(if is_click { &click } else { &silence })
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The playout stamps its onsets on the wall clock; the monitors on `Instant`.
    let (wall_anchor, instant_anchor) = (huddle::media::now_us() as i64, Instant::now());
    let (mouth, ear) = (mouth.join().unwrap(), ear.join().unwrap());
    let played: Vec<Instant> = b
        .media()
        .click_onsets()
        .iter()
        .filter_map(|&us| {
            let back = u64::try_from(wall_anchor - us).ok()?;
            instant_anchor.checked_sub(Duration::from_micros(back))
        })
        .collect();
    let jitter_target = b.media().remote_audio(&a_id).map(|s| {
        (
            s.target_delay_ms,
            s.arrival_jitter_ms,
            s.transit_spread_ms,
            s.jitter,
        )
    });
    let delays = gaps_ms(&mouth, &ear);
    println!(
        "measured: mouth-to-ear through the device paths: clicks at the mouth {}, at the ear {}",
        mouth.len(),
        ear.len()
    );
    assert!(
        mouth.len() >= CLICKS - 1,
        "{} clicks at the mouth",
        mouth.len()
    );
    assert!(
        delays.len() >= CLICKS - 2,
        "{} clicks reached the ear",
        delays.len()
    );
    println!(
        "measured: mouth-to-ear (click onset on the mic's sink monitor -> onset on the speaker's sink monitor), {} clicks: p50 {:.1} ms, max {:.1} ms",
        delays.len(),
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
    println!(
        "measured: listener's audio jitter buffer at the end (target ms, arrival jitter ms, transit spread ms, counts): {jitter_target:?}"
    );
    // The split is approximate: the mouth's onsets are seen through a monitor's capture delay,
    // which cancels in the whole figure but here moves from the first part to the second.
    println!(
        "measured: breakdown (p50 each): mouth monitor -> decoded at the listener {:?} ms (microphone path, Opus, network, jitter buffer); decoded -> ear monitor {:?} ms (speaker path, PulseAudio); {} onsets decoded",
        median(&gaps_ms(&mouth, &played)),
        median(&gaps_ms(&played, &ear)),
        played.len(),
    );
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
        server.shutdown().await;
    });
}

#[test]
fn computer_sound_shared_with_the_screen_reaches_the_peer() {
    SoundServer::start().run_inner("inner_computer_sound");
}

/// What is left of `samples` once the `hz` sinusoid in them is taken out (a least-squares fit),
/// in dBFS: everything but that tone.
fn level_without_tone(samples: &[f32], hz: f32) -> f32 {
    let w = 2.0 * std::f64::consts::PI * hz as f64 / SAMPLE_RATE as f64;
    let (mut ss, mut sc, mut cc, mut xs, mut xc) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (i, &x) in samples.iter().enumerate() {
        let (s, c) = ((w * i as f64).sin(), (w * i as f64).cos());
        ss += s * s;
        sc += s * c;
        cc += c * c;
        xs += x as f64 * s;
        xc += x as f64 * c;
    }
    let det = ss * cc - sc * sc;
    let a = (xs * cc - xc * sc) / det;
    let b = (xc * ss - xs * sc) / det;
    let residual: Vec<f32> = samples
        .iter()
        .enumerate()
        .map(|(i, &x)| x - (a * (w * i as f64).sin() + b * (w * i as f64).cos()) as f32)
        .collect();
    dbfs(&residual)
}

/// A speech-like voice: low-passed noise in bursts of a second with half-second pauses, as a
/// WAV file (a pure tone would be a poor test of an echo canceller's delay estimate).
fn speech_like_wav(path: &Path, seconds: usize) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut wav = hound::WavWriter::create(path, spec).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut smooth = 0.0f32;
    for i in 0..seconds * SAMPLE_RATE as usize {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        smooth += 0.15 * (noise - smooth);
        let talking = (i % (SAMPLE_RATE as usize * 3 / 2)) < SAMPLE_RATE as usize;
        let sample = if talking { smooth * 1.2 } else { 0.0 };
        wav.write_sample((sample.clamp(-1.0, 1.0) * 32_000.0) as i16)
            .unwrap();
    }
    wav.finalize().unwrap();
}

/// Level (dBFS) of the `hz` component of `samples` (Goertzel).
fn tone_level(samples: &[f32], hz: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * hz / SAMPLE_RATE as f32;
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s0 = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    let amplitude = 2.0 * power.sqrt() / samples.len() as f32;
    20.0 * (amplitude / std::f32::consts::SQRT_2).max(1e-9).log10()
}

#[test]
#[ignore = "run by computer_sound_shared_with_the_screen_reaches_the_peer"]
fn inner_computer_sound() {
    use huddle::engine::{self, AudioInput, Command, EngineConfig, Event, ScreenSource};
    use huddle::media::audio::RecordingSink;
    assert!(in_private_server());
    let rt = runtime();
    let notices = Notices::default();
    let dir = tempfile::tempdir().unwrap();
    let heard_by_b = RecordingSink::new(48_000 * 4);
    // A: no microphone, its speaker the default sink (huddle_out), whose monitor is what this
    // computer plays. B: a 440 Hz "voice", and a recording speaker.
    let (server, a, b, a_id, a_events) = rt.block_on(async {
        let server = huddle::signaling::server::start(huddle::signaling::ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
        let url = server.url();
        let mut ca = EngineConfig::new(
            url.clone(),
            Box::new(SpeakerSink::open(None, notices.clone()).unwrap()),
            dir.path().into(),
        );
        ca.bind_addrs = vec!["127.0.0.1:0".into()];
        ca.video = None;
        ca.audio = AudioInput::None;
        let mut cb = EngineConfig::new(url, Box::new(heard_by_b.clone()), dir.path().into());
        cb.bind_addrs = vec!["127.0.0.1:0".into()];
        cb.video = None;
        let voice = dir.path().join("voice.wav");
        speech_like_wav(&voice, 40);
        cb.audio = AudioInput::Source(
            huddle::media::audio::source_from_arg(voice.to_str().unwrap())
                .unwrap()
                .unwrap(),
        );
        let (a, mut a_events) = engine::spawn(ca, std::sync::Arc::new(|| {})).unwrap();
        let (b, mut b_events) = engine::spawn(cb, std::sync::Arc::new(|| {})).unwrap();
        for (engine, name) in [(&a, "a"), (&b, "b")] {
            engine
                .send(Command::Join {
                    room: "sound".into(),
                    nickname: name.into(),
                    access: Default::default(),
                })
                .unwrap();
        }
        let mut connected_to = Vec::new();
        for events in [&mut a_events, &mut b_events] {
            let peer = tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(e) = events.recv().await {
                    if let Event::PeerConnected { peer, .. } = e {
                        return Some(peer);
                    }
                }
                None
            })
            .await
            .expect("the call connects")
            .expect("the engine runs");
            connected_to.push(peer);
        }
        tokio::spawn(async move { while b_events.recv().await.is_some() {} });
        (server, a, b, connected_to.remove(1), a_events)
    });
    // Something else on this computer plays 1 kHz (a video, say) into the same speaker.
    let other_app = play_tone(
        SpeakerSink::open(None, notices.clone()).unwrap(),
        1000.0,
        12.0,
    );
    a.send(Command::StartScreenShare {
        source: ScreenSource::Test {
            width: 640,
            height: 360,
            source_id: 5,
        },
        fps: 5,
        sound: true,
    })
    .unwrap();
    let mut a_events = a_events;
    let shared = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(e) = a_events.recv().await {
                match e {
                    Event::LocalMedia(state) if state.screen_share.is_some() => {
                        return state.screen_share;
                    }
                    Event::Problem(p) => panic!("{p}"),
                    _ => {}
                }
            }
            None
        })
        .await
        .expect("the share starts")
        .expect("the engine runs")
    });
    println!("measured: A shares {shared}");
    rt.spawn(async move { while a_events.recv().await.is_some() {} });
    // B hears the computer's 1 kHz from A at the level it was played (a tone at amplitude 0.5
    // is -9 dBFS), not cancelled or attenuated by A's processing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let computer = loop {
        std::thread::sleep(Duration::from_millis(250));
        let level = tone_level(&heard_by_b.last(SAMPLE_RATE as usize), 1000.0);
        if level > -12.0 {
            break level;
        }
        assert!(
            Instant::now() < deadline,
            "B hears the shared 1 kHz at only {level:.1} dBFS"
        );
    };
    // B's own voice (talking 1 s of every 1.5 s) reaches A's speaker, so A's monitor hears it
    // too; A must take it out before sharing. Give the remover a few seconds of B talking to
    // find and learn it, then look at everything from A apart from the 1 kHz, over 1.5 s.
    std::thread::sleep(Duration::from_secs(6));
    let tail = heard_by_b.last(SAMPLE_RATE as usize * 3 / 2);
    let computer_after = tone_level(&tail, 1000.0);
    // The rest in 20 ms blocks, each with the tone fitted on its own: a frame that B's jitter
    // buffer conceals or sheds breaks the tone's phase, which a fit over the whole window
    // would count as "rest" (-25 dBFS in half the runs). The median block is the typical level.
    let mut blocks: Vec<f32> = tail
        .chunks_exact(FRAME_SAMPLES)
        .map(|b| level_without_tone(b, 1000.0))
        .collect();
    blocks.sort_by(f32::total_cmp);
    let rest = blocks[blocks.len() / 2];
    let loudest_block = blocks[blocks.len() - 1];
    let from_a = b.media().remote_audio(&a_id).expect("A's audio at B");
    println!(
        "measured: B hears the shared 1 kHz at {computer:.1} dBFS, {computer_after:.1} dBFS 6 s \
         later (A's audio estimated at {:?} Hz); everything else from A, which is B's own voice \
         coming back through A's speaker monitor, at {rest:.1} dBFS in the median 20 ms block \
         (loudest block {loudest_block:.1} dBFS; without the remover, by the same measure, \
         -16.3 and -17.2 dBFS in two runs)",
        from_a.frequency
    );
    assert!(
        computer_after > -12.0,
        "the shared 1 kHz fell to {computer_after:.1} dBFS"
    );
    assert!(rest < -35.0, "B's own voice comes back at {rest:.1} dBFS");
    other_app.join().unwrap();
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
        server.shutdown().await;
    });
}

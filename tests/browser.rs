//! Browser guests: real Chromium (headless, fake camera, a WAV as its microphone) loads the guest
//! page from `huddle serve` and calls in-process native engines through it, driven over the
//! DevTools protocol. Real PeerConnections on both sides, H.264 and Opus, real files.

mod common;

use common::browser::{Browser, BrowserOptions, Page};
use common::peer::{PeerOptions, TestPeer};
use common::*;
use huddle::engine::{Command, Event};
use huddle::media::screen::ScreenSource;
use huddle::signaling::protocol::PeerId;
use huddle::signaling::server::TlsIdentity;
use huddle::transfer::manager::Tamper;
use huddle::transfer::{Direction, TransferCommand, TransferState};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The browser's microphone plays this (a WAV file Chromium loops); the native peers send
/// their own tones, so each side can tell whom it hears.
const BROWSER_TONE_HZ: f32 = 880.0;
const ANN_TONE_HZ: f32 = 440.0;
const BOB_TONE_HZ: f32 = 660.0;
const WAIT_MEDIA: Duration = Duration::from_secs(30);

fn tone_wav(dir: &Path, hz: f32) -> PathBuf {
    let path = dir.join("microphone.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    for i in 0..48_000 * 4 {
        let t = i as f32 / 48_000.0;
        let s = (t * hz * std::f32::consts::TAU).sin() * 0.5;
        w.write_sample((s * i16::MAX as f32) as i16).unwrap();
    }
    w.finalize().unwrap();
    path
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn random_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    let data: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
    std::fs::write(&path, data).unwrap();
    path
}

async fn launch(dir: &Path, tls: bool) -> Browser {
    Browser::launch(BrowserOptions {
        fake_audio_wav: Some(tone_wav(dir, BROWSER_TONE_HZ)),
        ignore_certificate_errors: tls,
        // Three fake cameras and microphones, to switch between.
        extra_args: vec!["--use-fake-device-for-media-stream=device-count=3".into()],
    })
    .await
}

/// The page's own peer id once it is in the room.
async fn joined(page: &Page) -> PeerId {
    let id = page
        .wait_for(
            "window.huddle?.call?.room?.joined && huddle.call.room.myId",
            WAIT,
        )
        .await;
    PeerId(id.as_str().unwrap().to_owned())
}

/// Waits until the page has decoded `frames` video frames from `peer` and shows them: the
/// `inbound-rtp` stats of the camera track and the tile's <video> size.
async fn browser_decodes(page: &Page, peer: &PeerId, frames: u64) -> Value {
    let js = format!(
        r#"(async () => {{
            const p = huddle.call.room.peers.get({peer:?});
            if (!p || !p.pc) return null;
            const track = p.camera.getVideoTracks()[0];
            if (!track) return null;
            const stats = await p.pc.getStats(track);
            let v = null;
            stats.forEach((r) => {{ if (r.type === 'inbound-rtp' && r.kind === 'video') v = r; }});
            const tile = document.querySelector(`.tile[data-key="${{p.id}}"] video`);
            if (!v || v.framesDecoded < {frames} || !tile || tile.videoWidth === 0) return null;
            return {{ frames: v.framesDecoded, width: v.frameWidth, height: v.frameHeight,
                      shown: `${{tile.videoWidth}}x${{tile.videoHeight}}` }};
        }})()"#,
        peer = peer.0
    );
    page.wait_for(&js, WAIT_MEDIA).await
}

/// The strongest frequency in what the page receives from `peer` (a 16384-point FFT of the
/// remote audio track, ~2.9 Hz a bin), once it is within 2 % of `hz`.
async fn browser_hears(page: &Page, peer: &PeerId, hz: f32) -> f64 {
    let js = format!(
        r#"(async () => {{
            const p = huddle.call.room.peers.get({peer:?});
            const track = p?.camera.getAudioTracks()[0];
            if (!track) return null;
            window.probes ??= new Map();
            let probe = window.probes.get(track.id);
            if (!probe) {{
                const ctx = huddle.meters.context();
                await ctx.resume();
                const analyser = ctx.createAnalyser();
                analyser.fftSize = 16384;
                ctx.createMediaStreamSource(new MediaStream([track])).connect(analyser);
                probe = {{ analyser, ctx }};
                window.probes.set(track.id, probe);
                await new Promise((r) => setTimeout(r, 500));
            }}
            const bins = new Float32Array(probe.analyser.frequencyBinCount);
            probe.analyser.getFloatFrequencyData(bins);
            let best = 1;
            for (let i = 2; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
            const f = best * probe.ctx.sampleRate / probe.analyser.fftSize;
            return Math.abs(f - {hz}) / {hz} < 0.02 && bins[best] > -60 ? f : null;
        }})()"#,
        peer = peer.0
    );
    page.wait_for(&js, WAIT_MEDIA).await.as_f64().unwrap()
}

fn frequency_near(p: &TestPeer, from: &PeerId, hz: f32) -> Option<f32> {
    let f = p.engine.media().remote_audio(from)?.frequency?;
    ((f - hz).abs() / hz < 0.02).then_some(f)
}

/// What the page negotiated with `peer`: codecs with payload types and fmtp, and the RTCP
/// feedback and header extensions of the remote description's media sections.
async fn negotiated(page: &Page, peer: &PeerId) -> Value {
    let js = format!(
        r#"(async () => {{
            const p = huddle.call.room.peers.get({peer:?});
            const stats = await p.pc.getStats();
            const codecs = new Set();
            stats.forEach((r) => {{ if (r.type === 'codec') codecs.add(`${{r.mimeType}} pt=${{r.payloadType}} ${{r.sdpFmtpLine || ''}}`); }});
            const lines = p.pc.remoteDescription.sdp.split('\r\n');
            return {{
                codecs: [...codecs],
                feedback: [...new Set(lines.filter((l) => l.startsWith('a=rtcp-fb:')))],
                extensions: [...new Set(lines.filter((l) => l.startsWith('a=extmap:')).map((l) => l.split(' ')[1]))],
                offerer: p.initiator ? 'browser' : 'native',
            }};
        }})()"#,
        peer = peer.0
    );
    page.eval(&js).await
}

/// CPU seconds used so far by the tab's renderer and by all of Chromium's processes (browser,
/// renderer, GPU, network, audio and other utilities: everything in its process group).
fn chromium_cpu(browser: &Browser) -> (f64, f64) {
    let group = browser.pid() as i32;
    let (mut renderer, mut total) = (0.0, 0.0);
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        // After the name: state, ppid, pgrp.
        if rest.split(' ').nth(2).and_then(|g| g.parse::<i32>().ok()) != Some(group) {
            continue;
        }
        let Some(usage) = huddle::procstat::usage(Some(pid)) else {
            continue;
        };
        total += usage.cpu_seconds;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("--type=renderer") {
            renderer += usage.cpu_seconds;
        }
    }
    (renderer, total)
}

/// A script that clicks `button` (`accept`, `decline`) on the page's offer of `name`, or
/// returns null while there is none.
fn click_in_offer(name: &str, button: &str) -> String {
    format!(
        "(() => {{
            const row = [...document.querySelectorAll('#transfer-list li[data-direction=in]')]
                .find((li) => li.querySelector('.what').textContent.startsWith({name:?}));
            const b = row?.querySelector('button.{button}');
            return b ? (b.click(), true) : null;
        }})()"
    )
}

/// Waits until `p` hears from `from` that its microphone and camera are as given.
async fn wait_media_state(p: &mut TestPeer, from: &PeerId, audio: bool, video: bool) {
    p.wait_for(WAIT, |e| match e {
        Event::PeerMediaState {
            peer,
            audio: a,
            video: v,
            ..
        } if peer == from && *a == audio && *v == video => Some(()),
        _ => None,
    })
    .await;
}

/// Waits for a native transfer update from `peer` in `state`.
async fn native_transfer(p: &mut TestPeer, name: &str, state: TransferState) -> PathBuf {
    let name = name.to_owned();
    let update = p
        .transfer_update(WAIT_MEDIA, |u| {
            u.name == name && u.state == state && u.direction == Direction::Incoming
        })
        .await;
    update.path.expect("a received file has a path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_guest_and_a_native_peer_share_video_sound_chat_and_files() {
    let server = start_server(test_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let browser = launch(dir.path(), false).await;

    // The guest arrives first, from a guest link with its name: it joins at once.
    let opened = Instant::now();
    let link = format!("{}?name=Guest", server.page_url(Some("Guests welcome")));
    let page = browser.open(&link).await;
    let web = joined(&page).await;

    // The native peer joins and, as the newcomer, offers to the browser.
    let ann_dir = tempfile::tempdir().unwrap();
    let mut ann = TestPeer::start(
        &server.url(),
        PeerOptions::new(1, ANN_TONE_HZ, ann_dir.path().into()),
    );
    ann.join("Guests welcome", "ann").await;
    let ann_id = ann.id.clone().unwrap();
    ann.connected_to(&web).await;

    let shown = browser_decodes(&page, &ann_id, 30).await;
    eprintln!("the browser decodes ann: {shown}");
    let metrics = page.eval("huddle.call.room.metrics").await;
    eprintln!(
        "guest page alone in a new room, from navigation start: joined {:.0} ms (ann joined \
         later; the test saw ann's first frame decoded {:?} after opening the link)",
        metrics["joinedAt"].as_f64().unwrap_or(f64::NAN),
        opened.elapsed()
    );
    let from_web = ann.video_frames(&web, 30, WAIT_MEDIA).await;
    let stats = from_web.stats();
    eprintln!(
        "ann decodes the browser: {} frames, {}x{}",
        stats.frames_decoded, stats.width, stats.height
    );
    assert!(stats.width >= 160 && stats.height >= 120, "{stats:?}");

    // Sound both ways, each the other's own tone.
    let f = browser_hears(&page, &ann_id, ANN_TONE_HZ).await;
    eprintln!("the browser hears {f:.1} Hz from ann");
    let f = ann
        .until(WAIT_MEDIA, |p| frequency_near(p, &web, BROWSER_TONE_HZ))
        .await;
    eprintln!("ann hears {f:.1} Hz from the browser");

    let n = negotiated(&page, &ann_id).await;
    eprintln!("negotiated (native offered): {n:#}");
    let codecs = n["codecs"].to_string();
    assert!(codecs.contains("video/H264"), "{codecs}");
    assert!(codecs.contains("packetization-mode=1"), "{codecs}");
    assert!(codecs.contains("audio/opus"), "{codecs}");
    assert!(codecs.contains("useinbandfec=1"), "{codecs}");
    let feedback = n["feedback"].to_string();
    for fb in ["nack", "nack pli", "transport-cc"] {
        assert!(feedback.contains(fb), "no {fb} in {feedback}");
    }

    // Chat both ways, typed into the page's chat box.
    ann.send(Command::SendChat("welcome, guest".into()));
    page.wait_for(
        "document.querySelector('#chat-log').textContent.includes('welcome, guest')",
        WAIT,
    )
    .await;
    page.eval(
        "document.querySelector('#chat-input').value = 'thanks ann';
         document.querySelector('#chat-form').requestSubmit(); true",
    )
    .await;
    let from = ann
        .wait_for(WAIT, |e| match e {
            Event::Chat(m) if m.text == "thanks ann" => Some(m.nickname.clone()),
            _ => None,
        })
        .await;
    assert_eq!(from, "Guest");

    // A file from ann to the guest: offered on the page, accepted there, saved through the
    // browser's download, byte for byte.
    let files = tempfile::tempdir().unwrap();
    let to_guest = random_file(files.path(), "from-ann.bin", 3 * 1024 * 1024 + 17);
    ann.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![to_guest.clone()],
        to: Some(web.clone()),
    }));
    page.wait_for(&click_in_offer("from-ann.bin", "accept"), WAIT)
        .await;
    let saved = browser.downloaded("from-ann.bin", WAIT_MEDIA).await;
    assert_eq!(sha256_file(&saved), sha256_file(&to_guest));
    ann.transfer_update(WAIT, |u| {
        u.name == "from-ann.bin" && u.state == TransferState::Completed
    })
    .await;

    // A file from the guest, picked in the page's file input, to everyone (ann).
    let to_ann = random_file(files.path(), "from-guest.bin", 2 * 1024 * 1024 + 5);
    page.set_input_files("#file-input", std::slice::from_ref(&to_ann))
        .await;
    let received = native_transfer(&mut ann, "from-guest.bin", TransferState::Completed).await;
    assert_eq!(sha256_file(&received), sha256_file(&to_ann));
    page.wait_for(
        "document.querySelector('#transfer-list li[data-direction=out][data-state=complete]')",
        WAIT,
    )
    .await;

    // Whoever speaks gets a ring: ann's tone lights ann's tile.
    page.wait_for(
        &format!(
            "document.querySelector('.tile[data-key=\"{}\"]').classList.contains('speaking')",
            ann_id.0
        ),
        WAIT,
    )
    .await;

    // Mute and camera off from the page's buttons reach ann as media state; the camera's
    // track is stopped (its light goes out), and comes back.
    page.eval("document.querySelector('#mute').click(); true")
        .await;
    wait_media_state(&mut ann, &web, false, true).await;
    page.eval("document.querySelector('#camera').click(); true")
        .await;
    wait_media_state(&mut ann, &web, false, false).await;
    assert_eq!(page.eval("huddle.media.videoTrack").await, Value::Null);
    page.eval(
        "document.querySelector('#mute').click(); document.querySelector('#camera').click(); true",
    )
    .await;
    wait_media_state(&mut ann, &web, true, true).await;
    let decoded = from_web.stats().frames_decoded;
    ann.until(WAIT_MEDIA, |_| {
        (from_web.stats().frames_decoded >= decoded + 15).then_some(())
    })
    .await;

    // Switching cameras mid-call: the same connection carries the new one. Chromium's third
    // fake camera (its second is a Y16 depth camera, which WebRTC does not send).
    let other = page
        .wait_for(
            "[...document.querySelector('#camera-select').options]
                .find((o) => o.textContent.includes('fake_device_2'))?.value",
            WAIT,
        )
        .await;
    assert_ne!(other, page.eval("huddle.media.deviceId('video')").await);
    page.eval(&format!(
        "(() => {{ const s = document.querySelector('#camera-select'); s.value = {other};
                   s.dispatchEvent(new Event('change')); return true; }})()"
    ))
    .await;
    page.wait_for(&format!("huddle.media.deviceId('video') === {other}"), WAIT)
        .await;
    let decoded = from_web.stats().frames_decoded;
    ann.until(WAIT_MEDIA, |_| {
        (from_web.stats().frames_decoded >= decoded + 15).then_some(())
    })
    .await;

    // Ann shares a screen: the guest sees it as a presentation beside the cameras, until it
    // ends.
    ann.send(Command::StartScreenShare {
        source: ScreenSource::Test {
            width: 1280,
            height: 720,
            source_id: 9,
        },
        fps: 5,
        sound: false,
    });
    let share = page
        .wait_for(
            &format!(
                "(() => {{ const v = document.querySelector('#presentations .tile[data-key=\"{}-screen\"] video');
                          return v && v.videoWidth > 0 ? `${{v.videoWidth}}x${{v.videoHeight}}` : null; }})()",
                ann_id.0
            ),
            WAIT_MEDIA,
        )
        .await;
    assert_eq!(share, "1280x720");
    ann.send(Command::StopScreenShare);
    page.wait_for(
        "document.querySelector('#presentations').children.length === 0",
        WAIT,
    )
    .await;

    // CPU of the browser in a two-party call at steady state.
    let (r0, t0) = chromium_cpu(&browser);
    let window = Instant::now();
    ann.until(Duration::from_secs(12), |_| {
        (window.elapsed() >= Duration::from_secs(10)).then_some(())
    })
    .await;
    let (r1, t1) = chromium_cpu(&browser);
    let wall = window.elapsed().as_secs_f64();
    eprintln!(
        "Chromium CPU in a 1:1 call with a native peer on loopback (640x480 fake camera, \
         {wall:.1} s): the tab's renderer {:.2} cores, all Chromium processes {:.2} cores",
        (r1 - r0) / wall,
        (t1 - t0) / wall
    );

    // The guest leaves with the page's button: ann sees it go.
    page.eval("document.querySelector('#leave').click(); true")
        .await;
    ann.wait_for(WAIT, |e| match e {
        Event::PeerLeft { peer, .. } if *peer == web => Some(()),
        _ => None,
    })
    .await;
    assert!(
        page.console().iter().all(|l| !l.contains("Uncaught")),
        "{:#?}",
        page.console()
    );
    drop(browser);
    server.shutdown().await;
}

/// Every pair in the room decodes each other: the natives through their engines, the page
/// through its stats.
async fn everyone_decodes_everyone(page: &Page, web: &PeerId, natives: &mut [&mut TestPeer]) {
    let ids: Vec<PeerId> = natives.iter().map(|p| p.id.clone().unwrap()).collect();
    for id in &ids {
        let shown = browser_decodes(page, id, 20).await;
        eprintln!("the browser decodes {id}: {shown}");
    }
    for (i, p) in natives.iter_mut().enumerate() {
        for (j, other) in ids.iter().enumerate() {
            if i != j {
                p.video_frames(other, 20, WAIT_MEDIA).await;
            }
        }
        let v = p.video_frames(web, 20, WAIT_MEDIA).await;
        assert!(v.stats().width > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_browser_joins_a_three_party_room_first_and_then_last() {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let (cert, key) = (generated.cert.pem(), generated.signing_key.serialize_pem());
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    std::fs::write(&cert_path, &cert).unwrap();
    let mut config = test_config();
    config.tls = Some(TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
    let server = start_server(config).await;
    assert!(server.url().starts_with("wss://"));
    // A browser that trusts the test's self-signed certificate, as a real one trusts a real
    // certificate: the page is https:// and its WebSocket wss://.
    let browser = launch(dir.path(), true).await;
    let room_url = server.page_url(Some("trio"));
    assert!(room_url.starts_with("https://"), "{room_url}");

    let native = |source: u8, hz: f32, downloads: &Path| {
        let mut opts = PeerOptions::new(source, hz, downloads.into());
        opts.trusted_cert = Some(cert_path.clone());
        TestPeer::start(&server.url(), opts)
    };

    // The browser first: both natives offer to it.
    let page = browser.open(&format!("{room_url}?name=Guest")).await;
    let web = joined(&page).await;
    let downloads = tempfile::tempdir().unwrap();
    let mut ann = native(1, ANN_TONE_HZ, downloads.path());
    ann.join("trio", "ann").await;
    let mut bob = {
        // Bob's client announces a wrong SHA-256 for what it sends: the guest must notice.
        let mut opts = PeerOptions::new(2, BOB_TONE_HZ, downloads.path().into());
        opts.trusted_cert = Some(cert_path.clone());
        opts.tamper = Some(Tamper::WrongHash);
        TestPeer::start(&server.url(), opts)
    };
    bob.join("trio", "bob").await;
    everyone_decodes_everyone(&page, &web, &mut [&mut ann, &mut bob]).await;
    let bob_id = bob.id.clone().unwrap();
    let f = browser_hears(&page, &bob_id, BOB_TONE_HZ).await;
    eprintln!("the browser hears {f:.1} Hz from bob");
    let n = negotiated(&page, &bob_id).await;
    assert_eq!(n["offerer"], "native");

    // The browser leaves with the page's button and lands on the room picker, which lists
    // the room with the two who stayed.
    page.eval("document.querySelector('#leave').click(); true")
        .await;
    for p in [&mut ann, &mut bob] {
        p.wait_for(WAIT, |e| match e {
            Event::PeerLeft { peer, .. } if *peer == web => Some(()),
            _ => None,
        })
        .await;
    }
    page.wait_for(
        "[...document.querySelectorAll('#room-list li')].map((li) => li.textContent).join('|').includes('trio2 / ')",
        WAIT,
    )
    .await;

    // Back in, last this time: the browser offers to both natives.
    page.goto(&format!("{room_url}?name=Guest")).await;
    let web = joined(&page).await;
    everyone_decodes_everyone(&page, &web, &mut [&mut ann, &mut bob]).await;
    let metrics = page.eval("huddle.call.room.metrics").await;
    eprintln!(
        "guest page joining a room of two over https/wss on loopback, from navigation start: \
         joined {:.0} ms, first peer connection up {:.0} ms, first remote video frame on \
         screen {:.0} ms",
        metrics["joinedAt"].as_f64().unwrap_or(f64::NAN),
        metrics["firstConnectedAt"].as_f64().unwrap_or(f64::NAN),
        metrics["firstFrameAt"].as_f64().unwrap_or(f64::NAN),
    );
    let n = negotiated(&page, &bob_id).await;
    eprintln!("negotiated (browser offered): {n:#}");
    assert_eq!(n["offerer"], "browser");
    let f = ann
        .until(WAIT_MEDIA, |p| frequency_near(p, &web, BROWSER_TONE_HZ))
        .await;
    eprintln!("ann hears {f:.1} Hz from the browser");

    // Files over the channels the browser opened this time. Dropped on the page, a file goes
    // to everyone.
    let dropped = page
        .eval(
            "(async () => {
                const bytes = new Uint8Array(700000).map((_, i) => (i * 7 + (i >> 9)) & 255);
                const transfer = new DataTransfer();
                transfer.items.add(new File([bytes], 'dropped.bin'));
                document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true }));
                const digest = await crypto.subtle.digest('SHA-256', bytes);
                return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
            })()",
        )
        .await;
    for p in [&mut ann, &mut bob] {
        let path = native_transfer(p, "dropped.bin", TransferState::Completed).await;
        assert_eq!(Value::from(sha256_file(&path)), dropped);
    }

    // A file the guest declines: the sender hears so.
    let files = tempfile::tempdir().unwrap();
    let unwanted = random_file(files.path(), "unwanted.bin", 1000);
    ann.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![unwanted],
        to: Some(web.clone()),
    }));
    page.wait_for(&click_in_offer("unwanted.bin", "decline"), WAIT)
        .await;
    ann.transfer_update(WAIT, |u| {
        u.name == "unwanted.bin" && matches!(u.state, TransferState::Declined(_))
    })
    .await;

    // A file whose announced hash does not match what arrived is not saved.
    let damaged = random_file(files.path(), "damaged.bin", 200_000);
    bob.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![damaged],
        to: Some(web.clone()),
    }));
    page.wait_for(&click_in_offer("damaged.bin", "accept"), WAIT)
        .await;
    let said = page
        .wait_for(
            "[...document.querySelectorAll('#transfer-list li[data-state=failed]')]
                .map((li) => li.textContent).find((t) => t.includes('damaged.bin')) ?? null",
            WAIT,
        )
        .await;
    assert!(said.as_str().unwrap().contains("SHA-256"), "{said}");
    let saved = page
        .eval("[...huddle.transfers.all.values()].find((t) => t.name === 'damaged.bin').url")
        .await;
    assert_eq!(saved, Value::Null, "nothing handed to the download");
    bob.transfer_update(WAIT, |u| {
        u.name == "damaged.bin" && matches!(u.state, TransferState::Cancelled(_))
    })
    .await;

    drop(browser);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_picker_lists_rooms_and_takes_the_guest_in() {
    let server = start_server(test_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut host = TestClient::connect(&server.url()).await;
    host.join("Standup", "host").await;
    host.send(&huddle::signaling::protocol::ClientMessage::Chat {
        text: "agenda: demo first".into(),
    })
    .await;
    let browser = launch(dir.path(), false).await;
    let page = browser.open(&server.page_url(None)).await;
    let listed = page
        .wait_for(
            "document.querySelector('#room-list li[data-room=\"Standup\"]')?.textContent",
            WAIT,
        )
        .await;
    assert!(listed.as_str().unwrap().contains("1 / 6"), "{listed}");
    // A name, then a click on the room: the call page, joined under that name.
    page.eval(
        "document.querySelector('#lobby-name').value = 'Guest';
         document.querySelector('#room-list li[data-room=\"Standup\"]').click(); true",
    )
    .await;
    page.wait_for("window.huddle?.call?.room?.joined", WAIT)
        .await;
    let url = page.eval("location.pathname + location.search").await;
    assert_eq!(url, "/Standup?name=Guest");
    // The room's chat history is there from the start.
    page.wait_for(
        "document.querySelector('#chat-log').textContent.includes('agenda: demo first')",
        WAIT,
    )
    .await;
    let joined = host
        .recv_until(|m| {
            matches!(
                m,
                huddle::signaling::protocol::ServerMessage::PeerJoined { .. }
            )
        })
        .await;
    let huddle::signaling::protocol::ServerMessage::PeerJoined { peer, .. } = joined else {
        unreachable!()
    };
    assert_eq!(peer.nickname, "Guest");

    // A name the server refuses is explained at the door, and can be fixed there.
    let page2 = browser
        .open(&format!("{}?name=host", server.page_url(Some("Standup"))))
        .await;
    let said = page2
        .wait_for(
            "document.querySelector('#prejoin-status.error')?.textContent",
            WAIT,
        )
        .await;
    assert!(said.as_str().unwrap().contains("host"), "{said}");
    page2
        .eval(
            "document.querySelector('#prejoin-name').value = 'Guest 2';
             document.querySelector('#prejoin-form').requestSubmit(); true",
        )
        .await;
    page2
        .wait_for("window.huddle?.call?.room?.joined", WAIT)
        .await;

    // Another site's page may not open the WebSocket; the page's own origin may.
    let other = browser.open("about:blank").await;
    let refused = other
        .eval(&format!(
            "new Promise((done) => {{ const ws = new WebSocket({:?}); ws.onopen = () => done('open'); ws.onerror = () => done('refused'); }})",
            server.url()
        ))
        .await;
    assert_eq!(refused, "refused");
    drop(browser);
    server.shutdown().await;
}

/// What the page decodes through the SFU: frames per other participant's camera, once every
/// one of them has at least `frames` (null before).
fn sfu_decoding(others: usize, frames: u64) -> String {
    format!(
        r#"(async () => {{
            const room = huddle.call.room;
            if (!room?.sfu?.sub || room.peers.size !== {others}) return null;
            const out = {{}};
            for (const p of room.peers.values()) {{
                const track = p.camera.getVideoTracks()[0];
                if (!track) return null;
                const stats = await room.sfu.sub.getStats(track);
                let decoded = 0;
                stats.forEach((r) => {{ if (r.type === 'inbound-rtp' && r.kind === 'video') decoded = r.framesDecoded; }});
                if (decoded < {frames}) return null;
                out[p.nickname] = decoded;
            }}
            return out;
        }})()"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_move_onto_the_janus_sfu_when_the_room_grows_and_see_each_other() {
    let janus = common::janus::JanusProcess::start().await;
    let mut config = test_config();
    config.hub.sfu_above = Some(2);
    config.sfu = Some(huddle::signaling::sfu::SfuConfig {
        janus: vec![huddle::signaling::janus::JanusConfig {
            url: janus.url.clone(),
            admin_key: Some(common::janus::ADMIN_KEY.into()),
            api_secret: None,
        }],
        publishers: 6,
    });
    let server = start_server(config).await;
    let dir = tempfile::tempdir().unwrap();
    let browser = launch(dir.path(), false).await;
    let room = server.page_url(Some("Big room"));

    // Two meet in a mesh.
    let ann = browser.open(&format!("{room}?name=ann")).await;
    joined(&ann).await;
    let bob = browser.open(&format!("{room}?name=bob")).await;
    let bob_id = joined(&bob).await;
    browser_decodes(&ann, &bob_id, 10).await;
    assert_eq!(
        ann.eval("huddle.call.room.sfu").await,
        Value::Null,
        "a mesh"
    );

    // The third moves the room onto the SFU: everyone publishes once and receives the others
    // on one connection.
    let cat = browser.open(&format!("{room}?name=cat")).await;
    joined(&cat).await;
    for (page, name) in [(&ann, "ann"), (&bob, "bob"), (&cat, "cat")] {
        let decoded = page.wait_for(&sfu_decoding(2, 20), WAIT_MEDIA).await;
        eprintln!("{name} decodes through the SFU: {decoded}");
        let mesh = page
            .eval("[...huddle.call.room.peers.values()].filter((p) => p.pc).length")
            .await;
        assert_eq!(mesh, 0, "no peer-to-peer connections left");
    }

    // Simulcast from the page: it offers three layers (the whole picture, a half, a quarter);
    // Chrome encodes at most two for a 640x480 camera (its simulcast limit by resolution: the
    // quarter is never started), which Janus copes with: a receiver asking for the missing
    // smallest layer keeps the next one up ...
    let layers = ann
        .wait_for(
            r#"(async () => {
                const pc = huddle.call.room.sfu?.pub;
                if (!pc) return null;
                const out = [];
                (await pc.getStats()).forEach((r) => {
                    if (r.type === 'outbound-rtp' && r.kind === 'video' && r.rid && r.framesEncoded > 10) {
                        out.push(`${r.rid}:${r.frameWidth}`);
                    }
                });
                return out.length >= 2 ? out.sort() : null;
            })()"#,
            WAIT_MEDIA,
        )
        .await;
    let layers: Vec<&str> = layers
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    assert!(
        layers.contains(&"h:640") && layers.contains(&"m:320"),
        "{layers:?}"
    );
    // ... and each received picture in the size its tile asked for.
    let received = ann
        .wait_for(
            r#"(async () => {
                const room = huddle.call.room;
                const sizes = [160, 320, 640];
                const out = {};
                for (const p of room.peers.values()) {
                    const layer = room.sfu?.layers.get(p.id);
                    const track = p.camera.getVideoTracks()[0];
                    if (layer == null || !track) return null;
                    let width = 0;
                    (await room.sfu.sub.getStats(track)).forEach((r) => {
                        if (r.type === 'inbound-rtp' && r.kind === 'video') width = r.frameWidth;
                    });
                    // The layer the tile's width calls for ...
                    const tile = huddle.call.tileWidth?.(p.id);
                    if (tile == null || layer !== (tile <= 200 ? 0 : tile <= 400 ? 1 : 2)) return null;
                    // ... and never a bigger picture than it (less when the publisher sends less:
                    // Chrome drops or scales down its top layer when short of CPU or bandwidth,
                    // and for layer 0 sends the half instead of the missing quarter).
                    const most = layer === 0 ? 320 : sizes[layer];
                    if (!(width > 0 && width <= most)) return null;
                    out[p.nickname] = { layer, width, tile };
                }
                return out;
            })()"#,
            WAIT_MEDIA,
        )
        .await;
    eprintln!("ann asks for the layers her tiles need and gets no bigger: {received}");

    // A fourth joins the room on the SFU; one leaves; the others keep decoding.
    let dan = browser.open(&format!("{room}?name=dan")).await;
    joined(&dan).await;
    dan.wait_for(&sfu_decoding(3, 20), WAIT_MEDIA).await;
    ann.wait_for(&sfu_decoding(3, 20), WAIT_MEDIA).await;
    bob.eval("document.querySelector('#leave').click(); true")
        .await;
    cat.wait_for("huddle.call.room.peers.size === 2 ? true : null", WAIT)
        .await;
    let before = cat.wait_for(&sfu_decoding(2, 20), WAIT).await;
    let more = before
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .min()
        .unwrap()
        + 20;
    cat.wait_for(&sfu_decoding(2, more), WAIT_MEDIA).await;

    // A client in a mesh room cannot use the SFU messages.
    let mut outsider = TestClient::connect(&server.url()).await;
    outsider.join("Small room", "eve").await;
    outsider
        .send(&huddle::signaling::protocol::ClientMessage::SfuPublish {
            sdp: "v=0\r\n".into(),
        })
        .await;
    outsider
        .expect_error(huddle::signaling::protocol::ErrorCode::NotSfuRoom)
        .await;
    drop(browser);
    server.shutdown().await;
}

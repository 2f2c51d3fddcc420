//! Real calls on loopback: the signaling server on 127.0.0.1:0 and in-process engines with real
//! PeerConnections, H.264 and Opus, synthetic camera and tone standing in for devices.

mod common;

use common::peer::{PeerOptions, TestPeer};
use common::*;
use huddle::engine::{Command, Event};
use huddle::media::analysis::{dbfs, estimate_frequency};
use huddle::media::codec::SAMPLE_RATE;
use huddle::media::video::VideoSourceSpec;
use huddle::signaling::protocol::PeerId;
use huddle::transfer::{Direction, TransferCommand, TransferState};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The last second the peer's speaker played, if it is a tone near `hz` above -30 dBFS:
/// (frequency, level).
fn played_tone_near(p: &TestPeer, hz: f32) -> Option<(f32, f32)> {
    let second = SAMPLE_RATE as usize;
    let tail = p.sink.last(second);
    if tail.len() < second {
        return None;
    }
    let level = dbfs(&tail);
    let f = estimate_frequency(&tail, SAMPLE_RATE)?;
    ((f - hz).abs() / hz < 0.02 && level > -30.0).then_some((f, level))
}

fn frequency_near(p: &TestPeer, from: &PeerId, hz: f32) -> Option<f32> {
    let stats = p.engine.media().remote_audio(from)?;
    let f = stats.frequency?;
    ((f - hz).abs() / hz < 0.02).then_some(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_exchange_video_audio_chat_and_a_file() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut ann = TestPeer::start(&url, PeerOptions::new(1, 440.0, dirs[0].path().into()));
    let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dirs[1].path().into()));
    ann.join("call", "ann").await;
    bob.join("call", "bob").await;
    let ann_id = ann.id.clone().unwrap();
    let bob_id = bob.id.clone().unwrap();
    let setup = bob.connected_to(&ann_id).await;
    ann.connected_to(&bob_id).await;
    eprintln!("connection set up in {setup:?}");

    // Video: count what arrives over five seconds once the stream has started.
    let from_bob = ann.video_frames(&bob_id, 1, Duration::from_secs(10)).await;
    let from_ann = bob.video_frames(&ann_id, 1, Duration::from_secs(10)).await;
    let start = [from_bob.stats(), from_ann.stats()];
    let started = tokio::time::Instant::now();
    ann.until(Duration::from_secs(8), |_| {
        (started.elapsed() >= Duration::from_secs(5)).then_some(())
    })
    .await;
    bob.drain();
    for (before, video, source) in [(&start[0], &from_bob, 2u8), (&start[1], &from_ann, 1u8)] {
        let after = video.stats();
        let decoded = after.frames_decoded - before.frames_decoded;
        let first = before.last_stamp.unwrap().number;
        let last = after.last_stamp.unwrap().number;
        let sent = (last - first) as u64;
        eprintln!(
            "source {source}: decoded {decoded} of {sent} frames sent, {} out of order",
            after.out_of_order
        );
        assert!(sent >= 130, "about 150 frames in 5 s at 30 fps, got {sent}");
        assert!(decoded * 10 >= sent * 9, "decoded {decoded} of {sent}");
        assert_eq!(after.out_of_order, 0, "frame numbers always increase");
        assert_eq!(after.sources, vec![source]);
        // The picture follows congestion control (it starts on a lower rung and climbs), so it
        // is one of the 640x480 source's 4:3 ladder sizes, not necessarily the full one.
        assert!(
            after.width >= 320 && after.width * 3 == after.height * 4,
            "{}x{}",
            after.width,
            after.height
        );
    }

    // Audio: each hears the other's tone at its frequency.
    let f = ann
        .until(Duration::from_secs(5), |p| {
            frequency_near(p, &bob_id, 660.0)
        })
        .await;
    eprintln!("ann hears {f} Hz from bob");
    let f = bob
        .until(Duration::from_secs(5), |p| {
            frequency_near(p, &ann_id, 440.0)
        })
        .await;
    eprintln!("bob hears {f} Hz from ann");
    // And it reached the speaker: the last second the sink played is that tone, loud enough to
    // hear, not silence or noise (the playout thread, mixer and pacing included).
    for (p, who, hz) in [(&mut ann, "ann", 660.0), (&mut bob, "bob", 440.0)] {
        let (f, level) = p
            .until(Duration::from_secs(5), |p| played_tone_near(p, hz))
            .await;
        eprintln!("{who}'s speaker played {f:.1} Hz at {level:.1} dBFS");
    }

    // Chat.
    ann.send(Command::SendChat("hello bob".into()));
    let text = bob
        .wait_for(Duration::from_secs(5), |e| match e {
            Event::Chat(m) if m.text == "hello bob" => Some(m.nickname.clone()),
            _ => None,
        })
        .await;
    assert_eq!(text, "ann");

    // A 20 MiB file, checked byte for byte by hash.
    let src_dir = tempfile::tempdir().unwrap();
    let path = src_dir.path().join("twenty.bin");
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let expected = hex::encode(Sha256::digest(&data));
    ann.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![path],
        to: Some(bob_id.clone()),
    }));
    let (saved, sha) = bob
        .wait_for(Duration::from_secs(60), |e| match e {
            Event::Transfer(huddle::transfer::TransferEvent::Update { update, .. })
                if update.direction == Direction::Incoming
                    && update.state == TransferState::Completed =>
            {
                Some((update.path.clone().unwrap(), update.sha256.clone().unwrap()))
            }
            Event::Transfer(huddle::transfer::TransferEvent::Update { update, .. })
                if matches!(update.state, TransferState::Failed(_)) =>
            {
                panic!("transfer failed: {:?}", update.state)
            }
            _ => None,
        })
        .await;
    assert_eq!(sha, expected);
    assert_eq!(saved, dirs[1].path().join("twenty.bin"));
    assert_eq!(
        hex::encode(Sha256::digest(std::fs::read(&saved).unwrap())),
        expected
    );

    ann.engine.shutdown().await;
    bob.engine.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_source_switch_mid_call_keeps_frames_coming() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut ann = TestPeer::start(&url, PeerOptions::new(1, 440.0, dir.path().into()));
    let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dir.path().into()));
    ann.join("switch", "ann").await;
    bob.join("switch", "bob").await;
    let ann_id = ann.id.clone().unwrap();
    let video = bob.video_frames(&ann_id, 10, Duration::from_secs(15)).await;
    ann.send(Command::SetVideoSource(VideoSourceSpec::TestPattern {
        width: 320,
        height: 240,
        fps: 30,
        source_id: 7,
    }));
    let switched = tokio::time::Instant::now();
    bob.until(Duration::from_secs(3), |_| {
        let s = video.stats();
        (s.sources.contains(&7) && s.width == 320).then_some(())
    })
    .await;
    let gap = switched.elapsed();
    eprintln!("new source decoded {gap:?} after the switch");
    assert!(
        gap < Duration::from_secs(1),
        "frames resumed within 1 s ({gap:?})"
    );
    // No renegotiation: still the same connection, no close event.
    assert!(
        !bob.seen
            .iter()
            .any(|e| matches!(e, Event::PeerConnectionClosed { .. }))
    );
    ann.engine.shutdown().await;
    bob.engine.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_turned_on_mid_call_reaches_peers_already_connected() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    // Ann starts with no camera at all (not a disabled one): no video encoder exists yet.
    let mut no_camera = PeerOptions::new(1, 440.0, dir.path().into());
    no_camera.video = None;
    let mut ann = TestPeer::start(&url, no_camera);
    let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dir.path().into()));
    ann.join("late-camera", "ann").await;
    bob.join("late-camera", "bob").await;
    let ann_id = ann.id.clone().unwrap();
    let bob_id = bob.id.clone().unwrap();
    bob.connected_to(&ann_id).await;
    // Ann sees Bob's video, so the call is up while she sends none.
    ann.video_frames(&bob_id, 5, Duration::from_secs(15)).await;
    ann.send(Command::SetVideoSource(VideoSourceSpec::test_pattern(9)));
    let video = bob.video_frames(&ann_id, 10, Duration::from_secs(10)).await;
    assert!(
        video.stats().sources.contains(&9),
        "{:?}",
        video.stats().sources
    );
    // The same connection carried it: nothing was closed and rebuilt.
    assert!(
        !bob.seen
            .iter()
            .any(|e| matches!(e, Event::PeerConnectionClosed { .. }))
    );
    ann.engine.shutdown().await;
    bob.engine.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_mesh_and_one_leaves() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let small = |id: u8, hz: f32| {
        let mut o = PeerOptions::new(id, hz, dir.path().into());
        // Three encoders and six decoders share two cores here: use a smaller picture.
        o.video = Some(VideoSourceSpec::TestPattern {
            width: 320,
            height: 240,
            fps: 30,
            source_id: id,
        });
        o
    };
    let mut peers = vec![
        TestPeer::start(&url, small(1, 300.0)),
        TestPeer::start(&url, small(2, 500.0)),
        TestPeer::start(&url, small(3, 700.0)),
    ];
    for (i, p) in peers.iter_mut().enumerate() {
        p.join("trio", &format!("p{i}")).await;
    }
    let ids: Vec<PeerId> = peers.iter().map(|p| p.id.clone().unwrap()).collect();
    let tones = [300.0, 500.0, 700.0];
    for (i, p) in peers.iter_mut().enumerate() {
        let mut sources = Vec::new();
        for (j, other) in ids.iter().enumerate() {
            if i == j {
                continue;
            }
            let v = p.video_frames(other, 30, Duration::from_secs(20)).await;
            sources.extend(v.stats().sources);
            p.until(Duration::from_secs(10), |p| {
                frequency_near(p, other, tones[j])
            })
            .await;
        }
        sources.sort();
        let expected: Vec<u8> = (1..=3u8).filter(|s| *s != i as u8 + 1).collect();
        assert_eq!(sources, expected, "peer {i} sees two distinct videos");
    }

    // The third leaves; the others are told and their call goes on.
    let leaver = peers.pop().unwrap();
    let leaver_id = ids[2].clone();
    leaver.send(Command::Leave);
    for p in peers.iter_mut() {
        let id = leaver_id.clone();
        p.wait_for(Duration::from_secs(10), |e| match e {
            Event::PeerLeft { peer, .. } if *peer == id => Some(()),
            _ => None,
        })
        .await;
    }
    let (a, b) = peers.split_at_mut(1);
    let before = a[0].videos[&ids[1]].stats().frames_decoded;
    a[0].video_frames(&ids[1], before + 30, Duration::from_secs(5))
        .await;
    let before = b[0].videos[&ids[0]].stats().frames_decoded;
    b[0].video_frames(&ids[0], before + 30, Duration::from_secs(5))
        .await;
    leaver.engine.shutdown().await;
    for p in peers {
        p.engine.shutdown().await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_and_camera_off_are_seen_and_reversible() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let mut ann = TestPeer::start(&url, PeerOptions::new(1, 440.0, dir.path().into()));
    let mut bob = TestPeer::start(&url, PeerOptions::new(2, 660.0, dir.path().into()));
    ann.join("mute", "ann").await;
    bob.join("mute", "bob").await;
    let ann_id = ann.id.clone().unwrap();
    bob.until(Duration::from_secs(10), |p| {
        frequency_near(p, &ann_id, 440.0)
    })
    .await;

    // Mute: bob is told, and measures silence.
    ann.send(Command::SetAudioMuted(true));
    let id = ann_id.clone();
    bob.wait_for(Duration::from_secs(5), |e| match e {
        Event::PeerMediaState {
            peer, audio: false, ..
        } if *peer == id => Some(()),
        _ => None,
    })
    .await;
    let level = bob
        .until(Duration::from_secs(3), |p| {
            let s = p.engine.media().remote_audio(&ann_id)?;
            (s.level_dbfs <= -90.0).then_some(s.level_dbfs)
        })
        .await;
    eprintln!("muted level at bob: {level} dBFS");
    // What bob's speaker plays goes quiet too (after the concealment fade-out).
    bob.until(Duration::from_secs(3), |p| {
        (huddle::media::analysis::dbfs(&p.sink.last(9_600)) < -60.0).then_some(())
    })
    .await;

    // Unmute: the tone is back.
    ann.send(Command::SetAudioMuted(false));
    bob.wait_for(Duration::from_secs(5), |e| match e {
        Event::PeerMediaState {
            peer, audio: true, ..
        } if *peer == id => Some(()),
        _ => None,
    })
    .await;
    bob.until(Duration::from_secs(5), |p| {
        let s = p.engine.media().remote_audio(&ann_id)?;
        (s.level_dbfs > -20.0).then_some(())
    })
    .await;

    // Camera off: bob is told and frames stop; on again: they resume.
    let video = bob.video_frames(&ann_id, 10, Duration::from_secs(10)).await;
    ann.send(Command::SetVideoEnabled(false));
    bob.wait_for(Duration::from_secs(5), |e| match e {
        Event::PeerMediaState {
            peer, video: false, ..
        } if *peer == id => Some(()),
        _ => None,
    })
    .await;
    // Let frames already in flight land, then watch for a whole second.
    let quiet_from = video.stats().frames_decoded;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    bob.until(Duration::from_secs(2), |_| {
        (tokio::time::Instant::now() >= deadline).then_some(())
    })
    .await;
    let settled = video.stats().frames_decoded;
    assert!(settled - quiet_from <= 3, "at most frames in flight arrive");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    bob.until(Duration::from_secs(3), |_| {
        (tokio::time::Instant::now() >= deadline).then_some(())
    })
    .await;
    assert_eq!(
        video.stats().frames_decoded,
        settled,
        "no frames while the camera is off"
    );
    ann.send(Command::SetVideoEnabled(true));
    bob.wait_for(Duration::from_secs(5), |e| match e {
        Event::PeerMediaState {
            peer, video: true, ..
        } if *peer == id => Some(()),
        _ => None,
    })
    .await;
    bob.video_frames(&ann_id, settled + 15, Duration::from_secs(5))
        .await;
    ann.engine.shutdown().await;
    bob.engine.shutdown().await;
    server.shutdown().await;
}

/// Issue 17 item 12: a signaling server restart (down for 3 s, back on the same address with
/// the same rejoin secret) does not touch a call that did not need the server: both peers take
/// their ids back, keep their connection and see no one leave or arrive, and the picture never
/// stops for more than 200 ms. A third peer that is gone for good when the server comes back
/// (it quit while the server was down) is removed after the grace. A raised hand is up again
/// after the restart (the client raises it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signaling_server_restart_keeps_the_call_and_removes_who_does_not_return() {
    let mut config = test_config();
    config.hub.access.rejoin_secret =
        huddle::signaling::access::Secret::new("the same secret after the restart").unwrap();
    let server = start_server(config.clone()).await;
    config.bind = server.local_addr();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(10);
    let options = |id: u8, hz: f32, video: bool| {
        let mut o = PeerOptions::new(id, hz, dir.path().into());
        o.missing_peer_grace = Some(grace);
        if !video {
            o.video = None;
            o.tone_hz = None;
        }
        o
    };
    let mut ann = TestPeer::start(&url, options(1, 440.0, true));
    let mut bob = TestPeer::start(&url, options(2, 660.0, true));
    let mut carl = TestPeer::start(&url, options(3, 880.0, false));
    ann.join("steady", "ann").await;
    bob.join("steady", "bob").await;
    carl.join("steady", "carl").await;
    let (ann_id, bob_id, carl_id) = (
        ann.id.clone().unwrap(),
        bob.id.clone().unwrap(),
        carl.id.clone().unwrap(),
    );
    let from_ann = bob.video_frames(&ann_id, 30, Duration::from_secs(20)).await;
    let from_bob = ann.video_frames(&bob_id, 30, Duration::from_secs(20)).await;
    for peer in [&mut ann, &mut bob] {
        let id = carl_id.clone();
        peer.until(Duration::from_secs(15), |p| {
            p.seen
                .iter()
                .any(|e| matches!(e, Event::PeerConnected { peer, .. } if *peer == id))
                .then_some(())
        })
        .await;
    }
    // Bob's hand is up when the server goes away.
    bob.send(Command::SetHandRaised(true));
    let id = bob_id.clone();
    ann.wait_for(Duration::from_secs(10), |e| match e {
        Event::HandChanged {
            peer,
            raised_at_ms: Some(_),
        } if *peer == id => Some(()),
        _ => None,
    })
    .await;
    ann.drain();
    bob.drain();
    let seen_before = (ann.seen.len(), bob.seen.len());
    from_ann.reset_samples();
    from_bob.reset_samples();

    // The server goes away; while it is down, carl quits for good.
    server.shutdown().await;
    carl.engine.shutdown().await;
    let down = tokio::time::Instant::now();
    tokio::time::sleep_until(down + Duration::from_secs(3)).await;
    let server = start_server(config).await;

    // Both come back under their old ids and resume the room.
    for (peer, id) in [(&mut ann, &ann_id), (&mut bob, &bob_id)] {
        let back = peer
            .wait_for(Duration::from_secs(20), |e| match e {
                Event::Resumed { you, .. } => Some(you.id.clone()),
                Event::Joined { you, .. } => panic!("joined afresh as {}", you.id),
                _ => None,
            })
            .await;
        assert_eq!(&back, id);
    }
    // Carl is not back: after the grace he is gone, for both.
    for peer in [&mut ann, &mut bob] {
        let id = carl_id.clone();
        peer.wait_for(grace + Duration::from_secs(10), |e| match e {
            Event::PeerLeft { peer, .. } if *peer == id => Some(()),
            _ => None,
        })
        .await;
    }
    // Pictures kept coming the whole time, on the connections from before.
    let before = from_ann.stats().frames_decoded;
    bob.video_frames(&ann_id, before + 30, Duration::from_secs(5))
        .await;
    let before = from_bob.stats().frames_decoded;
    ann.video_frames(&bob_id, before + 30, Duration::from_secs(5))
        .await;
    for (what, video) in [("ann to bob", &from_ann), ("bob to ann", &from_bob)] {
        let longest = video.stats().longest_interval_us;
        eprintln!("{what}: longest gap between pictures {longest} us");
        assert!(
            longest <= 200_000,
            "{what}: the picture stopped for {longest} us"
        );
    }
    ann.drain();
    bob.drain();
    // Bob's hand, as ann last heard of it: up again.
    let bob_hand = ann.seen[seen_before.0..]
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::HandChanged { peer, raised_at_ms } if *peer == bob_id => Some(*raised_at_ms),
            _ => None,
        });
    assert!(
        matches!(bob_hand, Some(Some(_))),
        "bob's hand after the restart: {bob_hand:?}"
    );
    for (name, peer, other) in [("ann", &ann, &bob_id), ("bob", &bob, &ann_id)] {
        let since = if name == "ann" {
            seen_before.0
        } else {
            seen_before.1
        };
        for e in &peer.seen[since..] {
            match e {
                Event::PeerLeft { peer, .. } => assert_eq!(peer, &carl_id, "{name} saw {e:?}"),
                Event::PeerJoined(p) => panic!("{name} saw someone arrive: {p:?}"),
                Event::PeerConnectionClosed { peer, .. } => {
                    assert_ne!(peer, other, "{name}'s connection was rebuilt: {e:?}")
                }
                _ => {}
            }
        }
    }
    ann.engine.shutdown().await;
    bob.engine.shutdown().await;
    server.shutdown().await;
}

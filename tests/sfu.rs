//! The SFU groundwork against a real Janus 1.1 on loopback: the signaling server's Janus client
//! creates, guards and destroys VideoRoom rooms; someone who reaches Janus directly, without
//! the admin key, a room's secret or a token the server handed out, can do none of that.

mod common;

use common::janus::{ADMIN_KEY, JanusProcess};
use huddle::signaling::janus::{Janus, JanusConfig, JanusError};
use serde_json::json;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

async fn connect(url: &str, admin_key: Option<&str>, tasks: &mut JoinSet<()>) -> Janus {
    Janus::connect(
        JanusConfig {
            url: url.to_owned(),
            admin_key: admin_key.map(str::to_owned),
            api_secret: None,
        },
        tasks,
        CancellationToken::new(),
    )
    .await
    .expect("connects to Janus")
}

/// A publisher's join request, as a client reaching Janus directly would send it.
fn join(room: u64, token: Option<&str>) -> serde_json::Value {
    let mut body = json!({ "request": "join", "ptype": "publisher", "room": room, "display": "x" });
    if let Some(t) = token {
        body["token"] = json!(t);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_alone_creates_guards_and_destroys_janus_rooms() {
    let janus_process = JanusProcess::start().await;
    let mut tasks = JoinSet::new();
    let server = connect(&janus_process.url, Some(ADMIN_KEY), &mut tasks).await;
    let admin = server.attach().await.unwrap();
    let room = 1_000_001;
    let tokens = vec!["token-for-ann".to_owned(), "token-for-bob".to_owned()];
    server
        .create_room(admin, room, "room secret", 50, &tokens)
        .await
        .unwrap();
    assert!(server.room_exists(admin, room).await.unwrap());

    // Someone else on Janus's port, without the admin key, a secret or a token.
    let intruder = connect(&janus_process.url, None, &mut tasks).await;
    let handle = intruder.attach().await.unwrap();
    let refused = intruder
        .create_room(handle, 1_000_002, "mine", 10, &[])
        .await
        .unwrap_err();
    assert!(matches!(refused, JanusError::Plugin { .. }), "{refused}");
    let wrong_key = connect(&janus_process.url, Some("guess"), &mut tasks).await;
    let h = wrong_key.attach().await.unwrap();
    let refused = wrong_key.create_room(h, 1_000_003, "mine", 10, &[]).await;
    assert!(
        matches!(refused, Err(JanusError::Plugin { .. })),
        "{refused:?}"
    );
    let refused = intruder.destroy_room(handle, room, "guessed").await;
    assert!(
        matches!(refused, Err(JanusError::Plugin { .. })),
        "{refused:?}"
    );
    for token in [None, Some("made-up")] {
        let refused = intruder.message(handle, join(room, token), None).await;
        assert!(
            matches!(refused, Err(JanusError::Plugin { .. })),
            "join with {token:?}: {refused:?}"
        );
    }
    // A token the server handed out lets its holder in, once the server has not taken it back.
    let (joined, _) = intruder
        .message(handle, join(room, Some("token-for-ann")), None)
        .await
        .unwrap();
    assert_eq!(joined["videoroom"], "joined", "{joined}");
    server
        .allow(
            admin,
            room,
            "room secret",
            false,
            &["token-for-bob".to_owned()],
        )
        .await
        .unwrap();
    let other = intruder.attach().await.unwrap();
    let refused = intruder
        .message(other, join(room, Some("token-for-bob")), None)
        .await;
    assert!(
        matches!(refused, Err(JanusError::Plugin { .. })),
        "a withdrawn token: {refused:?}"
    );

    server
        .destroy_room(admin, room, "room secret")
        .await
        .unwrap();
    assert!(!server.room_exists(admin, room).await.unwrap());
    drop(janus_process);
    // With Janus gone, waiting requests end with an error instead of hanging.
    let gone = server.room_exists(admin, room).await.unwrap_err();
    assert!(gone.is_retryable(), "{gone}");
}

/// Janus (libnice) offers no loopback candidates, so peers talk to it over this machine's own
/// interface addresses; the packets still never leave the machine.
const JANUS_REACHABLE: &[&str] = &["0.0.0.0:0"];

fn sfu_server_config(janus: &JanusProcess, above: usize) -> huddle::signaling::ServerConfig {
    common::janus::server_config(&[janus], above)
}

fn sfu_peer(server: &str, i: usize, dir: &std::path::Path) -> common::peer::TestPeer {
    let mut opts = common::peer::PeerOptions::new(i as u8 + 1, 300.0 + 50.0 * i as f32, dir.into());
    opts.bind_addrs = Some(JANUS_REACHABLE.iter().map(|a| a.to_string()).collect());
    common::peer::TestPeer::start(server, opts)
}

/// Starts peers `range` (each with its own source and tone) and joins them to `room` in turn.
async fn join_sfu_peers(
    server: &str,
    room: &str,
    range: std::ops::Range<usize>,
    dir: &std::path::Path,
    peers: &mut Vec<common::peer::TestPeer>,
) {
    for i in range {
        let mut p = sfu_peer(server, i, dir);
        p.join(room, &format!("peer{i}")).await;
        peers.push(p);
    }
}

/// The video outputs the peers have now (after handling their queued events).
fn video_outputs(
    peers: &mut [common::peer::TestPeer],
) -> std::collections::HashSet<*const huddle::media::video::RemoteVideo> {
    let mut outputs = std::collections::HashSet::new();
    for p in peers {
        p.drain();
        outputs.extend(p.videos.values().map(std::sync::Arc::as_ptr));
    }
    outputs
}

/// Waits until every peer decodes at least `frames` frames from every other one, on a video
/// output that is not one of `stale` (the mesh's, before a room moved onto the SFU).
async fn all_decode_all(
    peers: &mut [common::peer::TestPeer],
    frames: u64,
    stale: &std::collections::HashSet<*const huddle::media::video::RemoteVideo>,
) {
    let ids: Vec<_> = peers.iter().map(|p| p.id.clone().unwrap()).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        for other in ids.iter().filter(|id| **id != ids[i]) {
            p.until(std::time::Duration::from_secs(40), |p| {
                p.videos
                    .get(other)
                    .filter(|v| !stale.contains(&std::sync::Arc::as_ptr(v)))
                    .filter(|v| v.stats().frames_decoded >= frames)
                    .map(|_| ())
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_native_peers_on_the_sfu_all_decode_everyone_and_hear_each_other() {
    let janus = JanusProcess::start().await;
    let mut config = sfu_server_config(&janus, 0);
    config.hub.max_room_size = 16;
    let server = common::start_server(config).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "eight", 0..8, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    // Sound through the SFU: the first hears the last one's tone.
    let last = peers[7].id.clone().unwrap();
    let hz = 300.0 + 50.0 * 7.0;
    let f = peers[0]
        .until(std::time::Duration::from_secs(20), |p| {
            let f = p.engine.media().remote_audio(&last)?.frequency?;
            ((f - hz).abs() / hz < 0.02).then_some(f)
        })
        .await;
    eprintln!("peer0 hears peer7's {hz} Hz tone as {f:.1} Hz through the SFU");
    // Muting shows on the others' side (a media state relayed without a connection).
    let peer0 = peers[0].id.clone().unwrap();
    peers[0].send(huddle::engine::Command::SetAudioMuted(true));
    peers[5]
        .wait_for(std::time::Duration::from_secs(10), |e| match e {
            huddle::engine::Event::PeerMediaState {
                peer, audio: false, ..
            } if *peer == peer0 => Some(()),
            _ => None,
        })
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_grows_from_three_to_six_moves_onto_the_sfu_and_everyone_still_decodes() {
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 4)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "growing", 0..3, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    // Four people: still a mesh.
    join_sfu_peers(&server.url(), "growing", 3..4, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    // The mesh's video outputs: after the move, pictures must come on new ones.
    let stale = video_outputs(&mut peers);
    join_sfu_peers(&server.url(), "growing", 4..6, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &stale).await;
    for p in &peers {
        assert!(
            !p.seen
                .iter()
                .any(|e| matches!(e, huddle::engine::Event::Problem(_))),
            "no problem reported: {:?}",
            p.seen
                .iter()
                .filter(|e| matches!(e, huddle::engine::Event::Problem(_)))
                .collect::<Vec<_>>()
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_shrinks_moves_back_to_a_mesh_and_the_call_goes_on() {
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 3)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "shrinking", 0..4, dir.path(), &mut peers).await;
    // Four: on the SFU.
    all_decode_all(&mut peers, 15, &Default::default()).await;
    // The SFU's outputs and what each has seen, taken before anyone leaves.
    let stale = video_outputs(&mut peers);
    peers.truncate(2);
    let seen_before: Vec<usize> = peers.iter().map(|p| p.seen.len()).collect();
    // Three (the threshold): still there. Two: back to a mesh.
    all_decode_all(&mut peers, 15, &stale).await;
    // The pictures come over a peer-to-peer connection again.
    for (p, before) in peers.iter().zip(seen_before) {
        assert!(
            p.seen[before..]
                .iter()
                .any(|e| matches!(e, huddle::engine::Event::PeerConnected { .. })),
            "a peer-to-peer connection came up after the move back"
        );
    }
    server.shutdown().await;
}

/// Waits until `p` decodes `from`'s camera at `size`, and returns how many frames it had then.
async fn decodes_at(
    p: &mut common::peer::TestPeer,
    from: &huddle::signaling::protocol::PeerId,
    size: (usize, usize),
) -> u64 {
    p.until(std::time::Duration::from_secs(30), |p| {
        let stats = p.videos.get(from)?.stats();
        ((stats.width, stats.height) == size).then_some(stats.frames_decoded)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_receiver_gets_the_simulcast_layer_its_tiles_need() {
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "layers", 0..3, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    let ids: Vec<_> = peers.iter().map(|p| p.id.clone().unwrap()).collect();
    // Every publisher sends all three layers on a loopback uplink.
    peers[1]
        .wait_for(std::time::Duration::from_secs(20), |e| match e {
            huddle::engine::Event::PeerStats { peer, stats }
                if peer.as_str() == huddle::engine::SFU_PUBLISHER =>
            {
                let sizes: Vec<_> = stats
                    .layers_sending
                    .iter()
                    .map(|t| (t.width, t.height))
                    .collect();
                (sizes == [(160, 120), (320, 240), (640, 480)]).then_some(())
            }
            _ => None,
        })
        .await;
    // Peer 0 draws peer 1 small and peer 2 at middle size; peer 1 has no window (top layer).
    peers[0].send(huddle::engine::Command::SetTileWidths(
        [(ids[1].clone(), 150), (ids[2].clone(), 330)].into(),
    ));
    decodes_at(&mut peers[0], &ids[1], (160, 120)).await;
    decodes_at(&mut peers[0], &ids[2], (320, 240)).await;
    decodes_at(&mut peers[1], &ids[0], (640, 480)).await;
    decodes_at(&mut peers[1], &ids[2], (640, 480)).await;
    // Peer 1 becomes the speaker view: its layer goes up, and the picture keeps coming.
    peers[0].send(huddle::engine::Command::SetTileWidths(
        [(ids[1].clone(), 1000), (ids[2].clone(), 330)].into(),
    ));
    let at = decodes_at(&mut peers[0], &ids[1], (640, 480)).await;
    peers[0]
        .until(std::time::Duration::from_secs(10), |p| {
            (p.videos.get(&ids[1])?.stats().frames_decoded >= at + 30).then_some(())
        })
        .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_screen_shared_in_a_room_on_the_sfu_reaches_everyone_and_ends() {
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "sharing", 0..3, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    let sharer = peers[0].id.clone().unwrap();
    peers[0].send(huddle::engine::Command::StartScreenShare {
        source: huddle::engine::ScreenSource::Test {
            width: 1280,
            height: 720,
            source_id: 9,
        },
        fps: 10,
        sound: false,
    });
    for p in &mut peers[1..] {
        // The share arrives as the sharer's screen, apart from its camera.
        let frames = p
            .until(std::time::Duration::from_secs(30), |p| {
                let s = p.screens.get(&sharer)?.stats();
                (s.frames_decoded >= 5 && (s.width, s.height) == (1280, 720))
                    .then_some(s.frames_decoded)
            })
            .await;
        assert!(frames >= 5);
        let (camera, screen) = (&p.videos[&sharer], &p.screens[&sharer]);
        assert!(
            !std::sync::Arc::ptr_eq(camera, screen),
            "the camera stays apart"
        );
        // The others learnt it is a share (it may have come before the pictures).
        let told = |e: &huddle::engine::Event| matches!(e, huddle::engine::Event::PeerMediaState { peer, screen: true, .. } if *peer == sharer);
        if !p.seen.iter().any(told) {
            p.wait_for(std::time::Duration::from_secs(10), |e| {
                told(e).then_some(())
            })
            .await;
        }
    }
    peers[0].send(huddle::engine::Command::StopScreenShare);
    for p in &mut peers[1..] {
        p.wait_for(std::time::Duration::from_secs(10), |e| match e {
            huddle::engine::Event::PeerMediaState {
                peer,
                screen: false,
                ..
            } if *peer == sharer => Some(()),
            _ => None,
        })
        .await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_in_a_room_on_the_sfu_goes_peer_to_peer_on_a_connection_made_for_it() {
    use huddle::transfer::{Direction, TransferCommand, TransferState};
    use sha2::Digest;
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "files", 0..3, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    let receiver = peers[1].id.clone().unwrap();
    let src = tempfile::tempdir().unwrap();
    let path = src.path().join("notes.bin");
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    peers[0].send(huddle::engine::Command::Transfer(
        TransferCommand::SendFiles {
            paths: vec![path],
            to: Some(receiver.clone()),
        },
    ));
    peers[1]
        .transfer_update(std::time::Duration::from_secs(30), |u| {
            assert!(!matches!(u.state, TransferState::Failed(_)), "{u:?}");
            u.direction == Direction::Incoming && u.state == TransferState::Completed
        })
        .await;
    let got = std::fs::read(dir.path().join("notes.bin")).unwrap();
    assert_eq!(sha2::Sha256::digest(&got), sha2::Sha256::digest(&data));
    // The connection carried only the file: the pictures still come through the SFU.
    let sender = peers[0].id.clone().unwrap();
    let before = peers[1].videos[&sender].stats().frames_decoded;
    peers[1]
        .until(std::time::Duration::from_secs(10), |p| {
            (p.videos[&sender].stats().frames_decoded >= before + 15).then_some(())
        })
        .await;
    server.shutdown().await;
}

/// How many VideoRoom rooms a Janus instance holds (private ones too: the admin key lists them).
async fn rooms_on(janus: &JanusProcess, tasks: &mut JoinSet<()>) -> usize {
    participants_on(janus, tasks).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_two_janus_instances_and_each_works() {
    let (first, second) = (JanusProcess::start().await, JanusProcess::start().await);
    let server = common::start_server(common::janus::server_config(&[&first, &second], 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut east, mut west) = (Vec::new(), Vec::new());
    join_sfu_peers(&server.url(), "east", 0..2, dir.path(), &mut east).await;
    join_sfu_peers(&server.url(), "west", 2..4, dir.path(), &mut west).await;
    all_decode_all(&mut east, 15, &Default::default()).await;
    all_decode_all(&mut west, 15, &Default::default()).await;
    let mut tasks = JoinSet::new();
    assert_eq!(rooms_on(&first, &mut tasks).await, 1, "one room on each");
    assert_eq!(rooms_on(&second, &mut tasks).await, 1, "one room on each");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_created_large_is_on_the_sfu_from_the_start() {
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 4)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    for i in 0..2 {
        let mut p = sfu_peer(&server.url(), i, dir.path());
        p.send(huddle::engine::Command::Join {
            room: "Town hall".into(),
            nickname: format!("peer{i}"),
            access: huddle::engine::JoinAccess {
                large: true,
                ..Default::default()
            },
        });
        p.wait_for(std::time::Duration::from_secs(10), |e| match e {
            huddle::engine::Event::Joined { .. } => Some(()),
            _ => None,
        })
        .await;
        peers.push(p);
    }
    // Two people, far below the threshold of four, and their pictures come through the SFU:
    // they never connect to each other.
    all_decode_all(&mut peers, 15, &Default::default()).await;
    for p in &peers {
        assert!(
            !p.seen
                .iter()
                .any(|e| matches!(e, huddle::engine::Event::PeerConnected { .. })),
            "no peer-to-peer connection"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_turned_on_after_the_room_moved_onto_the_sfu_reaches_the_others() {
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "late", 0..2, dir.path(), &mut peers).await;
    // A third without a camera: it publishes its microphone only.
    let mut opts = common::peer::PeerOptions::new(9, 700.0, dir.path().into());
    opts.video = None;
    opts.bind_addrs = Some(JANUS_REACHABLE.iter().map(|a| a.to_string()).collect());
    let mut late = common::peer::TestPeer::start(&server.url(), opts);
    late.join("late", "late").await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    let late_id = late.id.clone().unwrap();
    late.send(huddle::engine::Command::SetVideoSource(
        huddle::media::video::VideoSourceSpec::test_pattern(9),
    ));
    for p in &mut peers {
        p.until(std::time::Duration::from_secs(30), |p| {
            (p.videos.get(&late_id)?.stats().frames_decoded >= 15).then_some(())
        })
        .await;
    }
    // And it still receives the others, whose pictures keep coming.
    late.drain();
    for p in &peers {
        let id = p.id.clone().unwrap();
        let before = late.videos[&id].stats().frames_decoded;
        late.until(std::time::Duration::from_secs(20), |l| {
            (l.videos[&id].stats().frames_decoded >= before + 15).then_some(())
        })
        .await;
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_janus_dies_moves_to_another_and_back_when_that_one_dies_too() {
    let (mut first, mut second) = (JanusProcess::start().await, JanusProcess::start().await);
    let server = common::start_server(common::janus::server_config(&[&first, &second], 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "sturdy", 0..3, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    let mut tasks = JoinSet::new();
    // Both were empty: the room went on the first.
    assert_eq!(rooms_on(&first, &mut tasks).await, 1);
    assert_eq!(rooms_on(&second, &mut tasks).await, 0);

    // The first Janus crashes: the room moves to the second, everyone's new connections carry
    // everyone again, and nobody left the room.
    let stale = video_outputs(&mut peers);
    first.kill().await;
    all_decode_all(&mut peers, 15, &stale).await;
    assert_eq!(rooms_on(&second, &mut tasks).await, 1);

    // The first comes back (empty, as a restarted Janus is) and then the second crashes. The
    // server reaches the first again on its own; the room moves back onto it, either at once
    // or, if the first is not reached yet, as soon as it is.
    first.restart().await;
    let stale = video_outputs(&mut peers);
    second.kill().await;
    all_decode_all(&mut peers, 15, &stale).await;
    assert_eq!(rooms_on(&first, &mut tasks).await, 1);
    for p in &mut peers {
        p.drain();
        let left: Vec<_> = p
            .seen
            .iter()
            .filter(|e| matches!(e, huddle::engine::Event::PeerLeft { .. }))
            .collect();
        assert!(left.is_empty(), "nobody left the room: {left:?}");
    }
    server.shutdown().await;
}

/// Participants in each VideoRoom room on a Janus instance (private ones too: the admin key
/// lists them).
async fn participants_on(janus: &JanusProcess, tasks: &mut JoinSet<()>) -> Vec<u64> {
    let client = connect(&janus.url, Some(ADMIN_KEY), tasks).await;
    let handle = client.attach().await.unwrap();
    let body = json!({ "request": "list", "admin_key": ADMIN_KEY });
    let (data, _) = client.message(handle, body, None).await.unwrap();
    data["list"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .filter_map(|r| r["num_participants"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_signaling_server_restart_a_room_on_the_sfu_gets_its_media_back() {
    let janus = JanusProcess::start().await;
    let mut config = sfu_server_config(&janus, 0);
    config.hub.access.rejoin_secret =
        huddle::signaling::access::Secret::new("the same secret after the restart").unwrap();
    let server = common::start_server(config.clone()).await;
    config.bind = server.local_addr();
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "steady", 0..3, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    let mut tasks = JoinSet::new();
    assert_eq!(participants_on(&janus, &mut tasks).await, [3]);

    // The server restarts (a new version deployed): its Janus rooms go with it. Everyone takes
    // their id back, and the room is on the SFU again with everyone publishing into it.
    let stale = video_outputs(&mut peers);
    server.shutdown().await;
    let server = common::start_server(config).await;
    for p in &mut peers {
        p.wait_for(std::time::Duration::from_secs(30), |e| match e {
            huddle::engine::Event::Resumed { .. } => Some(()),
            huddle::engine::Event::Joined { you, .. } => panic!("joined afresh as {}", you.id),
            _ => None,
        })
        .await;
    }
    all_decode_all(&mut peers, 15, &stale).await;
    assert_eq!(participants_on(&janus, &mut tasks).await, [3]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_who_joins_after_someone_left_reaches_everyone() {
    // Janus gives the newcomer's streams the media sections the leaver's had: the receivers
    // must see the new stream in them.
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "turnover", 0..3, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    let leaver = peers.pop().unwrap();
    let leaver_id = leaver.id.clone().unwrap();
    leaver.engine.shutdown().await;
    for p in &mut peers {
        p.wait_for(std::time::Duration::from_secs(10), |e| match e {
            huddle::engine::Event::PeerLeft { peer, .. } if *peer == leaver_id => Some(()),
            _ => None,
        })
        .await;
    }
    join_sfu_peers(&server.url(), "turnover", 3..4, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_starts_its_sfu_membership_over_at_most_every_two_seconds() {
    use huddle::signaling::protocol::{ClientMessage, ErrorCode, ServerMessage};
    let janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 0)).await;
    let mut eve = common::TestClient::connect(&server.url()).await;
    eve.join("restless", "eve").await;
    eve.recv_until(|m| matches!(m, ServerMessage::RoomMode { sfu: true }))
        .await;
    // Each restart ends the member's streams for everyone and brings everyone a new offer: a
    // client that repeats it is refused, not obeyed.
    eve.send(&ClientMessage::SfuRestart).await;
    eve.recv_until(|m| matches!(m, ServerMessage::SfuMoved))
        .await;
    eve.send(&ClientMessage::SfuRestart).await;
    eve.expect_error(ErrorCode::RateLimited).await;
    let mut tasks = JoinSet::new();
    assert_eq!(participants_on(&janus, &mut tasks).await, [1]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_the_only_janus_gets_its_media_back_when_that_janus_restarts() {
    let mut janus = JanusProcess::start().await;
    let server = common::start_server(sfu_server_config(&janus, 0)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut peers = Vec::new();
    join_sfu_peers(&server.url(), "patient", 0..2, dir.path(), &mut peers).await;
    all_decode_all(&mut peers, 15, &Default::default()).await;
    // Janus crashes and is restarted (as systemd would): the room waits, then moves onto it.
    let stale = video_outputs(&mut peers);
    janus.kill().await;
    janus.restart().await;
    all_decode_all(&mut peers, 15, &stale).await;
    let mut tasks = JoinSet::new();
    assert_eq!(participants_on(&janus, &mut tasks).await, [2]);
    server.shutdown().await;
}

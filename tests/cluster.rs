//! Two `huddle serve --redis` processes sharing rooms through a real `redis-server` started on a
//! free loopback port: one room list, shared rooms, chat and history, relays, a video call
//! between peers on different processes, and a killed process's clients leaving the room.

mod common;

use common::peer::{PeerOptions, TestPeer};
use common::*;
use huddle::engine::Event;
use huddle::signaling::client::{ClientCommand, ClientConfig, ClientEvent, SignalingClient};
use huddle::signaling::protocol::{
    ClientMessage, ErrorCode, JoinAccess, LeaveReason, PeerId, ServerMessage,
};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Beats every second: a dead process is noticed after three missed beats.
const HEARTBEAT_SECS: &str = "1";

/// One test at a time: one of them kills and restarts its Redis on the same port, and while the
/// two ran side by side the other lost its own Redis connections now and then ("broken pipe",
/// its subscription gone) on this 2-core machine. Not understood yet; see the closing notes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `redis-server` on a free loopback port, without persistence, stopped when dropped.
struct Redis {
    child: tokio::process::Child,
    port: u16,
    url: String,
}

impl Redis {
    async fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port).await
    }

    async fn start_on(port: u16) -> Redis {
        let mut child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install it with `scripts/setup --test`")
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        };
        tokio::time::timeout(WAIT, ready)
            .await
            .expect("redis-server ready in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Redis {
            child,
            port,
            url: format!("redis://127.0.0.1:{port}"),
        }
    }
}

async fn serve_with(redis: &Redis) -> ServeProcess {
    ServeProcess::start(&["--redis", &redis.url, "--heartbeat-secs", HEARTBEAT_SECS]).await
}

fn room_names(rooms: &[huddle::signaling::protocol::RoomInfo]) -> Vec<(String, usize)> {
    let mut names: Vec<_> = rooms.iter().map(|r| (r.name.clone(), r.people)).collect();
    names.sort();
    names
}

async fn list(client: &mut TestClient) -> Vec<(String, usize)> {
    client.send(&ClientMessage::ListRooms).await;
    match client
        .recv_until(|m| matches!(m, ServerMessage::RoomList { .. }))
        .await
    {
        ServerMessage::RoomList { rooms } => room_names(&rooms),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_rooms_chat_relays_and_calls_through_redis() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start().await;
    let one = serve_with(&redis).await;
    let two = serve_with(&redis).await;

    // A watcher on process two sees a room created on process one.
    let mut watcher = TestClient::connect(&two.url).await;
    watcher.send(&ClientMessage::SubscribeRooms).await;
    match watcher.recv().await {
        ServerMessage::RoomList { rooms } => assert!(rooms.is_empty()),
        other => panic!("{other:?}"),
    }
    let mut ann = TestClient::connect(&one.url).await;
    assert!(matches!(
        ann.join("Across", "ann").await,
        ServerMessage::Joined { .. }
    ));
    match watcher
        .recv_until(|m| matches!(m, ServerMessage::RoomUpdated { .. }))
        .await
    {
        ServerMessage::RoomUpdated { room } => {
            assert_eq!((room.name, room.people), ("Across".into(), 1))
        }
        _ => unreachable!(),
    }

    // Bob on process two joins the same room and finds ann there.
    let mut bob = TestClient::connect(&two.url).await;
    match bob.join("across", "bob").await {
        ServerMessage::Joined { room, peers, .. } => {
            assert_eq!(room, "Across");
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].id, ann.peer_id);
            assert_eq!(peers[0].nickname, "ann");
        }
        other => panic!("{other:?}"),
    }
    match ann
        .recv_until(|m| matches!(m, ServerMessage::PeerJoined { .. }))
        .await
    {
        ServerMessage::PeerJoined { peer, .. } => assert_eq!(peer.id, bob.peer_id),
        _ => unreachable!(),
    }
    // Nicknames are unique across processes.
    let mut impostor = TestClient::connect(&two.url).await;
    match impostor.join("Across", "ANN").await {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::NicknameTaken),
        other => panic!("{other:?}"),
    }

    // Chat both ways, stamped once, in one order for everyone.
    ann.send(&ClientMessage::Chat {
        text: "hello from one".into(),
    })
    .await;
    let from_ann = match bob
        .recv_until(|m| matches!(m, ServerMessage::Chat { .. }))
        .await
    {
        ServerMessage::Chat { message } => message,
        _ => unreachable!(),
    };
    assert_eq!(from_ann.text, "hello from one");
    assert_eq!(from_ann.from, ann.peer_id);
    bob.send(&ClientMessage::Chat {
        text: "hello from two".into(),
    })
    .await;
    let mut ann_saw = Vec::new();
    while ann_saw.len() < 2 {
        if let ServerMessage::Chat { message } = ann.recv().await {
            ann_saw.push(message);
        }
    }
    assert_eq!(
        ann_saw[0], from_ann,
        "the same stamped message on both processes"
    );
    assert_eq!(ann_saw[1].text, "hello from two");
    assert!(ann_saw[1].id > ann_saw[0].id);

    // Bob raises his hand on process two; ann on process one is told, with its time; a reaction
    // crosses too, and an unknown one is refused.
    bob.send(&ClientMessage::SetHand { raised: true }).await;
    let raised_at = match ann
        .recv_until(|m| matches!(m, ServerMessage::HandChanged { .. }))
        .await
    {
        ServerMessage::HandChanged {
            peer_id,
            raised_at_ms,
        } => {
            assert_eq!(peer_id, bob.peer_id);
            raised_at_ms.expect("raised")
        }
        _ => unreachable!(),
    };
    ann.send(&ClientMessage::React {
        emoji: "👏".into()
    })
    .await;
    match bob
        .recv_until(|m| matches!(m, ServerMessage::Reaction { .. }))
        .await
    {
        ServerMessage::Reaction { peer_id, emoji } => {
            assert_eq!((peer_id, emoji.as_str()), (ann.peer_id.clone(), "👏"))
        }
        _ => unreachable!(),
    }
    ann.send(&ClientMessage::React {
        emoji: "<b>".into(),
    })
    .await;
    match ann
        .recv_until(|m| matches!(m, ServerMessage::Error { .. }))
        .await
    {
        ServerMessage::Error { code, .. } => assert_eq!(code, ErrorCode::Malformed),
        _ => unreachable!(),
    }

    // A late joiner on process one gets the history written through process two, and bob's
    // raised hand with its time.
    let mut cat = TestClient::connect(&one.url).await;
    match cat.join("Across", "cat").await {
        ServerMessage::Joined { history, peers, .. } => {
            let texts: Vec<_> = history.iter().map(|m| m.text.as_str()).collect();
            assert_eq!(texts, ["hello from one", "hello from two"]);
            assert_eq!(peers.len(), 2);
            let bob_there = peers.iter().find(|p| p.id == bob.peer_id).unwrap();
            assert_eq!(bob_there.hand_raised_at_ms, Some(raised_at));
            let ann_there = peers.iter().find(|p| p.id == ann.peer_id).unwrap();
            assert_eq!(ann_there.hand_raised_at_ms, None);
        }
        other => panic!("{other:?}"),
    }

    // Ann raises hers straight after, through the other process: it is stamped after bob's
    // even if both land in the same millisecond.
    ann.send(&ClientMessage::SetHand { raised: true }).await;
    match cat
        .recv_until(|m| matches!(m, ServerMessage::HandChanged { .. }))
        .await
    {
        ServerMessage::HandChanged {
            peer_id,
            raised_at_ms,
        } => {
            assert_eq!(peer_id, ann.peer_id);
            assert!(raised_at_ms.expect("raised") > raised_at);
        }
        _ => unreachable!(),
    }

    // Relays cross processes with the real sender; forged senders and other rooms are refused.
    let payload = serde_json::json!({"kind": "offer", "sdp": "v=0"});
    ann.send(&ClientMessage::Relay {
        to: bob.peer_id.clone(),
        from: None,
        payload: payload.clone(),
    })
    .await;
    match bob
        .recv_until(|m| matches!(m, ServerMessage::Relay { .. }))
        .await
    {
        ServerMessage::Relay { from, payload: got } => {
            assert_eq!(from, ann.peer_id);
            assert_eq!(got, payload);
        }
        _ => unreachable!(),
    }
    bob.send(&ClientMessage::Relay {
        to: ann.peer_id.clone(),
        from: Some(cat.peer_id.clone()),
        payload: payload.clone(),
    })
    .await;
    bob.expect_error(ErrorCode::ForgedSender).await;
    let mut elsewhere = TestClient::connect(&one.url).await;
    elsewhere.join("Elsewhere", "eve").await;
    elsewhere
        .send(&ClientMessage::Relay {
            to: bob.peer_id.clone(),
            from: None,
            payload,
        })
        .await;
    elsewhere.expect_error(ErrorCode::PeerNotFound).await;
    assert!(
        !bob.sync()
            .await
            .iter()
            .any(|m| matches!(m, ServerMessage::Relay { .. })),
        "a relay crossed rooms"
    );

    // One room list, whichever process you ask.
    let expected = vec![("Across".to_owned(), 3), ("Elsewhere".to_owned(), 1)];
    assert_eq!(list(&mut impostor).await, expected);
    assert_eq!(list(&mut elsewhere).await, expected);

    // Two engines with test patterns, one on each process, complete a call with video.
    let dir_one = tempfile::tempdir().unwrap();
    let dir_two = tempfile::tempdir().unwrap();
    let mut pat = TestPeer::start(&one.url, PeerOptions::new(1, 440.0, dir_one.path().into()));
    let mut quin = TestPeer::start(&two.url, PeerOptions::new(2, 660.0, dir_two.path().into()));
    pat.join("Video", "pat").await;
    quin.join("Video", "quin").await;
    let pat_id = pat.id.clone().unwrap();
    let quin_id = quin.id.clone().unwrap();
    pat.connected_to(&quin_id).await;
    quin.connected_to(&pat_id).await;
    pat.video_frames(&quin_id, 30, Duration::from_secs(15))
        .await;
    quin.video_frames(&pat_id, 30, Duration::from_secs(15))
        .await;

    // Process one dies without a word: its clients leave the rooms on process two within the
    // heartbeat window (three missed one-second beats, found at the next beat).
    let killed_at = Instant::now();
    one.kill().await;
    let mut gone: Vec<(PeerId, LeaveReason)> = Vec::new();
    while gone.len() < 2 {
        if let ServerMessage::PeerLeft {
            peer_id, reason, ..
        } = bob.recv().await
        {
            gone.push((peer_id, reason));
        }
    }
    let noticed = killed_at.elapsed();
    gone.sort_by(|a, b| a.0.0.cmp(&b.0.0));
    let mut expected = vec![
        (ann.peer_id.clone(), LeaveReason::TimedOut),
        (cat.peer_id.clone(), LeaveReason::TimedOut),
    ];
    expected.sort_by(|a, b| a.0.0.cmp(&b.0.0));
    assert_eq!(gone, expected);
    quin.wait_for(Duration::from_secs(10), |e| match e {
        Event::PeerLeft { peer, .. } if *peer == pat_id => Some(()),
        _ => None,
    })
    .await;
    eprintln!("process two saw process one's clients leave {noticed:?} after the kill");
    assert!(
        noticed < Duration::from_secs(6),
        "took {noticed:?}, beyond the heartbeat window"
    );
    // The list on process two follows: Elsewhere closed with its only member, Across has bob.
    // Asked on a new connection: the raw test clients answer no heartbeat while unread, and
    // with one-second beats the server rightly drops one left quiet for three.
    let mut late = TestClient::connect(&two.url).await;
    assert_eq!(
        list(&mut late).await,
        vec![("Across".to_owned(), 1), ("Video".to_owned(), 1)]
    );

    drop(pat);
    quin.engine.shutdown().await;
    two.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_closes_clients_with_unavailable_and_they_rejoin_when_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut redis = Redis::start().await;
    let server = serve_with(&redis).await;
    // A raw client sees exactly what the server says; the real client shows the recovery.
    let mut raw = TestClient::connect(&server.url).await;
    assert!(matches!(
        raw.join("Steady", "raw").await,
        ServerMessage::Joined { .. }
    ));
    let (client, mut events) = SignalingClient::spawn(ClientConfig {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        ..ClientConfig::new(server.url.clone())
    });
    let mut joined = 0;
    let mut wait_joined = async |events: &mut tokio::sync::mpsc::Receiver<ClientEvent>| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("joined in time")
                .expect("client running");
            if let ClientEvent::Server(ServerMessage::Joined { room, .. }) = event {
                assert_eq!(room, "Steady");
                joined += 1;
                return;
            }
        }
    };
    client
        .send(ClientCommand::Join {
            room: "Steady".into(),
            nickname: "real".into(),
            access: JoinAccess::default(),
        })
        .unwrap();
    wait_joined(&mut events).await;

    // Redis goes away: the server cannot keep rooms consistent, so it says so and closes.
    let port = redis.port;
    redis.child.kill().await.unwrap();
    let seen = raw.expect_closed().await;
    assert!(
        seen.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::Unavailable,
                fatal: true,
                ..
            }
        )),
        "{seen:?}"
    );

    // Redis comes back empty on the same address; the real client reconnects and rejoins.
    let _redis = Redis::start_on(port).await;
    wait_joined(&mut events).await;
    assert_eq!(joined, 2);
    let mut late = TestClient::connect(&server.url).await;
    match late.join("Steady", "late").await {
        ServerMessage::Joined { peers, .. } => {
            let names: Vec<_> = peers.iter().map(|p| p.nickname.as_str()).collect();
            assert_eq!(names, ["real"]);
        }
        other => panic!("{other:?}"),
    }
    drop(client);
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_send_each_webhook_event_once_in_order_even_when_one_dies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let redis = Redis::start().await;
    let receiver = common::receiver::Receiver::start(
        "127.0.0.1:0",
        common::receiver::Behaviour {
            status: 200,
            delay: Duration::ZERO,
        },
    )
    .await;
    let secret = "cluster webhook secret";
    let args = [
        "--redis",
        &redis.url,
        "--heartbeat-secs",
        HEARTBEAT_SECS,
        "--webhook",
        &receiver.url,
        "--webhook-secret",
        secret,
    ];
    let one = ServeProcess::start(&args).await;
    let two = ServeProcess::start(&args).await;

    // Ann on one process, Bob on the other: a room's whole life.
    common::receiver::a_rooms_life(&one.url, &two.url).await;
    let got = receiver.wait_for(6, WAIT).await;

    // Cat on the second process, which then dies: the first reaps Cat and finishes the room.
    let mut cat = TestClient::connect(&two.url).await;
    cat.join("Later", "cat").await;
    receiver.wait_for(8, WAIT).await;
    two.kill().await;
    let got_all = receiver.wait_for(10, Duration::from_secs(20)).await;
    assert_eq!(got_all[..6].len(), got.len());

    let seen: Vec<_> = got_all.iter().map(|d| d.signed_event(secret)).collect();
    let mut want = common::receiver::a_rooms_life_events();
    want.extend(common::receiver::event_lines(&[
        ("room_started", "Later", "", ""),
        ("participant_joined", "Later", "cat", ""),
        ("participant_left", "Later", "cat", "timed_out"),
        ("room_finished", "Later", "", ""),
    ]));
    assert_eq!(seen, want);
    let ids: std::collections::HashSet<_> =
        got_all.iter().map(|d| d.json()["id"].clone()).collect();
    assert_eq!(ids.len(), 10, "ten distinct events");
    // Nothing else comes: another room's first event is the eleventh delivery.
    let mut dan = TestClient::connect(&one.url).await;
    dan.join("Last", "dan").await;
    let got = receiver.wait_for(11, WAIT).await;
    assert_eq!(got.len(), 11);
    assert_eq!(got[10].json()["room"], "Last");
    drop(one);
}

//! The real signaling server on 127.0.0.1:0 driven by real WebSocket clients.

mod common;

use common::*;
use futures_util::SinkExt;
use huddle::signaling::protocol::{
    self, ClientMessage, ErrorCode, LeaveReason, PeerId, ServerMessage,
};
use huddle::signaling::server::RateLimit;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn room_list_subscription_follows_rooms() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut watcher = TestClient::connect(&url).await;
    watcher.send(&ClientMessage::SubscribeRooms).await;
    assert_eq!(
        watcher.recv().await,
        ServerMessage::RoomList { rooms: vec![] }
    );

    let mut ann = TestClient::connect(&url).await;
    assert!(matches!(
        ann.join("Design", "ann").await,
        ServerMessage::Joined { .. }
    ));
    match watcher.recv().await {
        ServerMessage::RoomUpdated { room } => {
            assert_eq!(
                (room.name.as_str(), room.people, room.capacity),
                ("Design", 1, 6)
            );
        }
        other => panic!("{other:?}"),
    }
    let mut bob = TestClient::connect(&url).await;
    bob.join("Design", "bob").await;
    assert!(matches!(watcher.recv().await,
        ServerMessage::RoomUpdated { room } if room.people == 2));

    // A one-shot list from a client that did not subscribe.
    let mut lister = TestClient::connect(&url).await;
    lister.send(&ClientMessage::ListRooms).await;
    assert!(matches!(lister.recv().await,
        ServerMessage::RoomList { rooms } if rooms.len() == 1 && rooms[0].people == 2));

    bob.send(&ClientMessage::Leave).await;
    assert!(matches!(bob.recv().await, ServerMessage::Left { room } if room == "Design"));
    assert!(matches!(watcher.recv().await,
        ServerMessage::RoomUpdated { room } if room.people == 1));
    drop(ann);
    assert!(matches!(watcher.recv().await,
        ServerMessage::RoomClosed { name } if name == "Design"));

    watcher.send(&ClientMessage::UnsubscribeRooms).await;
    let mut cat = TestClient::connect(&url).await;
    cat.join("Later", "cat").await;
    assert!(
        watcher.sync().await.is_empty(),
        "no updates after unsubscribing"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn join_chat_history_and_leave() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut ann = TestClient::connect(&url).await;
    let mut bob = TestClient::connect(&url).await;
    match ann.join("Standup", "Ann").await {
        ServerMessage::Joined {
            room,
            you,
            peers,
            history,
            capacity,
            private,
            rejoin_token,
            sfu,
        } => {
            assert!(!private && rejoin_token.is_some() && !sfu);
            assert_eq!(room, "Standup");
            assert_eq!(you.id, ann.peer_id);
            assert_eq!(you.nickname, "Ann");
            assert!(peers.is_empty() && history.is_empty());
            assert_eq!(capacity, 6);
        }
        other => panic!("{other:?}"),
    }
    match bob.join("Standup", "Bob").await {
        ServerMessage::Joined { peers, .. } => {
            assert_eq!(peers.len(), 1);
            assert_eq!(peers[0].id, ann.peer_id);
            assert_eq!(peers[0].nickname, "Ann");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(ann.recv().await,
        ServerMessage::PeerJoined { peer, .. } if peer.id == bob.peer_id && peer.nickname == "Bob"));

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for i in 0..105 {
        ann.send(&ClientMessage::Chat {
            text: format!("message {i}"),
        })
        .await;
    }
    // Both see every message, stamped by the server with the real sender.
    for client in [&mut ann, &mut bob] {
        for i in 0..105 {
            match client.recv().await {
                ServerMessage::Chat { message } => {
                    assert_eq!(message.text, format!("message {i}"));
                    assert_eq!(message.nickname, "Ann");
                    assert!(message.time_ms >= before);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    // A late joiner gets the last 100 messages, oldest first.
    let mut cat = TestClient::connect(&url).await;
    match cat.join("standup", "Cat").await {
        ServerMessage::Joined { history, peers, .. } => {
            assert_eq!(peers.len(), 2);
            assert_eq!(history.len(), 100);
            assert_eq!(history[0].text, "message 5");
            assert_eq!(history[99].text, "message 104");
        }
        other => panic!("{other:?}"),
    }

    bob.send(&ClientMessage::Leave).await;
    bob.recv_until(|m| matches!(m, ServerMessage::Left { .. }))
        .await;
    for client in [&mut ann, &mut cat] {
        let msg = client
            .recv_until(|m| matches!(m, ServerMessage::PeerLeft { .. }))
            .await;
        assert!(
            matches!(msg, ServerMessage::PeerLeft { peer_id, reason: LeaveReason::Left, .. } if peer_id == bob.peer_id)
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn relay_between_two_peers_and_nowhere_else() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut ann = TestClient::connect(&url).await;
    let mut bob = TestClient::connect(&url).await;
    let mut eve = TestClient::connect(&url).await;
    ann.join("call", "ann").await;
    bob.join("call", "bob").await;
    eve.join("elsewhere", "eve").await;
    ann.sync().await;

    let offer = serde_json::json!({"kind": "offer", "sdp": "v=0\r\n..."});
    ann.send(&ClientMessage::Relay {
        to: bob.peer_id.clone(),
        from: None,
        payload: offer.clone(),
    })
    .await;
    assert_eq!(
        bob.recv().await,
        ServerMessage::Relay {
            from: ann.peer_id.clone(),
            payload: offer.clone()
        }
    );
    // Matching `from` is accepted.
    bob.send(&ClientMessage::Relay {
        to: ann.peer_id.clone(),
        from: Some(bob.peer_id.clone()),
        payload: serde_json::json!({"kind": "answer"}),
    })
    .await;
    assert!(matches!(ann.recv().await, ServerMessage::Relay { from, .. } if from == bob.peer_id));

    // Across rooms: refused, and eve hears nothing.
    eve.send(&ClientMessage::Relay {
        to: ann.peer_id.clone(),
        from: None,
        payload: offer.clone(),
    })
    .await;
    eve.expect_error(ErrorCode::PeerNotFound).await;
    // Forged sender: refused.
    eve.send(&ClientMessage::Relay {
        to: ann.peer_id.clone(),
        from: Some(bob.peer_id.clone()),
        payload: offer,
    })
    .await;
    eve.expect_error(ErrorCode::ForgedSender).await;
    assert!(ann.sync().await.is_empty());
    assert!(bob.sync().await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn nickname_rules_and_capacity() {
    let mut config = test_config();
    config.hub.max_room_size = 2;
    let server = start_server(config).await;
    let url = server.url();
    let mut ann = TestClient::connect(&url).await;
    let mut bob = TestClient::connect(&url).await;
    let mut cat = TestClient::connect(&url).await;

    for bad in ["", "   ", "a/b", "x\u{0}y", &"n".repeat(33)] {
        ann.send(&ClientMessage::Join {
            room: "r".into(),
            nickname: bad.into(),
            access: Default::default(),
        })
        .await;
        ann.expect_error(ErrorCode::BadNickname).await;
    }
    for bad in ["", "../../etc", &"r".repeat(65)] {
        ann.send(&ClientMessage::Join {
            room: bad.into(),
            nickname: "ann".into(),
            access: Default::default(),
        })
        .await;
        ann.expect_error(ErrorCode::BadRoomName).await;
    }
    assert!(matches!(
        ann.join("r", "Ann").await,
        ServerMessage::Joined { .. }
    ));
    bob.send(&ClientMessage::Join {
        room: "R".into(),
        nickname: "ANN".into(),
        access: Default::default(),
    })
    .await;
    bob.expect_error(ErrorCode::NicknameTaken).await;
    assert!(matches!(
        bob.join("R", "Bob").await,
        ServerMessage::Joined { capacity: 2, .. }
    ));
    cat.send(&ClientMessage::Join {
        room: "r".into(),
        nickname: "cat".into(),
        access: Default::default(),
    })
    .await;
    let (message, fatal) = cat.expect_error(ErrorCode::RoomFull).await;
    assert!(message.contains("full") && !fatal);

    bob.send(&ClientMessage::SetNickname {
        nickname: "Robert".into(),
    })
    .await;
    let bob_id = bob.peer_id.clone();
    for c in [&mut ann, &mut bob] {
        let m = c
            .recv_until(|m| matches!(m, ServerMessage::NicknameChanged { .. }))
            .await;
        assert!(
            matches!(m, ServerMessage::NicknameChanged { peer_id, nickname } if peer_id == bob_id && nickname == "Robert")
        );
    }
    // Once bob leaves, cat fits.
    bob.send(&ClientMessage::Leave).await;
    assert!(matches!(
        cat.join("r", "cat").await,
        ServerMessage::Joined { .. }
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn vanished_clients_leave_their_room() {
    let mut config = test_config();
    config.heartbeat_interval = Duration::from_millis(100);
    config.heartbeat_timeout = Duration::from_millis(400);
    let server = start_server(config).await;
    let url = server.url();
    let mut ann = TestClient::connect(&url).await;
    let mut killed = TestClient::connect(&url).await;
    let mut frozen = TestClient::connect(&url).await;
    ann.join("r", "ann").await;
    killed.join("r", "killed").await;
    frozen.join("r", "frozen").await;
    ann.sync().await;
    let killed_id = killed.peer_id.clone();
    let frozen_id = frozen.peer_id.clone();

    // A socket closed without a goodbye.
    drop(killed);
    let m = ann
        .recv_until(|m| matches!(m, ServerMessage::PeerLeft { .. }))
        .await;
    assert!(
        matches!(m, ServerMessage::PeerLeft { peer_id, reason: LeaveReason::Disconnected, .. } if peer_id == killed_id)
    );

    // A client that stays connected but stops answering pings: we simply stop polling it.
    let started = tokio::time::Instant::now();
    let m = ann
        .recv_until(|m| matches!(m, ServerMessage::PeerLeft { .. }))
        .await;
    assert!(
        matches!(m, ServerMessage::PeerLeft { peer_id, reason: LeaveReason::TimedOut, .. } if peer_id == frozen_id)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "dropped within the heartbeat window (timeout plus one interval, with slack)"
    );
    drop(frozen);
    server.shutdown().await;
}

#[tokio::test]
async fn two_rooms_are_isolated() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut a1 = TestClient::connect(&url).await;
    let mut a2 = TestClient::connect(&url).await;
    let mut b1 = TestClient::connect(&url).await;
    let mut b2 = TestClient::connect(&url).await;
    a1.join("alpha", "one").await;
    a2.join("alpha", "two").await;
    b1.join("beta", "one").await;
    b2.join("beta", "two").await;
    a1.sync().await;
    b1.sync().await;
    a1.send(&ClientMessage::Chat {
        text: "alpha only".into(),
    })
    .await;
    b1.send(&ClientMessage::Chat {
        text: "beta only".into(),
    })
    .await;
    // Once each sender has its own echo, the hub has delivered the chat everywhere it goes.
    for c in [&mut a1, &mut b1] {
        c.recv_until(|m| matches!(m, ServerMessage::Chat { .. }))
            .await;
    }
    for (client, expected) in [(&mut a2, "alpha only"), (&mut b2, "beta only")] {
        let seen = client.sync().await;
        let chats: Vec<_> = seen
            .iter()
            .filter_map(|m| match m {
                ServerMessage::Chat { message } => Some(message.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(chats, [expected]);
    }
    // Same nickname is fine in different rooms; the names "one"/"two" were reused above.
    b2.send(&ClientMessage::Leave).await;
    b2.recv_until(|m| matches!(m, ServerMessage::Left { .. }))
        .await;
    assert!(
        a2.sync()
            .await
            .iter()
            .all(|m| !matches!(m, ServerMessage::PeerLeft { .. }))
    );
    server.shutdown().await;
}

#[tokio::test]
async fn hello_is_required_and_versioned() {
    let server = start_server(test_config()).await;
    let url = server.url();

    let mut ws = raw_connect(&url).await;
    ws.send(Message::Text(r#"{"type":"hello","version":99}"#.into()))
        .await
        .unwrap();
    let mut c = TestClient {
        ws,
        peer_id: PeerId(String::new()),
    };
    let seen = c.expect_closed().await;
    assert!(
        matches!(&seen[..], [ServerMessage::Error { code: ErrorCode::VersionMismatch, fatal: true, message }] if message.contains("99"))
    );

    let mut ws = raw_connect(&url).await;
    ws.send(Message::Text(r#"{"type":"list_rooms"}"#.into()))
        .await
        .unwrap();
    let mut c = TestClient {
        ws,
        peer_id: PeerId(String::new()),
    };
    let seen = c.expect_closed().await;
    assert!(matches!(
        &seen[..],
        [ServerMessage::Error {
            code: ErrorCode::HelloRequired,
            fatal: true,
            ..
        }]
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn hostile_input_gets_documented_errors_and_harms_nobody() {
    let mut config = test_config();
    config.rate_limit = RateLimit {
        per_second: 20.0,
        burst: 30.0,
        max_strikes: 40,
    };
    let server = start_server(config).await;
    let url = server.url();
    let mut bystander = TestClient::connect(&url).await;
    bystander.join("safe", "bystander").await;
    let mut other_room = TestClient::connect(&url).await;
    other_room.join("other", "x").await;

    let mut evil = TestClient::connect(&url).await;
    evil.join("safe", "evil").await;
    bystander.sync().await;

    evil.send_raw("{this is not json").await;
    evil.expect_error(ErrorCode::Malformed).await;
    evil.send_raw(r#"{"no_type": true}"#).await;
    evil.expect_error(ErrorCode::Malformed).await;
    evil.send_raw(r#"{"type":"format_disk"}"#).await;
    evil.expect_error(ErrorCode::UnknownType).await;
    evil.send_raw(r#"{"type":"chat","text":42}"#).await;
    evil.expect_error(ErrorCode::Malformed).await;
    evil.send_raw("[1,2,3]").await;
    evil.expect_error(ErrorCode::Malformed).await;
    evil.ws
        .send(Message::Binary(vec![0u8, 159, 146, 150].into()))
        .await
        .unwrap();
    evil.expect_error(ErrorCode::BinaryNotSupported).await;
    evil.send(&ClientMessage::Relay {
        to: other_room.peer_id.clone(),
        from: None,
        payload: serde_json::json!({"sdp": "x"}),
    })
    .await;
    evil.expect_error(ErrorCode::PeerNotFound).await;
    evil.send(&ClientMessage::Relay {
        to: PeerId("does-not-exist".into()),
        from: None,
        payload: serde_json::json!(null),
    })
    .await;
    evil.expect_error(ErrorCode::PeerNotFound).await;
    evil.send(&ClientMessage::Relay {
        to: bystander.peer_id.clone(),
        from: Some(other_room.peer_id.clone()),
        payload: serde_json::json!("spoof"),
    })
    .await;
    evil.expect_error(ErrorCode::ForgedSender).await;
    evil.send(&ClientMessage::Chat {
        text: "x".repeat(protocol::MAX_CHAT_CHARS + 1),
    })
    .await;
    evil.expect_error(ErrorCode::BadChat).await;
    // The session survived all of that.
    assert!(evil.sync().await.is_empty());
    // Nothing reached the others.
    assert!(bystander.sync().await.is_empty());
    assert!(other_room.sync().await.is_empty());

    // Oversized frame: documented fatal error, then the connection closes.
    let mut big = TestClient::connect(&url).await;
    let huge = format!(
        r#"{{"type":"chat","text":"{}"}}"#,
        "a".repeat(protocol::MAX_FRAME_BYTES + 10)
    );
    let _ = big.ws.send(Message::Text(huge.into())).await;
    let seen = big.expect_closed().await;
    assert!(
        seen.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::TooLarge,
                fatal: true,
                ..
            }
        )),
        "saw {seen:?}"
    );

    // Flood: first rate-limited errors, then a disconnect for persisting.
    let mut flooder = TestClient::connect(&url).await;
    flooder.join("safe", "flooder").await;
    let flood_started = std::time::Instant::now();
    for _ in 0..200 {
        if flooder
            .ws
            .send(Message::Text(r#"{"type":"chat","text":"spam"}"#.into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let seen = flooder.expect_closed().await;
    let limited = seen
        .iter()
        .filter(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    fatal: false,
                    ..
                }
            )
        })
        .count();
    assert!(limited > 0, "flood answered with rate_limited first");
    assert!(matches!(
        seen.last(),
        Some(ServerMessage::Error {
            code: ErrorCode::RateLimited,
            fatal: true,
            ..
        })
    ));
    // The flooder's accepted chats reached the room, capped by its budget, then it was dropped.
    let mut spam = 0;
    loop {
        match bystander.recv().await {
            ServerMessage::Chat { message } if message.text == "spam" => spam += 1,
            ServerMessage::PeerLeft { reason, .. } => {
                assert_eq!(reason, LeaveReason::Dropped);
                break;
            }
            _ => {}
        }
    }
    // The bucket holds 30 and refills at 20 per second while the flood is being read.
    let allowed = 30 + (20.0 * flood_started.elapsed().as_secs_f64()).ceil() as usize;
    assert!(
        spam > 0 && spam <= allowed,
        "accepted spam {spam}, allowed {allowed}"
    );

    // A normal client is still served correctly.
    let mut fresh = TestClient::connect(&url).await;
    assert!(matches!(fresh.join("safe", "fresh").await,
        ServerMessage::Joined { peers, .. } if peers.len() == 2));
    fresh
        .send(&ClientMessage::Chat {
            text: "all good".into(),
        })
        .await;
    let m = bystander
        .recv_until(|m| matches!(m, ServerMessage::Chat { .. }))
        .await;
    assert!(matches!(m, ServerMessage::Chat { message } if message.text == "all good"));
    server.shutdown().await;
}

#[tokio::test]
async fn slow_reader_is_dropped_instead_of_buffered() {
    let mut config = test_config();
    config.outbox_len = 16;
    config.write_timeout = Duration::from_millis(300);
    config.rate_limit.per_second = 10_000.0;
    config.rate_limit.burst = 10_000.0;
    config.chat_rate_limit = config.rate_limit.clone();
    let server = start_server(config).await;
    let url = server.url();
    let mut talker = TestClient::connect(&url).await;
    talker.join("r", "talker").await;
    let mut sleeper = TestClient::connect(&url).await;
    sleeper.join("r", "sleeper").await;
    talker.sync().await;
    let sleeper_id = sleeper.peer_id.clone();
    // The sleeper never reads: its socket buffers fill, then its outbox, then it is dropped.
    let text = "z".repeat(1900);
    let mut sent = 0;
    let left = loop {
        talker
            .send(&ClientMessage::Chat { text: text.clone() })
            .await;
        sent += 1;
        assert!(sent < 20_000, "sleeper never dropped");
        // Drain our own echoes so *we* are not the slow one.
        if let Ok(found) = tokio::time::timeout(Duration::from_millis(1), async {
            loop {
                if let ServerMessage::PeerLeft {
                    peer_id, reason, ..
                } = talker.recv().await
                {
                    return (peer_id, reason);
                }
            }
        })
        .await
        {
            break found;
        }
    };
    assert_eq!(left, (sleeper_id, LeaveReason::Dropped));
    drop(sleeper);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_in_a_hundred_rooms() {
    const ROOMS: usize = 100;
    const PER_ROOM: usize = 5;
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut tasks = tokio::task::JoinSet::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(ROOMS * PER_ROOM + 1));
    for room in 0..ROOMS {
        for member in 0..PER_ROOM {
            let url = url.clone();
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let mut c = TestClient::connect(&url).await;
                let joined = c.join(&format!("room-{room}"), &format!("m{member}")).await;
                assert!(matches!(joined, ServerMessage::Joined { .. }));
                // Everyone is in before anyone talks, so each sees all five messages.
                barrier.wait().await;
                c.send(&ClientMessage::Chat {
                    text: format!("room-{room}/m{member}"),
                })
                .await;
                // Whatever chat arrives within the wait, kept as it came: a missing, duplicated
                // or leaked message shows in the comparison below rather than as a hang here.
                let mut got = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                while got.len() < PER_ROOM {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match c.try_recv(left).await {
                        Some(ServerMessage::Chat { message }) => got.push(message.text),
                        Some(_) => {}
                        None => break,
                    }
                }
                barrier.wait().await;
                // After everyone is done, nothing else is pending for us.
                let rest = c.sync().await;
                assert!(
                    rest.iter()
                        .all(|m| !matches!(m, ServerMessage::Chat { .. })),
                    "extra chat {rest:?}"
                );
                (room, member, got)
            });
        }
    }
    barrier.wait().await;
    barrier.wait().await;
    // Each member got exactly its own room's five messages (its own included), once each.
    let mut clients = 0;
    let mut delivered = 0;
    while let Some(result) = tasks.join_next().await {
        let (room, member, mut got) = result.expect("client task");
        got.sort();
        let expected: Vec<String> = (0..PER_ROOM).map(|m| format!("room-{room}/m{m}")).collect();
        assert_eq!(got, expected, "room-{room} member m{member}");
        clients += 1;
        delivered += got.len();
    }
    assert_eq!(clients, ROOMS * PER_ROOM);
    assert_eq!(delivered, ROOMS * PER_ROOM * PER_ROOM);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_tells_clients() {
    let server = start_server(test_config()).await;
    let mut c = TestClient::connect(&server.url()).await;
    c.join("r", "ann").await;
    server.shutdown().await;
    let seen = c.expect_closed().await;
    assert!(seen.iter().any(|m| matches!(
        m,
        ServerMessage::Error {
            code: ErrorCode::ShuttingDown,
            fatal: true,
            ..
        }
    )));
}

#[tokio::test]
async fn a_resumed_peer_id_is_given_back_only_when_no_one_holds_it() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut ann = TestClient::connect(&url).await;
    let token = match ann.join("Desk", "ann").await {
        ServerMessage::Joined {
            rejoin_token: Some(t),
            ..
        } => t,
        other => panic!("expected joined with a rejoin token, got {other:?}"),
    };
    let ann_id = ann.peer_id.clone();
    // While ann's connection lives, her token does not give her id to another connection.
    let other = TestClient::connect_resuming(&url, Some(token.clone())).await;
    assert_ne!(other.peer_id, ann_id);
    drop(other);
    let mut bob = TestClient::connect(&url).await;
    bob.join("Desk", "bob").await;
    drop(ann);
    bob.recv_until(|m| matches!(m, ServerMessage::PeerLeft { peer_id, .. } if *peer_id == ann_id))
        .await;
    // Once it is gone, the token gives her id back; rejoining shows bob the id he knew.
    let mut back = TestClient::connect_resuming(&url, Some(token.clone())).await;
    assert_eq!(back.peer_id, ann_id);
    let rejoined = back
        .join_with(
            "Desk",
            "ann",
            huddle::signaling::protocol::JoinAccess {
                rejoin_token: Some(token),
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(rejoined, ServerMessage::Joined { ref you, .. } if you.id == ann_id));
    bob.recv_until(|m| matches!(m, ServerMessage::PeerJoined { peer, .. } if peer.id == ann_id))
        .await;
    // A token that is not one of ours gets a fresh id, not an error.
    let stranger = TestClient::connect_resuming(&url, Some("not.a.token".into())).await;
    assert_ne!(stranger.peer_id, ann_id);
    server.shutdown().await;
}

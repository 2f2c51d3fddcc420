//! What a server on the internet needs, against a real server: `wss://` with a test
//! certificate, private rooms, passwords, join and rejoin tokens, and every abuse limit at its
//! threshold with its documented error.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use huddle::signaling::access::{self, Secret, TokenKind};
use huddle::signaling::client::{ClientCommand, ClientConfig, ClientEvent, SignalingClient};
use huddle::signaling::protocol::{
    ClientMessage, ErrorCode, JoinAccess, LeaveReason, PeerId, ServerMessage,
};
use huddle::signaling::server::{self, RateLimit, ServerError, TlsIdentity};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A self-signed certificate for 127.0.0.1 and localhost: (certificate PEM, key PEM).
fn test_certificate() -> (String, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    (generated.cert.pem(), generated.signing_key.serialize_pem())
}

async fn next_event<T>(
    events: &mut mpsc::Receiver<ClientEvent>,
    mut f: impl FnMut(&ClientEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("client event in time")
            .expect("client running");
        if let Some(t) = f(&event) {
            return t;
        }
    }
}

fn tls_client(url: &str, trusted: Option<&Path>) -> (SignalingClient, mpsc::Receiver<ClientEvent>) {
    SignalingClient::spawn(ClientConfig {
        trusted_cert: trusted.map(Path::to_path_buf),
        ..ClientConfig::new(url)
    })
}

/// The client gives up on this server for good, with this reason.
async fn refused_for_good(events: &mut mpsc::Receiver<ClientEvent>) -> String {
    next_event(events, |e| match e {
        ClientEvent::Connected { .. } => panic!("connected to an untrusted server"),
        ClientEvent::Disconnected {
            reason,
            retry_in: None,
        } => Some(reason.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn wss_with_a_trusted_certificate_works_and_any_other_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = test_certificate();
    let (other_cert, _) = test_certificate();
    let cert_path = dir.path().join("server.pem");
    let other_path = dir.path().join("other.pem");
    std::fs::write(&cert_path, &cert).unwrap();
    std::fs::write(&other_path, &other_cert).unwrap();

    let mut config = test_config();
    config.tls = Some(TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
    let server = start_server(config).await;
    let url = server.url();
    assert!(url.starts_with("wss://127.0.0.1:"), "{url}");

    // Trusting the server's own certificate: the whole protocol works over TLS.
    let (client, mut events) = tls_client(&url, Some(&cert_path));
    next_event(&mut events, |e| {
        matches!(e, ClientEvent::Connected { .. }).then_some(())
    })
    .await;
    client
        .send(ClientCommand::Join {
            room: "Over TLS".into(),
            nickname: "ann".into(),
            access: JoinAccess::default(),
        })
        .unwrap();
    let room = next_event(&mut events, |e| match e {
        ClientEvent::Server(ServerMessage::Joined { room, .. }) => Some(room.clone()),
        ClientEvent::Server(ServerMessage::Error { code, .. }) => panic!("join refused: {code:?}"),
        _ => None,
    })
    .await;
    assert_eq!(room, "Over TLS");
    client.send(ClientCommand::Chat("secret".into())).unwrap();
    let text = next_event(&mut events, |e| match e {
        ClientEvent::Server(ServerMessage::Chat { message }) => Some(message.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(text, "secret");

    // A different certificate, or only the system roots: refused, and not retried.
    let (_other, mut other_events) = tls_client(&url, Some(&other_path));
    let reason = refused_for_good(&mut other_events).await;
    assert!(reason.contains("not trusted"), "{reason}");
    let (_system, mut system_events) = tls_client(&url, None);
    let reason = refused_for_good(&mut system_events).await;
    assert!(reason.contains("not trusted"), "{reason}");

    // A file that is not a certificate is a clear error, also final.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let (_junk, mut junk_events) = tls_client(&url, Some(&junk));
    let reason = refused_for_good(&mut junk_events).await;
    assert!(reason.contains("junk.pem"), "{reason}");

    // Plain ws:// to the TLS port gets no WebSocket.
    let plain = url.replacen("wss://", "ws://", 1);
    let attempt = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(plain)).await;
    assert!(matches!(attempt, Ok(Err(_))), "plain ws on a TLS port");
    drop(client);
    server.shutdown().await;
}

#[tokio::test]
async fn plain_ws_is_refused_on_a_public_address() {
    let mut config = test_config();
    // TEST-NET-3: refused before anything binds.
    config.bind = "203.0.113.7:8787".parse().unwrap();
    match server::start(config.clone()).await {
        Err(ServerError::PlainOnPublicAddress(addr)) => {
            assert_eq!(addr, config.bind);
            let text = ServerError::PlainOnPublicAddress(addr).to_string();
            assert!(text.contains("--tls-cert") && text.contains("--insecure"));
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("served plain ws on a public address"),
    }
    // With TLS the same address gets past the check (and fails only to bind it here).
    let (cert, key) = test_certificate();
    config.tls = Some(TlsIdentity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap());
    assert!(matches!(
        server::start(config).await,
        Err(ServerError::Bind { .. })
    ));
}

#[tokio::test]
async fn private_rooms_are_absent_from_the_list_but_joinable_by_name() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut watcher = TestClient::connect(&url).await;
    watcher.send(&ClientMessage::SubscribeRooms).await;
    match watcher.recv().await {
        ServerMessage::RoomList { rooms } => assert!(rooms.is_empty()),
        other => panic!("{other:?}"),
    }

    let mut ann = TestClient::connect(&url).await;
    let joined = ann
        .join_with(
            "Secret plans",
            "ann",
            JoinAccess {
                private: true,
                ..Default::default()
            },
        )
        .await;
    assert!(matches!(
        joined,
        ServerMessage::Joined { private: true, .. }
    ));
    let mut bob = TestClient::connect(&url).await;
    assert!(matches!(
        bob.join("Open", "bob").await,
        ServerMessage::Joined { private: false, .. }
    ));
    // Someone who knows the name gets in (names are case-insensitive); the room stays private.
    let mut cat = TestClient::connect(&url).await;
    match cat.join("secret PLANS", "cat").await {
        ServerMessage::Joined {
            room,
            peers,
            private,
            ..
        } => {
            assert_eq!(room, "Secret plans");
            assert!(private);
            assert_eq!(peers.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    cat.send(&ClientMessage::Leave).await;
    ann.send(&ClientMessage::Leave).await;
    ann.sync().await;
    cat.sync().await;

    // The watcher heard about the public room only, not the private one opening or closing.
    let seen = watcher.sync().await;
    let names: Vec<String> = seen
        .iter()
        .filter_map(|m| match m {
            ServerMessage::RoomUpdated { room } => Some(room.name.clone()),
            ServerMessage::RoomClosed { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["Open"]);
    watcher.send(&ClientMessage::ListRooms).await;
    match watcher
        .recv_until(|m| matches!(m, ServerMessage::RoomList { .. }))
        .await
    {
        ServerMessage::RoomList { rooms } => {
            let names: Vec<_> = rooms.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(names, ["Open"]);
        }
        _ => unreachable!(),
    }
    server.shutdown().await;
}

fn with_password(password: &str) -> JoinAccess {
    JoinAccess {
        password: Some(password.into()),
        ..Default::default()
    }
}

async fn expect_refused(client: &mut TestClient, room: &str, access: JoinAccess, code: ErrorCode) {
    match client.join_with(room, "someone", access).await {
        ServerMessage::Error {
            code: got,
            fatal,
            message,
        } => {
            assert_eq!(got, code, "{message}");
            assert!(!fatal, "a refused join keeps the connection");
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_room_password_is_set_by_its_creator_and_checked() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let mut ann = TestClient::connect(&url).await;
    assert!(matches!(
        ann.join_with("Vault", "ann", with_password("open sesame"))
            .await,
        ServerMessage::Joined { .. }
    ));
    let mut bob = TestClient::connect(&url).await;
    bob.send(&ClientMessage::ListRooms).await;
    match bob.recv().await {
        ServerMessage::RoomList { rooms } => {
            assert_eq!(rooms.len(), 1);
            assert!(rooms[0].locked, "the list shows the room needs a password");
        }
        other => panic!("{other:?}"),
    }
    expect_refused(
        &mut bob,
        "vault",
        JoinAccess::default(),
        ErrorCode::PasswordRequired,
    )
    .await;
    expect_refused(
        &mut bob,
        "vault",
        with_password("open says me"),
        ErrorCode::WrongPassword,
    )
    .await;
    expect_refused(
        &mut bob,
        "vault",
        with_password(&"x".repeat(access::MAX_PASSWORD_BYTES + 1)),
        ErrorCode::WrongPassword,
    )
    .await;
    // Refusals told the room nothing.
    assert!(ann.sync().await.is_empty());
    assert!(matches!(
        bob.join_with("vault", "bob", with_password("open sesame"))
            .await,
        ServerMessage::Joined { .. }
    ));
    server.shutdown().await;
}

const SECRET: &str = "a secret only the operator knows";

fn token_config() -> huddle::signaling::ServerConfig {
    let mut config = test_config();
    config.hub.access.token_secret = Some(Secret::new(SECRET).unwrap());
    config
}

fn with_token(token: &str) -> JoinAccess {
    JoinAccess {
        token: Some(token.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn join_tokens_valid_expired_forged_and_for_another_room() {
    let server = start_server(token_config()).await;
    let mut bob = TestClient::connect(&server.url()).await;
    let secret = Secret::new(SECRET).unwrap();
    let now = now_ms();
    let hour = Duration::from_secs(3600);

    expect_refused(
        &mut bob,
        "Board",
        JoinAccess::default(),
        ErrorCode::TokenRequired,
    )
    .await;
    expect_refused(
        &mut bob,
        "Board",
        with_token("not.a.token"),
        ErrorCode::BadToken,
    )
    .await;
    let forged = access::mint(
        &Secret::new("guessed").unwrap(),
        "board",
        TokenKind::Join,
        hour,
        now,
    )
    .unwrap();
    expect_refused(&mut bob, "Board", with_token(&forged), ErrorCode::BadToken).await;
    // Valid for a minute, ten minutes ago: past the 30 s leeway.
    let expired = access::mint(
        &secret,
        "board",
        TokenKind::Join,
        Duration::from_secs(60),
        now - 600_000,
    )
    .unwrap();
    expect_refused(
        &mut bob,
        "Board",
        with_token(&expired),
        ErrorCode::TokenExpired,
    )
    .await;
    let elsewhere = access::mint(&secret, "standup", TokenKind::Join, hour, now).unwrap();
    expect_refused(
        &mut bob,
        "Board",
        with_token(&elsewhere),
        ErrorCode::TokenWrongRoom,
    )
    .await;
    // A rejoin token is not a join token, even when signed with the same secret.
    let rejoin_kind = access::mint(&secret, "board", TokenKind::Rejoin, hour, now).unwrap();
    expect_refused(
        &mut bob,
        "Board",
        with_token(&rejoin_kind),
        ErrorCode::BadToken,
    )
    .await;

    // What the operator's command mints gets in.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args([
            "token", "--room", "Board", "--ttl", "1h", "--secret", SECRET,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(matches!(
        bob.join_with("board", "bob", with_token(&minted)).await,
        ServerMessage::Joined { .. }
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn a_rejoin_after_reconnecting_needs_neither_password_nor_token() {
    let server = start_server(token_config()).await;
    let url = server.url();
    let secret = Secret::new(SECRET).unwrap();
    let token = access::mint(
        &secret,
        "board",
        TokenKind::Join,
        Duration::from_secs(600),
        now_ms(),
    )
    .unwrap();
    let mut ann = TestClient::connect(&url).await;
    let joined = ann
        .join_with(
            "Board",
            "ann",
            JoinAccess {
                token: Some(token.clone()),
                password: Some("pw".into()),
                private: true,
                ..Default::default()
            },
        )
        .await;
    let ServerMessage::Joined {
        rejoin_token: Some(rejoin),
        ..
    } = joined
    else {
        panic!("no rejoin token in {joined:?}")
    };
    // The connection drops; ann was alone, so the room closes.
    drop(ann);
    let mut ann = TestClient::connect(&url).await;
    let rejoin_only = JoinAccess {
        rejoin_token: Some(rejoin.clone()),
        ..Default::default()
    };
    // The rejoin token is for this room only: elsewhere the ordinary checks apply.
    expect_refused(
        &mut ann,
        "Standup",
        rejoin_only.clone(),
        ErrorCode::TokenRequired,
    )
    .await;
    match ann.join_with("Board", "ann", rejoin_only).await {
        ServerMessage::Joined {
            private,
            rejoin_token,
            ..
        } => {
            assert!(private, "the recreated room is private again");
            assert!(rejoin_token.is_some());
        }
        other => panic!("rejoin refused: {other:?}"),
    }
    // The recreated room kept its password.
    let mut bob = TestClient::connect(&url).await;
    expect_refused(
        &mut bob,
        "Board",
        with_token(&token),
        ErrorCode::PasswordRequired,
    )
    .await;
    let access = JoinAccess {
        token: Some(token),
        password: Some("pw".into()),
        ..Default::default()
    };
    assert!(matches!(
        bob.join_with("Board", "bob", access).await,
        ServerMessage::Joined { .. }
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_rejoins_a_password_room_after_the_server_restarts() {
    // Same address and rejoin secret, as a restarted process with its configuration.
    let mut config = test_config();
    config.hub.access.rejoin_secret = Secret::new("rejoin secret for the test").unwrap();
    let server = start_server(config.clone()).await;
    config.bind = server.local_addr();
    let (client, mut events) = SignalingClient::spawn(ClientConfig {
        backoff_initial: Duration::from_millis(50),
        ..ClientConfig::new(server.url())
    });
    let first_id = next_event(&mut events, |e| match e {
        ClientEvent::Connected { peer_id, .. } => Some(peer_id.clone()),
        _ => None,
    })
    .await;
    client
        .send(ClientCommand::Join {
            room: "Vault".into(),
            nickname: "ann".into(),
            access: with_password("pw"),
        })
        .unwrap();
    next_event(&mut events, |e| {
        matches!(e, ClientEvent::Server(ServerMessage::Joined { .. })).then_some(())
    })
    .await;
    server.shutdown().await;
    let server = start_server(config).await;
    // The client resumes with its rejoin token and is given its old peer id back.
    let resumed_id = next_event(&mut events, |e| match e {
        ClientEvent::Connected { peer_id, .. } => Some(peer_id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(resumed_id, first_id);
    let room = next_event(&mut events, |e| match e {
        ClientEvent::Server(ServerMessage::Joined { room, .. }) => Some(room.clone()),
        ClientEvent::Server(ServerMessage::Error { code, .. }) if code.refuses_join() => {
            panic!("rejoin refused: {code:?}")
        }
        _ => None,
    })
    .await;
    assert_eq!(room, "Vault");
    // The room came back with its password.
    let mut bob = TestClient::connect(&server.url()).await;
    expect_refused(
        &mut bob,
        "vault",
        JoinAccess::default(),
        ErrorCode::PasswordRequired,
    )
    .await;
    drop(client);
    server.shutdown().await;
}

/// Opens a socket and reads what the server says first: a welcome after hello, or a refusal.
async fn hello_answer(url: &str) -> ServerMessage {
    let mut ws = raw_connect(url).await;
    let hello = ClientMessage::Hello {
        version: huddle::signaling::protocol::PROTOCOL_VERSION,
        client: None,
        resume: None,
    };
    // A refused socket may already be closing; the answer is read either way.
    let _ = ws
        .send(Message::Text(
            huddle::signaling::protocol::encode(&hello).into(),
        ))
        .await;
    first_message(&mut ws).await
}

fn assert_fatal(msg: &ServerMessage, code: ErrorCode) {
    match msg {
        ServerMessage::Error {
            code: got, fatal, ..
        } => {
            assert_eq!(*got, code);
            assert!(*fatal);
        }
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn connections_per_ip_and_in_total_are_limited() {
    let mut config = test_config();
    config.max_connections_per_ip = 3;
    let server = start_server(config).await;
    let url = server.url();
    let mut first = TestClient::connect(&url).await;
    let _second = TestClient::connect(&url).await;
    let _third = TestClient::connect(&url).await;
    assert_fatal(&hello_answer(&url).await, ErrorCode::TooManyConnections);
    // A connection that closes frees its place.
    first.ws.close(None).await.unwrap();
    while first.ws.next().await.is_some() {}
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match hello_answer(&url).await {
            ServerMessage::Welcome { .. } => break,
            refused => {
                assert_fatal(&refused, ErrorCode::TooManyConnections);
                assert!(tokio::time::Instant::now() < deadline, "place never freed");
            }
        }
    }
    server.shutdown().await;

    let mut config = test_config();
    config.max_connections = 2;
    let server = start_server(config).await;
    let url = server.url();
    let _a = TestClient::connect(&url).await;
    let _b = TestClient::connect(&url).await;
    assert_fatal(&hello_answer(&url).await, ErrorCode::ServerFull);
    server.shutdown().await;
}

#[tokio::test]
async fn rooms_per_server_and_joins_per_minute_are_limited() {
    let mut config = test_config();
    config.hub.max_rooms = 2;
    config.hub.access.joins_per_minute = 3;
    let server = start_server(config).await;
    let url = server.url();
    let mut a = TestClient::connect(&url).await;
    let mut b = TestClient::connect(&url).await;
    let mut c = TestClient::connect(&url).await;
    assert!(matches!(
        a.join("one", "a").await,
        ServerMessage::Joined { .. }
    ));
    assert!(matches!(
        b.join("two", "b").await,
        ServerMessage::Joined { .. }
    ));
    expect_refused(
        &mut c,
        "three",
        JoinAccess::default(),
        ErrorCode::TooManyRooms,
    )
    .await;
    // An existing room is still open to join.
    assert!(matches!(
        c.join("one", "c").await,
        ServerMessage::Joined { .. }
    ));

    // Joins per minute count every attempt, refused ones too.
    let mut d = TestClient::connect(&url).await;
    for _ in 0..2 {
        expect_refused(
            &mut d,
            "bad/name",
            JoinAccess::default(),
            ErrorCode::BadRoomName,
        )
        .await;
    }
    assert!(matches!(
        d.join("two", "d").await,
        ServerMessage::Joined { .. }
    ));
    d.send(&ClientMessage::Leave).await;
    expect_refused(
        &mut d,
        "two",
        JoinAccess::default(),
        ErrorCode::TooManyJoins,
    )
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn chat_and_message_rates_are_limited() {
    let mut config = test_config();
    // No refill during the test: the burst is the threshold.
    config.chat_rate_limit = RateLimit {
        per_second: 0.001,
        burst: 3.0,
        max_strikes: 50,
    };
    config.rate_limit = RateLimit {
        per_second: 0.001,
        burst: 12.0,
        max_strikes: 3,
    };
    let server = start_server(config).await;
    let url = server.url();
    let mut ann = TestClient::connect(&url).await;
    let mut bob = TestClient::connect(&url).await;
    ann.join("r", "ann").await; // message 1
    bob.join("r", "bob").await;
    for i in 0..4 {
        // messages 2..=5
        ann.send(&ClientMessage::Chat {
            text: format!("line {i}"),
        })
        .await;
    }
    let (message, fatal) = ann.expect_error(ErrorCode::RateLimited).await;
    assert!(!fatal && message.contains("chat"), "{message}");
    // Bob got the three within the chat burst, not the fourth.
    let chats: Vec<String> = bob
        .sync()
        .await
        .into_iter()
        .filter_map(|m| match m {
            ServerMessage::Chat { message } => Some(message.text),
            _ => None,
        })
        .collect();
    assert_eq!(chats, ["line 0", "line 1", "line 2"]);

    // Message budget: 12 in all; ann used 5, and `sync` pings count too (message 6).
    ann.sync().await;
    for _ in 0..6 {
        ann.send(&ClientMessage::Ping { nonce: None }).await;
    }
    for _ in 0..6 {
        assert!(matches!(ann.recv().await, ServerMessage::Pong { .. }));
    }
    // The 13th is refused; the third refusal in a row ends the connection.
    ann.send(&ClientMessage::Ping { nonce: None }).await;
    let (_, fatal) = ann.expect_error(ErrorCode::RateLimited).await;
    assert!(!fatal);
    for _ in 0..2 {
        ann.send(&ClientMessage::Ping { nonce: None }).await;
    }
    let rest = ann.expect_closed().await;
    assert!(
        rest.iter().any(|m| matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                fatal: true,
                ..
            }
        )),
        "{rest:?}"
    );
    // Bob saw ann dropped.
    let left = bob
        .recv_until(|m| matches!(m, ServerMessage::PeerLeft { .. }))
        .await;
    assert!(matches!(
        left,
        ServerMessage::PeerLeft {
            reason: LeaveReason::Dropped,
            ..
        }
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn a_message_of_exactly_the_limit_passes_and_one_byte_more_is_too_large() {
    let server = start_server(test_config()).await;
    let mut c = TestClient::connect(&server.url()).await;
    let limit = huddle::signaling::protocol::MAX_FRAME_BYTES;
    let frame = |len: usize| {
        let head = r#"{"type":"ping","pad":""#;
        let tail = r#""}"#;
        format!("{head}{}{tail}", "x".repeat(len - head.len() - tail.len()))
    };
    c.send_raw(&frame(limit)).await;
    assert!(matches!(c.recv().await, ServerMessage::Pong { .. }));
    c.send_raw(&frame(limit + 1)).await;
    let rest = c.expect_closed().await;
    assert!(
        matches!(
            &rest[..],
            [ServerMessage::Error {
                code: ErrorCode::TooLarge,
                fatal: true,
                ..
            }]
        ),
        "{rest:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn browser_origins_are_checked_against_the_allow_list() {
    let mut config = test_config();
    config.allowed_origins = vec!["https://chat.example.org".into()];
    let server = start_server(config).await;
    let url = server.url();
    let with_origin = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        request
    };
    match tokio_tungstenite::connect_async(with_origin("https://evil.example")).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("--allowed-origin"), "{body}");
        }
        Err(other) => panic!("wrong refusal: {other}"),
        Ok(_) => panic!("a page on another site opened a WebSocket"),
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(with_origin("https://chat.example.org"))
        .await
        .expect("the allowed origin connects");
    ws.send(Message::Text(r#"{"type":"hello","version":1}"#.into()))
        .await
        .unwrap();
    assert!(matches!(
        first_message(&mut ws).await,
        ServerMessage::Welcome { .. }
    ));
    // Native clients send no Origin.
    TestClient::connect(&url).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_readers_are_dropped_and_the_server_memory_stays_bounded() {
    const OUTBOX: usize = 32;
    const SLEEPERS: usize = 5;
    let outbox = OUTBOX.to_string();
    let server = ServeProcess::start(&[
        "--outbox-len",
        &outbox,
        "--rate",
        "1000000",
        "--burst",
        "1000000",
    ])
    .await;
    let mut talker = TestClient::connect(&server.url).await;
    talker.join("flood", "talker").await;
    let mut sleepers = Vec::new();
    for i in 0..SLEEPERS {
        let mut s = TestClient::connect(&server.url).await;
        s.join("flood", &format!("sleeper {i}")).await;
        sleepers.push(s);
    }
    talker.sync().await;
    let baseline_kib = server.memory_kib("VmRSS");

    // From here on the sleepers never read. Relays of ~60 KB go to each in turn.
    let payload = serde_json::Value::String("z".repeat(60_000));
    let mut awake: Vec<PeerId> = sleepers.iter().map(|s| s.peer_id.clone()).collect();
    let mut sent_bytes: u64 = 0;
    let mut turn = 0;
    while !awake.is_empty() {
        assert!(sent_bytes < 4_000_000_000, "sleepers never dropped");
        let to = awake[turn % awake.len()].clone();
        turn += 1;
        talker
            .send(&ClientMessage::Relay {
                to,
                from: None,
                payload: payload.clone(),
            })
            .await;
        sent_bytes += 60_000;
        // Read what came back without waiting: drops, and refusals of relays that raced them.
        while let Ok(Some(frame)) =
            tokio::time::timeout(Duration::from_millis(0), talker.ws.next()).await
        {
            let Ok(Message::Text(t)) = frame else {
                continue;
            };
            match huddle::signaling::protocol::decode_server(&t).unwrap() {
                ServerMessage::PeerLeft {
                    peer_id, reason, ..
                } => {
                    assert_eq!(reason, LeaveReason::Dropped);
                    awake.retain(|p| *p != peer_id);
                }
                ServerMessage::Error {
                    code: ErrorCode::PeerNotFound,
                    ..
                } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let peak_kib = server.memory_kib("VmHWM");
    let growth_mib = peak_kib.saturating_sub(baseline_kib) as f64 / 1024.0;
    // Per stalled client: its outbox of full-size messages plus tungstenite's write buffer cap
    // (1 MiB); the rest is allocator slack.
    let frame_mib = huddle::signaling::protocol::MAX_FRAME_BYTES as f64 / (1024.0 * 1024.0);
    let bound_mib = SLEEPERS as f64 * (OUTBOX as f64 * frame_mib + 1.0) + 8.0;
    let sent_mib = sent_bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "flooded {sent_mib:.0} MiB at {SLEEPERS} stalled readers; server RSS {:.1} MiB, peak growth {growth_mib:.1} MiB (bound {bound_mib:.0} MiB)",
        baseline_kib as f64 / 1024.0
    );
    assert!(
        growth_mib < bound_mib,
        "server grew {growth_mib:.1} MiB while {sent_mib:.0} MiB went to stalled readers"
    );
    drop(sleepers);
    server.kill().await;
}

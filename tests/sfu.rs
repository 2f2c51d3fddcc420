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

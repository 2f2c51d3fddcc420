//! Webhooks against local HTTP receivers: every event of a room's life arrives once, in order,
//! signed; a receiver that is down gets them all once it is back; a slow one slows nobody.

mod common;

use common::receiver::{
    Behaviour, Delivery, EventLine, Receiver, a_rooms_life, a_rooms_life_events,
};
use common::*;
use huddle::signaling::webhook::WebhookConfig;
use std::time::{Duration, Instant};

const SECRET: &str = "webhook test secret";
const OK: Behaviour = Behaviour {
    status: 200,
    delay: Duration::ZERO,
};

/// Each delivery in short, after checking its signature.
fn events(deliveries: &[Delivery]) -> Vec<EventLine> {
    deliveries.iter().map(|d| d.signed_event(SECRET)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_of_a_rooms_life_arrives_once_in_order_and_signed_even_after_an_outage() {
    let good = Receiver::start("127.0.0.1:0", OK).await;
    // The second receiver is down at first: nothing listens on its port.
    let down_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down_url = format!("http://127.0.0.1:{down_port}/hooks");
    let mut config = test_config();
    let mut hooks = WebhookConfig::new(vec![good.url.clone(), down_url], SECRET.into());
    hooks.first_backoff = Duration::from_millis(200);
    hooks.max_backoff = Duration::from_millis(400);
    hooks.max_attempts = 50;
    config.webhooks = Some(hooks);
    let server = start_server(config).await;

    a_rooms_life(&server.url(), &server.url()).await;
    let got = good.wait_for(6, WAIT).await;
    assert_eq!(events(&got), a_rooms_life_events());
    // Ids are unique, times do not go back.
    let ids: std::collections::HashSet<_> = got.iter().map(|d| d.json()["id"].clone()).collect();
    assert_eq!(ids.len(), 6);
    let times: Vec<u64> = got
        .iter()
        .map(|d| d.json()["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let body = got[1].json();
    assert_eq!(body["room"], "Standup");
    assert!(
        body["participant"]["id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );

    // The receiver that was down comes up: retries bring it the whole life, in order, once.
    let late = Receiver::start(&format!("127.0.0.1:{down_port}"), OK).await;
    let got = late.wait_for(6, WAIT).await;
    assert_eq!(events(&got), a_rooms_life_events());
    // Nothing more arrives at either (no duplicates): a ping-synchronised pause is not a
    // proof, so check again after the next room's first event instead.
    let mut cat = TestClient::connect(&server.url()).await;
    cat.join("Later", "cat").await;
    let got = good.wait_for(7, WAIT).await;
    assert_eq!(got.len(), 7, "one more event, no repeats");
    assert_eq!(got[6].json()["event"], "room_started");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_slows_neither_the_server_nor_the_other_receiver() {
    let slow = Receiver::start(
        "127.0.0.1:0",
        Behaviour {
            status: 200,
            delay: Duration::from_secs(3),
        },
    )
    .await;
    let fast = Receiver::start("127.0.0.1:0", OK).await;
    let mut config = test_config();
    config.webhooks = Some(WebhookConfig::new(
        vec![slow.url.clone(), fast.url.clone()],
        SECRET.into(),
    ));
    let server = start_server(config).await;
    let started = Instant::now();
    a_rooms_life(&server.url(), &server.url()).await;
    // The server answered every join and leave while the slow receiver held the first event.
    let mut probe = TestClient::connect(&server.url()).await;
    probe.sync().await;
    let served = started.elapsed();
    let got = fast.wait_for(6, WAIT).await;
    let fast_done = started.elapsed();
    assert_eq!(events(&got), a_rooms_life_events());
    assert!(
        slow.deliveries().len() < 6,
        "the slow receiver cannot have taken six 3-second requests yet"
    );
    eprintln!(
        "room life served in {served:?}, the fast receiver had all six after {fast_done:?}, \
         the slow one {} so far",
        slow.deliveries().len()
    );
    // And the slow one gets them all, in order, eventually.
    let got = slow.wait_for(6, Duration::from_secs(30)).await;
    assert_eq!(events(&got), a_rooms_life_events());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_refuses_is_not_retried_and_bad_settings_are_refused() {
    let refusing = Receiver::start(
        "127.0.0.1:0",
        Behaviour {
            status: 400,
            delay: Duration::ZERO,
        },
    )
    .await;
    let mut config = test_config();
    config.webhooks = Some(WebhookConfig::new(vec!["ftp://x/".into()], SECRET.into()));
    assert!(matches!(
        huddle::signaling::server::start(config).await,
        Err(huddle::signaling::server::ServerError::Webhook(_))
    ));
    let mut config = test_config();
    config.webhooks = Some(WebhookConfig::new(
        vec![refusing.url.clone()],
        SECRET.into(),
    ));
    let server = start_server(config).await;
    a_rooms_life(&server.url(), &server.url()).await;
    // Six requests, each refused once and not tried again; then the receiver accepts, and
    // only later events come.
    refusing.wait_for_requests(6, WAIT).await;
    refusing.set(OK);
    let mut cat = TestClient::connect(&server.url()).await;
    cat.join("Later", "cat").await;
    let got = refusing.wait_for(1, WAIT).await;
    assert_eq!(got[0].json()["event"], "room_started");
    assert_eq!(got[0].json()["room"], "Later");
    assert_eq!(refusing.requests(), 7, "each refused event was tried once");
    server.shutdown().await;
}

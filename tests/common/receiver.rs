//! A webhook receiver for tests: a plain HTTP/1.1 server on 127.0.0.1 that records each POST
//! (headers and body), answers with a chosen status after a chosen delay, and wakes waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

#[derive(Clone, Debug)]
pub struct Delivery {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// A webhook event in short: (event, room, participant's nickname, reason), "" where absent.
pub type EventLine = (String, String, String, String);

impl Delivery {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The event in short, after checking its signature with `secret` (panics if it is not
    /// valid now).
    pub fn signed_event(&self, secret: &str) -> EventLine {
        let header = self
            .headers
            .get(&huddle::signaling::webhook::SIGNATURE_HEADER.to_ascii_lowercase())
            .expect("signed");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            huddle::signaling::webhook::verify(secret, header, &self.body, now, 300),
            "a valid signature on {}",
            String::from_utf8_lossy(&self.body)
        );
        let j = self.json();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
        (
            text(&j["event"]),
            text(&j["room"]),
            text(&j["participant"]["nickname"]),
            text(&j["reason"]),
        )
    }
}

/// Event lines from string literals, for expectations.
pub fn event_lines(lines: &[(&str, &str, &str, &str)]) -> Vec<EventLine> {
    lines
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect()
}

#[derive(Clone, Copy)]
pub struct Behaviour {
    pub status: u16,
    pub delay: Duration,
}

pub struct Receiver {
    pub url: String,
    deliveries: Arc<Mutex<Vec<(u16, Delivery)>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    changed: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Listens on `addr` (`127.0.0.1:0` for any port).
    pub async fn start(addr: &str, behaviour: Behaviour) -> Receiver {
        let listener = TcpListener::bind(addr).await.expect("receiver binds");
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let changed = Arc::new(Notify::new());
        let task = tokio::spawn({
            let (deliveries, behaviour, changed) =
                (deliveries.clone(), behaviour.clone(), changed.clone());
            async move {
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.spawn(serve(
                        stream,
                        deliveries.clone(),
                        behaviour.clone(),
                        changed.clone(),
                    ));
                }
            }
        });
        Receiver {
            url,
            deliveries,
            behaviour,
            changed,
            task,
        }
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    /// Requests answered with 2xx.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .unwrap()
            .iter()
            .filter(|(status, _)| (200..300).contains(status))
            .map(|(_, d)| d.clone())
            .collect()
    }

    /// Requests answered so far, whatever the status.
    pub fn requests(&self) -> usize {
        self.deliveries.lock().unwrap().len()
    }

    /// Waits until `n` requests have been answered, whatever the status.
    pub async fn wait_for_requests(&self, n: usize, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            let got = self.deliveries.lock().unwrap().len();
            if got >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("{got} of {n} webhook requests within {within:?}");
            }
        }
    }

    /// Waits until at least `n` requests have arrived (and been answered or not).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.changed.notified();
            let got = self.deliveries();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.deliveries();
                assert!(
                    got.len() >= n,
                    "{} of {n} webhook requests within {within:?}: {:#?}",
                    got.len(),
                    got.iter().map(Delivery::json).collect::<Vec<_>>()
                );
                return got;
            }
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    deliveries: Arc<Mutex<Vec<(u16, Delivery)>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    changed: Arc<Notify>,
) {
    // One request per connection is enough for reqwest (it reconnects after `close`).
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    let Behaviour { status, delay } = *behaviour.lock().unwrap();
    tokio::time::sleep(delay).await;
    // Recorded with the status it is answered with, before the answer: the sender posts the
    // next event only once answered, so recording after answering let a slow task record
    // event N after event N+1 (seen once in a full run under load).
    deliveries
        .lock()
        .unwrap()
        .push((status, Delivery { headers, body }));
    changed.notify_waiters();
    let response = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The events of `a_rooms_life`, in order.
pub fn a_rooms_life_events() -> Vec<EventLine> {
    event_lines(&[
        ("room_started", "Standup", "", ""),
        ("participant_joined", "Standup", "ann", ""),
        ("participant_joined", "Standup", "bob", ""),
        ("participant_left", "Standup", "ann", "left"),
        ("participant_left", "Standup", "bob", "disconnected"),
        ("room_finished", "Standup", "", ""),
    ])
}

/// A room's whole life as webhooks see it: Ann (on `ann_server`) and Bob (on `bob_server`,
/// the same one or another process) meet in "Standup"; Ann leaves, Bob's connection drops.
pub async fn a_rooms_life(ann_server: &str, bob_server: &str) {
    use huddle::signaling::protocol::{ClientMessage, ServerMessage};
    let mut ann = super::TestClient::connect(ann_server).await;
    let mut bob = super::TestClient::connect(bob_server).await;
    ann.join("Standup", "ann").await;
    bob.join("Standup", "bob").await;
    ann.send(&ClientMessage::Leave).await;
    ann.recv_until(|m| matches!(m, ServerMessage::Left { .. }))
        .await;
    drop(bob);
}

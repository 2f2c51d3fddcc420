//! Webhooks for operators: each room event (room started, participant joined and left, room
//! finished, SFU switch) is POSTed as JSON to every configured URL, signed with HMAC-SHA256 over
//! the timestamp and the body, in order per URL, retried with backoff. Each URL has its own
//! bounded queue and delivery task, so a receiver that is down or slow costs memory up to that
//! bound and never slows the hub or the other receivers. Depends on `signaling::protocol` only.

use super::protocol::{LeaveReason, PeerId};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// The header carrying `t=UNIX_SECONDS,v1=HEX(HMAC-SHA256(secret, "UNIX_SECONDS.BODY"))`.
pub const SIGNATURE_HEADER: &str = "Huddle-Signature";
/// The header carrying the event's id, for receivers that deduplicate.
pub const EVENT_ID_HEADER: &str = "Huddle-Event-Id";

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook URL {0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    #[error("webhooks need a signing secret (--webhook-secret or HUDDLE_WEBHOOK_SECRET)")]
    NoSecret,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub urls: Vec<String>,
    /// Key for the HMAC-SHA256 signature.
    pub secret: String,
    /// Events held per URL while its receiver is down or slow; newer ones are dropped (and
    /// counted) beyond it.
    pub queue_len: usize,
    /// Tries per event and URL before it is given up.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles up to `max_backoff`.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// One request's limit, connection included.
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(urls: Vec<String>, secret: String) -> Self {
        WebhookConfig {
            urls,
            secret,
            queue_len: 10_000,
            max_attempts: 8,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        }
    }

    pub fn validate(&self) -> Result<(), WebhookError> {
        if self.secret.is_empty() {
            return Err(WebhookError::NoSecret);
        }
        for url in &self.urls {
            let ok = reqwest::Url::parse(url)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if !ok {
                return Err(WebhookError::BadUrl(url.clone()));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RoomStarted,
    ParticipantJoined,
    ParticipantLeft,
    RoomFinished,
    /// The room moved between a peer-to-peer mesh and the SFU (`sfu` says which).
    SfuSwitch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub id: PeerId,
    pub nickname: String,
}

/// What happened, as the room state machine reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    pub event: EventKind,
    /// The room's name as its creator spelled it.
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant: Option<Participant>,
    /// Why a participant left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<LeaveReason>,
    /// After an SFU switch: whether the room now runs on the SFU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sfu: Option<bool>,
}

impl RoomEvent {
    pub fn room(event: EventKind, room: &str) -> Self {
        RoomEvent {
            event,
            room: room.to_owned(),
            participant: None,
            reason: None,
            sfu: None,
        }
    }

    pub fn participant(event: EventKind, room: &str, id: &PeerId, nickname: &str) -> Self {
        RoomEvent {
            participant: Some(Participant {
                id: id.clone(),
                nickname: nickname.to_owned(),
            }),
            ..RoomEvent::room(event, room)
        }
    }
}

/// One delivery: the body every URL receives for this event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// Unique per event (per server process, or per cluster); receivers may deduplicate on it.
    pub id: String,
    /// Server time of the event, milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub event: RoomEvent,
}

type HmacSha256 = Hmac<Sha256>;

/// The signature header's value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// The HMAC over what a signature covers: the timestamp, a `.`, and the body.
fn mac(secret: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// What a receiver does: checks the header against the body, in constant time, and that the
/// timestamp is within `tolerance` of `now` (Unix seconds), so an old request cannot be
/// replayed.
pub fn verify(secret: &str, header: &str, body: &[u8], now: u64, tolerance: u64) -> bool {
    let mut timestamp = None;
    let mut signature = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", v)) => signature = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(sig)) = (timestamp, signature) else {
        return false;
    };
    if t.abs_diff(now) > tolerance {
        return false;
    }
    mac(secret, t, body).verify_slice(&sig).is_ok()
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Counters an operator can read (and tests check).
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub delivered: AtomicU64,
    /// Given up after every attempt failed, or refused by the receiver (4xx).
    pub failed: AtomicU64,
    /// Not queued: the URL's queue was full.
    pub dropped: AtomicU64,
}

/// The sending side, held by the hub's driver. Cheap to clone; `send` never waits.
#[derive(Clone)]
pub struct Webhooks {
    queues: Vec<mpsc::Sender<Arc<WebhookBody>>>,
    stats: Arc<WebhookStats>,
}

impl Webhooks {
    /// Starts one delivery task per URL in `tasks`; they stop at `cancel` (and when every
    /// `Webhooks` clone is gone).
    pub fn spawn(
        config: WebhookConfig,
        tasks: &mut JoinSet<()>,
        cancel: CancellationToken,
    ) -> Result<Webhooks, WebhookError> {
        config.validate()?;
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("huddle/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        let stats = Arc::new(WebhookStats::default());
        let config = Arc::new(config);
        let mut queues = Vec::new();
        for url in &config.urls {
            let (tx, rx) = mpsc::channel(config.queue_len.max(1));
            queues.push(tx);
            tasks.spawn(deliver_all(
                url.clone(),
                rx,
                client.clone(),
                config.clone(),
                stats.clone(),
                cancel.clone(),
            ));
        }
        Ok(Webhooks { queues, stats })
    }

    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Queues `body` for every URL; a full queue drops it for that URL (counted and logged).
    pub fn send(&self, body: WebhookBody) {
        let body = Arc::new(body);
        for queue in &self.queues {
            if queue.try_send(body.clone()).is_err() {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    warn!(
                        dropped,
                        "a webhook receiver is down or slow and its queue is full: events dropped"
                    );
                }
            }
        }
    }
}

/// One URL's delivery loop: events in order, each retried until it is delivered, refused, or
/// out of attempts.
async fn deliver_all(
    url: String,
    mut rx: mpsc::Receiver<Arc<WebhookBody>>,
    client: reqwest::Client,
    config: Arc<WebhookConfig>,
    stats: Arc<WebhookStats>,
    cancel: CancellationToken,
) {
    loop {
        let body = tokio::select! {
            _ = cancel.cancelled() => return,
            body = rx.recv() => match body {
                Some(b) => b,
                None => return,
            },
        };
        let json = serde_json::to_vec(&*body).unwrap_or_default();
        let mut backoff = config.first_backoff;
        let mut attempt = 1;
        let outcome = loop {
            match post(&client, &url, &config.secret, &body.id, &json).await {
                Ok(()) => break Ok(()),
                Err(Failure::Refused(status)) => break Err(format!("refused with {status}")),
                Err(Failure::Retry(why)) if attempt >= config.max_attempts => {
                    break Err(format!("{why}, {attempt} attempts"));
                }
                Err(Failure::Retry(why)) => {
                    debug!(%url, id = %body.id, attempt, %why, "webhook not delivered; retrying");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(config.max_backoff);
            attempt += 1;
        };
        match outcome {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(%url, id = %body.id, event = ?body.event.event, %why, "webhook given up");
            }
        }
    }
}

enum Failure {
    /// The receiver answered 4xx (other than 408 and 429): trying again would not help.
    Refused(reqwest::StatusCode),
    Retry(String),
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    id: &str,
    json: &[u8],
) -> Result<(), Failure> {
    let timestamp = unix_now().as_secs();
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sign(secret, timestamp, json))
        .header(EVENT_ID_HEADER, id)
        .body(json.to_vec())
        .send()
        .await
        .map_err(|e| Failure::Retry(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry = status.is_server_error()
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
    if retry {
        Err(Failure::Retry(format!("answered {status}")))
    } else {
        Err(Failure::Refused(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_detect_tampering_and_replay() {
        let body = br#"{"id":"n1-1","event":"room_started","room":"r"}"#;
        let header = sign("s3cret", 1_800_000_000, body);
        assert!(header.starts_with("t=1800000000,v1="));
        assert!(verify("s3cret", &header, body, 1_800_000_010, 300));
        assert!(!verify("other", &header, body, 1_800_000_010, 300));
        assert!(!verify("s3cret", &header, b"{}", 1_800_000_010, 300));
        assert!(
            !verify("s3cret", &header, body, 1_800_001_000, 300),
            "too old"
        );
        assert!(!verify("s3cret", "v1=00", body, 1_800_000_000, 300));
        assert!(!verify("s3cret", "garbage", body, 1_800_000_000, 300));
    }

    #[test]
    fn bodies_are_flat_json() {
        let body = WebhookBody {
            id: "local-7".into(),
            time_ms: 1_795_000_000_000,
            event: RoomEvent {
                reason: Some(LeaveReason::TimedOut),
                ..RoomEvent::participant(
                    EventKind::ParticipantLeft,
                    "Design review",
                    &PeerId("a8d2e6f0c4b7".into()),
                    "Ann",
                )
            },
        };
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"id":"local-7","time_ms":1795000000000,"event":"participant_left","room":"Design review","participant":{"id":"a8d2e6f0c4b7","nickname":"Ann"},"reason":"timed_out"}"#
        );
        assert_eq!(serde_json::from_str::<WebhookBody>(&json).unwrap(), body);
    }

    #[test]
    fn urls_and_secret_are_checked() {
        let ok = WebhookConfig::new(vec!["https://ops.example.org/hook".into()], "s".into());
        assert!(ok.validate().is_ok());
        let no_secret = WebhookConfig::new(vec!["http://127.0.0.1:9/".into()], String::new());
        assert!(matches!(no_secret.validate(), Err(WebhookError::NoSecret)));
        for bad in ["ftp://x/", "not a url", "http://"] {
            let c = WebhookConfig::new(vec![bad.into()], "s".into());
            assert!(
                matches!(c.validate(), Err(WebhookError::BadUrl(_))),
                "{bad}"
            );
        }
    }
}

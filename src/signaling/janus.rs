//! A client for the Janus gateway's WebSocket API (`janus-protocol`), for the signaling server
//! to orchestrate Janus's VideoRoom plugin as its SFU: one Janus session per server process,
//! kept alive; each request matched to its answer by transaction. The server creates and
//! destroys rooms with the admin key and the room secrets it alone holds; clients never talk to
//! Janus. Depends on nothing else in the crate.
//!
//! Shape: `Janus::connect` spawns the actor that owns the WebSocket; `Janus` (cheap to clone)
//! sends it requests over a bounded channel and awaits the answer on a oneshot.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub const VIDEOROOM: &str = "janus.plugin.videoroom";
/// Janus drops a session that is silent for 60 s (its default `session_timeout`).
const KEEPALIVE: Duration = Duration::from_secs(25);
/// A request Janus has not answered in this long is failed (the connection may be gone).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum JanusError {
    #[error("cannot reach Janus at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the connection to Janus is gone")]
    Gone,
    #[error("Janus did not answer within {0:?}")]
    Timeout(Duration),
    /// Janus itself refused (`janus: error`).
    #[error("Janus refused: {code} {reason}")]
    Janus { code: i64, reason: String },
    /// The plugin refused (`error_code` in its data).
    #[error("the VideoRoom plugin refused: {code} {reason}")]
    Plugin { code: i64, reason: String },
    #[error("unexpected answer from Janus: {0}")]
    Unexpected(String),
    /// A local Janus process (tests, benchmarks) did not start.
    #[error("cannot start janus: {0}")]
    Launch(String),
}

impl JanusError {
    /// Worth trying again later (on another connection): the link, not the request, failed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            JanusError::Connect { .. } | JanusError::Gone | JanusError::Timeout(_)
        )
    }
}

#[derive(Clone, Debug)]
pub struct JanusConfig {
    /// `ws://HOST:8188` (Janus's WebSocket transport).
    pub url: String,
    /// The VideoRoom plugin's `admin_key`: only holders create rooms.
    pub admin_key: Option<String>,
    /// Janus's own `api_secret`, if it requires one for every request.
    pub api_secret: Option<String>,
}

/// What the actor is asked to do.
enum Input {
    /// Send a request and hand its answer to `reply`.
    Call {
        request: Value,
        reply: oneshot::Sender<Result<Value, JanusError>>,
        /// Janus's `ack` is the whole answer (a trickled candidate).
        ack_answers: bool,
    },
    /// The session exists now: keep it alive, and destroy it at the end.
    Session(u64),
}

/// A connected Janus session. Dropping every clone ends the session's actor.
#[derive(Clone)]
pub struct Janus {
    tx: mpsc::Sender<Input>,
    session: u64,
    config: std::sync::Arc<JanusConfig>,
}

impl Janus {
    /// Connects, creates a session and starts the actor that keeps it alive (in `tasks`,
    /// stopped by `cancel`).
    pub async fn connect(
        config: JanusConfig,
        tasks: &mut JoinSet<()>,
        cancel: CancellationToken,
    ) -> Result<Janus, JanusError> {
        Self::connect_inner(config, tasks, cancel, None).await
    }

    /// As `connect`, and hands over what Janus sends unasked (a subscription's new offer, a
    /// handle's media coming up or hanging up), each with its `sender` handle.
    pub async fn connect_with_events(
        config: JanusConfig,
        tasks: &mut JoinSet<()>,
        cancel: CancellationToken,
    ) -> Result<(Janus, mpsc::Receiver<Value>), JanusError> {
        let (tx, rx) = mpsc::channel(1024);
        let janus = Self::connect_inner(config, tasks, cancel, Some(tx)).await?;
        Ok((janus, rx))
    }

    async fn connect_inner(
        config: JanusConfig,
        tasks: &mut JoinSet<()>,
        cancel: CancellationToken,
        events: Option<mpsc::Sender<Value>>,
    ) -> Result<Janus, JanusError> {
        let connect_err = |reason: String| JanusError::Connect {
            url: config.url.clone(),
            reason,
        };
        let mut request = config
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| connect_err(e.to_string()))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let connect = tokio_tungstenite::connect_async(request);
        let (ws, _) = tokio::time::timeout(ANSWER_TIMEOUT, connect)
            .await
            .map_err(|_| connect_err("timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        let (tx, rx) = mpsc::channel(256);
        let actor = Actor {
            ws,
            rx,
            pending: HashMap::new(),
            next_transaction: 0,
            session: None,
            api_secret: config.api_secret.clone(),
            events,
            cancel,
        };
        tasks.spawn(actor.run());
        let config = std::sync::Arc::new(config);
        let mut janus = Janus {
            tx,
            session: 0,
            config,
        };
        let created = janus.call(json!({ "janus": "create" })).await?;
        janus.session = id_of(&created)?;
        janus
            .tx
            .send(Input::Session(janus.session))
            .await
            .map_err(|_| JanusError::Gone)?;
        Ok(janus)
    }

    async fn call(&self, request: Value) -> Result<Value, JanusError> {
        self.call_inner(request, false).await
    }

    async fn call_inner(&self, request: Value, ack_answers: bool) -> Result<Value, JanusError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Input::Call {
                request,
                reply,
                ack_answers,
            })
            .await
            .map_err(|_| JanusError::Gone)?;
        tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| JanusError::Timeout(ANSWER_TIMEOUT))?
            .map_err(|_| JanusError::Gone)?
    }

    /// A new handle on the VideoRoom plugin in this session.
    pub async fn attach(&self) -> Result<u64, JanusError> {
        let attached = self
            .call(json!({ "janus": "attach", "session_id": self.session, "plugin": VIDEOROOM }))
            .await?;
        id_of(&attached)
    }

    /// Hands Janus one ICE candidate (`{candidate, sdpMid, sdpMLineIndex}`) for `handle`.
    pub async fn trickle(&self, handle: u64, candidate: Value) -> Result<(), JanusError> {
        let request = json!({
            "janus": "trickle",
            "session_id": self.session,
            "handle_id": handle,
            "candidate": candidate,
        });
        self.call_inner(request, true).await.map(|_| ())
    }

    pub async fn detach(&self, handle: u64) -> Result<(), JanusError> {
        self.call(json!({ "janus": "detach", "session_id": self.session, "handle_id": handle }))
            .await
            .map(|_| ())
    }

    /// Sends a VideoRoom request on `handle` and returns the plugin's data (and the JSEP, if
    /// the answer carries one). Plugin errors become `JanusError::Plugin`.
    pub async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<(Value, Option<Value>), JanusError> {
        let mut request = json!({
            "janus": "message",
            "session_id": self.session,
            "handle_id": handle,
            "body": body,
        });
        if let Some(jsep) = jsep {
            request["jsep"] = jsep;
        }
        let answer = self.call(request).await?;
        let data = answer
            .pointer("/plugindata/data")
            .cloned()
            .ok_or_else(|| JanusError::Unexpected(answer.to_string()))?;
        if let Some(code) = data.get("error_code").and_then(Value::as_i64) {
            let reason = data["error"].as_str().unwrap_or("").to_owned();
            return Err(JanusError::Plugin { code, reason });
        }
        Ok((data, answer.get("jsep").cloned()))
    }

    /// Creates VideoRoom `room` for H.264 (constrained baseline) and Opus, with up to
    /// `publishers` publishers. `secret` guards changes to it; only holders of a token in
    /// `allowed` may join it.
    pub async fn create_room(
        &self,
        handle: u64,
        room: u64,
        secret: &str,
        publishers: usize,
        allowed: &[String],
    ) -> Result<(), JanusError> {
        let mut body = json!({
            "request": "create",
            "room": room,
            "secret": secret,
            "is_private": true,
            "publishers": publishers,
            "videocodec": "h264",
            "h264_profile": "42e01f",
            "audiocodec": "opus",
            "opus_fec": true,
            "transport_wide_cc_ext": true,
            "notify_joining": false,
            "allowed": allowed,
        });
        if let Some(key) = &self.config.admin_key {
            body["admin_key"] = json!(key);
        }
        let (data, _) = self.message(handle, body, None).await?;
        match data["videoroom"].as_str() {
            Some("created") => Ok(()),
            _ => Err(JanusError::Unexpected(data.to_string())),
        }
    }

    pub async fn destroy_room(
        &self,
        handle: u64,
        room: u64,
        secret: &str,
    ) -> Result<(), JanusError> {
        let body = json!({ "request": "destroy", "room": room, "secret": secret });
        self.message(handle, body, None).await.map(|_| ())
    }

    pub async fn room_exists(&self, handle: u64, room: u64) -> Result<bool, JanusError> {
        let (data, _) = self
            .message(handle, json!({ "request": "exists", "room": room }), None)
            .await?;
        Ok(data["exists"].as_bool().unwrap_or(false))
    }

    /// Lets the holders of `tokens` into `room` (`add`) or no longer (`remove`).
    pub async fn allow(
        &self,
        handle: u64,
        room: u64,
        secret: &str,
        add: bool,
        tokens: &[String],
    ) -> Result<(), JanusError> {
        let body = json!({
            "request": "allowed",
            "room": room,
            "secret": secret,
            "action": if add { "add" } else { "remove" },
            "allowed": tokens,
        });
        self.message(handle, body, None).await.map(|_| ())
    }
}

/// Configuration files for a Janus that serves this machine only, for tests and benchmarks:
/// its WebSocket API on `127.0.0.1:port`, the VideoRoom plugin guarded by `admin_key`, every
/// other plugin and transport off. Write them into `dir` and run
/// `janus -C DIR/janus.jcfg -F DIR -o`.
pub fn local_config_files(
    dir: &std::path::Path,
    port: u16,
    admin_key: &str,
) -> Vec<(&'static str, String)> {
    const LIBS: &str = "/usr/lib/x86_64-linux-gnu/janus";
    let conf = dir.display();
    // HUDDLE_JANUS_DEBUG=N: Janus's log level (4, its default, unless set).
    let level = std::env::var("HUDDLE_JANUS_DEBUG")
        .ok()
        .and_then(|l| l.parse::<u8>().ok())
        .unwrap_or(4);
    let off = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("libjanus_{n}.so"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let plugins = off(&[
        "audiobridge",
        "echotest",
        "duktape",
        "lua",
        "nosip",
        "recordplay",
        "sip",
        "streaming",
        "textroom",
        "videocall",
        "voicemail",
    ]);
    let transports = off(&["http", "mqtt", "nanomsg", "pfunix", "rabbitmq"]);
    vec![
        (
            "janus.jcfg",
            format!(
                "general: {{\n  configs_folder = \"{conf}\"\n  plugins_folder = \"{LIBS}/plugins\"\n  \
                 transports_folder = \"{LIBS}/transports\"\n  events_folder = \"{LIBS}/events\"\n  \
                 loggers_folder = \"{LIBS}/loggers\"\n  debug_level = {level}\n  session_timeout = 60\n}}\n\
                 media: {{ rtp_port_range = \"30000-39999\" }}\n\
                 plugins: {{ disable = \"{plugins}\" }}\n\
                 transports: {{ disable = \"{transports}\" }}\n\
                 events: {{ broadcast = false }}\n\
                 loggers: {{ disable = \"libjanus_jsonlog.so\" }}\n"
            ),
        ),
        (
            "janus.transport.websockets.jcfg",
            format!(
                "general: {{ ws = true, ws_port = {port}, ws_ip = \"127.0.0.1\", wss = false }}\n\
                 admin: {{ admin_ws = false, admin_wss = false }}\n"
            ),
        ),
        (
            "janus.plugin.videoroom.jcfg",
            format!("general: {{ admin_key = \"{admin_key}\", lock_rtp_forward = true }}\n"),
        ),
    ]
}

/// A Janus process serving this machine only (tests, benchmarks): `local_config_files` written
/// into a folder, its WebSocket API on a free loopback port. Killed when dropped.
pub struct LocalJanus {
    child: tokio::process::Child,
    /// `ws://127.0.0.1:PORT`.
    pub url: String,
    pub port: u16,
    /// Reads Janus's log so it never blocks on a full pipe.
    log_reader: tokio::task::JoinHandle<()>,
}

impl LocalJanus {
    /// Starts `janus` with its configuration in `dir` and waits until its WebSocket API is up.
    pub async fn start(dir: &std::path::Path, admin_key: &str) -> Result<LocalJanus, JanusError> {
        Self::start_in(dir, admin_key, None).await
    }

    /// The same inside network namespace `netns` (`ip netns exec`; needs root): its WebSocket
    /// API on that namespace's loopback, its media on that namespace's interfaces.
    pub async fn start_in(
        dir: &std::path::Path,
        admin_key: &str,
        netns: Option<&str>,
    ) -> Result<LocalJanus, JanusError> {
        Self::start_at(dir, admin_key, netns, None).await
    }

    /// The same on `port` (`None`: a free one), e.g. to start again where a stopped one was.
    pub async fn start_at(
        dir: &std::path::Path,
        admin_key: &str,
        netns: Option<&str>,
        port: Option<u16>,
    ) -> Result<LocalJanus, JanusError> {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let launch = |what: String| JanusError::Launch(what);
        std::fs::create_dir_all(dir).map_err(|e| launch(e.to_string()))?;
        let port = match port {
            Some(port) => port,
            None => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| launch(e.to_string()))?
                .port(),
        };
        for (name, text) in local_config_files(dir, port, admin_key) {
            std::fs::write(dir.join(name), text).map_err(|e| launch(e.to_string()))?;
        }
        let conf = dir.display().to_string();
        let mut command = match netns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, "janus"]);
                c
            }
            None => tokio::process::Command::new("janus"),
        };
        let mut child = command
            .args(["-C", &format!("{conf}/janus.jcfg"), "-F", &conf, "-o"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| launch(format!("{e} (scripts/setup --test installs it)")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| launch("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        let ready = async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("WebSockets thread started") {
                    return true;
                }
                seen.push(line);
            }
            false
        };
        let started = tokio::time::timeout(Duration::from_secs(20), ready).await;
        if started != Ok(true) {
            let why = if started.is_err() {
                "not ready in 20 s"
            } else {
                "exited"
            };
            return Err(launch(format!("{why}; its log:\n{}", seen.join("\n"))));
        }
        // HUDDLE_JANUS_LOG=FILE keeps Janus's log there (debugging a test or a benchmark).
        let mut keep =
            std::env::var_os("HUDDLE_JANUS_LOG").and_then(|path| std::fs::File::create(path).ok());
        let log_reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(file) = keep.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        Ok(LocalJanus {
            child,
            url: format!("ws://127.0.0.1:{port}"),
            port,
            log_reader,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it (as a crash would) and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for LocalJanus {
    fn drop(&mut self) {
        // The child is killed by `kill_on_drop`.
        self.log_reader.abort();
    }
}

fn id_of(answer: &Value) -> Result<u64, JanusError> {
    answer
        .pointer("/data/id")
        .and_then(Value::as_u64)
        .ok_or_else(|| JanusError::Unexpected(answer.to_string()))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Actor {
    ws: Socket,
    rx: mpsc::Receiver<Input>,
    /// Requests waiting for their answer, and whether an `ack` is that answer.
    pending: HashMap<String, (oneshot::Sender<Result<Value, JanusError>>, bool)>,
    next_transaction: u64,
    session: Option<u64>,
    api_secret: Option<String>,
    events: Option<mpsc::Sender<Value>>,
    cancel: CancellationToken,
}

impl Actor {
    async fn run(mut self) {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                input = self.rx.recv() => match input {
                    Some(Input::Call { request, reply, ack_answers }) => {
                        if self.write(request, Some((reply, ack_answers))).await.is_err() {
                            warn!("cannot write to Janus");
                            break;
                        }
                    }
                    Some(Input::Session(id)) => self.session = Some(id),
                    None => break,
                },
                incoming = self.ws.next() => match incoming {
                    Some(Ok(Message::Text(text))) => self.on_text(&text),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "Janus connection failed");
                        break;
                    }
                    None => {
                        warn!("Janus closed the connection");
                        break;
                    }
                },
                _ = keepalive.tick(), if self.session.is_some() => {
                    let session = self.session;
                    let request = json!({ "janus": "keepalive", "session_id": session });
                    if self.write(request, None).await.is_err() {
                        break;
                    }
                }
            }
        }
        if let Some(session) = self.session {
            let _ = self
                .write(json!({ "janus": "destroy", "session_id": session }), None)
                .await;
        }
        let _ = self.ws.close(None).await;
        // Whoever still waits hears the connection is gone (their senders drop here).
    }

    async fn write(
        &mut self,
        mut request: Value,
        reply: Option<(oneshot::Sender<Result<Value, JanusError>>, bool)>,
    ) -> Result<(), ()> {
        self.next_transaction += 1;
        let transaction = format!("h{}", self.next_transaction);
        request["transaction"] = json!(transaction);
        if let Some(secret) = &self.api_secret {
            request["apisecret"] = json!(secret);
        }
        if let Some(reply) = reply {
            self.pending.insert(transaction, reply);
        }
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await
            .map_err(|_| ())
    }

    fn on_text(&mut self, text: &str) {
        let Ok(answer) = serde_json::from_str::<Value>(text) else {
            warn!("unreadable message from Janus");
            return;
        };
        let kind = answer["janus"].as_str().unwrap_or("");
        let unasked = answer["transaction"]
            .as_str()
            .is_none_or(|t| !self.pending.contains_key(t));
        if unasked {
            if kind != "ack"
                && let Some(events) = &self.events
                && events.try_send(answer.clone()).is_err()
            {
                warn!(kind, "Janus event dropped: its reader is not keeping up");
            }
            return;
        }
        let Some(transaction) = answer["transaction"].as_str() else {
            return;
        };
        // An `ack` only says an asynchronous request was taken; its answer comes later (but
        // for a trickle, the ack is all there is).
        let ack_answers = self.pending.get(transaction).is_some_and(|(_, a)| *a);
        if kind == "ack" && answer.get("plugindata").is_none() && !ack_answers {
            return;
        }
        let Some((reply, _)) = self.pending.remove(transaction) else {
            return;
        };
        let result = if kind == "error" {
            Err(JanusError::Janus {
                code: answer
                    .pointer("/error/code")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                reason: answer
                    .pointer("/error/reason")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            })
        } else {
            Ok(answer)
        };
        let _ = reply.send(result);
    }
}

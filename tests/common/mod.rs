//! Shared helpers for integration tests: a real server on 127.0.0.1:0 and a raw WebSocket client
//! that speaks the protocol, with every wait bounded by a timeout.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use huddle::signaling::protocol::{
    self, ClientMessage, ErrorCode, JoinAccess, PeerId, ServerMessage,
};
use huddle::signaling::server::{self, ServerConfig, ServerHandle};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// Runs one `#[ignore]`d test of the current test binary in a fresh process with `env` added
/// (a sound server, a private bus: things one process's environment must name), asserts it
/// passed, and returns what it printed.
pub fn run_inner_test(name: &str, env: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{name} failed:\n{text}"
    );
    text
}

pub fn test_config() -> ServerConfig {
    ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        // Every test client comes from 127.0.0.1; the per-IP limit has its own test.
        max_connections_per_ip: 10_000,
        // Tests that fill the chat history send faster than people type; the chat limit has
        // its own test.
        chat_rate_limit: huddle::signaling::server::RateLimit::default(),

        ..ServerConfig::default()
    }
}

/// A runtime like the app's own: two worker threads.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The X atom called `name`, created if it is new.
pub fn x11_atom(conn: &impl x11rb::connection::Connection, name: &str) -> u32 {
    use x11rb::protocol::xproto::ConnectionExt as _;
    conn.intern_atom(false, name.as_bytes())
        .unwrap()
        .reply()
        .unwrap()
        .atom
}

pub async fn start_server(config: ServerConfig) -> ServerHandle {
    server::start(config).await.expect("server starts")
}

pub struct TestClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub peer_id: PeerId,
}

/// Opens a WebSocket without saying hello.
pub async fn raw_connect(url: &str) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
    // No Nagle: a burst of small frames leaves at once, as a flooder's would.
    let connect = tokio_tungstenite::connect_async_with_config(url, None, true);
    let (ws, _) = tokio::time::timeout(WAIT, connect)
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

impl TestClient {
    /// Connects and completes hello/welcome.
    pub async fn connect(url: &str) -> TestClient {
        Self::connect_resuming(url, None).await
    }

    /// Connects with `hello.resume` set to `resume` (a rejoin token).
    pub async fn connect_resuming(url: &str, resume: Option<String>) -> TestClient {
        let mut ws = raw_connect(url).await;
        let hello = ClientMessage::Hello {
            version: protocol::PROTOCOL_VERSION,
            client: Some("test".into()),
            resume,
        };
        ws.send(Message::Text(protocol::encode(&hello).into()))
            .await
            .unwrap();
        let mut client = TestClient {
            ws,
            peer_id: PeerId(String::new()),
        };
        match client.recv().await {
            ServerMessage::Welcome { peer_id, .. } => client.peer_id = peer_id,
            other => panic!("expected welcome, got {other:?}"),
        }
        client
    }

    pub async fn send(&mut self, msg: &ClientMessage) {
        self.send_raw(&protocol::encode(msg)).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// Next protocol message; panics on timeout or close, saying which.
    pub async fn recv(&mut self) -> ServerMessage {
        match self.recv_or_why(WAIT).await {
            Ok(message) => message,
            Err(why) => panic!("no message from the server: {why}"),
        }
    }

    /// Next protocol message, or `None` on close or when `within` passes.
    pub async fn try_recv(&mut self, within: Duration) -> Option<ServerMessage> {
        self.recv_or_why(within).await.ok()
    }

    /// Next protocol message, or why there was none.
    async fn recv_or_why(&mut self, within: Duration) -> Result<ServerMessage, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(format!("nothing within {within:?}")),
                Ok(None) => return Err("the connection ended".into()),
                Ok(Some(frame)) => frame,
            };
            match frame {
                Ok(Message::Text(t)) => {
                    return Ok(protocol::decode_server(&t).expect("server sends valid JSON"));
                }
                Ok(Message::Close(close)) => {
                    return Err(format!("closed by the server: {close:?}"));
                }
                Err(e) => return Err(format!("socket error: {e}")),
                Ok(_) => continue,
            }
        }
    }

    /// Skips messages until one matches.
    pub async fn recv_until<F: FnMut(&ServerMessage) -> bool>(
        &mut self,
        mut f: F,
    ) -> ServerMessage {
        loop {
            let m = self.recv().await;
            if f(&m) {
                return m;
            }
        }
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> (String, bool) {
        match self
            .recv_until(|m| matches!(m, ServerMessage::Error { .. }))
            .await
        {
            ServerMessage::Error {
                code: got,
                message,
                fatal,
            } => {
                assert_eq!(got, code, "error message: {message}");
                (message, fatal)
            }
            _ => unreachable!(),
        }
    }

    /// Waits until the server closes the connection, collecting what it sent on the way.
    pub async fn expect_closed(&mut self) -> Vec<ServerMessage> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection not closed in time; saw {seen:?}"),
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return seen,
                Ok(Some(Ok(Message::Text(t)))) => seen.push(protocol::decode_server(&t).unwrap()),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    pub async fn join(&mut self, room: &str, nickname: &str) -> ServerMessage {
        self.join_with(room, nickname, JoinAccess::default()).await
    }

    /// Joins with a password, token, rejoin token or privacy; returns `joined` or the error.
    pub async fn join_with(
        &mut self,
        room: &str,
        nickname: &str,
        access: JoinAccess,
    ) -> ServerMessage {
        self.send(&ClientMessage::Join {
            room: room.into(),
            nickname: nickname.into(),
            access,
        })
        .await;
        self.recv_until(|m| {
            matches!(
                m,
                ServerMessage::Joined { .. } | ServerMessage::Error { .. }
            )
        })
        .await
    }

    /// Round-trips a ping: everything the server sent before the pong is returned.
    pub async fn sync(&mut self) -> Vec<ServerMessage> {
        let nonce = rand_nonce();
        self.send(&ClientMessage::Ping { nonce: Some(nonce) }).await;
        let mut before = Vec::new();
        loop {
            match self.recv().await {
                ServerMessage::Pong { nonce: Some(n) } if n == nonce => return before,
                other => before.push(other),
            }
        }
    }
}

fn rand_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
pub mod browser;
pub mod janus;
pub mod peer;
pub mod receiver;

/// A `huddle serve` process, for what only a separate process shows: its memory, and what
/// happens to others when it dies. Killed when dropped.
pub struct ServeProcess {
    pub child: tokio::process::Child,
    pub url: String,
}

impl ServeProcess {
    /// Starts `huddle serve --bind 127.0.0.1:0 EXTRA...` and waits for the address it prints.
    pub async fn start(extra: &[&str]) -> ServeProcess {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_huddle"))
            .args(["serve", "--bind", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("huddle binary runs");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("server announces its address in time")
            .expect("read stdout")
            .expect("server printed its address before exiting");
        let url = line
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("ws"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ServeProcess { child, url }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} not in /proc status"))
    }

    /// SIGKILL: no goodbye to clients or to the cluster.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill");
    }
}

/// Reads the first message a server sends on a raw socket (a refusal comes before any hello).
pub async fn first_message(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> ServerMessage {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("a frame before close")
            .expect("a readable frame");
        if let Message::Text(t) = frame {
            return protocol::decode_server(&t).expect("server sends valid JSON");
        }
    }
}

/// A plain-HTTP GET of `url` (`http://HOST:PORT/PATH`) over a fresh connection: the whole
/// response, head and body, as text.
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::time::timeout(WAIT, TcpStream::connect(authority))
        .await
        .expect("connect in time")
        .expect("connect");
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the response in time")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

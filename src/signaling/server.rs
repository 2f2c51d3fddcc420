//! The signaling server: accept loop, one task per WebSocket connection, and the hub actor that
//! owns the room state machine (`hub.rs`). Depends on `signaling::{protocol, hub, access}` only.
//!
//! Shape: connection tasks decode, rate-limit and answer `hello` themselves, then forward
//! messages to the hub over a bounded channel. The hub encodes each outgoing message once and
//! hands it to every recipient's bounded outbox with `try_send`; a full outbox means the client
//! cannot keep up and it is dropped, so no client can make the server buffer without bound.

use super::access;
use super::cluster::{ClusterConfig, ClusterHub};
use super::hub::{ConnId, Hub, HubConfig, HubInput, HubOutput, SfuWork};
use super::hub_link::{HubMsg, Outgoing, now_ms};
use super::protocol::{
    self, ClientMessage, ErrorCode, IceServer, JoinAccess, LeaveReason, Limits, ServerMessage,
};
use super::sfu::{self, SfuConfig};
use super::web;
use super::webhook::{WebhookBody, WebhookConfig, WebhookError, Webhooks};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error(
        "refusing to serve plain ws:// on the public address {0}: give --tls-cert and --tls-key \
         (or --insecure if a proxy in front terminates TLS)"
    )]
    PlainOnPublicAddress(SocketAddr),
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("webhooks: {0}")]
    Webhook(#[from] WebhookError),
    #[error("SFU: {0}")]
    Sfu(String),
}

/// The server's certificate chain and key, ready for rustls. `Debug` shows no key material.
#[derive(Clone)]
pub struct TlsIdentity(Arc<rustls::ServerConfig>);

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsIdentity(…)")
    }
}

impl TlsIdentity {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsIdentity, ServerError> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| ServerError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        Self::from_pem(&read(cert)?, &read(key)?)
    }

    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<TlsIdentity, ServerError> {
        let certs = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ServerError::Tls(format!("bad certificate PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ServerError::Tls("no certificate in the PEM file".into()));
        }
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|e| ServerError::Tls(format!("bad key PEM: {e}")))?
            .ok_or_else(|| ServerError::Tls("no private key in the PEM file".into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServerError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| ServerError::Tls(format!("certificate and key do not fit: {e}")))?;
        Ok(TlsIdentity(Arc::new(config)))
    }
}

/// True for addresses that are only reachable from this machine or a private network, where
/// plain `ws://` is acceptable.
pub fn is_local_or_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let carrier_nat = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64; // 100.64/10
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || carrier_nat
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
        }
    }
}

/// A public address that listening on `bind` would serve, if any. For an unspecified bind
/// (`0.0.0.0`, `::`) that is any public address of this machine's interfaces.
fn public_address_served(bind: IpAddr) -> Option<IpAddr> {
    if !bind.is_unspecified() {
        return (!is_local_or_private(bind)).then_some(bind);
    }
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    interfaces
        .iter()
        .map(|i| i.ip())
        // `::` also accepts IPv4 on Linux (dual stack); `0.0.0.0` only IPv4.
        .filter(|ip| bind.is_ipv6() || ip.is_ipv4())
        .find(|ip| !is_local_or_private(*ip))
}

/// Token-bucket parameters for one connection's incoming messages.
#[derive(Clone, Debug)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Messages allowed in a burst.
    pub burst: f64,
    /// Rejected messages, without the bucket refilling in between, before the client is dropped.
    pub max_strikes: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        // Generous enough for a mesh join (offers plus trickled candidates to five peers).
        RateLimit {
            per_second: 50.0,
            burst: 200.0,
            max_strikes: 100,
        }
    }
}

impl RateLimit {
    /// Chat is for people typing: a few lines a second, a short burst for pastes.
    pub fn chat_default() -> Self {
        RateLimit {
            per_second: 2.0,
            burst: 10.0,
            max_strikes: 50,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: SocketAddr,
    pub ice_servers: Vec<IceServer>,
    pub hub: HubConfig,
    pub max_connections: usize,
    /// How often the server pings an idle client.
    pub heartbeat_interval: Duration,
    /// A client silent for this long (no frame, no pong) is dropped and leaves its room.
    pub heartbeat_timeout: Duration,
    /// Time allowed from TCP accept to a valid `hello`.
    pub hello_timeout: Duration,
    /// Time allowed for one write to a client before it counts as stalled.
    pub write_timeout: Duration,
    /// Every message (relays, joins, pings...).
    pub rate_limit: RateLimit,
    /// Chat messages, on top of `rate_limit`.
    pub chat_rate_limit: RateLimit,
    /// Messages queued for one client before it is dropped as too slow.
    pub outbox_len: usize,
    /// Connections from one IP address.
    pub max_connections_per_ip: usize,
    /// `Origin` values allowed to connect (browsers send one; native clients do not). A request
    /// with an Origin not listed here is refused with HTTP 403; `*` allows any.
    pub allowed_origins: Vec<String>,
    /// Serve `wss://` with this identity.
    pub tls: Option<TlsIdentity>,
    /// Allow plain `ws://` on a public address (a TLS-terminating proxy in front).
    pub allow_plain_public: bool,
    /// Share rooms with other processes through this Redis server (`redis://HOST:PORT`).
    pub redis_url: Option<String>,
    /// Hand every client its own time-limited TURN credentials.
    pub turn: Option<super::turn::TurnConfig>,
    /// POST signed room events to these URLs.
    pub webhooks: Option<WebhookConfig>,
    /// Put rooms past `hub.sfu_above` people on this Janus SFU.
    pub sfu: Option<SfuConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8787)),
            ice_servers: Vec::new(),
            hub: HubConfig::default(),
            max_connections: 20_000,
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            rate_limit: RateLimit::default(),
            chat_rate_limit: RateLimit::chat_default(),
            outbox_len: 256,
            max_connections_per_ip: 64,
            allowed_origins: Vec::new(),
            tls: None,
            allow_plain_public: false,
            redis_url: None,
            turn: None,
            webhooks: None,
            sfu: None,
        }
    }
}

/// A running server. Dropping it stops the server; `shutdown` stops it and waits.
pub struct ServerHandle {
    local_addr: SocketAddr,
    tls: bool,
    cancel: CancellationToken,
    tasks: Option<JoinSet<()>>,
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://` (or `wss://`) URL of this server, for clients.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        format!("{scheme}://{}", self.local_addr)
    }

    /// `http://` (or `https://`) URL of the guest page for `room` (`None`: the room picker).
    pub fn page_url(&self, room: Option<&str>) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let path = room.map(web::percent_encode).unwrap_or_default();
        format!("{scheme}://{}/{path}", self.local_addr)
    }

    /// Stops accepting, tells every client the server is going away, and waits for all tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(mut tasks) = self.tasks.take() {
            while tasks.join_next().await.is_some() {}
        }
    }

    /// Resolves when the server has stopped for any reason.
    pub async fn stopped(&self) {
        self.cancel.cancelled().await
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Binds and starts the server on the current tokio runtime.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    if config.tls.is_none() && !config.allow_plain_public {
        if let Some(public) = public_address_served(config.bind.ip()) {
            return Err(ServerError::PlainOnPublicAddress(SocketAddr::new(
                public,
                config.bind.port(),
            )));
        }
        if config.bind.ip().is_unspecified() {
            warn!(
                "serving plain ws:// on all interfaces; fine on a LAN, but use --tls-cert/--tls-key if this machine is reachable from the internet through NAT"
            );
        }
    }
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.bind,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.bind,
        source,
    })?;
    let cancel = CancellationToken::new();
    let (hub_tx, hub_rx) = mpsc::channel(4096);
    let config = Arc::new(config);
    let mut tasks = JoinSet::new();
    start_hub_backend(&config, hub_rx, &cancel, &mut tasks).await?;
    let tls = config.tls.is_some();
    tasks.spawn(accept_loop(listener, config, hub_tx, cancel.clone()));
    info!(%local_addr, tls, "signaling server listening");
    Ok(ServerHandle {
        local_addr,
        tls,
        cancel,
        tasks: Some(tasks),
    })
}

/// The one place the hub backend is chosen: the Redis cluster hub when a Redis URL is
/// configured, else the in-memory hub. Either reads connection messages from `hub_rx`.
async fn start_hub_backend(
    config: &ServerConfig,
    hub_rx: mpsc::Receiver<HubMsg>,
    cancel: &CancellationToken,
    tasks: &mut JoinSet<()>,
) -> Result<(), ServerError> {
    let webhooks = match &config.webhooks {
        Some(w) => Some(Webhooks::spawn(w.clone(), tasks, cancel.clone())?),
        None => None,
    };
    let sfu = match (&config.sfu, &config.redis_url) {
        (Some(_), Some(_)) => {
            return Err(ServerError::Sfu(
                "rooms on an SFU are not available with --redis yet".into(),
            ));
        }
        (Some(sfu_config), None) => Some(
            super::sfu::spawn(sfu_config.clone(), tasks, cancel.clone())
                .await
                .map_err(|e| ServerError::Sfu(e.to_string()))?,
        ),
        (None, _) => None,
    };
    match &config.redis_url {
        Some(url) => {
            let cluster_config = ClusterConfig {
                hub: config.hub.clone(),
                heartbeat_interval: config.heartbeat_interval,
            };
            let mut cluster = ClusterHub::connect(url, &cluster_config, cancel.clone())
                .await
                .map_err(|e| ServerError::Cluster(e.to_string()))?;
            if let Some(webhooks) = webhooks {
                cluster.deliver_webhooks(webhooks);
            }
            tasks.spawn(cluster.run(hub_rx));
        }
        None => {
            let mut hub_config = config.hub.clone();
            if sfu.is_none() {
                hub_config.sfu_above = None;
            }
            tasks.spawn(run_hub(
                Hub::new(hub_config),
                hub_rx,
                webhooks,
                sfu,
                cancel.clone(),
            ));
        }
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    hub_tx: mpsc::Sender<HubMsg>,
    cancel: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
    let mut task_ip: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    let mut next_conn: ConnId = 1;
    let tls = config
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.0.clone()));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(done) = connections.join_next_with_id(), if !connections.is_empty() => {
                let id = match &done {
                    Ok((id, ())) => *id,
                    Err(e) => e.id(),
                };
                if let Some(ip) = task_ip.remove(&id)
                    && let Some(n) = per_ip.get_mut(&ip)
                {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&ip);
                    }
                }
            }
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE; back off briefly instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = next_conn;
                next_conn += 1;
                let from_ip = per_ip.entry(addr.ip()).or_default();
                let refusal = if connections.len() >= config.max_connections {
                    Some((ErrorCode::ServerFull, "the server is at its connection limit"))
                } else if *from_ip >= config.max_connections_per_ip {
                    Some((ErrorCode::TooManyConnections, "too many connections from your address"))
                } else {
                    None
                };
                if refusal.is_some() && connections.len() >= config.max_connections + 64 {
                    // Not even room to say why: close the socket.
                    drop(stream);
                    continue;
                }
                *from_ip += 1;
                let config = config.clone();
                let hub_tx = hub_tx.clone();
                let cancel = cancel.clone();
                let tls = tls.clone();
                let task = connections.spawn(async move {
                    match tls {
                        // Boxed: the TLS connection's state machine is several times the size
                        // of a plain one, and unboxed every plain connection would reserve it.
                        Some(acceptor) => Box::pin(async move {
                            let accept = tokio::time::timeout(config.hello_timeout, acceptor.accept(stream));
                            match accept.await {
                                Ok(Ok(tls_stream)) => {
                                    connection(tls_stream, addr, conn, refusal, config, hub_tx, cancel).await
                                }
                                Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
                                Err(_) => debug!(%addr, "TLS handshake timed out"),
                            }
                        }).await,
                        None => connection(stream, addr, conn, refusal, config, hub_tx, cancel).await,
                    }
                });
                task_ip.insert(task.id(), addr.ip());
            }
        }
    }
    // Connection tasks see the same cancellation and close with `shutting_down`.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}

/// One accepted connection, after TLS if any: refused with a reason, or served.
async fn connection<S: Stream>(
    stream: S,
    addr: SocketAddr,
    conn: ConnId,
    refusal: Option<(ErrorCode, &'static str)>,
    config: Arc<ServerConfig>,
    hub_tx: mpsc::Sender<HubMsg>,
    cancel: CancellationToken,
) {
    // The port serves the guest page too: read the request head to tell a WebSocket upgrade
    // from a page request, then hand the upgrade to the handshake with those bytes replayed.
    let mut stream = stream;
    // A browser or client sends its request at once; a connection that trickles it holds a
    // slot, so it gets less time than the handshakes after it.
    let head_timeout = config.hello_timeout.min(Duration::from_secs(5));
    let head = match web::read_head(&mut stream, head_timeout).await {
        Ok(head) => head,
        Err(e) => {
            debug!(%addr, error = %e, "no request");
            return;
        }
    };
    match web::route(&head) {
        web::Request::Page(response) => {
            let response = match refusal {
                Some((_, message)) => web::unavailable(message),
                None => response,
            };
            match tokio::time::timeout(config.write_timeout, response.send(&mut stream)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%addr, error = %e, "page not sent"),
                Err(_) => debug!(%addr, "page write timed out"),
            }
        }
        web::Request::Upgrade => {
            let stream = web::Rewound::new(head.freeze(), stream);
            match refusal {
                Some((code, message)) => reject(stream, &config, code, message).await,
                None => serve_connection(stream, addr, conn, config, hub_tx, cancel).await,
            }
        }
    }
}

/// A byte stream a WebSocket can run over: TCP, or TLS over TCP.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Signaling messages are small: tungstenite's default 128 KiB read and write buffers per
/// connection would cost ~140 KB per client (280 MB at 2,000 clients). Larger messages still
/// work; they just take more reads.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(protocol::MAX_FRAME_BYTES))
        .max_frame_size(Some(protocol::MAX_FRAME_BYTES))
}

/// Decides whether a WebSocket upgrade with this `Origin` header may proceed. Native clients
/// send none; a browser page may only connect from an allowed origin, so a page on another
/// site cannot use a visitor's network position to reach this server.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(origin) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin.trim_end_matches('/'))),
    }
}

// The refusal type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
#[allow(clippy::result_large_err)]
async fn handshake<S: Stream>(stream: S, config: &ServerConfig) -> Option<WebSocketStream<S>> {
    let check_origin = |request: &Request, response: Response| {
        let headers = request.headers();
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("(not text)"));
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let own_page = origin.is_some_and(|o| web::is_own_origin(o, host, config.tls.is_some()));
        if own_page || origin_allowed(origin, &config.allowed_origins) {
            return Ok(response);
        }
        debug!(
            ?origin,
            "refusing a WebSocket upgrade from an origin not allowed"
        );
        let mut refusal = ErrorResponse::new(Some(
            "origin not allowed: the server takes its own page's origin (over TLS, or by IP address) \
             and those listed with --allowed-origin\n".into(),
        ));
        *refusal.status_mut() = StatusCode::FORBIDDEN;
        Err(refusal)
    };
    let accept =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_origin, Some(ws_config()));
    match tokio::time::timeout(config.hello_timeout, accept).await {
        Ok(Ok(ws)) => Some(ws),
        Ok(Err(e)) => {
            debug!(error = %e, "websocket handshake failed");
            None
        }
        Err(_) => None,
    }
}

async fn reject<S: Stream>(stream: S, config: &ServerConfig, code: ErrorCode, message: &str) {
    if let Some(mut ws) = handshake(stream, config).await {
        let _ = send_fatal(&mut ws, config, code, message).await;
    }
}

fn error_frame(code: ErrorCode, message: &str, fatal: bool) -> Utf8Bytes {
    Utf8Bytes::from(protocol::encode(&ServerMessage::Error {
        code,
        message: message.to_owned(),
        fatal,
    }))
}

async fn send_fatal<S: Stream>(
    ws: &mut WebSocketStream<S>,
    config: &ServerConfig,
    code: ErrorCode,
    message: &str,
) -> Result<(), ()> {
    let frame = Message::Text(error_frame(code, message, true));
    let close = async {
        ws.send(frame).await?;
        ws.close(None).await
    };
    let sent = match tokio::time::timeout(config.write_timeout, close).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    };
    // Finish the close handshake: read (and discard) what the client still sends until its
    // Close arrives. Dropping a socket with unread data makes the kernel send a reset, and the
    // client could lose the error we just sent.
    let drain = async {
        while let Some(Ok(frame)) = ws.next().await {
            if matches!(frame, Message::Close(_)) {
                break;
            }
        }
    };
    // A live client answers within milliseconds; one that does not read gets half a second.
    let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
    sent
}

struct TokenBucket {
    tokens: f64,
    last: Instant,
    strikes: u32,
    limit: RateLimit,
}

impl TokenBucket {
    fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            tokens: limit.burst,
            last: now,
            strikes: 0,
            limit,
        }
    }

    /// Takes one token. `Err(true)` means rejected and the client has used up its strikes.
    fn take(&mut self, now: Instant) -> Result<(), bool> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.limit.per_second).min(self.limit.burst);
        if self.tokens >= self.limit.burst {
            self.strikes = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            self.strikes += 1;
            Err(self.strikes >= self.limit.max_strikes)
        }
    }
}

/// Which rate limit a message is charged to.
#[derive(Clone, Copy)]
enum Budget {
    Messages,
    Chat,
}

/// What to do with an incoming message after the rate limit.
enum Verdict {
    Handle,
    Drop,
    End(Ending),
}

/// Why a connection task ended; decides what the room is told.
enum Ending {
    Closed,
    TimedOut,
    Dropped,
}

async fn serve_connection<S: Stream>(
    stream: S,
    addr: SocketAddr,
    conn: ConnId,
    config: Arc<ServerConfig>,
    hub_tx: mpsc::Sender<HubMsg>,
    cancel: CancellationToken,
) {
    let Some(mut ws) = handshake(stream, &config).await else {
        return;
    };
    // The first message must be a hello with our protocol version.
    let hello = tokio::time::timeout(config.hello_timeout, next_text(&mut ws)).await;
    let first = match hello {
        Err(_) => {
            let _ = send_fatal(
                &mut ws,
                &config,
                ErrorCode::HelloTimeout,
                "no hello received in time",
            )
            .await;
            return;
        }
        Ok(None) => return,
        Ok(Some(text)) => protocol::decode_client(&text),
    };
    let resume = match first {
        Ok(ClientMessage::Hello {
            version, resume, ..
        }) if version == protocol::PROTOCOL_VERSION => resume,
        Ok(ClientMessage::Hello { version, .. }) => {
            let msg = format!(
                "this server speaks protocol version {}, the client speaks {version}; update the older side",
                protocol::PROTOCOL_VERSION
            );
            let _ = send_fatal(&mut ws, &config, ErrorCode::VersionMismatch, &msg).await;
            return;
        }
        Ok(_) => {
            let _ = send_fatal(
                &mut ws,
                &config,
                ErrorCode::HelloRequired,
                "the first message must be hello",
            )
            .await;
            return;
        }
        Err(e) => {
            let _ = send_fatal(&mut ws, &config, e.code(), &e.to_string()).await;
            return;
        }
    };
    let resume = resume.and_then(|token| config.hub.access.resumable_peer(&token, now_ms()));
    let (outbox_tx, mut outbox) = mpsc::channel(config.outbox_len);
    let (assigned_tx, assigned) = oneshot::channel();
    if hub_tx
        .send(HubMsg::Register {
            conn,
            fresh: access::new_peer_id(),
            resume,
            outbox: outbox_tx,
            assigned: assigned_tx,
        })
        .await
        .is_err()
    {
        return;
    }
    let Ok(peer_id) = assigned.await else {
        return;
    };
    let welcome = ServerMessage::Welcome {
        version: protocol::PROTOCOL_VERSION,
        peer_id: peer_id.clone(),
        ice_servers: {
            let mut servers = config.ice_servers.clone();
            if let Some(turn) = &config.turn {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                servers.push(turn.credentials(peer_id.as_str(), now));
            }
            servers
        },
        limits: Limits {
            max_frame_bytes: protocol::MAX_FRAME_BYTES,
            max_chat_chars: protocol::MAX_CHAT_CHARS,
            max_nickname_chars: protocol::MAX_NICKNAME_CHARS,
            max_room_name_chars: protocol::MAX_ROOM_NAME_CHARS,
            max_room_size: config.hub.max_room_size,
        },
    };
    debug!(%addr, %peer_id, "client connected");

    let mut session = Session {
        ws,
        config: &config,
        bucket: TokenBucket::new(config.rate_limit.clone(), Instant::now()),
        chat_bucket: TokenBucket::new(config.chat_rate_limit.clone(), Instant::now()),
        last_heard: Instant::now(),
    };
    let welcome = Utf8Bytes::from(protocol::encode(&welcome));
    let ending = if session.write(welcome).await.is_err() {
        Ending::Closed
    } else {
        session.run(conn, &mut outbox, &hub_tx, &cancel).await
    };
    let reason = match ending {
        Ending::Closed => LeaveReason::Disconnected,
        Ending::TimedOut => LeaveReason::TimedOut,
        Ending::Dropped => LeaveReason::Dropped,
    };
    debug!(%addr, %peer_id, ?reason, "client gone");
    let _ = hub_tx
        .send(HubMsg::Input(HubInput::Disconnected { conn, reason }))
        .await;
}

/// Reads until a text frame arrives; `None` when the connection ends first.
async fn next_text<S: Stream>(ws: &mut WebSocketStream<S>) -> Option<String> {
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
    None
}

struct Session<'a, S> {
    ws: WebSocketStream<S>,
    config: &'a ServerConfig,
    bucket: TokenBucket,
    chat_bucket: TokenBucket,
    last_heard: Instant,
}

impl<S: Stream> Session<'_, S> {
    async fn run(
        &mut self,
        conn: ConnId,
        outbox: &mut mpsc::Receiver<Outgoing>,
        hub_tx: &mpsc::Sender<HubMsg>,
        cancel: &CancellationToken,
    ) -> Ending {
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                // Cancellation first: on shutdown the hub also lets go of our outbox, and that
                // must not be mistaken for falling behind.
                biased;
                _ = cancel.cancelled() => {
                    let _ = self.fatal(ErrorCode::ShuttingDown, "the server is shutting down").await;
                    return Ending::Closed;
                }
                                queued = outbox.recv() => match queued {
                    Some(Outgoing::Frame(frame)) => {
                        if self.write(frame).await.is_err() {
                            return Ending::Dropped;
                        }
                    }
                    Some(Outgoing::Close(code, message)) => {
                        let _ = self.fatal(code, message).await;
                        return Ending::Closed;
                    }
                    None => {
                        // The hub let go of our outbox: we fell too far behind.
                        let _ = self.fatal(ErrorCode::SlowReader, "you were not reading messages fast enough").await;
                        return Ending::Dropped;
                    }
                },
                frame = self.ws.next() => {
                    self.last_heard = Instant::now();
                    match frame {
                        None | Some(Ok(Message::Close(_))) => return Ending::Closed,
                        Some(Ok(Message::Text(text))) => {
                            if let Some(ending) = self.on_text(conn, &text, hub_tx).await {
                                return ending;
                            }
                        }
                                                Some(Ok(Message::Binary(_))) => {
                            match self.charge(Budget::Messages).await {
                                Verdict::Handle => {}
                                Verdict::Drop => continue,
                                Verdict::End(ending) => return ending,
                            }
                            let frame = error_frame(ErrorCode::BinaryNotSupported, "binary frames are not part of the protocol; send JSON text", false);
                            if self.write(frame).await.is_err() {
                                return Ending::Closed;
                            }
                        }
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                        Some(Err(tungstenite::Error::Capacity(e))) => {
                            let msg = format!("message too large ({e}); the limit is {} bytes", protocol::MAX_FRAME_BYTES);
                            let _ = self.fatal(ErrorCode::TooLarge, &msg).await;
                            return Ending::Dropped;
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "websocket read failed");
                            return Ending::Closed;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_heard.elapsed() >= self.config.heartbeat_timeout {
                        return Ending::TimedOut;
                    }
                    let ping = tokio::time::timeout(self.config.write_timeout, self.ws.send(Message::Ping(Default::default())));
                    if !matches!(ping.await, Ok(Ok(()))) {
                        return Ending::Closed;
                    }
                }
            }
        }
    }

    /// Handles one text frame; `Some` ends the connection.
    async fn on_text(
        &mut self,
        conn: ConnId,
        text: &str,
        hub_tx: &mpsc::Sender<HubMsg>,
    ) -> Option<Ending> {
        match self.charge(Budget::Messages).await {
            Verdict::Handle => {}
            // Over budget: answered with rate_limited, not passed on.
            Verdict::Drop => return None,
            Verdict::End(ending) => return Some(ending),
        }
        let decoded = protocol::decode_client(text);
        // Everything fanned out to the whole room shares the chat budget.
        if let Ok(
            ClientMessage::Chat { .. }
            | ClientMessage::React { .. }
            | ClientMessage::SetHand { .. },
        ) = decoded
        {
            match self.charge(Budget::Chat).await {
                Verdict::Handle => {}
                Verdict::Drop => return None,
                Verdict::End(ending) => return Some(ending),
            }
        }
        let reply = match decoded {
            Ok(ClientMessage::Hello { .. }) => error_frame(
                ErrorCode::Malformed,
                "hello was already received on this connection",
                false,
            ),
            Ok(mut msg) => {
                if let ClientMessage::Join { room, access, .. } = &mut msg
                    && access.password.as_deref().is_some_and(|p| !p.is_empty())
                {
                    match hash_password_off_the_hub(room, std::mem::take(access)).await {
                        Some(hashed) => *access = hashed,
                        None => return Some(Ending::Closed),
                    }
                }
                let input = HubMsg::Input(HubInput::Message { conn, msg });
                return match hub_tx.send(input).await {
                    Ok(()) => None,
                    Err(_) => Some(Ending::Closed),
                };
            }
            Err(e) => error_frame(e.code(), &e.to_string(), false),
        };
        self.write(reply).await.err().map(|_| Ending::Closed)
    }

    /// Applies a rate limit to one incoming message.
    async fn charge(&mut self, budget: Budget) -> Verdict {
        let bucket = match budget {
            Budget::Messages => &mut self.bucket,
            Budget::Chat => &mut self.chat_bucket,
        };
        match bucket.take(Instant::now()) {
            Ok(()) => Verdict::Handle,
            Err(false) => {
                let what = match budget {
                    Budget::Messages => "too many messages; this one was dropped",
                    Budget::Chat => {
                        "too many chat messages, reactions or hand changes; this one was not sent"
                    }
                };
                let frame = error_frame(ErrorCode::RateLimited, what, false);
                match self.write(frame).await {
                    Ok(()) => Verdict::Drop,
                    Err(()) => Verdict::End(Ending::Closed),
                }
            }
            Err(true) => {
                let _ = self
                    .fatal(
                        ErrorCode::RateLimited,
                        "too many messages for too long; disconnecting",
                    )
                    .await;
                Verdict::End(Ending::Dropped)
            }
        }
    }

    async fn write(&mut self, frame: Utf8Bytes) -> Result<(), ()> {
        let send = self.ws.send(Message::Text(frame));
        match tokio::time::timeout(self.config.write_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn fatal(&mut self, code: ErrorCode, message: &str) -> Result<(), ()> {
        send_fatal(&mut self.ws, self.config, code, message).await
    }
}

/// How often hubs look for rejoin tokens to renew.
pub(super) const REJOIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

async fn run_hub(
    mut hub: Hub,
    mut rx: mpsc::Receiver<HubMsg>,
    webhooks: Option<Webhooks>,
    sfu: Option<(mpsc::Sender<SfuWork>, mpsc::Receiver<sfu::Delivery>)>,
    cancel: CancellationToken,
) {
    let (sfu_work, mut sfu_deliveries) = match sfu {
        Some((work, deliveries)) => (Some(work), Some(deliveries)),
        None => (None, None),
    };
    let mut outboxes: HashMap<ConnId, mpsc::Sender<Outgoing>> = HashMap::new();
    // Webhook event ids: this process's tag and a counter.
    let process_tag = hex::encode(rand::random::<[u8; 4]>());
    let mut webhook_seq = 0u64;
    let mut outputs = Vec::new();
    let mut pending = Vec::new();
    let mut refresh = tokio::time::interval(REJOIN_REFRESH_INTERVAL);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            msg = rx.recv() => match msg {
                Some(m) => Some(m),
                None => break,
            },
            _ = refresh.tick() => Some(HubMsg::Input(HubInput::RefreshRejoinTokens)),
            Some((conn, msg)) = next_delivery(&mut sfu_deliveries) => {
                // From the SFU orchestrator, for one client.
                let frame = Utf8Bytes::from(protocol::encode(&msg));
                deliver(&mut outboxes, &[conn], &frame, &mut pending);
                None
            }
        };
        if let Some(msg) = msg {
            let input = match msg {
                HubMsg::Register {
                    conn,
                    fresh,
                    resume,
                    outbox,
                    assigned,
                } => {
                    let peer_id = resume.filter(|p| !hub.is_live(p)).unwrap_or(fresh);
                    if assigned.send(peer_id.clone()).is_err() {
                        // The connection ended while waiting: nothing to register.
                        continue;
                    }
                    outboxes.insert(conn, outbox);
                    HubInput::Connected { conn, peer_id }
                }
                HubMsg::Input(input) => {
                    if let HubInput::Disconnected { conn, .. } = &input {
                        outboxes.remove(conn);
                    }
                    input
                }
            };
            pending.push(input);
        }
        // Dropping a slow client produces more input (its peers must hear it left), so work
        // through a queue until everything settles.
        while let Some(input) = pending.pop() {
            hub.handle(input, now_ms(), &mut outputs);
            for output in outputs.drain(..) {
                match output {
                    HubOutput::Deliver { to, msg } => {
                        let frame = Utf8Bytes::from(protocol::encode(&msg));
                        deliver(&mut outboxes, &to, &frame, &mut pending);
                    }
                    HubOutput::Sfu(work) => {
                        if let Some(sfu_work) = &sfu_work
                            && sfu_work.try_send(work).is_err()
                        {
                            warn!("the SFU orchestrator is not keeping up: work dropped");
                        }
                    }
                    HubOutput::Room(event) => {
                        if let Some(webhooks) = &webhooks {
                            webhook_seq += 1;
                            webhooks.send(WebhookBody {
                                id: format!("{process_tag}-{webhook_seq}"),
                                time_ms: now_ms(),
                                event,
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Hands `frame` to the outbox of each connection in `to`. A full or closed outbox is let go,
/// so its task closes the socket, and that client's leaving is queued in `pending`.
fn deliver(
    outboxes: &mut HashMap<ConnId, mpsc::Sender<Outgoing>>,
    to: &[ConnId],
    frame: &Utf8Bytes,
    pending: &mut Vec<HubInput>,
) {
    for conn in to {
        let Some(outbox) = outboxes.get(conn) else {
            continue;
        };
        if outbox.try_send(Outgoing::Frame(frame.clone())).is_err() {
            outboxes.remove(conn);
            pending.push(HubInput::Disconnected {
                conn: *conn,
                reason: LeaveReason::Dropped,
            });
        }
    }
}

async fn next_delivery(
    deliveries: &mut Option<mpsc::Receiver<sfu::Delivery>>,
) -> Option<sfu::Delivery> {
    match deliveries {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Argon2 runs at most this many at once in the process: each takes 19 MiB and tens of
/// milliseconds, and a flood of password joins must not exhaust memory or the blocking pool.
static PASSWORD_HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Replaces a join's password by its hash on a blocking thread (the hub never hashes, so a
/// password join costs it nothing). `None` if the hashing task died.
async fn hash_password_off_the_hub(room: &str, mut access: JoinAccess) -> Option<JoinAccess> {
    let _permit = PASSWORD_HASHING.acquire().await.ok()?;
    let room = room.to_owned();
    tokio::task::spawn_blocking(move || {
        access::hash_join_password(&room, &mut access);
        access
    })
    .await
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ws_is_allowed_only_where_the_internet_cannot_reach() {
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.20",
            "169.254.3.4",
            "100.100.1.1",
            "::1",
            "fd12::1",
            "fe80::1",
        ] {
            let ip: IpAddr = local.parse().unwrap();
            assert!(is_local_or_private(ip), "{local}");
            assert_eq!(public_address_served(ip), None, "{local}");
        }
        for public in ["203.0.113.7", "8.8.8.8", "100.128.0.1", "2001:db8::1"] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(!is_local_or_private(ip), "{public}");
            assert_eq!(public_address_served(ip), Some(ip), "{public}");
        }
    }

    #[test]
    fn browser_origins_must_be_listed() {
        let allowed = vec!["https://chat.example.org".to_owned()];
        assert!(origin_allowed(None, &allowed), "native clients send none");
        assert!(origin_allowed(Some("https://chat.example.org"), &allowed));
        assert!(origin_allowed(Some("https://CHAT.example.org/"), &allowed));
        assert!(!origin_allowed(Some("https://evil.example"), &allowed));
        assert!(!origin_allowed(
            Some("https://chat.example.org.evil"),
            &allowed
        ));
        assert!(!origin_allowed(Some("null"), &[]));
        assert!(origin_allowed(Some("null"), &["*".to_owned()]));
    }
}

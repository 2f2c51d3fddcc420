//! The signaling client actor: one task that owns the WebSocket, speaks the protocol, and
//! reconnects with exponential backoff when the server goes away, then re-subscribes and rejoins
//! the room it was in. Commands in, events out; dropping the handle stops it.

use super::protocol::{
    self, ClientMessage, ErrorCode, IceServer, JoinAccess, Limits, PROTOCOL_VERSION, PeerId,
    ServerMessage,
};
use futures_util::{SinkExt, StreamExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub url: String,
    pub client_name: String,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The server pings every 10 s by default; silence this long means the link is dead.
    pub silence_timeout: Duration,
    /// A PEM certificate to trust for `wss://` besides the system's roots (a self-hosted
    /// server with its own certificate).
    pub trusted_cert: Option<PathBuf>,
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            client_name: format!("huddle {}", env!("CARGO_PKG_VERSION")),
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(35),
            trusted_cert: None,
        }
    }
}

/// TLS settings for `wss://`: the system's root certificates plus, optionally, one more.
pub fn tls_client_config(trusted_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = trusted_cert {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the certificate {}: {e}", path.display()))?;
        let certs = rustls_pemfile::certs(&mut &pem[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not a PEM certificate: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("no certificate in {}", path.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("cannot trust {}: {e}", path.display()))?;
        }
    } else if added == 0 {
        tracing::warn!("no system root certificates found; wss:// servers cannot be verified");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The server's certificate was refused: retrying will not help until someone changes the
/// certificate or what we trust.
fn certificate_refusal(e: &tungstenite::Error) -> Option<String> {
    let tungstenite::Error::Io(io) = e else {
        return None;
    };
    match io.get_ref()?.downcast_ref::<rustls::Error>()? {
        err @ (rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            Some(format!("the server's certificate is not trusted: {err}"))
        }
        _ => None,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClientCommand {
    SubscribeRooms,
    UnsubscribeRooms,
    ListRooms,
    Join {
        room: String,
        nickname: String,
        access: JoinAccess,
    },
    Leave,
    Chat(String),
    Relay {
        to: PeerId,
        payload: serde_json::Value,
    },
    SetNickname(String),
    /// Raise or lower the hand; kept up across reconnects (at the back of the queue, since
    /// the server stamps the time anew).
    SetHand(bool),
    React(String),
    /// An SFU exchange message (`sfu_publish`, `sfu_answer`, `sfu_candidate`), sent as is;
    /// like a relay, it is not replayed after a reconnect.
    Sfu(ClientMessage),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    Connected {
        peer_id: PeerId,
        ice_servers: Vec<IceServer>,
        limits: Limits,
    },
    /// The connection is gone. `retry_in` is `None` when the client gave up (e.g. the server
    /// speaks another protocol version); otherwise it reconnects by itself.
    Disconnected {
        reason: String,
        retry_in: Option<Duration>,
    },
    /// A command could not be sent because the client is not connected.
    NotSent(ClientCommand),
    /// Any other server message, as received.
    Server(ServerMessage),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the signaling client has stopped")]
    Stopped,
    #[error("too many commands queued; try again")]
    Busy,
}

/// The owner's side of the client actor. Dropping it stops the actor.
pub struct SignalingClient {
    commands: mpsc::Sender<ClientCommand>,
    task: tokio::task::JoinHandle<()>,
}

impl SignalingClient {
    pub fn spawn(config: ClientConfig) -> (SignalingClient, mpsc::Receiver<ClientEvent>) {
        let (commands, command_rx) = mpsc::channel(256);
        let (events_tx, events) = mpsc::channel(1024);
        let task = tokio::spawn(run(config, command_rx, events_tx));
        (SignalingClient { commands, task }, events)
    }

    pub fn send(&self, command: ClientCommand) -> Result<(), ClientError> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ClientError::Busy,
            mpsc::error::TrySendError::Closed(_) => ClientError::Stopped,
        })
    }
}

impl Drop for SignalingClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What to restore after a reconnect.
#[derive(Default)]
struct Wanted {
    subscribed: bool,
    room: Option<WantedRoom>,
}

struct WantedRoom {
    room: String,
    nickname: String,
    /// Kept whole (the password too: should the server have restarted and forgotten the room,
    /// it is recreated as it was), plus the latest rejoin token.
    access: JoinAccess,
    hand_raised: bool,
}

enum LinkEnd {
    /// Lost or refused; reconnect.
    Retry(String),
    /// Do not retry (protocol mismatch).
    GiveUp(String),
    /// The owner dropped the handle.
    Stopped,
}

/// Tells the owner the client stopped for good: retrying would not help.
async fn give_up(events: &mpsc::Sender<ClientEvent>, reason: String) {
    let _ = events
        .send(ClientEvent::Disconnected {
            reason,
            retry_in: None,
        })
        .await;
}

async fn run(
    config: ClientConfig,
    mut commands: mpsc::Receiver<ClientCommand>,
    events: mpsc::Sender<ClientEvent>,
) {
    let mut wanted = Wanted::default();
    let mut backoff = config.backoff_initial;
    let tls = if config.url.starts_with("wss://") {
        match tls_client_config(config.trusted_cert.as_deref()) {
            Ok(tls) => Some(tls),
            Err(reason) => return give_up(&events, reason).await,
        }
    } else {
        None
    };
    loop {
        let end = session(
            &config,
            tls.as_ref(),
            &mut commands,
            &events,
            &mut wanted,
            &mut backoff,
        )
        .await;
        let reason = match end {
            LinkEnd::Stopped => return,
            LinkEnd::GiveUp(reason) => return give_up(&events, reason).await,
            LinkEnd::Retry(reason) => reason,
        };
        let delay = jittered(backoff);
        if events
            .send(ClientEvent::Disconnected {
                reason,
                retry_in: Some(delay),
            })
            .await
            .is_err()
        {
            return;
        }
        backoff = (backoff * 2).min(config.backoff_max);
        // Wait out the backoff, but keep answering commands (and noting the wanted state).
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(cmd) => {
                        if !remember(&mut wanted, &cmd) {
                            let _ = events.send(ClientEvent::NotSent(cmd)).await;
                        }
                    }
                },
            }
        }
    }
}

/// ±25 % so many clients of a restarted server do not reconnect in lockstep.
fn jittered(d: Duration) -> Duration {
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(factor)
}

/// Updates the state to restore on reconnect. Returns true if the command is fully
/// represented by that state (so it need not be reported as unsent).
fn remember(wanted: &mut Wanted, cmd: &ClientCommand) -> bool {
    match cmd {
        ClientCommand::SubscribeRooms => wanted.subscribed = true,
        ClientCommand::UnsubscribeRooms => wanted.subscribed = false,
        ClientCommand::Join {
            room,
            nickname,
            access,
        } => {
            wanted.room = Some(WantedRoom {
                room: room.clone(),
                nickname: nickname.clone(),
                access: JoinAccess {
                    rejoin_token: None,
                    ..access.clone()
                },
                hand_raised: false,
            })
        }
        ClientCommand::Leave => wanted.room = None,
        ClientCommand::SetNickname(n) => {
            if let Some(w) = wanted.room.as_mut() {
                w.nickname = n.clone();
            }
        }
        ClientCommand::SetHand(raised) => {
            if let Some(w) = wanted.room.as_mut() {
                w.hand_raised = *raised;
            }
        }
        ClientCommand::ListRooms
        | ClientCommand::Chat(_)
        | ClientCommand::Relay { .. }
        | ClientCommand::React(_)
        | ClientCommand::Sfu(_) => {
            return false;
        }
    }
    true
}

fn to_message(cmd: &ClientCommand) -> ClientMessage {
    match cmd.clone() {
        ClientCommand::SubscribeRooms => ClientMessage::SubscribeRooms,
        ClientCommand::UnsubscribeRooms => ClientMessage::UnsubscribeRooms,
        ClientCommand::ListRooms => ClientMessage::ListRooms,
        ClientCommand::Join {
            room,
            nickname,
            access,
        } => ClientMessage::Join {
            room,
            nickname,
            access,
        },
        ClientCommand::Leave => ClientMessage::Leave,
        ClientCommand::Chat(text) => ClientMessage::Chat { text },
        ClientCommand::Relay { to, payload } => ClientMessage::Relay {
            to,
            from: None,
            payload,
        },
        ClientCommand::SetNickname(nickname) => ClientMessage::SetNickname { nickname },
        ClientCommand::SetHand(raised) => ClientMessage::SetHand { raised },
        ClientCommand::React(emoji) => ClientMessage::React { emoji },
        ClientCommand::Sfu(msg) => msg,
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection to the server, from connecting to its end: hello and welcome, restoring what
/// the owner wanted, then commands out and server messages in.
async fn session(
    config: &ClientConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
    commands: &mut mpsc::Receiver<ClientCommand>,
    events: &mpsc::Sender<ClientEvent>,
    wanted: &mut Wanted,
    backoff: &mut Duration,
) -> LinkEnd {
    let mut ws = match connect(config, tls).await {
        Ok(ws) => ws,
        Err(end) => return end,
    };
    // Back in a room after a reconnect: ask for our old peer id, so the others keep their
    // connections to us (the latest rejoin token proves it was ours).
    let resume = wanted
        .room
        .as_ref()
        .and_then(|w| w.access.rejoin_token.clone());
    if let Err(end) = greet(&mut ws, config, events, backoff, resume).await {
        return end;
    }
    if let Err(end) = restore(&mut ws, wanted).await {
        return end;
    }
    let mut silence = tokio::time::interval(config.silence_timeout / 4);
    silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else {
                    let _ = ws.close(None).await;
                    return LinkEnd::Stopped;
                };
                remember(wanted, &cmd);
                let text = protocol::encode(&to_message(&cmd));
                let sent = tokio::time::timeout(Duration::from_secs(10), ws.send(Message::Text(text.into()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    let _ = events.send(ClientEvent::NotSent(cmd)).await;
                    return LinkEnd::Retry("could not write to the server".into());
                }
            }
            frame = ws.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                    None => return LinkEnd::Retry("the server closed the connection".into()),
                    Some(Err(e)) => return LinkEnd::Retry(format!("connection error: {e}")),
                    Some(Ok(Message::Close(_))) => return LinkEnd::Retry("the server closed the connection".into()),
                    Some(Ok(Message::Text(t))) => {
                        if let Err(end) = on_server_text(&t, wanted, events).await {
                            return end;
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = silence.tick() => {
                if last_heard.elapsed() >= config.silence_timeout {
                    return LinkEnd::Retry("the server stopped answering".into());
                }
            }
        }
    }
}

async fn connect(
    config: &ClientConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<WsStream, LinkEnd> {
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(protocol::MAX_FRAME_BYTES))
        .max_frame_size(Some(protocol::MAX_FRAME_BYTES));
    let connector = tls.map(|t| Connector::Rustls(t.clone()));
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        &config.url,
        Some(ws_config),
        true,
        connector,
    );
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => {
            if let Some(refusal) = certificate_refusal(&e) {
                return Err(LinkEnd::GiveUp(format!("{}: {refusal}", config.url)));
            }
            Err(LinkEnd::Retry(format!("cannot reach {}: {e}", config.url)))
        }
        Err(_) => Err(LinkEnd::Retry(format!(
            "timed out connecting to {}",
            config.url
        ))),
    }
}

/// Hello, and everything until the welcome (bounded); tells the owner we are connected.
async fn greet(
    ws: &mut WsStream,
    config: &ClientConfig,
    events: &mpsc::Sender<ClientEvent>,
    backoff: &mut Duration,
    resume: Option<String>,
) -> Result<(), LinkEnd> {
    let hello = ClientMessage::Hello {
        version: PROTOCOL_VERSION,
        client: Some(config.client_name.clone()),
        resume,
    };
    if ws
        .send(Message::Text(protocol::encode(&hello).into()))
        .await
        .is_err()
    {
        return Err(LinkEnd::Retry("connection closed during hello".into()));
    }
    let welcome = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(frame) = ws.next().await {
            if let Ok(Message::Text(t)) = frame {
                return protocol::decode_server(&t).ok();
            }
            if frame.is_err() {
                return None;
            }
        }
        None
    })
    .await;
    match welcome {
        Ok(Some(ServerMessage::Welcome {
            peer_id,
            ice_servers,
            limits,
            ..
        })) => {
            *backoff = config.backoff_initial;
            let connected = ClientEvent::Connected {
                peer_id,
                ice_servers,
                limits,
            };
            events.send(connected).await.map_err(|_| LinkEnd::Stopped)
        }
        Ok(Some(ServerMessage::Error {
            code: ErrorCode::VersionMismatch,
            message,
            ..
        })) => Err(LinkEnd::GiveUp(message)),
        Ok(Some(ServerMessage::Error { message, .. })) => Err(LinkEnd::Retry(message)),
        Ok(_) => Err(LinkEnd::Retry("the server did not welcome us".into())),
        Err(_) => Err(LinkEnd::Retry("no welcome from the server in time".into())),
    }
}

/// Restores what the owner wanted before the link dropped: the room list, the room.
async fn restore(ws: &mut WsStream, wanted: &Wanted) -> Result<(), LinkEnd> {
    let mut restore = Vec::new();
    if wanted.subscribed {
        restore.push(ClientMessage::SubscribeRooms);
    }
    if let Some(w) = &wanted.room {
        restore.push(ClientMessage::Join {
            room: w.room.clone(),
            nickname: w.nickname.clone(),
            access: w.access.clone(),
        });
        if w.hand_raised {
            restore.push(ClientMessage::SetHand { raised: true });
        }
    }
    for msg in restore {
        if ws
            .send(Message::Text(protocol::encode(&msg).into()))
            .await
            .is_err()
        {
            return Err(LinkEnd::Retry(
                "connection closed while restoring state".into(),
            ));
        }
    }
    Ok(())
}

/// A text frame from the server: remembered where a reconnect needs it, passed to the owner.
async fn on_server_text(
    text: &str,
    wanted: &mut Wanted,
    events: &mpsc::Sender<ClientEvent>,
) -> Result<(), LinkEnd> {
    let msg = match protocol::decode_server(text) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a message from the server");
            return Ok(());
        }
    };
    if let ServerMessage::Error {
        fatal: true,
        code,
        message,
    } = &msg
    {
        let _ = events.send(ClientEvent::Server(msg.clone())).await;
        if *code == ErrorCode::VersionMismatch {
            return Err(LinkEnd::GiveUp(message.clone()));
        }
        return Err(LinkEnd::Retry(format!("{code}: {message}")));
    }
    match &msg {
        ServerMessage::Joined {
            room,
            you,
            rejoin_token,
            ..
        } => {
            if let Some(w) = wanted.room.as_mut() {
                w.room = room.clone();
                w.nickname = you.nickname.clone();
                w.access.rejoin_token = rejoin_token.clone();
            }
        }
        ServerMessage::RejoinToken { token } => {
            if let Some(w) = wanted.room.as_mut() {
                w.access.rejoin_token = Some(token.clone());
            }
        }
        // A join that failed is not something to retry on reconnect.
        ServerMessage::Error { code, .. } if code.refuses_join() => wanted.room = None,
        _ => {}
    }
    events
        .send(ClientEvent::Server(msg))
        .await
        .map_err(|_| LinkEnd::Stopped)
}

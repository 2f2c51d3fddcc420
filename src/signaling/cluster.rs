//! The hub for a server that shares rooms with other server processes through Redis, the way
//! Socket.IO's Redis adapter does: room state lives in Redis and changes atomically in one Lua
//! script (`cluster.lua`), which also publishes each change; every process subscribes to the
//! event channels and delivers to its own clients. Processes beat a key with a TTL; when one
//! stops beating, the others remove its clients from their rooms. Depends on
//! `signaling::{protocol, access, hub, server}`.

use super::access::{JoinRate, Refusal, ScreenedJoin, room_key};
use super::hub::{ConnId, HubConfig, HubInput};
use super::hub_link::{HubMsg, Outgoing, now_ms};
use super::protocol::{
    self, ChatMessage, ClientMessage, ErrorCode, JoinAccess, LeaveReason, PeerId, PeerInfo,
    RoomInfo, ServerMessage, validate_chat, validate_nickname, validate_reaction,
};
use super::webhook::{WebhookBody, Webhooks};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use serde::Deserialize;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const LUA: &str = include_str!("cluster.lua");
const PREFIX: &str = "huddle:";
/// A node is declared dead after this many missed beats.
const BEATS_TO_DEATH: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis at {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("Redis refused to register this node: {0}")]
    Register(String),
}

/// Room event published by the script on `huddle:ev:room`.
#[derive(Deserialize)]
struct RoomEvent {
    room: String,
    seq: u64,
    #[serde(default)]
    exclude: Option<PeerId>,
    msg: ServerMessage,
}

/// Room-list change on `huddle:ev:list`.
#[derive(Deserialize)]
struct ListEvent {
    seq: u64,
    msg: ServerMessage,
}

/// A relay on `huddle:ev:node:<id>`, for one of this node's clients.
#[derive(Deserialize)]
struct NodeEvent {
    to: PeerId,
    msg: ServerMessage,
}

struct LocalConn {
    peer_id: PeerId,
    outbox: mpsc::Sender<Outgoing>,
    nickname: Option<String>,
    /// Room key, while in a room.
    room: Option<String>,
    /// Room events up to this sequence number happened before this client joined.
    joined_at_seq: u64,
    /// Room-list subscription: changes up to this sequence number are in the list it got.
    subscribed_at_seq: Option<u64>,
    join_rate: JoinRate,
    /// What a rejoin token for the current room must carry, and when the last was issued.
    room_private: bool,
    room_password_hash: Option<String>,
    rejoin_issued_ms: u64,
}

/// The hub actor of one process in a cluster. Build with [`ClusterHub::connect`], then `run`.
pub struct ClusterHub {
    url: String,
    node_id: String,
    client: redis::Client,
    redis: ConnectionManager,
    script: redis::Script,
    hub: HubConfig,
    beat_interval: Duration,
    cancel: CancellationToken,
    conns: HashMap<ConnId, LocalConn>,
    by_peer: HashMap<PeerId, ConnId>,
    /// Local members of each room key.
    rooms: HashMap<String, HashSet<ConnId>>,
    /// Leaves Redis did not take (it was briefly unreachable); retried on every beat.
    pending_leaves: Vec<(String, PeerId, LeaveReason)>,
    /// Where this node delivers the cluster's webhook events, if it delivers them.
    webhooks: Option<Webhooks>,
}

/// How often a node that delivers webhooks polls the cluster's queue, and how long its lease
/// as the one that delivers lasts without a poll.
const WEBHOOK_POLL: Duration = Duration::from_millis(250);
const WEBHOOK_LEASE: Duration = Duration::from_secs(3);
const WEBHOOKS_PER_POLL: usize = 200;

/// What the cluster hub reads of the server's configuration.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The room rules, as the in-memory hub would apply them (its rejoin secret is replaced by
    /// the cluster's shared one).
    pub hub: HubConfig,
    /// How often this node tells Redis it is alive.
    pub heartbeat_interval: Duration,
}

impl ClusterHub {
    /// Connects to Redis, registers this process as a node and loads the cluster's shared
    /// rejoin-token secret (created by the first node).
    pub async fn connect(
        url: &str,
        config: &ClusterConfig,
        cancel: CancellationToken,
    ) -> Result<ClusterHub, ClusterError> {
        let err = |source| ClusterError::Redis {
            url: url.to_owned(),
            source,
        };
        let client = redis::Client::open(url).map_err(err)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let mut redis = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(err)?;
        let fresh_secret = hex::encode(rand::random::<[u8; 32]>());
        let secret_key = format!("{PREFIX}rejoin-secret");
        let _: () = redis::cmd("SET")
            .arg(&secret_key)
            .arg(&fresh_secret)
            .arg("NX")
            .query_async(&mut redis)
            .await
            .map_err(err)?;
        let secret: String = redis::cmd("GET")
            .arg(&secret_key)
            .query_async(&mut redis)
            .await
            .map_err(err)?;
        let mut hub = config.hub.clone();
        hub.access.rejoin_secret = super::access::Secret::new(secret.into_bytes())
            .map_err(|e| ClusterError::Register(e.to_string()))?;
        let node_id = format!(
            "{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        );
        let mut cluster = ClusterHub {
            url: url.to_owned(),
            node_id,
            client,
            redis,
            script: redis::Script::new(LUA),
            hub,
            beat_interval: config.heartbeat_interval,
            cancel,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            rooms: HashMap::new(),
            pending_leaves: Vec::new(),
            webhooks: None,
        };
        let status = cluster.beat(true).await.map_err(err)?;
        if status != "ok" {
            return Err(ClusterError::Register(status));
        }
        info!(node = %cluster.node_id, url, "joined the cluster");
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Makes this node one that delivers the cluster's webhook events: the Lua script queues
    /// every room event once in Redis, and one node at a time (a lease) takes them from there.
    pub fn deliver_webhooks(&mut self, webhooks: Webhooks) {
        self.webhooks = Some(webhooks);
    }

    async fn poll_webhooks(&mut self) {
        let Some(webhooks) = self.webhooks.clone() else {
            return;
        };
        let polled = self
            .script
            .arg("hooks")
            .arg(PREFIX)
            .arg(&self.node_id)
            .arg(WEBHOOK_LEASE.as_millis() as u64)
            .arg((self.beat_interval * BEATS_TO_DEATH).as_millis() as u64)
            .arg(WEBHOOKS_PER_POLL)
            .invoke_async::<Vec<String>>(&mut self.redis)
            .await;
        match polled {
            Ok(events) => {
                for json in events {
                    match serde_json::from_str::<WebhookBody>(&json) {
                        Ok(body) => webhooks.send(body),
                        Err(e) => warn!(error = %e, "unreadable webhook event in Redis"),
                    }
                }
            }
            Err(e) => debug!(error = %e, "webhook poll failed; trying again"),
        }
    }

    /// The actor loop: connection messages in, Redis events in, deliveries out.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<HubMsg>) {
        let mut events = match self.subscribe().await {
            Ok(stream) => Some(stream),
            Err(e) => {
                warn!(error = %e, "cannot subscribe to cluster events");
                None
            }
        };
        let mut beat = tokio::time::interval(self.beat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hooks = tokio::time::interval(WEBHOOK_POLL);
        hooks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                msg = rx.recv() => match msg {
                    Some(msg) => self.on_hub_msg(msg).await,
                    None => break,
                },
                event = next_event(&mut events) => match event {
                    Some(msg) => self.on_event(&msg),
                    None => {
                        warn!("lost the Redis event subscription; closing this node's clients");
                        events = None;
                        self.close_all("this server lost its room service; reconnecting will recover");
                    }
                },
                _ = hooks.tick(), if self.webhooks.is_some() => self.poll_webhooks().await,
                _ = beat.tick() => {
                    if events.is_none() {
                        events = self.subscribe().await.ok();
                    }
                    self.on_beat().await;
                }
            }
        }
        // Leaving the cluster: take this node's clients out of their rooms now rather than
        // letting the others wait for the beat to expire.
        let mut retire = self.script.prepare_invoke();
        retire
            .arg("retire")
            .arg(PREFIX)
            .arg(&self.node_id)
            .arg(self.hub.max_room_size);
        let retired = retire.invoke_async::<i64>(&mut self.redis);
        match tokio::time::timeout(Duration::from_secs(2), retired).await {
            Ok(Ok(n)) => info!(node = %self.node_id, clients = n, "left the cluster"),
            _ => {
                warn!(node = %self.node_id, "could not retire from the cluster; the others will time it out")
            }
        }
    }

    async fn subscribe(&self) -> Result<redis::aio::PubSubStream, redis::RedisError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(format!("{PREFIX}ev:room")).await?;
        pubsub.subscribe(format!("{PREFIX}ev:list")).await?;
        pubsub
            .subscribe(format!("{PREFIX}ev:node:{}", self.node_id))
            .await?;
        Ok(pubsub.into_on_message())
    }

    async fn beat(&mut self, first: bool) -> Result<String, redis::RedisError> {
        let ttl_ms = (self.beat_interval * BEATS_TO_DEATH).as_millis() as u64;
        self.script
            .arg("beat")
            .arg(PREFIX)
            .arg(&self.node_id)
            .arg(ttl_ms)
            .arg(if first { "1" } else { "0" })
            .invoke_async(&mut self.redis)
            .await
    }

    async fn on_beat(&mut self) {
        match self.beat(false).await {
            Ok(status) if status == "reaped" => {
                // Redis was out of reach long enough for the others to declare us dead: our
                // clients are no longer in their rooms there. Start over.
                warn!(node = %self.node_id, "this node was timed out by the cluster; closing its clients");
                self.close_all("this server lost its room service; reconnecting will recover");
                if let Err(e) = self.beat(true).await {
                    warn!(error = %e, "cannot re-register with the cluster");
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, url = %self.url, "cluster heartbeat failed");
                return;
            }
        }
        let reaped = self
            .script
            .arg("reap")
            .arg(PREFIX)
            .arg(self.hub.max_room_size)
            .invoke_async::<i64>(&mut self.redis)
            .await;
        if let Ok(n) = reaped
            && n > 0
        {
            info!(clients = n, "removed the clients of a node that stopped");
        }
        for (key, peer, reason) in std::mem::take(&mut self.pending_leaves) {
            self.leave_in_redis(&key, &peer, reason).await;
        }
        self.refresh_rejoin_tokens();
    }

    fn refresh_rejoin_tokens(&mut self) {
        let now = now_ms();
        let mut renewed = Vec::new();
        for (conn, c) in self.conns.iter_mut() {
            let Some(key) = c.room.as_deref() else {
                continue;
            };
            if let Some(token) = self.hub.access.renew_rejoin_token(
                &mut c.rejoin_issued_ms,
                key,
                c.room_private,
                c.room_password_hash.as_deref(),
                &c.peer_id,
                now,
            ) {
                renewed.push((*conn, token));
            }
        }
        for (conn, token) in renewed {
            self.send(conn, &ServerMessage::RejoinToken { token });
        }
    }

    /// Closes every local client (they reconnect and rejoin) and forgets local state.
    fn close_all(&mut self, why: &'static str) {
        for conn in self.conns.values() {
            let _ = conn
                .outbox
                .try_send(Outgoing::Close(ErrorCode::Unavailable, why));
        }
        self.conns.clear();
        self.by_peer.clear();
        self.rooms.clear();
    }

    fn on_event(&mut self, msg: &redis::Msg) {
        let channel = msg.get_channel_name();
        let Ok(payload) = msg.get_payload::<String>() else {
            return;
        };
        let list_channel = channel.ends_with("ev:list");
        let room_channel = channel.ends_with("ev:room");
        if room_channel {
            let Ok(event) = serde_json::from_str::<RoomEvent>(&payload) else {
                warn!("ignoring a malformed room event from Redis");
                return;
            };
            let Some(members) = self.rooms.get(&event.room) else {
                return;
            };
            let frame = Utf8Bytes::from(protocol::encode(&event.msg));
            let recipients: Vec<ConnId> = members
                .iter()
                .copied()
                .filter(|c| {
                    self.conns.get(c).is_some_and(|conn| {
                        conn.joined_at_seq < event.seq
                            && event.exclude.as_ref() != Some(&conn.peer_id)
                    })
                })
                .collect();
            self.deliver(&recipients, &frame);
        } else if list_channel {
            let Ok(event) = serde_json::from_str::<ListEvent>(&payload) else {
                warn!("ignoring a malformed room-list event from Redis");
                return;
            };
            let frame = Utf8Bytes::from(protocol::encode(&event.msg));
            let recipients: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.subscribed_at_seq.is_some_and(|s| s < event.seq))
                .map(|(id, _)| *id)
                .collect();
            self.deliver(&recipients, &frame);
        } else {
            let Ok(event) = serde_json::from_str::<NodeEvent>(&payload) else {
                warn!("ignoring a malformed relay from Redis");
                return;
            };
            if let Some(conn) = self.by_peer.get(&event.to).copied() {
                let frame = Utf8Bytes::from(protocol::encode(&event.msg));
                self.deliver(&[conn], &frame);
            }
        }
    }

    /// Queues a frame for local clients; one that cannot keep up is dropped (its task sees the
    /// closed outbox) and leaves its room.
    fn deliver(&mut self, to: &[ConnId], frame: &Utf8Bytes) {
        let mut dropped = Vec::new();
        for conn in to {
            if let Some(c) = self.conns.get(conn)
                && c.outbox.try_send(Outgoing::Frame(frame.clone())).is_err()
            {
                dropped.push(*conn);
            }
        }
        for conn in dropped {
            if let Some(c) = self.forget(conn)
                && let Some(room) = c.room
            {
                self.pending_leaves
                    .push((room, c.peer_id, LeaveReason::Dropped));
            }
        }
    }

    fn send(&mut self, conn: ConnId, msg: &ServerMessage) {
        let frame = Utf8Bytes::from(protocol::encode(msg));
        self.deliver(&[conn], &frame);
    }

    fn refuse(&mut self, conn: ConnId, refusal: Refusal) {
        self.error(conn, refusal.code, &refusal.message);
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, message: &str) {
        self.send(
            conn,
            &ServerMessage::Error {
                code,
                message: message.to_owned(),
                fatal: false,
            },
        );
    }

    fn unavailable(&mut self, conn: ConnId, e: &redis::RedisError) {
        warn!(error = %e, "Redis call failed");
        self.error(
            conn,
            ErrorCode::Unavailable,
            "the room service is unavailable; try again in a moment",
        );
    }

    /// Drops a connection from local state.
    fn forget(&mut self, conn: ConnId) -> Option<LocalConn> {
        let c = self.conns.remove(&conn)?;
        if self.by_peer.get(&c.peer_id) == Some(&conn) {
            self.by_peer.remove(&c.peer_id);
        }
        if let Some(room) = &c.room {
            self.leave_locally(conn, room);
        }
        Some(c)
    }

    fn leave_locally(&mut self, conn: ConnId, room: &str) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&conn);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    async fn on_hub_msg(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Register {
                conn,
                fresh: peer_id,
                resume: _,
                outbox,
                assigned,
            } => {
                // No resumed ids in a cluster: the id may still be a member of a room in Redis
                // through another process (one that has not noticed the old connection's end,
                // or has died and not been reaped yet).
                let _ = assigned.send(peer_id.clone());
                self.by_peer.insert(peer_id.clone(), conn);
                self.conns.insert(
                    conn,
                    LocalConn {
                        peer_id,
                        outbox,
                        nickname: None,
                        room: None,
                        joined_at_seq: 0,
                        subscribed_at_seq: None,
                        join_rate: JoinRate::default(),
                        room_private: false,
                        room_password_hash: None,
                        rejoin_issued_ms: 0,
                    },
                );
            }
            HubMsg::Input(HubInput::Connected { .. } | HubInput::RefreshRejoinTokens) => {}
            HubMsg::Input(HubInput::Disconnected { conn, reason }) => {
                if let Some(c) = self.forget(conn)
                    && let Some(room) = c.room
                {
                    self.leave_in_redis(&room, &c.peer_id, reason).await;
                }
            }
            HubMsg::Input(HubInput::Message { conn, msg }) => {
                if self.conns.contains_key(&conn) {
                    self.on_message(conn, msg).await;
                }
            }
        }
    }

    async fn leave_in_redis(&mut self, room: &str, peer: &PeerId, reason: LeaveReason) {
        let left = self
            .script
            .arg("leave")
            .arg(PREFIX)
            .arg(room)
            .arg(peer.as_str())
            .arg(&self.node_id)
            .arg(reason_str(reason))
            .arg(self.hub.max_room_size)
            .invoke_async::<i64>(&mut self.redis)
            .await;
        if let Err(e) = left {
            debug!(error = %e, "leave not recorded yet; will retry");
            self.pending_leaves
                .push((room.to_owned(), peer.clone(), reason));
        }
    }

    async fn on_message(&mut self, conn: ConnId, msg: ClientMessage) {
        match msg {
            ClientMessage::ListRooms => {
                if let Some((_, rooms)) = self.list(conn).await {
                    self.send(conn, &ServerMessage::RoomList { rooms });
                }
            }
            ClientMessage::SubscribeRooms => {
                if let Some((seq, rooms)) = self.list(conn).await {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.subscribed_at_seq = Some(seq);
                    }
                    self.send(conn, &ServerMessage::RoomList { rooms });
                }
            }
            ClientMessage::UnsubscribeRooms => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.subscribed_at_seq = None;
                }
            }
            ClientMessage::Join {
                room,
                nickname,
                access,
            } => {
                if let Err(refusal) = self.join(conn, &room, &nickname, &access).await {
                    self.refuse(conn, refusal);
                }
            }
            ClientMessage::Leave => {
                let Some((room, peer)) = self
                    .conns
                    .get_mut(&conn)
                    .and_then(|c| Some((c.room.take()?, c.peer_id.clone())))
                else {
                    return self.error(conn, ErrorCode::NotInRoom, "you are not in a room");
                };
                self.leave_locally(conn, &room);
                self.leave_in_redis(&room, &peer, LeaveReason::Left).await;
                self.send(conn, &ServerMessage::Left { room });
            }
            ClientMessage::Chat { text } => self.chat(conn, &text).await,
            ClientMessage::Relay { to, from, payload } => self.relay(conn, to, from, payload).await,
            ClientMessage::SetNickname { nickname } => self.set_nickname(conn, &nickname).await,
            ClientMessage::SetHand { raised } => {
                let at = if raised {
                    now_ms().to_string()
                } else {
                    String::new()
                };
                self.room_op(conn, "hand", &at).await
            }
            ClientMessage::React { emoji } => match validate_reaction(&emoji) {
                Ok(()) => self.room_op(conn, "react", &emoji).await,
                Err(why) => self.error(conn, ErrorCode::Malformed, &why),
            },
            ClientMessage::Ping { nonce } => self.send(conn, &ServerMessage::Pong { nonce }),
            ClientMessage::Hello { .. } => {}
            // Rooms never move onto an SFU in a cluster (yet): every room is a mesh.
            ClientMessage::SfuPublish { .. }
            | ClientMessage::SfuAnswer { .. }
            | ClientMessage::SfuCandidate { .. }
            | ClientMessage::SfuLayer { .. }
            | ClientMessage::SfuKeyframe { .. }
            | ClientMessage::SfuRestart => self.error(
                conn,
                ErrorCode::NotSfuRoom,
                "rooms on this server are meshes: connect to each peer instead",
            ),
        }
    }

    async fn list(&mut self, conn: ConnId) -> Option<(u64, Vec<RoomInfo>)> {
        let listed = self
            .script
            .arg("list")
            .arg(PREFIX)
            .invoke_async::<(String, Vec<String>)>(&mut self.redis)
            .await;
        let (seq, flat) = match listed {
            Ok(l) => l,
            Err(e) => {
                self.unavailable(conn, &e);
                return None;
            }
        };
        let mut rooms: Vec<RoomInfo> = flat
            .chunks_exact(3)
            .map(|r| RoomInfo {
                name: r[0].clone(),
                people: r[1].parse().unwrap_or(0),
                capacity: self.hub.max_room_size,
                locked: r[2] == "1",
            })
            .collect();
        rooms.sort_by_key(|r| room_key(&r.name));
        Some((seq.parse().unwrap_or(0), rooms))
    }

    async fn join(
        &mut self,
        conn: ConnId,
        room: &str,
        nickname: &str,
        access: &JoinAccess,
    ) -> Result<(), Refusal> {
        let now = now_ms();
        let Some(me) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let peer_id = me.peer_id.clone();
        let ScreenedJoin {
            room_name,
            nickname,
            key,
            admission,
        } = self.hub.access.screen_join(
            me.room.is_some(),
            &mut me.join_rate,
            room,
            nickname,
            access,
            now,
        )?;
        let flag = |b: bool| if b { "1" } else { "0" };
        let joined = self
            .script
            .arg("join")
            .arg(PREFIX)
            .arg(&key)
            .arg(&room_name)
            .arg(peer_id.as_str())
            .arg(&nickname)
            .arg(nickname.to_lowercase())
            .arg(&self.node_id)
            .arg(self.hub.max_room_size)
            .arg(self.hub.max_rooms)
            .arg(flag(access.private))
            .arg(admission.password_hash.as_deref().unwrap_or(""))
            .arg(flag(admission.rejoining))
            .arg(flag(admission.recreate_private))
            .arg(admission.recreate_password_hash.as_deref().unwrap_or(""))
            .invoke_async::<(String, Vec<String>, Vec<String>, Vec<String>)>(&mut self.redis)
            .await;
        let (status, info, members, history) = match joined {
            Ok(j) => j,
            Err(e) => {
                warn!(error = %e, "Redis join failed");
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "the room service is unavailable; try again in a moment",
                ));
            }
        };
        match status.as_str() {
            "ok" => {}
            "password_required" => {
                return Err(Refusal::new(
                    ErrorCode::PasswordRequired,
                    "this room has a password",
                ));
            }
            "wrong_password" => {
                return Err(Refusal::new(
                    ErrorCode::WrongPassword,
                    "the password is not right",
                ));
            }
            "room_full" => {
                let name = info.get(1).cloned().unwrap_or(room_name);
                return Err(Refusal::new(
                    ErrorCode::RoomFull,
                    format!(
                        "room {name:?} is full ({} of {})",
                        info.first().map(String::as_str).unwrap_or("?"),
                        self.hub.max_room_size
                    ),
                ));
            }
            "nickname_taken" => {
                return Err(Refusal::new(
                    ErrorCode::NicknameTaken,
                    format!("someone in this room is already called {nickname:?}"),
                ));
            }
            "too_many_rooms" => {
                return Err(Refusal::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "the server already has {} rooms, its limit",
                        self.hub.max_rooms
                    ),
                ));
            }
            other => {
                warn!(status = other, "unexpected join status from Redis");
                return Err(Refusal::new(
                    ErrorCode::Unavailable,
                    "the room service gave an unexpected answer",
                ));
            }
        }
        let [display_name, seq, private, password_hash] = &info[..] else {
            return Err(Refusal::new(
                ErrorCode::Unavailable,
                "the room service gave an unexpected answer",
            ));
        };
        let seq: u64 = seq.parse().unwrap_or(0);
        let private = private == "1";
        let password_hash = Some(password_hash.clone()).filter(|h| !h.is_empty());
        let peers = members
            .chunks_exact(2)
            .filter_map(|m| {
                let member: serde_json::Value = serde_json::from_str(&m[1]).ok()?;
                Some(PeerInfo {
                    id: PeerId(m[0].clone()),
                    nickname: member.get("nickname")?.as_str()?.to_owned(),
                    hand_raised_at_ms: member.get("hand").and_then(|h| h.as_u64()),
                })
            })
            .collect();
        let history: Vec<ChatMessage> = history
            .iter()
            .filter_map(|h| serde_json::from_str(h).ok())
            .collect();
        let rejoin_token =
            self.hub
                .access
                .rejoin_token(&key, private, password_hash.as_deref(), &peer_id, now);
        if let Some(me) = self.conns.get_mut(&conn) {
            me.room = Some(key.clone());
            me.nickname = Some(nickname.clone());
            me.joined_at_seq = seq;
            me.room_private = private;
            me.room_password_hash = password_hash;
            me.rejoin_issued_ms = now;
        }
        self.rooms.entry(key.clone()).or_default().insert(conn);
        self.send(
            conn,
            &ServerMessage::Joined {
                room: display_name.clone(),
                you: PeerInfo {
                    id: peer_id,
                    nickname,
                    hand_raised_at_ms: None,
                },
                peers,
                history,
                capacity: self.hub.max_room_size,
                private,
                rejoin_token,
                sfu: false,
            },
        );
        Ok(())
    }

    fn room_of(&self, conn: ConnId) -> Option<(String, PeerId, Option<String>)> {
        let c = self.conns.get(&conn)?;
        Some((c.room.clone()?, c.peer_id.clone(), c.nickname.clone()))
    }

    async fn chat(&mut self, conn: ConnId, text: &str) {
        let Some((room, peer, Some(nickname))) = self.room_of(conn) else {
            return self.error(conn, ErrorCode::NotInRoom, "join a room before chatting");
        };
        let text = match validate_chat(text) {
            Ok(t) => t,
            Err(why) => return self.error(conn, ErrorCode::BadChat, &why),
        };
        let sent = self
            .script
            .arg("chat")
            .arg(PREFIX)
            .arg(&room)
            .arg(peer.as_str())
            .arg(&nickname)
            .arg(&text)
            .arg(now_ms())
            .arg(self.hub.history_len)
            .invoke_async::<i64>(&mut self.redis)
            .await;
        match sent {
            Ok(1) => {}
            Ok(_) => self.error(conn, ErrorCode::NotInRoom, "you are no longer in the room"),
            Err(e) => self.unavailable(conn, &e),
        }
    }

    async fn relay(
        &mut self,
        conn: ConnId,
        to: PeerId,
        claimed_from: Option<PeerId>,
        payload: serde_json::Value,
    ) {
        let Some(me) = self.conns.get(&conn) else {
            return;
        };
        if claimed_from.is_some_and(|claimed| claimed != me.peer_id) {
            return self.error(
                conn,
                ErrorCode::ForgedSender,
                "the \"from\" field must be your own peer id; the message was not delivered",
            );
        }
        let Some((room, from, _)) = self.room_of(conn) else {
            return self.error(conn, ErrorCode::NotInRoom, "join a room before relaying");
        };
        if to == from {
            return self.error(
                conn,
                ErrorCode::PeerNotFound,
                &format!("no other peer {to} in your room"),
            );
        }
        let msg = protocol::encode(&ServerMessage::Relay {
            from: from.clone(),
            payload,
        });
        let relayed = self
            .script
            .arg("relay")
            .arg(PREFIX)
            .arg(&room)
            .arg(from.as_str())
            .arg(to.as_str())
            .arg(msg)
            .invoke_async::<i64>(&mut self.redis)
            .await;
        match relayed {
            Ok(1) => {}
            Ok(_) => self.error(
                conn,
                ErrorCode::PeerNotFound,
                &format!("no other peer {to} in your room"),
            ),
            Err(e) => self.unavailable(conn, &e),
        }
    }

    /// A script operation on the caller's own member entry (`hand`, `react`) that publishes
    /// an event to the room.
    async fn room_op(&mut self, conn: ConnId, op: &str, arg: &str) {
        let Some((room, peer, _)) = self.room_of(conn) else {
            return self.error(conn, ErrorCode::NotInRoom, "you are not in a room");
        };
        let done = self
            .script
            .arg(op)
            .arg(PREFIX)
            .arg(&room)
            .arg(peer.as_str())
            .arg(arg)
            .invoke_async::<String>(&mut self.redis)
            .await;
        match done.as_deref() {
            Ok("ok") => {}
            Ok(_) => self.error(conn, ErrorCode::NotInRoom, "you are no longer in the room"),
            Err(e) => self.unavailable(conn, e),
        }
    }

    async fn set_nickname(&mut self, conn: ConnId, nickname: &str) {
        let nickname = match validate_nickname(nickname) {
            Ok(n) => n,
            Err(why) => return self.error(conn, ErrorCode::BadNickname, &why),
        };
        let Some(me) = self.conns.get(&conn) else {
            return;
        };
        let peer_id = me.peer_id.clone();
        let Some(room) = me.room.clone() else {
            if let Some(me) = self.conns.get_mut(&conn) {
                me.nickname = Some(nickname.clone());
            }
            return self.send(conn, &ServerMessage::NicknameChanged { peer_id, nickname });
        };
        let changed = self
            .script
            .arg("nick")
            .arg(PREFIX)
            .arg(&room)
            .arg(peer_id.as_str())
            .arg(&nickname)
            .arg(nickname.to_lowercase())
            .invoke_async::<String>(&mut self.redis)
            .await;
        match changed.as_deref() {
            Ok("ok") => {
                if let Some(me) = self.conns.get_mut(&conn) {
                    me.nickname = Some(nickname);
                }
            }
            Ok("nickname_taken") => self.error(
                conn,
                ErrorCode::NicknameTaken,
                &format!("someone in this room is already called {nickname:?}"),
            ),
            Ok(_) => self.error(conn, ErrorCode::NotInRoom, "you are no longer in the room"),
            Err(e) => self.unavailable(conn, e),
        }
    }
}

async fn next_event(events: &mut Option<redis::aio::PubSubStream>) -> Option<redis::Msg> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

fn reason_str(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Left => "left",
        LeaveReason::Disconnected => "disconnected",
        LeaveReason::TimedOut => "timed_out",
        LeaveReason::Dropped => "dropped",
    }
}

//! The SFU orchestrator: puts rooms that the hub moves onto the SFU into Janus VideoRoom rooms,
//! and carries each member's publish and subscribe exchanges with Janus inside Huddle's own
//! protocol (`sfu_publish`, `sfu_published`, `sfu_offer`, `sfu_answer`). Clients never reach
//! Janus: this actor alone holds the admin key, the rooms' secrets and the members' tokens, and
//! picks every Janus id, so a client can only publish as itself into its own room and subscribe
//! to its own room's publishers. Depends on `signaling::{protocol, hub, janus}`.
//!
//! One actor per server process, working through its inputs in order: simple and enough for
//! tests and small deployments; a room-per-task split is the step for thousands of rooms.

use super::hub::{ConnId, SfuWork};
use super::janus::{Janus, JanusConfig, JanusError};
use super::protocol::{ErrorCode, PeerId, ServerMessage, SfuStream, SfuTarget};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Clone, Debug)]
pub struct SfuConfig {
    /// One or more Janus instances: each room goes on the one carrying the fewest people.
    pub janus: Vec<JanusConfig>,
    /// Publishers a Janus room admits (the room's capacity on the SFU).
    pub publishers: usize,
}

/// What the orchestrator sends a client (through the hub's outboxes).
pub type Delivery = (ConnId, ServerMessage);

struct Member {
    peer: PeerId,
    token: String,
    /// The Janus publisher id this member publishes as (chosen here).
    feed: u64,
    publisher: u64,
    subscriber: Option<u64>,
    published: bool,
    /// Janus announced the feed (its media is up): others can subscribe to it.
    live: bool,
    /// The media sections Janus has of its feed (a browser guest publishes no screen section).
    mids: Vec<String>,
    /// Feeds the subscriber connection has asked for.
    subscribed: BTreeSet<u64>,
    /// An offer sent to the client and not yet answered: further changes wait for it.
    offer_pending: bool,
    /// Feeds to add once the pending offer is answered.
    waiting: BTreeSet<u64>,
    /// The mid of each subscribed feed's camera on the subscriber connection (from the last
    /// offer).
    video_mids: HashMap<u64, String>,
    /// The simulcast layer the member wants of each feed, and the one Janus was last told.
    layers_wanted: HashMap<u64, u8>,
    layers_set: HashMap<u64, u8>,
    /// When Janus last asked this member's encoder for a keyframe on someone's behalf.
    keyframe_asked: Option<std::time::Instant>,
    /// When its membership last started over (`sfu_restart`).
    restarted_at: Option<std::time::Instant>,
}

/// The media section a Huddle publisher (native or browser) sends its screen share in: after
/// camera and microphone.
const SCREEN_MID: &str = "2";

/// A member's `sfu_restart` at most this often: each one ends its streams for everyone and
/// brings them all a new offer, so a client repeating it would keep the whole room busy. The
/// engine waits at least 1 s after a failure, and new connections take longer to fail.
const RESTART_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Keyframe requests for one publisher at most this often, however many ask.
const KEYFRAME_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

struct Room {
    /// Which Janus instance it is on (`Actor::instances`).
    instance: usize,
    janus_room: u64,
    secret: String,
    members: HashMap<ConnId, Member>,
}

/// One Janus gateway and the handle the orchestrator administers its rooms through.
struct Instance {
    janus: Janus,
    admin: u64,
    config: JanusConfig,
    /// Its connection is up (a lost one takes no new rooms until it is back).
    up: bool,
    /// Which connection to it this is: events from an earlier one are stale.
    generation: u64,
    /// The connection's keep-alive and the forwarding of its events (stopped when replaced).
    _tasks: JoinSet<()>,
}

/// First wait before connecting again to a lost instance, and the longest.
const RECONNECT_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const RECONNECT_MAX: std::time::Duration = std::time::Duration::from_secs(15);
/// How long one attempt to reach an instance may take (an unreachable host never answers).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct Actor {
    instances: Vec<Instance>,
    config: SfuConfig,
    rooms: HashMap<String, Room>,
    room_of: HashMap<ConnId, String>,
    deliver: mpsc::Sender<Delivery>,
    /// Where every instance's events go (a new connection's too).
    events: mpsc::Sender<InstanceEvent>,
    /// Attempts to reach lost instances again; each ends with the instance back, or with
    /// the orchestrator.
    reconnects: JoinSet<Option<(usize, Instance)>>,
    /// Rooms left behind on an instance whose connection was lost, destroyed when it is back.
    orphans: Vec<(usize, u64, String)>,
    cancel: CancellationToken,
    /// Ends every Janus connection; cancelled once the rooms are destroyed at shutdown.
    connections: CancellationToken,
}

/// How long the orchestrator may spend destroying its Janus rooms when the server stops.
const SHUTDOWN_CLEANUP: std::time::Duration = std::time::Duration::from_secs(3);

/// A new handle in `janus_room` as publisher `feed` (our choice of id), admitted by `token`;
/// with the feeds already there whose media is up.
async fn join_as_publisher(
    at: &Instance,
    janus_room: u64,
    feed: u64,
    peer: &PeerId,
    token: &str,
) -> Result<(u64, Vec<(u64, Vec<String>)>), JanusError> {
    let publisher = at.janus.attach().await?;
    let body = json!({
        "request": "join",
        "ptype": "publisher",
        "room": janus_room,
        "id": feed,
        "display": peer.as_str(),
        "token": token,
    });
    let (data, _) = at.janus.message(publisher, body, None).await?;
    Ok((publisher, feeds_of(&data["publishers"])))
}

/// Publishers in a Janus answer or event: each feed's id and the mids of its media sections.
fn feeds_of(publishers: &Value) -> Vec<(u64, Vec<String>)> {
    let Some(list) = publishers.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|p| {
            let mids = p["streams"]
                .as_array()
                .map(|streams| {
                    streams
                        .iter()
                        .filter(|s| s["disabled"].as_bool() != Some(true))
                        .filter_map(|s| s["mid"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Some((p["id"].as_u64()?, mids))
        })
        .collect()
}

fn random_token() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A Janus id that fits JavaScript's safe integers (Janus itself uses such ids).
fn random_id() -> u64 {
    rand::random::<u64>() & ((1 << 53) - 1)
}

/// A Janus instance's unasked message, or `None` when its connection ended; with the
/// instance's index and the generation of the connection it came on.
type InstanceEvent = (usize, u64, Option<Value>);

/// Connects to Janus instance `index` for the `generation`th time: its client, the handle to
/// administer rooms with, and its events forwarded to `events`; all of it until `cancel`.
async fn connect_instance(
    index: usize,
    generation: u64,
    config: JanusConfig,
    events: mpsc::Sender<InstanceEvent>,
    cancel: CancellationToken,
) -> Result<Instance, JanusError> {
    let mut tasks = JoinSet::new();
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Janus::connect_with_events(config.clone(), &mut tasks, cancel.clone()),
    )
    .await
    .map_err(|_| JanusError::Connect {
        url: config.url.clone(),
        reason: format!("no answer in {CONNECT_TIMEOUT:?}"),
    })?;
    let (janus, mut from_janus) = connected?;
    let admin = janus.attach().await?;
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                e = from_janus.recv() => {
                    let ended = e.is_none();
                    if events.send((index, generation, e)).await.is_err() || ended {
                        return;
                    }
                }
            }
        }
    });
    Ok(Instance {
        janus,
        admin,
        config,
        up: true,
        generation,
        _tasks: tasks,
    })
}

/// Tries to reach a lost instance again, waiting longer after each failure, until it answers
/// or `cancel` (the server stopping); the new connection lasts until `connection`.
async fn reconnect(
    index: usize,
    generation: u64,
    config: JanusConfig,
    events: mpsc::Sender<InstanceEvent>,
    cancel: CancellationToken,
    connection: CancellationToken,
) -> Option<(usize, Instance)> {
    let mut wait = RECONNECT_FIRST;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(wait) => {}
        }
        let attempt = connect_instance(
            index,
            generation,
            config.clone(),
            events.clone(),
            connection.clone(),
        );
        match attempt.await {
            Ok(instance) => return Some((index, instance)),
            Err(e) => {
                debug!(error = %e, url = %config.url, "a lost Janus SFU is still out of reach");
                wait = (wait * 2).min(RECONNECT_MAX);
            }
        }
    }
}

/// Connects to every Janus instance and starts the orchestrator in `tasks`. Its input is the
/// hub's SFU work; its output, messages for clients. Fails if any instance cannot be reached
/// (a configuration mistake is better found at start).
pub async fn spawn(
    config: SfuConfig,
    tasks: &mut JoinSet<()>,
    cancel: CancellationToken,
) -> Result<(mpsc::Sender<SfuWork>, mpsc::Receiver<Delivery>), JanusError> {
    let (events_tx, events) = mpsc::channel::<InstanceEvent>(4096);
    // The Janus connections outlive the server's cancellation until the orchestrator has
    // destroyed its rooms on them; they stop with it (or with their instance) in any case.
    let connections = CancellationToken::new();
    let mut instances = Vec::new();
    for (index, janus_config) in config.janus.iter().enumerate() {
        let instance = connect_instance(
            index,
            0,
            janus_config.clone(),
            events_tx.clone(),
            connections.clone(),
        )
        .await?;
        info!(url = %janus_config.url, "connected to a Janus SFU");
        instances.push(instance);
    }
    if instances.is_empty() {
        return Err(JanusError::Launch("no Janus instance configured".into()));
    }
    let (work_tx, work_rx) = mpsc::channel(4096);
    let (deliver, deliveries) = mpsc::channel(4096);
    let actor = Actor {
        instances,
        config,
        rooms: HashMap::new(),
        room_of: HashMap::new(),
        deliver,
        events: events_tx,
        reconnects: JoinSet::new(),
        orphans: Vec::new(),
        cancel: cancel.clone(),
        connections,
    };
    tasks.spawn(actor.run(work_rx, events));
    Ok((work_tx, deliveries))
}

impl Actor {
    async fn run(
        mut self,
        mut work: mpsc::Receiver<SfuWork>,
        mut events: mpsc::Receiver<InstanceEvent>,
    ) {
        let cancel = self.cancel.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                w = work.recv() => match w {
                    Some(w) => self.on_work(w).await,
                    None => break,
                },
                e = events.recv() => match e {
                    Some((instance, generation, e)) => {
                        let current = self.instances.get(instance).map(|i| i.generation);
                        if current != Some(generation) {
                            continue;
                        }
                        match e {
                            Some(e) => self.on_janus_event(instance, e).await,
                            None => self.instance_lost(instance).await,
                        }
                    }
                    None => break,
                },
                Some(back) = self.reconnects.join_next() => {
                    if let Ok(Some((index, instance))) = back {
                        self.instance_back(index, instance).await;
                    }
                }
            }
        }
        // Rooms left on Janus would outlive the server: a restarted one makes new ones.
        let cleanup = async {
            for room in std::mem::take(&mut self.rooms).into_values() {
                if let Some(at) = self.instances.get(room.instance).filter(|i| i.up) {
                    let _ = at
                        .janus
                        .destroy_room(at.admin, room.janus_room, &room.secret)
                        .await;
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_CLEANUP, cleanup)
            .await
            .is_err()
        {
            warn!("Janus did not destroy every room in time; some are left behind");
        }
        self.connections.cancel();
    }

    /// An instance's connection ended: its rooms move to another instance (their members
    /// publish and subscribe again there), or wait for one to be up; it takes no new rooms
    /// until it is reached again.
    async fn instance_lost(&mut self, instance: usize) {
        let Some(at) = self.instances.get_mut(instance) else {
            return;
        };
        if !at.up {
            return;
        }
        at.up = false;
        warn!(url = %at.config.url, "lost the connection to a Janus SFU; moving its rooms");
        self.reconnects.spawn(reconnect(
            instance,
            at.generation + 1,
            at.config.clone(),
            self.events.clone(),
            self.cancel.clone(),
            self.connections.clone(),
        ));
        let stranded: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.instance == instance)
            .map(|(name, _)| name.clone())
            .collect();
        for room in stranded {
            self.move_room(&room).await;
        }
    }

    /// A lost instance answers again: it takes rooms again, what was left on it goes, and
    /// rooms that found no other instance move onto it.
    async fn instance_back(&mut self, index: usize, instance: Instance) {
        info!(url = %instance.config.url, "reached a lost Janus SFU again");
        // Rooms waiting for an instance, this one's included (before it is marked up): their
        // members' handles went with the lost connection, so they start over even here.
        let stranded: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| self.instances.get(r.instance).is_none_or(|i| !i.up))
            .map(|(name, _)| name.clone())
            .collect();
        let Some(slot) = self.instances.get_mut(index) else {
            return;
        };
        *slot = instance;
        let (left_here, elsewhere): (Vec<_>, Vec<_>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|(i, _, _)| *i == index);
        self.orphans = elsewhere;
        if let Some(at) = self.instances.get(index) {
            for (_, janus_room, secret) in left_here {
                // Gone already if Janus restarted; there if only the connection broke.
                let _ = at.janus.destroy_room(at.admin, janus_room, &secret).await;
            }
        }
        for room in stranded {
            self.move_room(&room).await;
        }
    }

    /// Moves `room` off its lost instance onto the least loaded one that is up: a new Janus
    /// room there, every member in it again, and each told (`sfu_moved`) to publish and
    /// subscribe anew. With no instance up, the members are told the SFU is unavailable and
    /// the room waits for one.
    async fn move_room(&mut self, room: &str) {
        let Some(from) = self.rooms.get(room).map(|r| r.instance) else {
            return;
        };
        let url = self
            .instances
            .get(from)
            .map(|i| i.config.url.clone())
            .unwrap_or_default();
        let lost = JanusError::Connect {
            url,
            reason: "connection lost, and no other Janus instance is up".into(),
        };
        let members_of = |rooms: &HashMap<String, Room>| -> Vec<ConnId> {
            rooms
                .get(room)
                .map(|r| r.members.keys().copied().collect())
                .unwrap_or_default()
        };
        let Some((target, at)) = self
            .least_loaded()
            .and_then(|i| Some((i, self.instances.get(i)?)))
        else {
            for conn in members_of(&self.rooms) {
                self.refuse(conn, &lost).await;
            }
            return;
        };
        let (janus_room, secret) = (random_id(), random_token());
        let target_url = at.config.url.clone();
        let created = at
            .janus
            .create_room(at.admin, janus_room, &secret, self.config.publishers, &[])
            .await;
        if let Err(e) = created {
            warn!(error = %e, room, "cannot create the room on another Janus");
            for conn in members_of(&self.rooms) {
                self.refuse(conn, &e).await;
            }
            return;
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let old = (
            r.instance,
            std::mem::replace(&mut r.janus_room, janus_room),
            std::mem::replace(&mut r.secret, secret),
        );
        r.instance = target;
        // Their handles went with the lost connection; each member starts over.
        let members: Vec<(ConnId, PeerId)> =
            r.members.drain().map(|(conn, m)| (conn, m.peer)).collect();
        info!(room, url = %target_url, members = members.len(), "room moved to another Janus SFU");
        for (conn, peer) in members {
            // Told before it is in again: joining may bring it an offer, which belongs on its
            // new connections.
            let _ = self.deliver.send((conn, ServerMessage::SfuMoved)).await;
            self.add_member(room, conn, peer).await;
        }
        // The old Janus room goes now if its instance is reachable (it came back after a
        // broken connection), or once that instance is back.
        let (old_instance, old_room, old_secret) = old;
        match self.instances.get(old_instance).filter(|i| i.up) {
            Some(at) => {
                let _ = at.janus.destroy_room(at.admin, old_room, &old_secret).await;
            }
            None => self.orphans.push((old_instance, old_room, old_secret)),
        }
    }

    /// The instance with the fewest people on it among those up.
    fn least_loaded(&self) -> Option<usize> {
        let load = |i: usize| -> usize {
            self.rooms
                .values()
                .filter(|r| r.instance == i)
                .map(|r| r.members.len().max(1))
                .sum()
        };
        (0..self.instances.len())
            .filter(|i| self.instances[*i].up)
            .min_by_key(|i| load(*i))
    }

    /// The Janus instance `room` is on.
    fn janus_of(&self, room: &str) -> Option<&Instance> {
        self.instances.get(self.rooms.get(room)?.instance)
    }

    /// The Janus instance `conn`'s room is on.
    fn janus_for(&self, conn: ConnId) -> Option<&Instance> {
        self.janus_of(self.room_of.get(&conn)?)
    }

    async fn on_work(&mut self, work: SfuWork) {
        match work {
            SfuWork::RoomOn { room, members } => {
                let janus_room = random_id();
                let secret = random_token();
                let instance = self.least_loaded();
                let created = match instance.and_then(|i| self.instances.get(i)) {
                    Some(at) => {
                        at.janus
                            .create_room(at.admin, janus_room, &secret, self.config.publishers, &[])
                            .await
                    }
                    None => Err(JanusError::Launch("no Janus instance is up".into())),
                };
                let instance = instance.unwrap_or_default();
                if let Err(e) = created {
                    warn!(error = %e, room, "cannot create the room on Janus");
                    for (conn, _) in members {
                        self.refuse(conn, &e).await;
                    }
                    return;
                }
                self.rooms.insert(
                    room.clone(),
                    Room {
                        instance,
                        janus_room,
                        secret,
                        members: HashMap::new(),
                    },
                );
                for (conn, peer) in members {
                    self.add_member(&room, conn, peer).await;
                }
            }
            SfuWork::Joined { room, conn, peer } => self.add_member(&room, conn, peer).await,
            SfuWork::Left { room, conn } => self.remove_member(&room, conn).await,
            SfuWork::RoomOff { room } => {
                if let Some(r) = self.rooms.remove(&room) {
                    for (conn, m) in r.members {
                        self.room_of.remove(&conn);
                        self.detach(r.instance, &m).await;
                    }
                    if let Some(at) = self.instances.get(r.instance) {
                        let _ = at
                            .janus
                            .destroy_room(at.admin, r.janus_room, &r.secret)
                            .await;
                    }
                }
            }
            SfuWork::Restart { conn } => {
                let Some((r, room)) = self.member(conn) else {
                    return;
                };
                let Some((peer, restarted_at)) = r
                    .members
                    .get(&conn)
                    .map(|m| (m.peer.clone(), m.restarted_at))
                else {
                    return;
                };
                let now = std::time::Instant::now();
                if restarted_at.is_some_and(|at| now.duration_since(at) < RESTART_INTERVAL) {
                    let refusal = ServerMessage::Error {
                        code: ErrorCode::RateLimited,
                        message: format!(
                            "sfu_restart at most every {} s",
                            RESTART_INTERVAL.as_secs()
                        ),
                        fatal: false,
                    };
                    let _ = self.deliver.send((conn, refusal)).await;
                    return;
                }
                debug!(room, %peer, "a member's SFU connections failed: starting it over");
                self.remove_member(&room, conn).await;
                // Told before it is in again: joining brings it an offer of everyone's media,
                // which belongs on its new connections.
                let _ = self.deliver.send((conn, ServerMessage::SfuMoved)).await;
                self.add_member(&room, conn, peer).await;
                if let Some(m) = self.member_in(&room, conn) {
                    m.restarted_at = Some(now);
                }
            }
            SfuWork::Publish { conn, sdp } => self.publish(conn, sdp).await,
            SfuWork::Answer { conn, sdp } => self.answer(conn, sdp).await,
            SfuWork::Candidate {
                conn,
                target,
                candidate,
            } => {
                let handle = self.member(conn).and_then(|(r, _)| {
                    let m = r.members.get(&conn)?;
                    match target {
                        SfuTarget::Publisher => Some(m.publisher),
                        SfuTarget::Subscriber => m.subscriber,
                    }
                });
                if let Some(handle) = handle
                    && let Some(at) = self.janus_for(conn)
                    && let Err(e) = at.janus.trickle(handle, candidate).await
                {
                    debug!(error = %e, "Janus did not take a candidate");
                }
            }
            SfuWork::Layer { conn, peer, layer } => {
                let Some((r, room)) = self.member(conn) else {
                    return;
                };
                let Some(feed) = r.members.values().find(|m| m.peer == peer).map(|m| m.feed) else {
                    return;
                };
                if let Some(m) = r.members.get_mut(&conn) {
                    m.layers_wanted.insert(feed, layer);
                }
                self.apply_layers(&room, conn).await;
            }
            SfuWork::Keyframe { conn, peer } => {
                let Some((r, room)) = self.member(conn) else {
                    return;
                };
                let now = std::time::Instant::now();
                let Some(m) = r.members.values_mut().find(|m| m.peer == peer) else {
                    return;
                };
                if m.keyframe_asked
                    .is_some_and(|at| now.duration_since(at) < KEYFRAME_INTERVAL)
                {
                    return;
                }
                m.keyframe_asked = Some(now);
                let publisher = m.publisher;
                let body = json!({ "request": "configure", "keyframe": true });
                let Some(at) = self.janus_of(&room) else {
                    return;
                };
                if let Err(e) = at.janus.message(publisher, body, None).await {
                    debug!(error = %e, "Janus did not take a keyframe request");
                }
            }
        }
    }

    /// Tells Janus the layers `conn` wants that it has not been told yet, for the feeds its
    /// subscriber connection carries now (not while an offer waits for its answer: the mids
    /// may change).
    async fn apply_layers(&mut self, room: &str, conn: ConnId) {
        let Some(m) = self.member_in(room, conn) else {
            return;
        };
        let Some(subscriber) = m.subscriber.filter(|_| !m.offer_pending) else {
            return;
        };
        let mut streams = Vec::new();
        for (feed, layer) in &m.layers_wanted {
            if m.layers_set.get(feed) == Some(layer) {
                continue;
            }
            if let Some(mid) = m.video_mids.get(feed) {
                streams.push(json!({ "mid": mid, "substream": layer }));
                m.layers_set.insert(*feed, *layer);
            }
        }
        if streams.is_empty() {
            return;
        }
        let body = json!({ "request": "configure", "streams": streams });
        let Some(at) = self.janus_of(room) else {
            return;
        };
        if let Err(e) = at.janus.message(subscriber, body, None).await {
            debug!(error = %e, "Janus did not take a layer choice");
        }
    }

    async fn refuse(&self, conn: ConnId, e: &JanusError) {
        let message = ServerMessage::Error {
            code: ErrorCode::SfuUnavailable,
            message: format!("the SFU cannot take this room's media: {e}"),
            fatal: false,
        };
        let _ = self.deliver.send((conn, message)).await;
    }

    /// Lets `conn` into the room's Janus room under a token and a publisher id of our choosing.
    async fn add_member(&mut self, room: &str, conn: ConnId, peer: PeerId) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let (janus_room, secret) = (r.janus_room, r.secret.clone());
        let Some(at) = self.instances.get(r.instance) else {
            return;
        };
        let token = random_token();
        let feed = random_id();
        let joined = async {
            at.janus
                .allow(
                    at.admin,
                    janus_room,
                    &secret,
                    true,
                    std::slice::from_ref(&token),
                )
                .await?;
            join_as_publisher(at, janus_room, feed, &peer, &token).await
        };
        match joined.await {
            Ok((publisher, live)) => {
                self.room_of.insert(conn, room.to_owned());
                if let Some(r) = self.rooms.get_mut(room) {
                    r.members.insert(
                        conn,
                        Member {
                            peer,
                            token,
                            feed,
                            publisher,
                            subscriber: None,
                            published: false,
                            live: false,
                            mids: Vec::new(),
                            subscribed: BTreeSet::new(),
                            offer_pending: false,
                            waiting: BTreeSet::new(),
                            video_mids: HashMap::new(),
                            layers_wanted: HashMap::new(),
                            layers_set: HashMap::new(),
                            keyframe_asked: None,
                            restarted_at: None,
                        },
                    );
                }
                let instance = self.rooms.get(room).map_or(0, |r| r.instance);
                self.feeds_live(instance, live).await;
            }
            Err(e) => {
                warn!(error = %e, room, "cannot add a member on Janus");
                self.refuse(conn, &e).await;
            }
        }
    }

    async fn remove_member(&mut self, room: &str, conn: ConnId) {
        self.room_of.remove(&conn);
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let Some(m) = r.members.remove(&conn) else {
            return;
        };
        let (instance, janus_room, secret) = (r.instance, r.janus_room, r.secret.clone());
        // Its token is no good any more, so it cannot come back in with it.
        if let Some(at) = self.instances.get(instance) {
            let _ = at
                .janus
                .allow(
                    at.admin,
                    janus_room,
                    &secret,
                    false,
                    std::slice::from_ref(&m.token),
                )
                .await;
        }
        self.detach(instance, &m).await;
    }

    async fn detach(&self, instance: usize, m: &Member) {
        let Some(at) = self.instances.get(instance) else {
            return;
        };
        let _ = at.janus.detach(m.publisher).await;
        if let Some(s) = m.subscriber {
            let _ = at.janus.detach(s).await;
        }
    }

    /// `conn`'s membership of `room`, if it is (still) a member.
    fn member_in(&mut self, room: &str, conn: ConnId) -> Option<&mut Member> {
        self.rooms.get_mut(room)?.members.get_mut(&conn)
    }

    fn member(&mut self, conn: ConnId) -> Option<(&mut Room, String)> {
        let room = self.room_of.get(&conn)?.clone();
        let r = self.rooms.get_mut(&room)?;
        Some((r, room))
    }

    async fn publish(&mut self, conn: ConnId, sdp: String) {
        let Some((r, room)) = self.member(conn) else {
            return;
        };
        let Some(m) = r.members.get_mut(&conn) else {
            return;
        };
        let mut publisher = m.publisher;
        let mut retired = None;
        if m.published {
            // Publishing again (a camera turned up after the room moved): as a new publisher
            // on a new handle, the old one leaving once the new one is in; everyone takes the
            // new feed when Janus announces it. (Publishing again on the same handle right
            // after an unpublish raced with Janus's hangup of the old connection.)
            let (peer, token, janus_room) = (m.peer.clone(), m.token.clone(), r.janus_room);
            let new_feed = random_id();
            let Some(at) = self.janus_of(&room) else {
                return;
            };
            match join_as_publisher(at, janus_room, new_feed, &peer, &token).await {
                Ok((handle, _)) => {
                    retired = Some(publisher);
                    publisher = handle;
                }
                Err(e) => return self.refuse(conn, &e).await,
            }
            let Some(m) = self.member_in(&room, conn) else {
                return;
            };
            (m.publisher, m.feed, m.published, m.live) = (publisher, new_feed, false, false);
            m.mids.clear();
        }
        let body = json!({ "request": "publish", "audio": true, "video": true, "data": false });
        let jsep = json!({ "type": "offer", "sdp": sdp });
        let Some(at) = self.janus_of(&room) else {
            return;
        };
        let published = at.janus.message(publisher, body, Some(jsep)).await;
        if let Some(old) = retired {
            let _ = at.janus.detach(old).await;
        }
        match published {
            Ok((_, Some(answer))) => {
                let sdp = answer["sdp"].as_str().unwrap_or("").to_owned();
                let _ = self
                    .deliver
                    .send((conn, ServerMessage::SfuPublished { sdp }))
                    .await;
            }
            Ok((data, None)) => {
                warn!(%data, "Janus answered a publish without an SDP");
                return;
            }
            Err(e) => {
                self.refuse(conn, &e).await;
                return;
            }
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let Some(m) = r.members.get_mut(&conn) else {
            return;
        };
        m.published = true;
        // The newcomer takes everyone whose media is up; the others take the newcomer when
        // Janus announces its feed (`on_janus_event`): before that Janus knows no such feed.
        let live: BTreeSet<u64> = r
            .members
            .iter()
            .filter(|(c, m)| **c != conn && m.live)
            .map(|(_, m)| m.feed)
            .collect();
        if !live.is_empty() {
            self.subscribe(&room, conn, live).await;
        }
    }

    /// Janus `instance` announced publishers whose media is up: everyone else in their room
    /// takes them.
    async fn feeds_live(&mut self, instance: usize, feeds: Vec<(u64, Vec<String>)>) {
        for (feed, mids) in feeds {
            let mut on_instance = self
                .rooms
                .iter_mut()
                .filter(|(_, r)| r.instance == instance);
            let found = on_instance.find_map(|(room, r)| {
                let (conn, m) = r.members.iter_mut().find(|(_, m)| m.feed == feed)?;
                m.live = true;
                m.mids = mids.clone();
                let conn = *conn;
                let others: Vec<ConnId> =
                    r.members.keys().copied().filter(|c| *c != conn).collect();
                Some((room.clone(), others))
            });
            if let Some((room, others)) = found {
                for other in others {
                    self.subscribe(&room, other, [feed].into()).await;
                }
            }
        }
    }

    /// Adds `feeds` to `conn`'s subscription: a first join, or an update (after any offer
    /// still waiting for its answer).
    async fn subscribe(&mut self, room: &str, conn: ConnId, feeds: BTreeSet<u64>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let janus_room = r.janus_room;
        let mids_of: HashMap<u64, Vec<String>> = r
            .members
            .values()
            .map(|m| (m.feed, m.mids.clone()))
            .collect();
        let Some(at) = self.instances.get(r.instance) else {
            return;
        };
        let Some(m) = r.members.get_mut(&conn) else {
            return;
        };
        let new: BTreeSet<u64> = feeds.difference(&m.subscribed).copied().collect();
        if new.is_empty() {
            return;
        }
        if m.offer_pending {
            m.waiting.extend(new);
            return;
        }
        // Each publisher's camera, microphone and screen: the first three media sections of its
        // offer (the fourth is data; files go peer to peer), those it has. The screen's sends
        // nothing until its owner shares.
        let streams: Vec<Value> = new
            .iter()
            .flat_map(|f| {
                let has = |mid: &str| mids_of.get(f).is_some_and(|m| m.iter().any(|x| x == mid));
                ["0", "1", SCREEN_MID]
                    .into_iter()
                    .filter(move |mid| *mid != SCREEN_MID || has(mid))
                    .map(move |mid| json!({ "feed": f, "mid": mid }))
            })
            .collect();
        let (handle, body) = match m.subscriber {
            Some(h) => (h, json!({ "request": "update", "subscribe": streams })),
            None => {
                let handle = match at.janus.attach().await {
                    Ok(h) => h,
                    Err(e) => return self.refuse(conn, &e).await,
                };
                m.subscriber = Some(handle);
                let body = json!({
                    "request": "join",
                    "ptype": "subscriber",
                    "room": janus_room,
                    "streams": streams,
                    "token": m.token,
                    "use_msid": true,
                });
                (handle, body)
            }
        };
        m.subscribed.extend(new.iter().copied());
        m.offer_pending = true;
        match at.janus.message(handle, body, None).await {
            Ok((data, Some(jsep))) => self.offer(room, conn, &data, &jsep).await,
            // An update's offer may come as a later event (`on_janus_event`).
            Ok((_, None)) => {}
            Err(e) => {
                if let Some(m) = self.member_in(room, conn) {
                    m.offer_pending = false;
                    m.subscribed.retain(|f| !new.contains(f));
                }
                warn!(error = %e, "cannot subscribe on Janus");
                self.refuse(conn, &e).await;
            }
        }
    }

    /// Passes Janus's subscriber offer on, naming whose media each section carries.
    async fn offer(&mut self, room: &str, conn: ConnId, data: &Value, jsep: &Value) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let by_feed: HashMap<u64, PeerId> = r
            .members
            .values()
            .map(|m| (m.feed, m.peer.clone()))
            .collect();
        let mut video_mids = HashMap::new();
        let streams = data["streams"]
            .as_array()
            .map(|streams| {
                streams
                    .iter()
                    .filter(|s| s["active"].as_bool() != Some(false))
                    .filter_map(|s| {
                        let mut kind = s["type"].as_str()?;
                        let feed = s["feed_id"].as_u64()?;
                        let peer = by_feed.get(&feed)?;
                        let mid = s["mid"].as_str()?.to_owned();
                        if kind == "video" && s["feed_mid"].as_str() == Some(SCREEN_MID) {
                            kind = "screen";
                        }
                        if kind == "video" {
                            video_mids.insert(feed, mid.clone());
                        }
                        Some(SfuStream {
                            mid,
                            peer_id: peer.clone(),
                            kind: kind.to_owned(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(m) = r.members.get_mut(&conn) {
            m.offer_pending = true;
            // A feed on a new mid (or back after leaving) starts at Janus's default layer.
            m.layers_set
                .retain(|feed, _| video_mids.get(feed) == m.video_mids.get(feed));
            m.video_mids = video_mids;
        }
        let sdp = jsep["sdp"].as_str().unwrap_or("").to_owned();
        let _ = self
            .deliver
            .send((conn, ServerMessage::SfuOffer { sdp, streams }))
            .await;
    }

    async fn answer(&mut self, conn: ConnId, sdp: String) {
        let Some((r, room)) = self.member(conn) else {
            return;
        };
        let Some(m) = r.members.get_mut(&conn) else {
            return;
        };
        let Some(subscriber) = m.subscriber else {
            return;
        };
        let jsep = json!({ "type": "answer", "sdp": sdp });
        let Some(at) = self.janus_of(&room) else {
            return;
        };
        let started = at
            .janus
            .message(subscriber, json!({ "request": "start" }), Some(jsep))
            .await;
        if let Err(e) = started {
            warn!(error = %e, "Janus refused a subscriber's answer");
            return self.refuse(conn, &e).await;
        }
        let Some(m) = self.member_in(&room, conn) else {
            return;
        };
        m.offer_pending = false;
        let waiting = std::mem::take(&mut m.waiting);
        self.apply_layers(&room, conn).await;
        if !waiting.is_empty() {
            self.subscribe(&room, conn, waiting).await;
        }
    }

    /// Janus's unasked messages: publishers whose media came up, a subscription's new offer
    /// after a publisher left.
    async fn on_janus_event(&mut self, instance: usize, event: Value) {
        let Some(sender) = event["sender"].as_u64() else {
            return;
        };
        if let Some(publishers) = event
            .pointer("/plugindata/data/publishers")
            .filter(|p| p.is_array())
        {
            let feeds = feeds_of(publishers);
            self.feeds_live(instance, feeds).await;
            return;
        }
        let Some(jsep) = event.get("jsep").filter(|j| j["type"] == "offer") else {
            debug!(kind = %event["janus"], "Janus event");
            return;
        };
        let on_instance = self.rooms.iter().filter(|(_, r)| r.instance == instance);
        let found = on_instance.into_iter().find_map(|(room, r)| {
            r.members
                .iter()
                .find(|(_, m)| m.subscriber == Some(sender))
                .map(|(conn, _)| (room.clone(), *conn))
        });
        if let Some((room, conn)) = found {
            let data = event
                .pointer("/plugindata/data")
                .cloned()
                .unwrap_or(Value::Null);
            let jsep = jsep.clone();
            self.offer(&room, conn, &data, &jsep).await;
        }
    }
}

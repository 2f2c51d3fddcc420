//! The server's message handling: any sequence of connects, disconnects, decoded client messages
//! (raw JSON or structured joins with passwords, tokens and rejoin tokens) and clock steps.
//! Nothing panics, and the room rules hold after every step: messages go only to connected
//! clients, relays and chat stay inside the sender's room with the true sender, rooms never
//! exceed their capacity or number, and the public list never shows a private room.
#![no_main]

use arbitrary::Arbitrary;
use huddle_fuzz::access::{self, Secret, TokenKind};
use huddle_fuzz::hub::{ConnId, Hub, HubConfig, HubInput, HubOutput};
use huddle_fuzz::protocol::{self, ClientMessage, JoinAccess, LeaveReason, PeerId, ServerMessage};
use libfuzzer_sys::fuzz_target;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const CONNS: u8 = 8;
const ROOMS: [&str; 4] = ["alpha", "Alpha", "beta", "gamma room"];
const NICKS: [&str; 4] = ["ann", "ANN", "bob", "cat"];
const PASSWORDS: [&str; 2] = ["pw", "other"];

#[derive(Arbitrary, Debug)]
enum Credential {
    None,
    Password(u8),
    /// A join token the operator minted for room `room`, valid or expired.
    Token {
        room: u8,
        expired: bool,
    },
    /// A token signed with the wrong secret.
    Forged,
    /// The rejoin token this connection (or another) was last given.
    Rejoin(u8),
    Garbage(String),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(u8),
    Disconnect(u8, u8),
    /// Any text as a frame from this connection.
    Raw(u8, String),
    Join {
        conn: u8,
        room: u8,
        nick: u8,
        credential: Credential,
        private: bool,
    },
    Leave(u8),
    Chat(u8, String),
    Relay {
        conn: u8,
        to: u8,
        claim_from: Option<u8>,
    },
    Nick(u8, u8),
    Subscribe(u8),
    List(u8),
    Advance(u16),
    Refresh,
}

#[derive(Arbitrary, Debug)]
struct Script {
    require_tokens: bool,
    max_room_size: u8,
    max_rooms: u8,
    ops: Vec<Op>,
}

const START_MS: u64 = 1_800_000_000_000;

struct World {
    hub: Hub,
    config: HubConfig,
    secret: Secret,
    now_ms: u64,
    connected: HashMap<ConnId, PeerId>,
    /// Room (lower-cased) each connection was last told it is in.
    room_of: HashMap<ConnId, String>,
    rejoin: HashMap<ConnId, String>,
    out: Vec<HubOutput>,
}

impl World {
    fn peer(conn: ConnId) -> PeerId {
        PeerId(format!("peer{conn}"))
    }

    fn credential(&self, room: &str, credential: Credential) -> JoinAccess {
        let mut access = JoinAccess::default();
        match credential {
            Credential::None => {}
            Credential::Password(i) => {
                access.password = Some(PASSWORDS[i as usize % PASSWORDS.len()].into())
            }
            Credential::Token { room: r, expired } => {
                let key = access::room_key(ROOMS[r as usize % ROOMS.len()]);
                let issued = if expired {
                    self.now_ms - 7_200_000
                } else {
                    self.now_ms
                };
                let ttl = Duration::from_secs(3600);
                access.token = access::mint(&self.secret, &key, TokenKind::Join, ttl, issued).ok();
            }
            Credential::Forged => {
                let other = Secret::new("not the secret").expect("non-empty");
                let ttl = Duration::from_secs(3600);
                access.token = access::mint(
                    &other,
                    &access::room_key(room),
                    TokenKind::Join,
                    ttl,
                    self.now_ms,
                )
                .ok();
            }
            Credential::Rejoin(c) => {
                access.rejoin_token = self.rejoin.get(&ConnId::from(c)).cloned()
            }
            Credential::Garbage(s) => access.token = Some(s),
        }
        access
    }

    fn send(&mut self, conn: ConnId, msg: ClientMessage) {
        if !self.connected.contains_key(&conn) {
            return; // the server only hands the hub messages from live connections
        }
        let before = self.room_of.get(&conn).cloned();
        let sender = self.connected[&conn].clone();
        let is_relay = matches!(msg, ClientMessage::Relay { .. });
        let is_chat = matches!(msg, ClientMessage::Chat { .. });
        self.step(HubInput::Message { conn, msg });
        for output in std::mem::take(&mut self.out) {
            let HubOutput::Deliver { to, msg } = &output;
            match msg {
                ServerMessage::Relay { from, .. } => {
                    assert!(is_relay, "relay out of nowhere");
                    assert_eq!(*from, sender, "relay with a forged sender");
                    for c in to {
                        assert_ne!(*c, conn, "relay back to its sender");
                        assert!(before.is_some(), "relay from outside a room");
                        assert_eq!(self.room_of.get(c), before.as_ref(), "relay across rooms");
                    }
                }
                ServerMessage::Chat { message } if is_chat => {
                    assert_eq!(message.from, sender);
                    for c in to {
                        assert_eq!(self.room_of.get(c), before.as_ref(), "chat across rooms");
                    }
                }
                _ => {}
            }
            self.observe(output);
        }
    }

    fn step(&mut self, input: HubInput) {
        self.hub.handle(input, self.now_ms, &mut self.out);
    }

    /// Checks where messages go and follows what each connection is told.
    fn observe(&mut self, output: HubOutput) {
        let HubOutput::Deliver { to, msg } = output;
        for c in &to {
            assert!(
                self.connected.contains_key(c),
                "message to a closed connection"
            );
        }
        let json = protocol::encode(&msg);
        assert_eq!(protocol::decode_server(&json).as_ref(), Ok(&msg));
        match msg {
            ServerMessage::Joined {
                room,
                peers,
                capacity,
                rejoin_token,
                ..
            } => {
                assert!(peers.len() < capacity, "joined a room over capacity");
                for c in to {
                    self.room_of.insert(c, access::room_key(&room));
                    if let Some(t) = &rejoin_token {
                        self.rejoin.insert(c, t.clone());
                    }
                }
            }
            ServerMessage::RejoinToken { token } => {
                for c in to {
                    self.rejoin.insert(c, token.clone());
                }
            }
            ServerMessage::Left { .. } => {
                for c in to {
                    self.room_of.remove(&c);
                }
            }
            _ => {}
        }
    }

    fn drain(&mut self) {
        for output in std::mem::take(&mut self.out) {
            self.observe(output);
        }
    }

    fn check(&self) {
        assert_eq!(self.hub.connection_count(), self.connected.len());
        assert!(self.hub.room_count() <= self.config.max_rooms);
        let members = self.room_of.len();
        let listed: usize = self.hub.room_list().iter().map(|r| r.people).sum();
        assert!(
            listed <= members,
            "the list counts more people than are in rooms"
        );
        for room in self.hub.room_list() {
            assert!(room.people >= 1, "an empty room is listed");
            assert!(room.people <= self.config.max_room_size);
        }
        let mut per_room: HashMap<&String, usize> = HashMap::new();
        for room in self.room_of.values() {
            *per_room.entry(room).or_default() += 1;
        }
        for (room, people) in per_room {
            assert!(people <= self.config.max_room_size, "{room} over capacity");
        }
    }
}

fuzz_target!(|script: Script| {
    let mut config = HubConfig {
        max_room_size: 1 + script.max_room_size as usize % 6,
        max_rooms: 1 + script.max_rooms as usize % 4,
        ..HubConfig::default()
    };
    let secret = Secret::new("the operator's secret").expect("non-empty");
    if script.require_tokens {
        config.access.token_secret = Some(secret.clone());
    }
    let mut world = World {
        hub: Hub::new(config.clone()),
        config,
        secret,
        now_ms: START_MS,
        connected: HashMap::new(),
        room_of: HashMap::new(),
        rejoin: HashMap::new(),
        out: Vec::new(),
    };
    let mut used_ids = HashSet::new();
    let mut next_conn: ConnId = 0;
    let mut slots: HashMap<u8, ConnId> = HashMap::new();
    for op in script.ops.into_iter().take(256) {
        let conn_of = |slot: u8, slots: &HashMap<u8, ConnId>| slots.get(&(slot % CONNS)).copied();
        match op {
            Op::Connect(slot) => {
                if conn_of(slot, &slots).is_some() {
                    continue;
                }
                // Connection ids are never reused, as in the server.
                let conn = next_conn;
                next_conn += 1;
                assert!(used_ids.insert(conn));
                slots.insert(slot % CONNS, conn);
                world.connected.insert(conn, World::peer(conn));
                world.step(HubInput::Connected {
                    conn,
                    peer_id: World::peer(conn),
                });
                world.drain();
            }
            Op::Disconnect(slot, why) => {
                let Some(conn) = slots.remove(&(slot % CONNS)) else {
                    continue;
                };
                let reason = [
                    LeaveReason::Left,
                    LeaveReason::Disconnected,
                    LeaveReason::TimedOut,
                    LeaveReason::Dropped,
                ][why as usize % 4];
                world.connected.remove(&conn);
                world.room_of.remove(&conn);
                world.step(HubInput::Disconnected { conn, reason });
                world.drain();
            }
            Op::Raw(slot, text) => {
                let Some(conn) = conn_of(slot, &slots) else {
                    continue;
                };
                match protocol::decode_client(&text) {
                    Ok(ClientMessage::Hello { .. }) | Err(_) => {}
                    Ok(msg) => world.send(conn, msg),
                }
            }
            Op::Join {
                conn,
                room,
                nick,
                credential,
                private,
            } => {
                let Some(conn) = conn_of(conn, &slots) else {
                    continue;
                };
                let room = ROOMS[room as usize % ROOMS.len()];
                let mut access = world.credential(room, credential);
                access.private = private;
                let nickname = NICKS[nick as usize % NICKS.len()].to_owned();
                world.send(
                    conn,
                    ClientMessage::Join {
                        room: room.into(),
                        nickname,
                        access,
                    },
                );
            }
            Op::Leave(slot) => {
                if let Some(conn) = conn_of(slot, &slots) {
                    world.send(conn, ClientMessage::Leave);
                }
            }
            Op::Chat(slot, text) => {
                if let Some(conn) = conn_of(slot, &slots) {
                    world.send(conn, ClientMessage::Chat { text });
                }
            }
            Op::Relay {
                conn,
                to,
                claim_from,
            } => {
                let Some(conn) = conn_of(conn, &slots) else {
                    continue;
                };
                let to = World::peer(ConnId::from(to % CONNS.saturating_mul(2)));
                let from = claim_from.map(|c| World::peer(ConnId::from(c % CONNS)));
                let payload = serde_json::json!({"kind": "candidate"});
                world.send(conn, ClientMessage::Relay { to, from, payload });
            }
            Op::Nick(slot, nick) => {
                if let Some(conn) = conn_of(slot, &slots) {
                    let nickname = NICKS[nick as usize % NICKS.len()].to_owned();
                    world.send(conn, ClientMessage::SetNickname { nickname });
                }
            }
            Op::Subscribe(slot) => {
                if let Some(conn) = conn_of(slot, &slots) {
                    world.send(conn, ClientMessage::SubscribeRooms);
                }
            }
            Op::List(slot) => {
                if let Some(conn) = conn_of(slot, &slots) {
                    world.send(conn, ClientMessage::ListRooms);
                }
            }
            Op::Advance(ms) => world.now_ms += u64::from(ms) * 100,
            Op::Refresh => {
                world.step(HubInput::RefreshRejoinTokens);
                world.drain();
            }
        }
        world.check();
    }
});

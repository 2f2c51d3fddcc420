//! Room membership, room list, chat history and relay rules of one signaling server, as a state
//! machine without I/O: `handle(input, now_ms, &mut outputs)`. The server's hub actor drives it.
//! Depends only on `signaling::{protocol, access}`.

use super::access::{AccessConfig, JoinRate, Refusal, ScreenedJoin};
use super::protocol::{
    ChatMessage, ClientMessage, ErrorCode, JoinAccess, LeaveReason, PeerId, PeerInfo, RoomInfo,
    ServerMessage, SfuTarget, validate_chat, validate_nickname, validate_reaction,
};
use super::webhook::{EventKind, RoomEvent};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// A connection's handle inside one server process.
pub type ConnId = u64;

#[derive(Clone, Debug)]
pub struct HubConfig {
    pub max_room_size: usize,
    /// Capacity of a room created `large` (on the SFU from the start).
    pub max_large_room_size: usize,
    pub max_rooms: usize,
    pub history_len: usize,
    pub access: AccessConfig,
    /// With an SFU: a room moves onto it once it has more people than this (0: every room).
    /// `None`: no SFU, every room is a mesh.
    pub sfu_above: Option<usize>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_room_size: 6,
            max_large_room_size: 50,
            max_rooms: 1000,
            history_len: super::protocol::CHAT_HISTORY_LEN,
            access: AccessConfig::default(),
            sfu_above: None,
        }
    }
}

#[derive(Debug)]
pub enum HubInput {
    /// A connection finished its hello and was given `peer_id`.
    Connected {
        conn: ConnId,
        peer_id: PeerId,
    },
    /// A decoded message other than `hello`, which the connection handles itself.
    Message {
        conn: ConnId,
        msg: ClientMessage,
    },
    Disconnected {
        conn: ConnId,
        reason: LeaveReason,
    },
    /// Periodic: renews rejoin tokens that are half-way to expiry.
    RefreshRejoinTokens,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HubOutput {
    /// Deliver one message to each listed connection (encode once, send to all).
    Deliver { to: Vec<ConnId>, msg: ServerMessage },
    /// Something operators hear about (webhooks): a room started or finished, someone joined
    /// or left.
    Room(RoomEvent),
    /// Work for the SFU orchestrator (rooms on Janus).
    Sfu(SfuWork),
}

/// What the SFU orchestrator must do; room keys are the hub's (lower-cased names).
#[derive(Debug, Clone, PartialEq)]
pub enum SfuWork {
    /// A room moved onto the SFU with these members.
    RoomOn {
        room: String,
        members: Vec<(ConnId, PeerId)>,
    },
    Joined {
        room: String,
        conn: ConnId,
        peer: PeerId,
    },
    Left {
        room: String,
        conn: ConnId,
    },
    /// The last member left.
    RoomOff {
        room: String,
    },
    Publish {
        conn: ConnId,
        sdp: String,
    },
    Answer {
        conn: ConnId,
        sdp: String,
    },
    Candidate {
        conn: ConnId,
        target: SfuTarget,
        /// As Janus takes it: `{candidate, sdpMid, sdpMLineIndex}`.
        candidate: serde_json::Value,
    },
    /// Receive this layer (0..=2) of `peer`'s camera.
    Layer {
        conn: ConnId,
        peer: PeerId,
        layer: u8,
    },
    /// `conn` needs a keyframe of `peer`'s camera.
    Keyframe {
        conn: ConnId,
        peer: PeerId,
    },
    /// `conn`'s connections with the SFU failed: its membership starts over.
    Restart {
        conn: ConnId,
    },
}

struct Conn {
    peer_id: PeerId,
    nickname: Option<String>,
    /// Key of the room this connection is in.
    room: Option<String>,
    join_rate: JoinRate,
    /// When this connection's current rejoin token was issued.
    rejoin_issued_ms: u64,
    /// When its hand went up in its room, if it is up.
    hand_raised_at_ms: Option<u64>,
}

struct Room {
    /// The name as its creator spelled it.
    display_name: String,
    /// Members in join order.
    members: Vec<ConnId>,
    history: VecDeque<ChatMessage>,
    /// Not in the public list.
    private: bool,
    password_hash: Option<String>,
    /// Media goes through the SFU instead of a mesh.
    sfu: bool,
    /// Created large: on the SFU from the start, whatever its size, with the large capacity.
    large: bool,
}

#[derive(Default)]
pub struct Hub {
    config: HubConfig,
    conns: HashMap<ConnId, Conn>,
    by_peer: HashMap<PeerId, ConnId>,
    /// Keyed by the lower-cased name so "Team" and "team" are one room.
    rooms: BTreeMap<String, Room>,
    subscribers: HashSet<ConnId>,
    next_chat_id: u64,
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Hub {
            config,
            next_chat_id: 1,
            ..Default::default()
        }
    }

    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Whether a connection holds `peer` now.
    pub fn is_live(&self, peer: &PeerId) -> bool {
        self.by_peer.contains_key(peer)
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Public rooms with their head counts, sorted by name.
    pub fn room_list(&self) -> Vec<RoomInfo> {
        self.rooms
            .values()
            .filter(|r| !r.private)
            .map(|r| self.room_info(r))
            .collect()
    }

    pub fn handle(&mut self, input: HubInput, now_ms: u64, out: &mut Vec<HubOutput>) {
        match input {
            HubInput::Connected { conn, peer_id } => {
                self.by_peer.insert(peer_id.clone(), conn);
                self.conns.insert(
                    conn,
                    Conn {
                        peer_id,
                        nickname: None,
                        room: None,
                        join_rate: JoinRate::default(),
                        rejoin_issued_ms: 0,
                        hand_raised_at_ms: None,
                    },
                );
            }
            HubInput::Disconnected { conn, reason } => {
                self.subscribers.remove(&conn);
                self.remove_from_room(conn, reason, out);
                // Only if the id still maps to this connection: a client that resumed its id
                // on a new connection may have registered before this one's end was handled.
                if let Some(c) = self.conns.remove(&conn)
                    && self.by_peer.get(&c.peer_id) == Some(&conn)
                {
                    self.by_peer.remove(&c.peer_id);
                }
            }
            HubInput::Message { conn, msg } => {
                if !self.conns.contains_key(&conn) {
                    return;
                }
                self.handle_message(conn, msg, now_ms, out);
            }
            HubInput::RefreshRejoinTokens => self.refresh_rejoin_tokens(now_ms, out),
        }
    }

    fn handle_message(
        &mut self,
        conn: ConnId,
        msg: ClientMessage,
        now_ms: u64,
        out: &mut Vec<HubOutput>,
    ) {
        match msg {
            ClientMessage::ListRooms => send(
                out,
                conn,
                ServerMessage::RoomList {
                    rooms: self.room_list(),
                },
            ),
            ClientMessage::SubscribeRooms => {
                self.subscribers.insert(conn);
                send(
                    out,
                    conn,
                    ServerMessage::RoomList {
                        rooms: self.room_list(),
                    },
                );
            }
            ClientMessage::UnsubscribeRooms => {
                self.subscribers.remove(&conn);
            }
            ClientMessage::Join {
                room,
                nickname,
                access,
            } => {
                if let Err(refusal) = self.join(conn, &room, &nickname, &access, now_ms, out) {
                    refuse(out, conn, refusal);
                }
            }
            ClientMessage::Leave => {
                let Some(room_name) = self.room_display_name(conn) else {
                    return error(out, conn, ErrorCode::NotInRoom, "you are not in a room");
                };
                self.remove_from_room(conn, LeaveReason::Left, out);
                send(out, conn, ServerMessage::Left { room: room_name });
            }
            ClientMessage::Chat { text } => self.chat(conn, &text, now_ms, out),
            ClientMessage::Relay { to, from, payload } => self.relay(conn, to, from, payload, out),
            ClientMessage::SetNickname { nickname } => self.set_nickname(conn, &nickname, out),
            ClientMessage::SetHand { raised } => self.set_hand(conn, raised, now_ms, out),
            ClientMessage::React { emoji } => self.react(conn, emoji, out),
            ClientMessage::SfuPublish { sdp } => {
                self.sfu_message(conn, SfuWork::Publish { conn, sdp }, out)
            }
            ClientMessage::SfuAnswer { sdp } => {
                self.sfu_message(conn, SfuWork::Answer { conn, sdp }, out)
            }
            ClientMessage::SfuCandidate {
                target,
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                let candidate = serde_json::json!({
                    "candidate": candidate,
                    "sdpMid": sdp_mid,
                    "sdpMLineIndex": sdp_mline_index,
                });
                self.sfu_message(
                    conn,
                    SfuWork::Candidate {
                        conn,
                        target,
                        candidate,
                    },
                    out,
                )
            }
            ClientMessage::SfuLayer { peer_id, layer } => {
                if layer > super::protocol::SFU_TOP_LAYER {
                    return error(out, conn, ErrorCode::Malformed, "layer must be 0, 1 or 2");
                }
                self.sfu_message(
                    conn,
                    SfuWork::Layer {
                        conn,
                        peer: peer_id,
                        layer,
                    },
                    out,
                )
            }
            ClientMessage::SfuKeyframe { peer_id } => self.sfu_message(
                conn,
                SfuWork::Keyframe {
                    conn,
                    peer: peer_id,
                },
                out,
            ),
            ClientMessage::SfuRestart => self.sfu_message(conn, SfuWork::Restart { conn }, out),
            // Answered here, not by the connection, so the pong follows everything the hub has
            // already queued for this client: a ping is an ordering barrier.
            ClientMessage::Ping { nonce } => send(out, conn, ServerMessage::Pong { nonce }),
            // The connection handles hello itself; it never reaches the hub.
            ClientMessage::Hello { .. } => {}
        }
    }

    /// Joins `conn` to a room, creating it if needed. Checks, in order: not already in a room,
    /// the join rate, names, tokens, then the room's own rules (password, capacity, nickname).
    fn join(
        &mut self,
        conn: ConnId,
        room: &str,
        nickname: &str,
        access: &JoinAccess,
        now_ms: u64,
        out: &mut Vec<HubOutput>,
    ) -> Result<(), Refusal> {
        let Some(me) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let ScreenedJoin {
            room_name,
            nickname,
            key,
            admission,
        } = self.config.access.screen_join(
            me.room.is_some(),
            &mut me.join_rate,
            room,
            nickname,
            access,
            now_ms,
        )?;
        match self.rooms.get(&key) {
            Some(existing) => {
                self.config
                    .access
                    .check_password(existing.password_hash.as_deref(), &admission)?;
                let capacity = self.capacity(existing);
                if existing.members.len() >= capacity {
                    return Err(Refusal::new(
                        ErrorCode::RoomFull,
                        format!(
                            "room {:?} is full ({} of {capacity})",
                            existing.display_name,
                            existing.members.len(),
                        ),
                    ));
                }
                let wanted = nickname.to_lowercase();
                let taken = existing.members.iter().any(|m| {
                    self.conns
                        .get(m)
                        .and_then(|c| c.nickname.as_ref())
                        .is_some_and(|n| n.to_lowercase() == wanted)
                });
                if taken {
                    return Err(Refusal::new(
                        ErrorCode::NicknameTaken,
                        format!("someone in this room is already called {nickname:?}"),
                    ));
                }
            }
            None => {
                if self.rooms.len() >= self.config.max_rooms {
                    return Err(Refusal::new(
                        ErrorCode::TooManyRooms,
                        format!(
                            "the server already has {} rooms, its limit",
                            self.config.max_rooms
                        ),
                    ));
                }
                // Someone coming back to a room that closed meanwhile recreates it as it was.
                let (private, password_hash) = if admission.rejoining {
                    (
                        admission.recreate_private,
                        admission.recreate_password_hash.clone(),
                    )
                } else {
                    (access.private, admission.password_hash.clone())
                };
                out.push(HubOutput::Room(RoomEvent::room(
                    EventKind::RoomStarted,
                    &room_name,
                )));
                self.rooms.insert(
                    key.clone(),
                    Room {
                        display_name: room_name.clone(),
                        members: Vec::new(),
                        history: VecDeque::new(),
                        private,
                        password_hash,
                        sfu: false,
                        large: access.large && self.config.sfu_above.is_some(),
                    },
                );
            }
        }

        let Some(me) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        me.nickname = Some(nickname.clone());
        me.room = Some(key.clone());
        me.rejoin_issued_ms = now_ms;
        me.hand_raised_at_ms = None;
        let you = PeerInfo {
            id: me.peer_id.clone(),
            nickname,
            hand_raised_at_ms: None,
        };
        let Some(room) = self.rooms.get_mut(&key) else {
            return Ok(());
        };
        let others = room.members.clone();
        room.members.push(conn);
        let peers = others
            .iter()
            .filter_map(|m| self.peer_info(*m))
            .collect::<Vec<_>>();
        let Some(room) = self.rooms.get(&key) else {
            return Ok(());
        };
        out.push(HubOutput::Room(RoomEvent::participant(
            EventKind::ParticipantJoined,
            &room.display_name,
            &you.id,
            &you.nickname,
        )));
        let rejoin_token = self.config.access.rejoin_token(
            &key,
            room.private,
            room.password_hash.as_deref(),
            &you.id,
            now_ms,
        );
        send(
            out,
            conn,
            ServerMessage::Joined {
                room: room.display_name.clone(),
                you: you.clone(),
                peers,
                history: room.history.iter().cloned().collect(),
                capacity: self.capacity(room),
                private: room.private,
                rejoin_token,
                sfu: self.on_sfu_after_join(room),
            },
        );
        let you_id = you.id.clone();
        if !others.is_empty() {
            out.push(HubOutput::Deliver {
                to: others,
                msg: ServerMessage::PeerJoined {
                    room: room.display_name.clone(),
                    peer: you,
                },
            });
        }
        self.sfu_after_join(&key, conn, you_id, out);
        self.announce_room(&key, out);
        Ok(())
    }

    /// Whether `room`, with its newest member in, is on the SFU (`sfu_after_join` puts it
    /// there if it is not yet).
    fn on_sfu_after_join(&self, room: &Room) -> bool {
        self.config
            .sfu_above
            .is_some_and(|above| room.sfu || room.members.len() > above || room.large)
    }

    /// A room that grew past the SFU threshold moves onto the SFU, everyone in it told; a
    /// newcomer to a room already there is told and added.
    fn sfu_after_join(&mut self, key: &str, conn: ConnId, peer: PeerId, out: &mut Vec<HubOutput>) {
        let Some(above) = self.config.sfu_above else {
            return;
        };
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        if room.sfu {
            // Also said in `joined`; kept for clients that do not read it there.
            send(out, conn, ServerMessage::RoomMode { sfu: true });
            out.push(HubOutput::Sfu(SfuWork::Joined {
                room: key.to_owned(),
                conn,
                peer,
            }));
        } else if room.members.len() > above || room.large {
            room.sfu = true;
            let members = room.members.clone();
            out.push(HubOutput::Deliver {
                to: members.clone(),
                msg: ServerMessage::RoomMode { sfu: true },
            });
            let members = members
                .into_iter()
                .filter_map(|m| Some((m, self.conns.get(&m)?.peer_id.clone())))
                .collect();
            out.push(HubOutput::Sfu(SfuWork::RoomOn {
                room: key.to_owned(),
                members,
            }));
            out.push(HubOutput::Room(RoomEvent {
                sfu: Some(true),
                ..RoomEvent::room(EventKind::SfuSwitch, &room.display_name)
            }));
        }
    }

    /// `sfu_publish` and `sfu_answer` are for members of a room on the SFU only; the
    /// orchestrator knows each connection's room, so nothing in them can point elsewhere.
    fn sfu_message(&mut self, conn: ConnId, work: SfuWork, out: &mut Vec<HubOutput>) {
        let in_sfu_room = self
            .conns
            .get(&conn)
            .and_then(|c| c.room.as_ref())
            .and_then(|key| self.rooms.get(key))
            .is_some_and(|r| r.sfu);
        if in_sfu_room {
            out.push(HubOutput::Sfu(work));
        } else {
            error(
                out,
                conn,
                ErrorCode::NotSfuRoom,
                "your room is not on the SFU: connect to each peer instead",
            );
        }
    }

    fn chat(&mut self, conn: ConnId, text: &str, now_ms: u64, out: &mut Vec<HubOutput>) {
        let Some((key, peer_id, nickname)) = self
            .conns
            .get(&conn)
            .and_then(|c| Some((c.room.clone()?, c.peer_id.clone(), c.nickname.clone()?)))
        else {
            return error(
                out,
                conn,
                ErrorCode::NotInRoom,
                "join a room before chatting",
            );
        };
        let text = match validate_chat(text) {
            Ok(t) => t,
            Err(why) => return error(out, conn, ErrorCode::BadChat, &why),
        };
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        let message = ChatMessage {
            id: self.next_chat_id,
            from: peer_id,
            nickname,
            text,
            time_ms: now_ms,
        };
        self.next_chat_id += 1;
        room.history.push_back(message.clone());
        while room.history.len() > self.config.history_len {
            room.history.pop_front();
        }
        out.push(HubOutput::Deliver {
            to: room.members.clone(),
            msg: ServerMessage::Chat { message },
        });
    }

    fn relay(
        &mut self,
        conn: ConnId,
        to: PeerId,
        claimed_from: Option<PeerId>,
        payload: serde_json::Value,
        out: &mut Vec<HubOutput>,
    ) {
        let Some(me) = self.conns.get(&conn) else {
            return;
        };
        if let Some(claimed) = claimed_from
            && claimed != me.peer_id
        {
            return error(
                out,
                conn,
                ErrorCode::ForgedSender,
                "the \"from\" field must be your own peer id; the message was not delivered",
            );
        }
        let Some(my_room) = me.room.as_ref() else {
            return error(
                out,
                conn,
                ErrorCode::NotInRoom,
                "join a room before relaying",
            );
        };
        let target = self
            .by_peer
            .get(&to)
            .copied()
            .filter(|t| *t != conn)
            .filter(|t| {
                self.conns
                    .get(t)
                    .is_some_and(|c| c.room.as_ref() == Some(my_room))
            });
        let Some(target) = target else {
            return error(
                out,
                conn,
                ErrorCode::PeerNotFound,
                &format!("no other peer {to} in your room"),
            );
        };
        send(
            out,
            target,
            ServerMessage::Relay {
                from: me.peer_id.clone(),
                payload,
            },
        );
    }

    fn set_nickname(&mut self, conn: ConnId, nickname: &str, out: &mut Vec<HubOutput>) {
        let nickname = match validate_nickname(nickname) {
            Ok(n) => n,
            Err(why) => return error(out, conn, ErrorCode::BadNickname, &why),
        };
        let Some(me) = self.conns.get(&conn) else {
            return;
        };
        let peer_id = me.peer_id.clone();
        let recipients = match me.room.as_ref().and_then(|k| self.rooms.get(k)) {
            Some(room) => {
                let wanted = nickname.to_lowercase();
                let taken = room.members.iter().filter(|m| **m != conn).any(|m| {
                    self.conns
                        .get(m)
                        .and_then(|c| c.nickname.as_ref())
                        .is_some_and(|n| n.to_lowercase() == wanted)
                });
                if taken {
                    return error(
                        out,
                        conn,
                        ErrorCode::NicknameTaken,
                        &format!("someone in this room is already called {nickname:?}"),
                    );
                }
                room.members.clone()
            }
            None => vec![conn],
        };
        if let Some(me) = self.conns.get_mut(&conn) {
            me.nickname = Some(nickname.clone());
        }
        out.push(HubOutput::Deliver {
            to: recipients,
            msg: ServerMessage::NicknameChanged { peer_id, nickname },
        });
    }

    /// The members of `conn`'s room, or an error to `conn` saying it is in none.
    fn room_members_of(&self, conn: ConnId, out: &mut Vec<HubOutput>) -> Option<Vec<ConnId>> {
        let members = self
            .conns
            .get(&conn)
            .and_then(|c| c.room.as_ref())
            .and_then(|key| self.rooms.get(key))
            .map(|room| room.members.clone());
        if members.is_none() {
            error(out, conn, ErrorCode::NotInRoom, "you are not in a room");
        }
        members
    }

    fn set_hand(&mut self, conn: ConnId, raised: bool, now_ms: u64, out: &mut Vec<HubOutput>) {
        let Some(members) = self.room_members_of(conn, out) else {
            return;
        };
        // A new hand goes after every hand already up, even within the same millisecond, so
        // the stamps alone give the order of raising.
        let latest_up = members
            .iter()
            .filter_map(|m| self.conns.get(m)?.hand_raised_at_ms)
            .max();
        let Some(me) = self.conns.get_mut(&conn) else {
            return;
        };
        // Raising a raised hand keeps its place in the queue.
        me.hand_raised_at_ms = match (raised, me.hand_raised_at_ms) {
            (false, _) => None,
            (true, Some(at)) => Some(at),
            (true, None) => Some(latest_up.map_or(now_ms, |l| now_ms.max(l + 1))),
        };
        out.push(HubOutput::Deliver {
            to: members,
            msg: ServerMessage::HandChanged {
                peer_id: me.peer_id.clone(),
                raised_at_ms: me.hand_raised_at_ms,
            },
        });
    }

    fn react(&mut self, conn: ConnId, emoji: String, out: &mut Vec<HubOutput>) {
        if let Err(why) = validate_reaction(&emoji) {
            return error(out, conn, ErrorCode::Malformed, &why);
        }
        let Some(members) = self.room_members_of(conn, out) else {
            return;
        };
        let Some(me) = self.conns.get(&conn) else {
            return;
        };
        out.push(HubOutput::Deliver {
            to: members,
            msg: ServerMessage::Reaction {
                peer_id: me.peer_id.clone(),
                emoji,
            },
        });
    }

    fn refresh_rejoin_tokens(&mut self, now_ms: u64, out: &mut Vec<HubOutput>) {
        for (conn, c) in self.conns.iter_mut() {
            let Some(key) = c.room.as_deref() else {
                continue;
            };
            let Some(room) = self.rooms.get(key) else {
                continue;
            };
            if let Some(token) = self.config.access.renew_rejoin_token(
                &mut c.rejoin_issued_ms,
                key,
                room.private,
                room.password_hash.as_deref(),
                &c.peer_id,
                now_ms,
            ) {
                send(out, *conn, ServerMessage::RejoinToken { token });
            }
        }
    }

    /// Takes `conn` out of its room (if any), tells the others, and closes an emptied room.
    fn remove_from_room(&mut self, conn: ConnId, reason: LeaveReason, out: &mut Vec<HubOutput>) {
        let Some(me) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(key) = me.room.take() else {
            return;
        };
        me.hand_raised_at_ms = None;
        let peer_id = me.peer_id.clone();
        let nickname = me.nickname.clone().unwrap_or_default();
        let Some(room) = self.rooms.get_mut(&key) else {
            return;
        };
        room.members.retain(|m| *m != conn);
        if room.sfu {
            out.push(HubOutput::Sfu(if room.members.is_empty() {
                SfuWork::RoomOff { room: key.clone() }
            } else {
                SfuWork::Left {
                    room: key.clone(),
                    conn,
                }
            }));
        }
        out.push(HubOutput::Room(RoomEvent {
            reason: Some(reason),
            ..RoomEvent::participant(
                EventKind::ParticipantLeft,
                &room.display_name,
                &peer_id,
                &nickname,
            )
        }));
        if room.members.is_empty() {
            let name = room.display_name.clone();
            let private = room.private;
            out.push(HubOutput::Room(RoomEvent::room(
                EventKind::RoomFinished,
                &name,
            )));
            self.rooms.remove(&key);
            if !private {
                self.announce(ServerMessage::RoomClosed { name }, out);
            }
            return;
        }
        out.push(HubOutput::Deliver {
            to: room.members.clone(),
            msg: ServerMessage::PeerLeft {
                room: room.display_name.clone(),
                peer_id,
                reason,
            },
        });
        // Back to a mesh once the room is below the threshold by one: a room that hovers at
        // the threshold does not move back and forth with every join and leave.
        if room.sfu
            && !room.large
            && self
                .config
                .sfu_above
                .is_some_and(|above| room.members.len() < above)
        {
            room.sfu = false;
            out.push(HubOutput::Deliver {
                to: room.members.clone(),
                msg: ServerMessage::RoomMode { sfu: false },
            });
            out.push(HubOutput::Sfu(SfuWork::RoomOff { room: key.clone() }));
            out.push(HubOutput::Room(RoomEvent {
                sfu: Some(false),
                ..RoomEvent::room(EventKind::SfuSwitch, &room.display_name)
            }));
        }
        self.announce_room(&key, out);
    }

    /// Tells room-list subscribers about the current head count of room `key`.
    fn announce_room(&self, key: &str, out: &mut Vec<HubOutput>) {
        if let Some(room) = self.rooms.get(key).filter(|r| !r.private) {
            let room = self.room_info(room);
            self.announce(ServerMessage::RoomUpdated { room }, out);
        }
    }

    fn announce(&self, msg: ServerMessage, out: &mut Vec<HubOutput>) {
        if self.subscribers.is_empty() {
            return;
        }
        let mut to: Vec<ConnId> = self.subscribers.iter().copied().collect();
        to.sort_unstable();
        out.push(HubOutput::Deliver { to, msg });
    }

    fn capacity(&self, room: &Room) -> usize {
        if room.large {
            self.config.max_large_room_size
        } else {
            self.config.max_room_size
        }
    }

    fn room_info(&self, room: &Room) -> RoomInfo {
        RoomInfo {
            name: room.display_name.clone(),
            people: room.members.len(),
            capacity: self.capacity(room),
            locked: room.password_hash.is_some(),
        }
    }

    fn room_display_name(&self, conn: ConnId) -> Option<String> {
        let key = self.conns.get(&conn)?.room.as_ref()?;
        Some(self.rooms.get(key)?.display_name.clone())
    }

    fn peer_info(&self, conn: ConnId) -> Option<PeerInfo> {
        let c = self.conns.get(&conn)?;
        Some(PeerInfo {
            id: c.peer_id.clone(),
            nickname: c.nickname.clone()?,
            hand_raised_at_ms: c.hand_raised_at_ms,
        })
    }
}

fn send(out: &mut Vec<HubOutput>, to: ConnId, msg: ServerMessage) {
    out.push(HubOutput::Deliver { to: vec![to], msg });
}

fn refuse(out: &mut Vec<HubOutput>, to: ConnId, refusal: Refusal) {
    error(out, to, refusal.code, &refusal.message);
}

fn error(out: &mut Vec<HubOutput>, to: ConnId, code: ErrorCode, message: &str) {
    send(
        out,
        to,
        ServerMessage::Error {
            code,
            message: message.to_owned(),
            fatal: false,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Harness {
        hub: Hub,
        out: Vec<HubOutput>,
        now: u64,
    }

    impl Harness {
        fn new(config: HubConfig) -> Self {
            Harness {
                hub: Hub::new(config),
                out: Vec::new(),
                now: 1_000,
            }
        }
        fn connect(&mut self, conn: ConnId) {
            self.input(HubInput::Connected {
                conn,
                peer_id: PeerId(format!("p{conn}")),
            });
        }
        fn msg(&mut self, conn: ConnId, msg: ClientMessage) -> Vec<HubOutput> {
            self.input(HubInput::Message { conn, msg })
        }
        fn input(&mut self, input: HubInput) -> Vec<HubOutput> {
            self.now += 1;
            self.hub.handle(input, self.now, &mut self.out);
            std::mem::take(&mut self.out)
        }
        fn join(&mut self, conn: ConnId, room: &str, nick: &str) -> Vec<HubOutput> {
            self.msg(
                conn,
                ClientMessage::Join {
                    room: room.into(),
                    nickname: nick.into(),
                    access: JoinAccess::default(),
                },
            )
        }
    }

    fn to_conn(outs: &[HubOutput], conn: ConnId) -> Vec<&ServerMessage> {
        outs.iter()
            .filter_map(|o| match o {
                HubOutput::Deliver { to, msg } => to.contains(&conn).then_some(msg),
                HubOutput::Room(_) | HubOutput::Sfu(_) => None,
            })
            .collect()
    }

    fn room_events(outs: &[HubOutput]) -> Vec<(EventKind, Option<String>)> {
        outs.iter()
            .filter_map(|o| match o {
                HubOutput::Room(e) => Some((e.event, e.participant.clone().map(|p| p.nickname))),
                HubOutput::Deliver { .. } | HubOutput::Sfu(_) => None,
            })
            .collect()
    }

    fn sfu_work(outs: &[HubOutput]) -> Vec<SfuWork> {
        outs.iter()
            .filter_map(|o| match o {
                HubOutput::Sfu(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_room_created_large_is_on_the_sfu_from_its_first_member_and_holds_more() {
        let mut h = Harness::new(HubConfig {
            sfu_above: Some(4),
            max_room_size: 6,
            max_large_room_size: 8,
            ..HubConfig::default()
        });
        for conn in 1..=10 {
            h.connect(conn);
        }
        let large = JoinAccess {
            large: true,
            ..JoinAccess::default()
        };
        let join = |room: &str, nick: &str| ClientMessage::Join {
            room: room.into(),
            nickname: nick.into(),
            access: large.clone(),
        };
        let first = h.msg(1, join("Town hall", "ann"));
        assert!(to_conn(&first, 1).contains(&&ServerMessage::RoomMode { sfu: true }));
        assert_eq!(
            sfu_work(&first),
            vec![SfuWork::RoomOn {
                room: "town hall".into(),
                members: vec![(1, PeerId("p1".into()))],
            }]
        );
        let capacity = to_conn(&first, 1).iter().find_map(|m| match m {
            ServerMessage::Joined { capacity, .. } => Some(*capacity),
            _ => None,
        });
        assert_eq!(capacity, Some(8));
        // Later joiners need not ask: the room is large. Eight fit, the ninth does not.
        for conn in 2..=8 {
            let joined = h.join(conn, "town hall", &format!("n{conn}"));
            assert!(error_code(&joined, conn).is_none(), "{joined:?}");
        }
        assert_eq!(
            error_code(&h.join(9, "town hall", "late"), 9),
            Some(ErrorCode::RoomFull)
        );
        // Emptying down to one does not move it back to a mesh.
        for conn in 2..=8 {
            let left = h.msg(conn, ClientMessage::Leave);
            assert!(!to_conn(&left, 1).contains(&&ServerMessage::RoomMode { sfu: false }));
        }
        // Without an SFU, `large` is a plain room.
        let mut plain = Harness::new(HubConfig::default());
        plain.connect(1);
        let joined = plain.msg(1, join("Town hall", "ann"));
        assert!(sfu_work(&joined).is_empty());
        assert!(!to_conn(&joined, 1).contains(&&ServerMessage::RoomMode { sfu: true }));
    }

    #[test]
    fn a_room_moves_onto_the_sfu_past_the_threshold_and_only_its_members_use_it() {
        let mut h = Harness::new(HubConfig {
            sfu_above: Some(2),
            ..HubConfig::default()
        });
        for conn in 1..=5 {
            h.connect(conn);
        }
        let joined_on_sfu = |outs: &[HubOutput], conn: ConnId| {
            to_conn(outs, conn).iter().find_map(|m| match m {
                ServerMessage::Joined { sfu, .. } => Some(*sfu),
                _ => None,
            })
        };
        let first = h.join(1, "big", "ann");
        assert!(sfu_work(&first).is_empty());
        assert_eq!(joined_on_sfu(&first, 1), Some(false));
        assert!(sfu_work(&h.join(2, "big", "bob")).is_empty());
        let third = h.join(3, "big", "cat");
        // The join that moves the room says so in `joined` too, as does every later one.
        assert_eq!(joined_on_sfu(&third, 3), Some(true));
        assert_eq!(
            sfu_work(&third),
            vec![SfuWork::RoomOn {
                room: "big".into(),
                members: vec![
                    (1, PeerId("p1".into())),
                    (2, PeerId("p2".into())),
                    (3, PeerId("p3".into()))
                ],
            }]
        );
        for conn in [1, 2, 3] {
            assert!(to_conn(&third, conn).contains(&&ServerMessage::RoomMode { sfu: true }));
        }
        let fourth = h.join(4, "big", "dan");
        assert_eq!(
            sfu_work(&fourth),
            vec![SfuWork::Joined {
                room: "big".into(),
                conn: 4,
                peer: PeerId("p4".into())
            }]
        );
        assert!(to_conn(&fourth, 4).contains(&&ServerMessage::RoomMode { sfu: true }));
        assert_eq!(joined_on_sfu(&fourth, 4), Some(true));
        let publish = h.msg(4, ClientMessage::SfuPublish { sdp: "o".into() });
        assert_eq!(
            sfu_work(&publish),
            vec![SfuWork::Publish {
                conn: 4,
                sdp: "o".into()
            }]
        );
        // Someone in a mesh room cannot reach the SFU.
        h.join(5, "small", "eve");
        let refused = h.msg(5, ClientMessage::SfuAnswer { sdp: "a".into() });
        assert!(sfu_work(&refused).is_empty());
        assert_eq!(error_code(&refused, 5), Some(ErrorCode::NotSfuRoom));
        let left = h.msg(4, ClientMessage::Leave);
        assert_eq!(
            sfu_work(&left),
            vec![SfuWork::Left {
                room: "big".into(),
                conn: 4
            }]
        );
        // Down to the threshold (two): it stays on the SFU (hysteresis) ...
        let at = h.msg(1, ClientMessage::Leave);
        assert_eq!(
            sfu_work(&at),
            vec![SfuWork::Left {
                room: "big".into(),
                conn: 1
            }]
        );
        assert!(!to_conn(&at, 2).contains(&&ServerMessage::RoomMode { sfu: false }));
        // ... and moves back to a mesh below it, everyone told.
        let back = h.msg(2, ClientMessage::Leave);
        assert_eq!(
            sfu_work(&back),
            vec![
                SfuWork::Left {
                    room: "big".into(),
                    conn: 2
                },
                SfuWork::RoomOff { room: "big".into() }
            ]
        );
        assert!(to_conn(&back, 3).contains(&&ServerMessage::RoomMode { sfu: false }));
        let events = room_events(&back);
        assert!(events.contains(&(EventKind::SfuSwitch, None)), "{events:?}");
        let last = h.msg(3, ClientMessage::Leave);
        assert!(
            sfu_work(&last).is_empty(),
            "a mesh again: nothing for the SFU"
        );
    }

    #[test]
    fn a_rooms_life_is_reported_for_webhooks_in_order() {
        let mut h = Harness::new(HubConfig::default());
        let (a, b, c, d) = (1, 2, 3, 4);
        for conn in [a, b, c, d] {
            h.connect(conn);
        }
        let mut events = room_events(&h.join(a, "Standup", "ann"));
        events.extend(room_events(&h.join(b, "standup", "bob")));
        events.extend(room_events(&h.input(HubInput::Disconnected {
            conn: a,
            reason: LeaveReason::TimedOut,
        })));
        events.extend(room_events(&h.msg(b, ClientMessage::Leave)));
        use EventKind::*;
        let named = |e, n: &str| (e, Some(n.to_owned()));
        assert_eq!(
            events,
            vec![
                (RoomStarted, None),
                named(ParticipantJoined, "ann"),
                named(ParticipantJoined, "bob"),
                named(ParticipantLeft, "ann"),
                named(ParticipantLeft, "bob"),
                (RoomFinished, None),
            ]
        );
        // A refused join (the nickname is taken) reports nothing.
        h.join(c, "Full", "cat");
        assert!(room_events(&h.join(d, "Full", "cat")).is_empty());
    }

    fn error_code(outs: &[HubOutput], conn: ConnId) -> Option<ErrorCode> {
        to_conn(outs, conn).into_iter().find_map(|m| match m {
            ServerMessage::Error { code, .. } => Some(*code),
            _ => None,
        })
    }

    #[test]
    fn join_announces_to_room_and_subscribers() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=3 {
            h.connect(c);
        }
        h.msg(3, ClientMessage::SubscribeRooms);
        let outs = h.join(1, "Standup", "ann");
        assert!(
            matches!(to_conn(&outs, 1)[0], ServerMessage::Joined { peers, .. } if peers.is_empty())
        );
        assert!(to_conn(&outs, 3).iter().any(|m| matches!(m,
            ServerMessage::RoomUpdated { room } if room.people == 1 && room.name == "Standup")));
        let outs = h.join(2, "standup", "bob");
        match to_conn(&outs, 2)[0] {
            ServerMessage::Joined { room, peers, .. } => {
                assert_eq!(room, "Standup");
                assert_eq!(peers.len(), 1);
                assert_eq!(peers[0].nickname, "ann");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(to_conn(&outs, 1).iter().any(|m| matches!(m,
            ServerMessage::PeerJoined { peer, .. } if peer.nickname == "bob")));
    }

    fn hand_of(outs: &[HubOutput], conn: ConnId) -> Option<(PeerId, Option<u64>)> {
        to_conn(outs, conn).into_iter().find_map(|m| match m {
            ServerMessage::HandChanged {
                peer_id,
                raised_at_ms,
            } => Some((peer_id.clone(), *raised_at_ms)),
            _ => None,
        })
    }

    #[test]
    fn raised_hands_reach_the_room_keep_their_place_and_are_shown_to_late_joiners() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=4 {
            h.connect(c);
        }
        h.join(1, "r", "ann");
        h.join(2, "r", "bob");
        h.join(4, "elsewhere", "dan");
        let outs = h.msg(2, ClientMessage::SetHand { raised: true });
        let (peer, at) = hand_of(&outs, 1).expect("ann is told");
        assert_eq!(peer, PeerId("p2".into()));
        let at = at.expect("raised, with a time");
        assert_eq!(hand_of(&outs, 2), Some((PeerId("p2".into()), Some(at))));
        assert_eq!(hand_of(&outs, 4), None, "another room hears nothing");
        // Raising again keeps bob's place in line.
        let outs = h.msg(2, ClientMessage::SetHand { raised: true });
        assert_eq!(hand_of(&outs, 1), Some((PeerId("p2".into()), Some(at))));
        // A late joiner sees the raised hand in `joined`.
        let outs = h.join(3, "r", "cat");
        match to_conn(&outs, 3)[0] {
            ServerMessage::Joined { peers, you, .. } => {
                let bob = peers.iter().find(|p| p.nickname == "bob").unwrap();
                assert_eq!(bob.hand_raised_at_ms, Some(at));
                let ann = peers.iter().find(|p| p.nickname == "ann").unwrap();
                assert_eq!(ann.hand_raised_at_ms, None);
                assert_eq!(you.hand_raised_at_ms, None);
            }
            other => panic!("unexpected {other:?}"),
        }
        // Lowered, it is gone for everyone; leaving and coming back starts with it down.
        let outs = h.msg(2, ClientMessage::SetHand { raised: false });
        assert_eq!(hand_of(&outs, 3), Some((PeerId("p2".into()), None)));
        h.msg(2, ClientMessage::SetHand { raised: true });
        h.msg(2, ClientMessage::Leave);
        let outs = h.join(2, "r", "bob");
        match to_conn(&outs, 3).as_slice() {
            [ServerMessage::PeerJoined { peer, .. }, ..] => {
                assert_eq!(peer.hand_raised_at_ms, None)
            }
            other => panic!("unexpected {other:?}"),
        }
        // Outside a room: refused.
        h.connect(5);
        let outs = h.msg(5, ClientMessage::SetHand { raised: true });
        assert_eq!(error_code(&outs, 5), Some(ErrorCode::NotInRoom));
    }

    #[test]
    fn hands_raised_in_the_same_millisecond_still_get_distinct_times_in_order() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=3 {
            h.connect(c);
        }
        h.join(1, "r", "ann");
        h.join(2, "r", "bob");
        h.join(3, "r", "cat");
        let same_ms = h.now + 1;
        let raise = |h: &mut Harness, conn: ConnId| {
            let msg = ClientMessage::SetHand { raised: true };
            h.hub
                .handle(HubInput::Message { conn, msg }, same_ms, &mut h.out);
            let outs = std::mem::take(&mut h.out);
            hand_of(&outs, 1).and_then(|(_, at)| at).expect("raised")
        };
        let cat = raise(&mut h, 3);
        let ann = raise(&mut h, 1);
        let bob = raise(&mut h, 2);
        assert!(cat < ann && ann < bob, "{cat} {ann} {bob}");
    }

    #[test]
    fn reactions_reach_the_room_and_unknown_ones_are_refused() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=3 {
            h.connect(c);
        }
        h.join(1, "r", "ann");
        h.join(2, "r", "bob");
        let outs = h.msg(
            1,
            ClientMessage::React {
                emoji: "🎉".into()
            },
        );
        for conn in [1, 2] {
            assert!(to_conn(&outs, conn).iter().any(|m| matches!(m,
                ServerMessage::Reaction { peer_id, emoji } if peer_id.as_str() == "p1" && emoji == "🎉")));
        }
        for hostile in ["<script>", "", "🎉🎉", "x"] {
            let outs = h.msg(
                1,
                ClientMessage::React {
                    emoji: hostile.into(),
                },
            );
            assert_eq!(
                error_code(&outs, 1),
                Some(ErrorCode::Malformed),
                "{hostile:?}"
            );
            assert!(to_conn(&outs, 2).is_empty(), "{hostile:?} reached bob");
        }
        let outs = h.msg(
            3,
            ClientMessage::React {
                emoji: "👍".into()
            },
        );
        assert_eq!(error_code(&outs, 3), Some(ErrorCode::NotInRoom));
    }

    #[test]
    fn capacity_and_nickname_rules() {
        let mut h = Harness::new(HubConfig {
            max_room_size: 2,
            ..HubConfig::default()
        });
        for c in 1..=4 {
            h.connect(c);
        }
        h.join(1, "r", "Ann");
        let outs = h.join(2, "r", "ann");
        assert_eq!(error_code(&outs, 2), Some(ErrorCode::NicknameTaken));
        h.join(2, "r", "bob");
        let outs = h.join(3, "r", "cat");
        assert_eq!(error_code(&outs, 3), Some(ErrorCode::RoomFull));
        let outs = h.join(4, "../etc", "dan");
        assert_eq!(error_code(&outs, 4), Some(ErrorCode::BadRoomName));
        let outs = h.join(4, "ok", "");
        assert_eq!(error_code(&outs, 4), Some(ErrorCode::BadNickname));
        let outs = h.join(1, "other", "ann");
        assert_eq!(error_code(&outs, 1), Some(ErrorCode::AlreadyInRoom));
    }

    #[test]
    fn history_is_capped_and_given_to_late_joiners() {
        let mut h = Harness::new(HubConfig {
            history_len: 3,
            ..HubConfig::default()
        });
        h.connect(1);
        h.connect(2);
        h.join(1, "r", "ann");
        for i in 0..5 {
            h.msg(
                1,
                ClientMessage::Chat {
                    text: format!("m{i}"),
                },
            );
        }
        let outs = h.join(2, "r", "bob");
        match to_conn(&outs, 2)[0] {
            ServerMessage::Joined { history, .. } => {
                let texts: Vec<_> = history.iter().map(|m| m.text.as_str()).collect();
                assert_eq!(texts, ["m2", "m3", "m4"]);
                assert!(history.windows(2).all(|w| w[0].id < w[1].id));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn relay_stays_inside_the_room_and_stamps_sender() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=3 {
            h.connect(c);
        }
        h.join(1, "a", "ann");
        h.join(2, "a", "bob");
        h.join(3, "b", "cat");
        let payload = serde_json::json!({"kind": "offer"});
        let outs = h.msg(
            1,
            ClientMessage::Relay {
                to: "p2".into(),
                from: None,
                payload: payload.clone(),
            },
        );
        assert_eq!(
            to_conn(&outs, 2),
            vec![&ServerMessage::Relay {
                from: "p1".into(),
                payload: payload.clone()
            }]
        );
        let outs = h.msg(
            1,
            ClientMessage::Relay {
                to: "p3".into(),
                from: None,
                payload: payload.clone(),
            },
        );
        assert_eq!(error_code(&outs, 1), Some(ErrorCode::PeerNotFound));
        assert!(to_conn(&outs, 3).is_empty());
        let outs = h.msg(
            1,
            ClientMessage::Relay {
                to: "p2".into(),
                from: Some("p3".into()),
                payload: payload.clone(),
            },
        );
        assert_eq!(error_code(&outs, 1), Some(ErrorCode::ForgedSender));
        assert!(to_conn(&outs, 2).is_empty());
        let outs = h.msg(
            1,
            ClientMessage::Relay {
                to: "nobody".into(),
                from: None,
                payload,
            },
        );
        assert_eq!(error_code(&outs, 1), Some(ErrorCode::PeerNotFound));
    }

    #[test]
    fn leaving_and_disconnecting_close_empty_rooms() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=3 {
            h.connect(c);
        }
        h.msg(3, ClientMessage::SubscribeRooms);
        h.join(1, "r", "ann");
        h.join(2, "r", "bob");
        let outs = h.input(HubInput::Disconnected {
            conn: 2,
            reason: LeaveReason::TimedOut,
        });
        assert!(to_conn(&outs, 1).iter().any(|m| matches!(m,
            ServerMessage::PeerLeft { peer_id, reason: LeaveReason::TimedOut, .. } if peer_id.as_str() == "p2")));
        let outs = h.msg(1, ClientMessage::Leave);
        assert!(matches!(to_conn(&outs, 1)[0], ServerMessage::Left { .. }));
        assert!(
            to_conn(&outs, 3)
                .iter()
                .any(|m| matches!(m, ServerMessage::RoomClosed { name } if name == "r"))
        );
        assert_eq!(h.hub.room_count(), 0);
        let outs = h.msg(1, ClientMessage::Leave);
        assert_eq!(error_code(&outs, 1), Some(ErrorCode::NotInRoom));
    }

    #[test]
    fn room_limit_and_nickname_change() {
        let mut h = Harness::new(HubConfig {
            max_rooms: 1,
            ..HubConfig::default()
        });
        for c in 1..=3 {
            h.connect(c);
        }
        h.join(1, "one", "ann");
        let outs = h.join(2, "two", "bob");
        assert_eq!(error_code(&outs, 2), Some(ErrorCode::TooManyRooms));
        h.join(2, "one", "bob");
        let outs = h.msg(
            2,
            ClientMessage::SetNickname {
                nickname: "ANN".into(),
            },
        );
        assert_eq!(error_code(&outs, 2), Some(ErrorCode::NicknameTaken));
        let outs = h.msg(
            2,
            ClientMessage::SetNickname {
                nickname: "bobby".into(),
            },
        );
        assert!(to_conn(&outs, 1).iter().any(|m| matches!(m,
            ServerMessage::NicknameChanged { nickname, .. } if nickname == "bobby")));
        let outs = h.msg(3, ClientMessage::Chat { text: "hi".into() });
        assert_eq!(error_code(&outs, 3), Some(ErrorCode::NotInRoom));
    }

    fn join_with(
        h: &mut Harness,
        conn: ConnId,
        room: &str,
        nick: &str,
        access: JoinAccess,
    ) -> Vec<HubOutput> {
        h.msg(
            conn,
            ClientMessage::Join {
                room: room.into(),
                nickname: nick.into(),
                access,
            },
        )
    }

    fn rejoin_token_of(outs: &[HubOutput], conn: ConnId) -> String {
        to_conn(outs, conn)
            .into_iter()
            .find_map(|m| match m {
                ServerMessage::Joined { rejoin_token, .. } => rejoin_token.clone(),
                _ => None,
            })
            .expect("joined with a rejoin token")
    }

    #[test]
    fn private_rooms_stay_out_of_the_list() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=3 {
            h.connect(c);
        }
        h.msg(3, ClientMessage::SubscribeRooms);
        let private = JoinAccess {
            private: true,
            ..JoinAccess::default()
        };
        let outs = join_with(&mut h, 1, "Secret Plans", "ann", private);
        assert!(matches!(
            to_conn(&outs, 1)[0],
            ServerMessage::Joined { private: true, .. }
        ));
        assert!(
            to_conn(&outs, 3).is_empty(),
            "subscriber heard of a private room"
        );
        h.join(2, "Open", "bob");
        let outs = h.msg(3, ClientMessage::ListRooms);
        let ServerMessage::RoomList { rooms } = to_conn(&outs, 3)[0] else {
            panic!("no list");
        };
        assert_eq!(
            rooms.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["Open"]
        );
        // Knowing the name is enough to join a private room without a password.
        let outs = h.join(3, "secret plans", "cat");
        assert!(matches!(to_conn(&outs, 3)[0], ServerMessage::Joined { .. }));
        h.msg(1, ClientMessage::Leave);
        let outs = h.msg(3, ClientMessage::Leave);
        assert!(
            to_conn(&outs, 2).is_empty(),
            "closing a private room was announced"
        );
    }

    #[test]
    fn passwords_and_rejoin_tokens() {
        let mut h = Harness::new(HubConfig::default());
        for c in 1..=4 {
            h.connect(c);
        }
        h.msg(4, ClientMessage::SubscribeRooms);
        let pw = |p: &str| JoinAccess {
            password: Some(p.into()),
            ..JoinAccess::default()
        };
        let outs = join_with(&mut h, 1, "Board", "ann", pw("hunter2"));
        let rejoin = rejoin_token_of(&outs, 1);
        assert!(to_conn(&outs, 4).iter().any(|m| matches!(m,
            ServerMessage::RoomUpdated { room } if room.locked)));
        assert_eq!(
            error_code(&h.join(2, "Board", "bob"), 2),
            Some(ErrorCode::PasswordRequired)
        );
        assert_eq!(
            error_code(&join_with(&mut h, 2, "board", "bob", pw("hunter3")), 2),
            Some(ErrorCode::WrongPassword)
        );
        let outs = join_with(&mut h, 2, "board", "bob", pw("hunter2"));
        assert!(matches!(to_conn(&outs, 2)[0], ServerMessage::Joined { .. }));

        // Ann drops out and comes back with her rejoin token alone.
        h.input(HubInput::Disconnected {
            conn: 1,
            reason: LeaveReason::Disconnected,
        });
        let with_rejoin = JoinAccess {
            rejoin_token: Some(rejoin.clone()),
            ..JoinAccess::default()
        };
        let outs = join_with(&mut h, 3, "Board", "ann", with_rejoin.clone());
        assert!(matches!(to_conn(&outs, 3)[0], ServerMessage::Joined { .. }));

        // Everyone leaves; the rejoin token recreates the room with its password.
        h.msg(2, ClientMessage::Leave);
        h.msg(3, ClientMessage::Leave);
        assert_eq!(h.hub.room_count(), 0);
        let outs = join_with(&mut h, 3, "Board", "ann", with_rejoin);
        assert!(matches!(to_conn(&outs, 3)[0], ServerMessage::Joined { .. }));
        assert_eq!(
            error_code(&h.join(2, "Board", "bob"), 2),
            Some(ErrorCode::PasswordRequired)
        );
        // A rejoin token for another room does not open this one.
        let other = JoinAccess {
            rejoin_token: Some(rejoin),
            ..JoinAccess::default()
        };
        assert_eq!(
            error_code(&join_with(&mut h, 2, "Elsewhere", "bob", other), 2),
            None,
            "an unrelated room without password is simply joined"
        );
    }

    #[test]
    fn join_attempts_are_rate_limited_per_connection() {
        let mut h = Harness::new(HubConfig {
            access: AccessConfig {
                joins_per_minute: 3,
                ..AccessConfig::default()
            },
            ..HubConfig::default()
        });
        h.connect(1);
        h.connect(2);
        // Failed attempts count: three wrong nicknames use up the minute.
        for _ in 0..3 {
            assert_eq!(
                error_code(&h.join(1, "r", ""), 1),
                Some(ErrorCode::BadNickname)
            );
        }
        assert_eq!(
            error_code(&h.join(1, "r", "ann"), 1),
            Some(ErrorCode::TooManyJoins)
        );
        // Another connection is not affected.
        assert_eq!(error_code(&h.join(2, "r", "bob"), 2), None);
        h.now += 60_000;
        assert_eq!(error_code(&h.join(1, "r", "ann"), 1), None);
    }
}

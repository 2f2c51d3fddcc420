//! Rooms on the local network with no server set up: a hosting Huddle announces its embedded
//! server and its rooms over mDNS (`_huddle._tcp.local.`, rooms in TXT records), and others find
//! them. Depends on `signaling` (to follow the hosted server's rooms) only.

use crate::signaling::client::{ClientCommand, ClientConfig, ClientEvent, SignalingClient};
use crate::signaling::protocol::{RoomInfo, ServerMessage};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use tokio::sync::mpsc;

pub const SERVICE_TYPE: &str = "_huddle._tcp.local.";
/// Rooms listed in one announcement (TXT records are small).
const MAX_ROOMS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum LanError {
    #[error("local network discovery is unavailable: {0}")]
    Mdns(String),
}

fn mdns(e: impl std::fmt::Display) -> LanError {
    LanError::Mdns(e.to_string())
}

/// A room found on the local network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanRoom {
    /// The announcing host's display name.
    pub host: String,
    pub server_url: String,
    pub room: String,
    pub people: usize,
    pub capacity: usize,
}

/// TXT properties for a set of rooms: `v=1`, `name=...`, `r0=room|people|capacity`, ...
fn txt(name: &str, rooms: &[RoomInfo]) -> Vec<(String, String)> {
    let mut props = vec![
        ("v".to_owned(), "1".to_owned()),
        ("name".to_owned(), name.to_owned()),
    ];
    for (i, r) in rooms.iter().take(MAX_ROOMS).enumerate() {
        props.push((
            format!("r{i}"),
            format!("{}|{}|{}", r.name, r.people, r.capacity),
        ));
    }
    props
}

fn parse_room(value: &str) -> Option<(String, usize, usize)> {
    let mut parts = value.rsplitn(3, '|');
    let capacity = parts.next()?.parse().ok()?;
    let people = parts.next()?.parse().ok()?;
    let name = parts.next()?.to_owned();
    (!name.is_empty()).then_some((name, people, capacity))
}

/// Announces one signaling server and its rooms until dropped.
pub struct Announcer {
    daemon: ServiceDaemon,
    name: String,
    instance: String,
    host_name: String,
    port: u16,
    fullname: String,
}

impl Announcer {
    /// `name` is shown to others ("Ann's Huddle"); `port` is the server's port on all
    /// interfaces.
    pub fn start(name: &str, port: u16) -> Result<Announcer, LanError> {
        let daemon = ServiceDaemon::new().map_err(mdns)?;
        let suffix: u32 = rand::random();
        let instance = format!("huddle-{suffix:08x}");
        let host_name = format!("{instance}.local.");
        let announcer = Announcer {
            daemon,
            name: name.to_owned(),
            fullname: String::new(),
            instance,
            host_name,
            port,
        };
        let mut announcer = announcer;
        announcer.set_rooms(&[])?;
        Ok(announcer)
    }

    /// Re-announces with the current rooms.
    pub fn set_rooms(&mut self, rooms: &[RoomInfo]) -> Result<(), LanError> {
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &self.instance,
            &self.host_name,
            "",
            self.port,
            txt(&self.name, rooms).as_slice(),
        )
        .map_err(mdns)?
        .enable_addr_auto();
        self.fullname = info.get_fullname().to_owned();
        self.daemon.register(info).map_err(mdns)
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        if !self.fullname.is_empty() {
            let _ = self.daemon.unregister(&self.fullname);
        }
        let _ = self.daemon.shutdown();
    }
}

/// A running announcement: dropping it stops following the server and withdraws the
/// announcement (a bare `JoinHandle` would detach the task, which then reconnects forever).
#[must_use = "the announcement stops when this is dropped"]
pub struct Announcing {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Announcing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows the rooms of the server at `server_url` (normally this process's own) and keeps the
/// announcement in step, until the returned guard is dropped.
pub fn announce_server(name: &str, server_url: &str, port: u16) -> Result<Announcing, LanError> {
    let mut announcer = Announcer::start(name, port)?;
    Ok(follow_rooms(server_url, move |list| {
        if let Err(e) = announcer.set_rooms(list) {
            tracing::warn!(error = %e, "cannot update the LAN announcement");
        }
    }))
}

/// Calls `on_change` with the server's public rooms whenever they change, until the guard is
/// dropped (which also drops `on_change`, and with it whatever it owns).
fn follow_rooms(
    server_url: &str,
    mut on_change: impl FnMut(&[RoomInfo]) + Send + 'static,
) -> Announcing {
    let (client, mut events) = SignalingClient::spawn(ClientConfig::new(server_url));
    let task = tokio::spawn(async move {
        let _ = client.send(ClientCommand::SubscribeRooms);
        let mut rooms: BTreeMap<String, RoomInfo> = BTreeMap::new();
        while let Some(ev) = events.recv().await {
            match ev {
                ClientEvent::Server(ServerMessage::RoomList { rooms: list }) => {
                    rooms = list
                        .into_iter()
                        .map(|r| (r.name.to_lowercase(), r))
                        .collect();
                }
                ClientEvent::Server(ServerMessage::RoomUpdated { room }) => {
                    rooms.insert(room.name.to_lowercase(), room);
                }
                ClientEvent::Server(ServerMessage::RoomClosed { name }) => {
                    rooms.remove(&name.to_lowercase());
                }
                _ => continue,
            }
            let list: Vec<RoomInfo> = rooms.values().cloned().collect();
            on_change(&list);
        }
        drop(client);
    });
    Announcing { task }
}

/// Browses the local network for hosted rooms; the current list is sent on every change.
/// Runs until the receiver is dropped.
pub fn browse() -> Result<mpsc::Receiver<Vec<LanRoom>>, LanError> {
    let daemon = ServiceDaemon::new().map_err(mdns)?;
    let events = daemon.browse(SERVICE_TYPE).map_err(mdns)?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut hosts: BTreeMap<String, Vec<LanRoom>> = BTreeMap::new();
        loop {
            let event = tokio::select! {
                _ = tx.closed() => break,
                ev = events.recv_async() => match ev {
                    Ok(ev) => ev,
                    Err(_) => break,
                },
            };
            match event {
                ServiceEvent::ServiceResolved(info) => {
                    let props = &info.txt_properties;
                    let host = props
                        .get_property_val_str("name")
                        .unwrap_or("Huddle")
                        .to_owned();
                    let Some(ip) = info
                        .addresses
                        .iter()
                        .map(|a| a.to_ip_addr())
                        .find(|a| matches!(a, IpAddr::V4(v4) if !v4.is_loopback()))
                    else {
                        continue;
                    };
                    let server_url = format!("ws://{ip}:{}", info.port);
                    let rooms = (0..MAX_ROOMS)
                        .filter_map(|i| props.get_property_val_str(&format!("r{i}")))
                        .filter_map(parse_room)
                        .map(|(room, people, capacity)| LanRoom {
                            host: host.clone(),
                            server_url: server_url.clone(),
                            room,
                            people,
                            capacity,
                        })
                        .collect();
                    hosts.insert(info.fullname.clone(), rooms);
                }
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    hosts.remove(&fullname);
                }
                _ => continue,
            }
            let all: Vec<LanRoom> = hosts.values().flatten().cloned().collect();
            if tx.send(all).await.is_err() {
                break;
            }
        }
        let _ = daemon.shutdown();
    });
    Ok(rx)
}

/// Waits up to `within` for a room called `room` to be announced on the local network.
pub async fn find_room(room: &str, within: Duration) -> Result<Option<LanRoom>, LanError> {
    let mut updates = browse()?;
    let wanted = room.to_lowercase();
    let found = tokio::time::timeout(within, async {
        while let Some(rooms) = updates.recv().await {
            if let Some(r) = rooms.into_iter().find(|r| r.room.to_lowercase() == wanted) {
                return Some(r);
            }
        }
        None
    })
    .await;
    Ok(found.ok().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_round_trip_through_txt() {
        let rooms = vec![
            RoomInfo {
                name: "Design | review".into(),
                people: 3,
                capacity: 6,
                locked: false,
            },
            RoomInfo {
                name: "x".into(),
                people: 0,
                capacity: 2,
                locked: false,
            },
        ];
        let props = txt("Ann's Huddle", &rooms);
        assert_eq!(props[1], ("name".to_owned(), "Ann's Huddle".to_owned()));
        assert_eq!(
            parse_room(&props[2].1),
            Some(("Design | review".into(), 3, 6))
        );
        assert_eq!(parse_room(&props[3].1), Some(("x".into(), 0, 2)));
        assert_eq!(parse_room("nonsense"), None);
        assert_eq!(parse_room("|1|2"), None);
        let many: Vec<RoomInfo> = (0..40)
            .map(|i| RoomInfo {
                name: format!("r{i}"),
                people: 1,
                capacity: 6,
                locked: false,
            })
            .collect();
        assert_eq!(txt("h", &many).len(), 2 + MAX_ROOMS);
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_following_the_server() {
        use crate::signaling::server::{ServerConfig, start};
        let server = start(ServerConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
        let (tx, mut lists) = mpsc::channel(8);
        let guard = follow_rooms(&server.url(), move |rooms| {
            let _ = tx.try_send(rooms.len());
        });
        // It follows: the server's first room list arrives.
        let first = tokio::time::timeout(Duration::from_secs(10), lists.recv()).await;
        assert_eq!(first.unwrap(), Some(0));
        // Dropped: the task ends, and with it the callback and its sender, so the channel
        // closes (a detached task would keep it open and reconnect forever).
        drop(guard);
        let end = tokio::time::timeout(Duration::from_secs(10), lists.recv()).await;
        assert_eq!(end.unwrap(), None);
        server.shutdown().await;
    }
}

//! The transfer actor: one task that owns a `PeerTransfers` machine per peer and does the I/O
//! the machines ask for. Per connected peer, a reader task polls the data channel and a writer
//! task sends (waiting when the channel's send buffer is full); disk reads and writes run on the
//! blocking pool, one at a time per file, in chunks. Memory stays bounded by the machines'
//! window, whatever the file size.

use super::machine::{Action, Input, MachineConfig, PeerTransfers, TransferUpdate};
use super::names;
use super::protocol::{self, Control, TransferId};
use crate::ids::PeerId;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use webrtc::data_channel::{DataChannel, DataChannelEvent};

#[derive(Clone, Debug)]
pub struct TransferConfig {
    pub download_dir: PathBuf,
    pub machine: MachineConfig,
    /// Fault injection for tests of the receiving side: makes this peer lie when sending.
    #[doc(hidden)]
    pub tamper: Option<Tamper>,
}

/// Ways a test sender can break the protocol on purpose.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Send this many bytes beyond the announced size before `done`.
    ExtraBytes(u64),
    /// Announce a wrong SHA-256 in `done`.
    WrongHash,
}

impl TransferConfig {
    pub fn new(download_dir: PathBuf) -> Self {
        TransferConfig {
            download_dir,
            machine: MachineConfig::default(),
            tamper: None,
        }
    }
}

pub enum TransferCommand {
    /// Offer files to one peer, or to every peer we have a link with.
    SendFiles {
        paths: Vec<PathBuf>,
        to: Option<PeerId>,
    },
    /// Offer one file under another name.
    SendFileAs {
        path: PathBuf,
        name: String,
        to: PeerId,
    },
    Accept {
        peer: PeerId,
        id: TransferId,
    },
    Decline {
        peer: PeerId,
        id: TransferId,
    },
    Cancel {
        peer: PeerId,
        id: TransferId,
    },
    Retry {
        peer: PeerId,
        id: TransferId,
    },
    /// The peer's file channel opened; the manager owns it from now on.
    PeerConnected {
        peer: PeerId,
        channel: Arc<dyn DataChannel>,
    },
    /// The connection to the peer dropped; transfers wait to resume.
    PeerDisconnected(PeerId),
    /// The peer left the room: its transfers end.
    PeerGone(PeerId),
    /// Accept offers up to `up_to` bytes without asking (`auto_accept`), or ask for every one;
    /// applies to every peer from the next offer on.
    SetAutoAccept {
        auto_accept: bool,
        up_to: u64,
    },
    /// Where files accepted from now on are saved.
    SetDownloadDir(PathBuf),
}

#[derive(Clone, Debug)]
pub enum TransferEvent {
    Update {
        peer: PeerId,
        update: TransferUpdate,
    },
    /// A problem not tied to one transfer (e.g. a file that cannot be opened).
    Problem(String),
}

pub struct TransferManager {
    commands: mpsc::Sender<TransferCommand>,
    task: Option<JoinHandle<()>>,
}

impl TransferManager {
    pub fn spawn(config: TransferConfig) -> (TransferManager, mpsc::Receiver<TransferEvent>) {
        let (commands, command_rx) = mpsc::channel(256);
        let (events_tx, events) = mpsc::channel(1024);
        let task = tokio::spawn(run(config, command_rx, events_tx));
        (
            TransferManager {
                commands,
                task: Some(task),
            },
            events,
        )
    }

    pub fn send(&self, command: TransferCommand) {
        if self.commands.try_send(command).is_err() {
            tracing::warn!("transfer manager is busy or stopped; command dropped");
        }
    }

    pub async fn shutdown(mut self) {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commands, tx));
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for TransferManager {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Something that happened off the actor, tagged with its peer.
enum Inbound {
    /// From a channel reader or writer of link generation `generation`.
    Channel {
        peer: PeerId,
        generation: u64,
        input: Input,
    },
    ChannelClosed {
        peer: PeerId,
        generation: u64,
    },
    Io {
        peer: PeerId,
        input: Input,
    },
    /// Writes finished (one result per chunk) for a transfer.
    Written {
        peer: PeerId,
        id: TransferId,
        results: Vec<Input>,
    },
    /// A file to send was opened (or not).
    Opened {
        peer: PeerId,
        id: TransferId,
        result: Result<(Arc<File>, u64, String), String>,
    },
    /// A `.part` file was reserved for an incoming transfer.
    PartReady {
        peer: PeerId,
        id: TransferId,
        part: PartFile,
    },
}

enum Outgoing {
    Text(String),
    Binary(BytesMut),
}

struct PartFile {
    file: Arc<File>,
    part_path: PathBuf,
    final_path: PathBuf,
}

struct Link {
    machine: PeerTransfers,
    generation: u64,
    writer: Option<mpsc::Sender<Outgoing>>,
    tasks: Vec<JoinHandle<()>>,
    sources: HashMap<TransferId, Arc<File>>,
    parts: HashMap<TransferId, PartFile>,
    /// Chunks waiting for the transfer's single in-flight write.
    write_queue: HashMap<TransferId, VecDeque<(u64, Bytes)>>,
    writing: HashMap<TransferId, bool>,
}

impl Link {
    fn new(config: &MachineConfig) -> Self {
        Link {
            machine: PeerTransfers::new(config.clone()),
            generation: 0,
            writer: None,
            tasks: Vec::new(),
            sources: HashMap::new(),
            parts: HashMap::new(),
            write_queue: HashMap::new(),
            writing: HashMap::new(),
        }
    }

    fn stop_channel(&mut self) {
        self.writer = None;
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

struct Manager {
    config: TransferConfig,
    links: HashMap<PeerId, Link>,
    events: mpsc::Sender<TransferEvent>,
    inbound_tx: mpsc::Sender<Inbound>,
    /// Disk work under way (open, read, create, write, finish, hash), each ending in a message
    /// on `inbound_tx`. Owned here: finished ones are reaped by the loop, and whatever is still
    /// running when the manager stops is aborted with it (a blocking read or write in progress
    /// completes, but its result goes nowhere).
    io: JoinSet<()>,
}

async fn run(
    config: TransferConfig,
    mut commands: mpsc::Receiver<TransferCommand>,
    events: mpsc::Sender<TransferEvent>,
) {
    let (inbound_tx, mut inbound) = mpsc::channel(256);
    let mut m = Manager {
        config,
        links: HashMap::new(),
        events,
        inbound_tx,
        io: JoinSet::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => m.on_command(cmd).await,
                None => break,
            },
            Some(msg) = inbound.recv() => m.on_inbound(msg).await,
            Some(_) = m.io.join_next(), if !m.io.is_empty() => {}
            _ = tick.tick() => {
                let peers: Vec<PeerId> = m.links.keys().cloned().collect();
                for peer in peers {
                    m.feed(&peer, Input::Tick).await;
                }
            }
        }
    }
    for (_, mut link) in m.links.drain() {
        link.stop_channel();
    }
}

fn new_id() -> TransferId {
    TransferId(rand::random())
}

fn media_type(name: &str) -> Option<String> {
    let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
    let t = match ext.as_str() {
        "txt" => "text/plain",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        "mp4" => "video/mp4",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    };
    Some(t.to_owned())
}

impl Manager {
    async fn emit(&self, event: TransferEvent) {
        let _ = self.events.send(event).await;
    }

    fn link(&mut self, peer: &PeerId) -> &mut Link {
        let config = self.config.machine.clone();
        self.links
            .entry(peer.clone())
            .or_insert_with(|| Link::new(&config))
    }

    async fn on_command(&mut self, cmd: TransferCommand) {
        match cmd {
            TransferCommand::SendFiles { paths, to } => {
                let peers: Vec<PeerId> = match to {
                    Some(p) => vec![p],
                    None => self.links.keys().cloned().collect(),
                };
                if peers.is_empty() {
                    self.emit(TransferEvent::Problem("nobody to send to yet".into()))
                        .await;
                    return;
                }
                for path in paths {
                    for peer in &peers {
                        self.open_source(peer.clone(), path.clone(), None);
                    }
                }
            }
            TransferCommand::SendFileAs { path, name, to } => {
                self.open_source(to, path, Some(name))
            }
            TransferCommand::Accept { peer, id } => self.feed(&peer, Input::Accept(id)).await,
            TransferCommand::Decline { peer, id } => self.feed(&peer, Input::Decline(id)).await,
            TransferCommand::Cancel { peer, id } => self.feed(&peer, Input::Cancel(id)).await,
            TransferCommand::Retry { peer, id } => self.feed(&peer, Input::Retry(id)).await,
            TransferCommand::PeerConnected { peer, channel } => {
                let inbound = self.inbound_tx.clone();
                let link = self.link(&peer);
                link.stop_channel();
                link.generation += 1;
                let generation = link.generation;
                let (writer_tx, writer_rx) = mpsc::channel(1024);
                link.writer = Some(writer_tx);
                link.tasks.push(tokio::spawn(read_channel(
                    peer.clone(),
                    generation,
                    channel.clone(),
                    inbound.clone(),
                )));
                link.tasks.push(tokio::spawn(write_channel(
                    peer.clone(),
                    generation,
                    channel,
                    writer_rx,
                    inbound,
                )));
                self.feed(&peer, Input::Connected).await;
            }
            TransferCommand::PeerDisconnected(peer) => {
                if let Some(link) = self.links.get_mut(&peer) {
                    link.stop_channel();
                    self.feed(&peer, Input::Disconnected).await;
                }
            }
            TransferCommand::SetAutoAccept { auto_accept, up_to } => {
                self.config.machine.auto_accept = auto_accept;
                self.config.machine.auto_accept_max = up_to;
                for link in self.links.values_mut() {
                    link.machine.set_auto_accept(auto_accept, up_to);
                }
            }
            TransferCommand::SetDownloadDir(dir) => self.config.download_dir = dir,
            TransferCommand::PeerGone(peer) => {
                if self.links.contains_key(&peer) {
                    self.feed(&peer, Input::PeerGone).await;
                    if let Some(mut link) = self.links.remove(&peer) {
                        link.stop_channel();
                    }
                }
            }
        }
    }

    fn open_source(&mut self, peer: PeerId, path: PathBuf, name: Option<String>) {
        let inbound = self.inbound_tx.clone();
        let id = new_id();
        self.io.spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                let name = match name {
                    Some(n) => n,
                    None => path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .ok_or_else(|| format!("{} is not a file", path.display()))?,
                };
                let file = File::open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                let meta = file
                    .metadata()
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if !meta.is_file() {
                    return Err(format!("{} is not a regular file", path.display()));
                }
                Ok((Arc::new(file), meta.len(), name))
            })
            .await
            .unwrap_or_else(|e| Err(format!("file open task failed: {e}")));
            let _ = inbound.send(Inbound::Opened { peer, id, result }).await;
        });
    }

    async fn on_inbound(&mut self, msg: Inbound) {
        match msg {
            Inbound::Channel {
                peer,
                generation,
                input,
            } => {
                if self
                    .links
                    .get(&peer)
                    .is_some_and(|l| l.generation == generation)
                {
                    self.feed(&peer, input).await;
                }
            }
            Inbound::ChannelClosed { peer, generation } => {
                let current = self
                    .links
                    .get(&peer)
                    .is_some_and(|l| l.generation == generation && l.writer.is_some());
                if current {
                    if let Some(link) = self.links.get_mut(&peer) {
                        link.stop_channel();
                    }
                    self.feed(&peer, Input::Disconnected).await;
                }
            }
            Inbound::Io { peer, input } => self.feed(&peer, input).await,
            Inbound::Written { peer, id, results } => {
                if let Some(link) = self.links.get_mut(&peer) {
                    link.writing.insert(id, false);
                }
                for input in results {
                    self.feed(&peer, input).await;
                }
                self.start_write(&peer, id);
            }
            Inbound::PartReady { peer, id, part } => {
                let path = part.part_path.clone();
                match self.links.get_mut(&peer) {
                    Some(link) => {
                        link.parts.insert(id, part);
                        self.feed(&peer, Input::PartCreated { id, path }).await;
                    }
                    None => {
                        // The peer is gone: nobody will fill this file.
                        tokio::task::spawn_blocking(move || {
                            drop(part.file);
                            let _ = std::fs::remove_file(&part.part_path);
                        });
                    }
                }
            }
            Inbound::Opened { peer, id, result } => match result {
                Ok((file, size, name)) => {
                    self.link(&peer).sources.insert(id, file);
                    let media_type = media_type(&name);
                    self.feed(
                        &peer,
                        Input::Send {
                            id,
                            name,
                            size,
                            media_type,
                        },
                    )
                    .await;
                }
                Err(e) => self.emit(TransferEvent::Problem(e)).await,
            },
        }
    }

    /// Runs one input through the peer's machine and carries out the actions.
    async fn feed(&mut self, peer: &PeerId, input: Input) {
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        let actions = link.machine.handle(input, Instant::now());
        for action in actions {
            self.act(peer, action).await;
        }
    }

    async fn act(&mut self, peer: &PeerId, action: Action) {
        let download_dir = self.config.download_dir.clone();
        let inbound = self.inbound_tx.clone();
        let tamper = self.config.tamper;
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        match action {
            Action::SendControl(c) => {
                let c = tampered(tamper, link, c);
                let text = protocol::encode_control(&c);
                send_out(link, Outgoing::Text(text));
            }
            Action::SendChunk { id, offset, data } => {
                send_out(
                    link,
                    Outgoing::Binary(protocol::encode_chunk(id, offset, &data)),
                );
            }
            Action::ReadChunk { id, offset, len } => {
                if let Some(file) = link.sources.get(&id).cloned() {
                    spawn_read(&mut self.io, inbound, peer.clone(), id, file, offset, len);
                }
            }
            Action::CloseSource(id) => {
                link.sources.remove(&id);
            }
            Action::CreatePart { id, name } => {
                spawn_create_part(&mut self.io, inbound, peer.clone(), id, download_dir, name)
            }
            Action::WriteChunk { id, offset, data } => {
                link.write_queue
                    .entry(id)
                    .or_default()
                    .push_back((offset, data));
                self.start_write(peer, id);
            }
            Action::FinishFile(id) => {
                if let Some(part) = link.parts.remove(&id) {
                    spawn_finish(&mut self.io, inbound, peer.clone(), id, part);
                }
            }
            Action::DeletePart(id) => {
                link.write_queue.remove(&id);
                if let Some(part) = link.parts.remove(&id) {
                    tokio::task::spawn_blocking(move || {
                        drop(part.file);
                        let _ = std::fs::remove_file(&part.part_path);
                    });
                }
            }
            Action::HashPrefix { id, len } => {
                let file = link
                    .sources
                    .get(&id)
                    .cloned()
                    .or_else(|| link.parts.get(&id).map(|p| p.file.clone()));
                if let Some(file) = file {
                    spawn_hash_prefix(&mut self.io, inbound, peer.clone(), id, file, len);
                }
            }
            Action::Report(update) => {
                self.emit(TransferEvent::Update {
                    peer: peer.clone(),
                    update,
                })
                .await;
            }
        }
    }

    /// Starts the transfer's next batch of writes unless one is running.
    fn start_write(&mut self, peer: &PeerId, id: TransferId) {
        let inbound = self.inbound_tx.clone();
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        if link.writing.get(&id).copied().unwrap_or(false) {
            return;
        }
        let Some(queue) = link.write_queue.get_mut(&id) else {
            return;
        };
        if queue.is_empty() {
            return;
        }
        let Some(file) = link.parts.get(&id).map(|p| p.file.clone()) else {
            // No file (deleted after a failure): the writes have nowhere to go.
            queue.clear();
            return;
        };
        let batch: Vec<(u64, Bytes)> = queue.drain(..).collect();
        link.writing.insert(id, true);
        let peer = peer.clone();
        self.io.spawn(async move {
            let results = tokio::task::spawn_blocking(move || {
                let mut results = Vec::with_capacity(batch.len());
                let mut failed = false;
                for (offset, data) in batch {
                    if failed {
                        break;
                    }
                    match file.write_all_at(&data, offset) {
                        Ok(()) => results.push(Input::ChunkWritten {
                            id,
                            offset,
                            len: data.len() as u64,
                        }),
                        Err(e) => {
                            failed = true;
                            results.push(Input::WriteFailed {
                                id,
                                disk_full: e.kind() == std::io::ErrorKind::StorageFull
                                    || e.raw_os_error() == Some(28),
                                error: e.to_string(),
                            });
                        }
                    }
                }
                results
            })
            .await
            .unwrap_or_default();
            let _ = inbound.send(Inbound::Written { peer, id, results }).await;
        });
    }
}

/// Tests only (`TransferConfig::tamper`): a sender that lies about its file.
fn tampered(tamper: Option<Tamper>, link: &mut Link, control: Control) -> Control {
    match (tamper, control) {
        (Some(Tamper::WrongHash), Control::Done { id, .. }) => Control::Done {
            id,
            sha256: "0".repeat(64),
        },
        (Some(Tamper::ExtraBytes(extra)), Control::Done { id, sha256 }) => {
            let size = link.machine.outgoing_size(id).unwrap_or(0);
            let mut offset = size;
            while offset < size + extra {
                let n = (size + extra - offset).min(protocol::CHUNK_DATA as u64) as usize;
                let junk = vec![0xEE; n];
                send_out(
                    link,
                    Outgoing::Binary(protocol::encode_chunk(id, offset, &junk)),
                );
                offset += n as u64;
            }
            Control::Done { id, sha256 }
        }
        (_, control) => control,
    }
}

/// Runs `work` on the blocking pool and hands what `outcome` makes of its result back to the
/// manager as the peer's input; a blocking job that panicked counts as an I/O error.
fn spawn_io<T: Send + 'static>(
    io: &mut JoinSet<()>,
    inbound: mpsc::Sender<Inbound>,
    peer: PeerId,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    outcome: impl FnOnce(std::io::Result<T>) -> Input + Send + 'static,
) {
    io.spawn(async move {
        let result = tokio::task::spawn_blocking(work)
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let input = outcome(result);
        let _ = inbound.send(Inbound::Io { peer, input }).await;
    });
}

/// Reads one chunk of a file being sent on the blocking pool; the result comes back as input.
fn spawn_read(
    io: &mut JoinSet<()>,
    inbound: mpsc::Sender<Inbound>,
    peer: PeerId,
    id: TransferId,
    file: Arc<File>,
    offset: u64,
    len: usize,
) {
    let read = move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset).map(|()| buf)
    };
    spawn_io(io, inbound, peer, read, move |result| match result {
        Ok(buf) => Input::ChunkRead {
            id,
            offset,
            data: Bytes::from(buf),
        },
        Err(e) => Input::ReadFailed {
            id,
            error: e.to_string(),
        },
    });
}

/// Reserves a name in the download folder and creates the part file for an accepted offer.
fn spawn_create_part(
    io: &mut JoinSet<()>,
    inbound: mpsc::Sender<Inbound>,
    peer: PeerId,
    id: TransferId,
    download_dir: PathBuf,
    name: String,
) {
    io.spawn(async move {
        let reserved = tokio::task::spawn_blocking(move || names::reserve(&download_dir, &name))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        let msg = match reserved {
            Ok(r) => Inbound::PartReady {
                peer,
                id,
                part: PartFile {
                    file: Arc::new(r.file),
                    part_path: r.part_path,
                    final_path: r.final_path,
                },
            },
            Err(e) => Inbound::Io {
                peer,
                input: Input::PartFailed {
                    id,
                    error: e.to_string(),
                },
            },
        };
        let _ = inbound.send(msg).await;
    });
}

/// Syncs a received file and gives it its final name.
fn spawn_finish(
    io: &mut JoinSet<()>,
    inbound: mpsc::Sender<Inbound>,
    peer: PeerId,
    id: TransferId,
    part: PartFile,
) {
    let finish = move || {
        part.file
            .sync_all()
            .and_then(|_| names::finish(&part.part_path, &part.final_path))
    };
    spawn_io(io, inbound, peer, finish, move |result| match result {
        Ok(path) => Input::Finished { id, path },
        Err(e) => Input::FinishFailed {
            id,
            error: e.to_string(),
        },
    });
}

/// Hashes the first `len` bytes of a file, to check what a resumed transfer already holds.
fn spawn_hash_prefix(
    io: &mut JoinSet<()>,
    inbound: mpsc::Sender<Inbound>,
    peer: PeerId,
    id: TransferId,
    file: Arc<File>,
    len: u64,
) {
    let hash = move || hash_prefix(&file, len);
    spawn_io(io, inbound, peer, hash, move |result| match result {
        Ok(hasher) => Input::PrefixHashed { id, len, hasher },
        Err(e) => Input::ReadFailed {
            id,
            error: e.to_string(),
        },
    });
}

fn send_out(link: &mut Link, msg: Outgoing) {
    let Some(writer) = &link.writer else {
        return;
    };
    if writer.try_send(msg).is_err() {
        // The window bounds queued data far below the queue's size; a full queue means the
        // writer is stuck on a dead channel.
        tracing::warn!("data channel writer queue full; dropping the link");
        link.stop_channel();
    }
}

fn hash_prefix(file: &File, len: u64) -> std::io::Result<Sha256> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    while offset < len {
        let n = ((len - offset) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], offset)?;
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(hasher)
}

async fn read_channel(
    peer: PeerId,
    generation: u64,
    channel: Arc<dyn DataChannel>,
    inbound: mpsc::Sender<Inbound>,
) {
    while let Some(event) = channel.poll().await {
        let input = match event {
            DataChannelEvent::OnMessage(msg) => {
                let data = msg.data.freeze();
                if msg.is_string {
                    match protocol::decode_control(&data) {
                        Ok(c) => Input::Control(c),
                        Err(e) => Input::BadFrame(e.to_string()),
                    }
                } else {
                    match protocol::decode_chunk(data) {
                        Ok(c) => Input::Chunk(c),
                        Err(e) => Input::BadFrame(e.to_string()),
                    }
                }
            }
            DataChannelEvent::OnClose => break,
            _ => continue,
        };
        // Waiting here when the actor is behind stops us polling, which makes the driver stop
        // reading SCTP: back-pressure all the way to the sender.
        if inbound
            .send(Inbound::Channel {
                peer: peer.clone(),
                generation,
                input,
            })
            .await
            .is_err()
        {
            return;
        }
    }
    let _ = inbound
        .send(Inbound::ChannelClosed { peer, generation })
        .await;
}

async fn write_channel(
    peer: PeerId,
    generation: u64,
    channel: Arc<dyn DataChannel>,
    mut queue: mpsc::Receiver<Outgoing>,
    inbound: mpsc::Sender<Inbound>,
) {
    while let Some(msg) = queue.recv().await {
        // `send` waits while the channel holds more than its send-buffer limit unacknowledged.
        let sent = match msg {
            Outgoing::Text(text) => channel.send_text(&text).await,
            Outgoing::Binary(data) => channel.send(data).await,
        };
        if let Err(e) = sent {
            tracing::debug!(%peer, error = %e, "data channel send failed");
            let _ = inbound
                .send(Inbound::ChannelClosed { peer, generation })
                .await;
            return;
        }
    }
}

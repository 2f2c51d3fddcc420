//! File transfers with one peer, both directions, as a state machine without I/O:
//! `handle(input, now) -> actions`. The actor in `manager.rs` does the disk and channel work the
//! actions ask for and feeds the results back as inputs.
//!
//! Sending: offer → (accept | resume) → chunks while fewer than `window` bytes are beyond the
//! receiver's last progress ack → done(sha256) → complete. Receiving: offer → consent → `.part`
//! file → chunks hashed as they arrive and written in order → done → hash check → rename.
//! After a reconnect the sender re-offers every unfinished transfer and the receiver answers with
//! `resume` from the bytes it has on disk.

use super::protocol::{CHUNK_DATA, Chunk, Control, TransferId};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Bytes the sender may have sent beyond the receiver's last progress ack.
    pub window: u64,
    /// The receiver acks after writing this many new bytes.
    pub ack_every: u64,
    /// Accept offers without asking the user: see `auto_accept_max`.
    pub auto_accept: bool,
    /// Larger offers still ask, even with `auto_accept`.
    pub auto_accept_max: u64,
    /// Larger offers are declined.
    pub max_incoming: u64,
    /// Offers awaiting the user's answer, per peer; more are declined.
    pub max_pending_offers: usize,
    pub chunk: usize,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            window: 8 * 1024 * 1024,
            ack_every: 512 * 1024,
            auto_accept: false,
            auto_accept_max: u64::MAX,
            max_incoming: 16 * 1024 * 1024 * 1024,
            max_pending_offers: 64,
            chunk: CHUNK_DATA,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outgoing,
    Incoming,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum TransferState {
    /// Outgoing: waiting for the peer to accept.
    Offered,
    /// Incoming: waiting for the user to accept or decline.
    AwaitingConsent,
    Transferring,
    /// The connection dropped; resumes when it is back.
    Interrupted,
    /// Stopped for a reason that may clear (e.g. a full disk); can be retried.
    Paused(String),
    /// All bytes arrived; checking the hash and saving.
    Verifying,
    Completed,
    Declined(String),
    Cancelled(String),
    Failed(String),
}

impl TransferState {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            TransferState::Completed
                | TransferState::Declined(_)
                | TransferState::Cancelled(_)
                | TransferState::Failed(_)
        )
    }
}

/// What the UI shows for one transfer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TransferUpdate {
    pub id: TransferId,
    pub direction: Direction,
    pub name: String,
    pub size: u64,
    pub media_type: Option<String>,
    pub state: TransferState,
    /// Bytes the receiver has on disk.
    pub bytes_done: u64,
    /// Outgoing: every byte handed to the channel, re-sends included.
    pub bytes_sent_total: u64,
    pub bytes_per_sec: f64,
    pub eta_secs: Option<f64>,
    /// Incoming, once saved.
    pub path: Option<PathBuf>,
    pub sha256: Option<String>,
}

#[derive(Debug)]
pub enum Input {
    /// Local: offer a file (already opened by the I/O side, so its size is known).
    Send {
        id: TransferId,
        name: String,
        size: u64,
        media_type: Option<String>,
    },
    /// Local: the user accepts an incoming offer.
    Accept(TransferId),
    Decline(TransferId),
    /// Local: stop a transfer in either direction.
    Cancel(TransferId),
    /// Local: retry a paused incoming transfer (e.g. after freeing disk space).
    Retry(TransferId),
    /// The data channel opened (again).
    Connected,
    Disconnected,
    /// The peer left for good: every unfinished transfer fails.
    PeerGone,
    Control(Control),
    Chunk(Chunk),
    /// An unreadable frame from the peer.
    BadFrame(String),
    ChunkRead {
        id: TransferId,
        offset: u64,
        data: Bytes,
    },
    ReadFailed {
        id: TransferId,
        error: String,
    },
    PartCreated {
        id: TransferId,
        path: PathBuf,
    },
    PartFailed {
        id: TransferId,
        error: String,
    },
    ChunkWritten {
        id: TransferId,
        offset: u64,
        len: u64,
    },
    WriteFailed {
        id: TransferId,
        error: String,
        disk_full: bool,
    },
    Finished {
        id: TransferId,
        path: PathBuf,
    },
    FinishFailed {
        id: TransferId,
        error: String,
    },
    PrefixHashed {
        id: TransferId,
        len: u64,
        hasher: Sha256,
    },
    /// Periodic: refreshes speed and time left.
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SendControl(Control),
    SendChunk {
        id: TransferId,
        offset: u64,
        data: Bytes,
    },
    /// Sender: read `len` bytes at `offset` of the source file.
    ReadChunk {
        id: TransferId,
        offset: u64,
        len: usize,
    },
    /// Sender: the source file is no longer needed.
    CloseSource(TransferId),
    /// Receiver: reserve a `.part` file for this (already sanitized) name.
    CreatePart {
        id: TransferId,
        name: String,
    },
    /// Receiver: write at `offset` (writes of one transfer are done in order).
    WriteChunk {
        id: TransferId,
        offset: u64,
        data: Bytes,
    },
    /// Receiver: flush and move the `.part` to its final name.
    FinishFile(TransferId),
    /// Receiver: remove the `.part` (cancel, failure).
    DeletePart(TransferId),
    /// Either side: hash the first `len` bytes of the file (resuming).
    HashPrefix {
        id: TransferId,
        len: u64,
    },
    Report(TransferUpdate),
}

/// Bytes-per-second over the last few seconds.
#[derive(Debug, Default)]
struct SpeedMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl SpeedMeter {
    fn record(&mut self, now: Instant, done: u64) {
        self.samples.push_back((now, done));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(3))
        {
            self.samples.pop_front();
        }
    }
    fn rate(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                b1.saturating_sub(*b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

fn hex(hasher: &Sha256) -> String {
    hex::encode(hasher.clone().finalize())
}

struct Outgoing {
    name: String,
    size: u64,
    media_type: Option<String>,
    state: TransferState,
    /// Offset of the next read (== bytes hashed, reads being in order).
    next_read: u64,
    reading: bool,
    acked: u64,
    sent_total: u64,
    hasher: Sha256,
    hashing: bool,
    speed: SpeedMeter,
}

struct Incoming {
    name: String,
    size: u64,
    media_type: Option<String>,
    expected_sha: Option<String>,
    state: TransferState,
    /// Bytes received and hashed.
    received: u64,
    /// Bytes on disk.
    written: u64,
    pending_writes: u32,
    since_ack: u64,
    hasher: Sha256,
    has_part: bool,
    /// Answer the sender with `resume` once writes settle.
    resume_owed: bool,
    path: Option<PathBuf>,
    sha256: Option<String>,
    speed: SpeedMeter,
}

/// All transfers with one peer.
pub struct PeerTransfers {
    config: MachineConfig,
    connected: bool,
    outgoing: BTreeMap<TransferId, Outgoing>,
    incoming: BTreeMap<TransferId, Incoming>,
    /// Which outgoing transfer reads next, for fairness between parallel transfers.
    turn: u64,
    /// Protocol violations seen (for logs and tests).
    pub violations: u32,
}

impl PeerTransfers {
    /// Who may send without asking, from now on (offers already waiting keep waiting).
    pub fn set_auto_accept(&mut self, auto_accept: bool, up_to: u64) {
        self.config.auto_accept = auto_accept;
        self.config.auto_accept_max = up_to;
    }

    pub fn new(config: MachineConfig) -> Self {
        PeerTransfers {
            config,
            connected: false,
            outgoing: BTreeMap::new(),
            incoming: BTreeMap::new(),
            turn: 0,
            violations: 0,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Size of an outgoing transfer, if we have it.
    pub fn outgoing_size(&self, id: TransferId) -> Option<u64> {
        self.outgoing.get(&id).map(|t| t.size)
    }

    /// Transfers not yet finished, in either direction.
    pub fn active(&self) -> usize {
        self.outgoing
            .values()
            .filter(|o| !o.state.is_final())
            .count()
            + self
                .incoming
                .values()
                .filter(|i| !i.state.is_final())
                .count()
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Send {
                id,
                name,
                size,
                media_type,
            } => self.on_send(id, name, size, media_type, &mut out),
            Input::Accept(id) => self.accept(id, &mut out),
            Input::Decline(id) => self.decline(id, &mut out),
            Input::Cancel(id) => self.cancel_local(id, &mut out),
            Input::Retry(id) => self.retry(id, &mut out),
            Input::Connected => self.on_connected(&mut out),
            Input::Disconnected => self.on_disconnected(&mut out),
            Input::PeerGone => self.on_peer_gone(&mut out),
            Input::Control(msg) => self.on_control(msg, &mut out),
            Input::Chunk(chunk) => self.on_chunk(chunk, &mut out),
            Input::BadFrame(_) => self.violations += 1,
            Input::ChunkRead { id, offset, data } => self.on_read(id, offset, data, now, &mut out),
            Input::ReadFailed { id, error } => self.on_read_failed(id, error, &mut out),
            Input::PartCreated { id, path } => self.on_part_created(id, path, &mut out),
            Input::PartFailed { id, error } => {
                if let Some(t) = self.incoming.get_mut(&id) {
                    t.state = TransferState::Failed(format!("cannot save the file: {error}"));
                    out.push(Action::SendControl(Control::Cancel {
                        id,
                        reason: "the receiver cannot save the file".into(),
                    }));
                    self.report_in(id, &mut out);
                }
            }
            Input::ChunkWritten { id, offset, len } => {
                self.on_written(id, offset, len, now, &mut out)
            }
            Input::WriteFailed {
                id,
                error,
                disk_full,
            } => self.on_write_failed(id, error, disk_full, &mut out),
            Input::Finished { id, path } => {
                if let Some(t) = self.incoming.get_mut(&id) {
                    t.state = TransferState::Completed;
                    t.path = Some(path);
                    t.has_part = false;
                    out.push(Action::SendControl(Control::Complete { id }));
                    self.report_in(id, &mut out);
                }
            }
            Input::FinishFailed { id, error } => {
                self.fail_incoming(id, format!("cannot save the file: {error}"), &mut out)
            }
            Input::PrefixHashed { id, len, hasher } => {
                self.on_prefix_hashed(id, len, hasher, &mut out)
            }
            Input::Tick => self.on_tick(now, &mut out),
        }
        out
    }

    fn on_send(
        &mut self,
        id: TransferId,
        name: String,
        size: u64,
        media_type: Option<String>,
        out: &mut Vec<Action>,
    ) {
        self.outgoing.insert(
            id,
            Outgoing {
                name,
                size,
                media_type,
                state: TransferState::Offered,
                next_read: 0,
                reading: false,
                acked: 0,
                sent_total: 0,
                hasher: Sha256::new(),
                hashing: false,
                speed: SpeedMeter::default(),
            },
        );
        if self.connected {
            self.offer(id, out);
        }
        self.report_out(id, out);
    }

    fn decline(&mut self, id: TransferId, out: &mut Vec<Action>) {
        if let Some(t) = self.incoming.get_mut(&id)
            && t.state == TransferState::AwaitingConsent
        {
            t.state = TransferState::Declined("you declined".into());
            out.push(Action::SendControl(Control::Decline {
                id,
                reason: "declined".into(),
            }));
            self.report_in(id, out);
        }
    }

    /// The file channel is open: offer everything not finished (again).
    fn on_connected(&mut self, out: &mut Vec<Action>) {
        self.connected = true;
        let ids: Vec<TransferId> = self
            .outgoing
            .iter()
            .filter(|(_, t)| !t.state.is_final())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.offer(id, out);
        }
    }

    /// The channel closed: transfers under way pause as interrupted, to resume on reconnect.
    fn on_disconnected(&mut self, out: &mut Vec<Action>) {
        self.connected = false;
        for (id, t) in self.outgoing.iter_mut() {
            if matches!(
                t.state,
                TransferState::Transferring | TransferState::Verifying
            ) {
                t.state = TransferState::Interrupted;
                t.reading = false;
                out.push(Action::Report(Self::out_update(*id, t)));
            }
        }
        for (id, t) in self.incoming.iter_mut() {
            if t.state == TransferState::Transferring {
                t.state = TransferState::Interrupted;
                out.push(Action::Report(Self::in_update(*id, t)));
            }
        }
    }

    /// The peer left the call: nothing can resume, so everything unfinished fails.
    fn on_peer_gone(&mut self, out: &mut Vec<Action>) {
        self.connected = false;
        let reason = "the other person left the call".to_owned();
        for (id, t) in self.outgoing.iter_mut() {
            if !t.state.is_final() {
                t.state = TransferState::Failed(reason.clone());
                out.push(Action::CloseSource(*id));
                out.push(Action::Report(Self::out_update(*id, t)));
            }
        }
        for (id, t) in self.incoming.iter_mut() {
            if !t.state.is_final() {
                t.state = TransferState::Failed(reason.clone());
                if t.has_part {
                    t.has_part = false;
                    out.push(Action::DeletePart(*id));
                }
                out.push(Action::Report(Self::in_update(*id, t)));
            }
        }
    }

    fn on_read_failed(&mut self, id: TransferId, error: String, out: &mut Vec<Action>) {
        if let Some(t) = self.outgoing.get_mut(&id)
            && !t.state.is_final()
        {
            t.state = TransferState::Failed(format!("cannot read the file: {error}"));
            out.push(Action::SendControl(Control::Cancel {
                id,
                reason: "the sender could not read the file".into(),
            }));
            out.push(Action::CloseSource(id));
            self.report_out(id, out);
        }
    }

    fn on_part_created(&mut self, id: TransferId, path: PathBuf, out: &mut Vec<Action>) {
        if let Some(t) = self.incoming.get_mut(&id) {
            if t.state.is_final() {
                // Cancelled while the file was being created.
                out.push(Action::DeletePart(id));
                return;
            }
            t.has_part = true;
            t.path = Some(path);
            t.state = TransferState::Transferring;
            out.push(Action::SendControl(Control::Accept { id, offset: 0 }));
            self.report_in(id, out);
        }
    }

    /// Once a second: progress and speed of every transfer under way.
    fn on_tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        for (id, t) in self.outgoing.iter_mut() {
            if t.state == TransferState::Transferring {
                t.speed.record(now, t.acked);
                out.push(Action::Report(Self::out_update(*id, t)));
            }
        }
        for (id, t) in self.incoming.iter_mut() {
            if t.state == TransferState::Transferring {
                t.speed.record(now, t.written);
                out.push(Action::Report(Self::in_update(*id, t)));
            }
        }
    }

    // ----- sending -----

    fn offer(&mut self, id: TransferId, out: &mut Vec<Action>) {
        let Some(t) = self.outgoing.get_mut(&id) else {
            return;
        };
        if t.state == TransferState::Interrupted {
            // Re-offered after a reconnect; the receiver answers with `resume`.
            t.state = TransferState::Offered;
        }
        let sha256 = (t.next_read == t.size && t.size > 0).then(|| hex(&t.hasher));
        out.push(Action::SendControl(Control::Offer {
            id,
            name: t.name.clone(),
            size: t.size,
            media_type: t.media_type.clone(),
            sha256,
        }));
    }

    /// The receiver wants bytes from `offset` on (a fresh accept or a resume).
    fn start_sending(&mut self, id: TransferId, offset: u64, out: &mut Vec<Action>) {
        let Some(t) = self.outgoing.get_mut(&id) else {
            return;
        };
        if offset > t.size {
            self.violations += 1;
            t.state = TransferState::Failed("the receiver asked for bytes beyond the end".into());
            out.push(Action::SendControl(Control::Cancel {
                id,
                reason: "offset beyond the end of the file".into(),
            }));
            out.push(Action::CloseSource(id));
            self.report_out(id, out);
            return;
        }
        t.state = TransferState::Transferring;
        t.acked = offset;
        t.reading = false;
        if t.next_read != offset {
            if offset == 0 {
                t.hasher = Sha256::new();
                t.next_read = 0;
            } else {
                // Our hash state is for another offset: rebuild it from the file.
                t.hashing = true;
                out.push(Action::HashPrefix { id, len: offset });
                self.report_out(id, out);
                return;
            }
        }
        self.report_out(id, out);
        self.pump(out);
    }

    /// Issues reads while the window allows, one outstanding read per transfer, taking turns.
    fn pump(&mut self, out: &mut Vec<Action>) {
        if !self.connected {
            return;
        }
        let ids: Vec<TransferId> = self.outgoing.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let n = ids.len();
        let start = (self.turn as usize) % n;
        for k in 0..n {
            let id = ids[(start + k) % n];
            let Some(t) = self.outgoing.get_mut(&id) else {
                continue;
            };
            if t.state != TransferState::Transferring || t.reading || t.hashing {
                continue;
            }
            // An empty file, or a resume from a receiver that holds every byte (our `done`
            // was lost with the connection): only `done` is left to send.
            if t.next_read == t.size {
                t.state = TransferState::Verifying;
                out.push(Action::SendControl(Control::Done {
                    id,
                    sha256: hex(&t.hasher),
                }));
                continue;
            }
            if t.next_read >= t.size || t.next_read.saturating_sub(t.acked) >= self.config.window {
                continue;
            }
            let len = (t.size - t.next_read).min(self.config.chunk as u64) as usize;
            t.reading = true;
            out.push(Action::ReadChunk {
                id,
                offset: t.next_read,
                len,
            });
        }
        self.turn = self.turn.wrapping_add(1);
    }

    fn on_read(
        &mut self,
        id: TransferId,
        offset: u64,
        data: Bytes,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.outgoing.get_mut(&id) else {
            return;
        };
        t.reading = false;
        // A read from before an interruption or a reset: drop it.
        if t.state != TransferState::Transferring || offset != t.next_read {
            self.pump(out);
            return;
        }
        if data.is_empty() || offset + data.len() as u64 > t.size {
            t.state = TransferState::Failed("the file changed while it was being sent".into());
            out.push(Action::SendControl(Control::Cancel {
                id,
                reason: "the sender's file changed".into(),
            }));
            out.push(Action::CloseSource(id));
            self.report_out(id, out);
            return;
        }
        t.hasher.update(&data);
        t.next_read += data.len() as u64;
        t.sent_total += data.len() as u64;
        t.speed.record(now, t.acked);
        out.push(Action::SendChunk { id, offset, data });
        if t.next_read == t.size {
            t.state = TransferState::Verifying;
            out.push(Action::SendControl(Control::Done {
                id,
                sha256: hex(&t.hasher),
            }));
            self.report_out(id, out);
        }
        self.pump(out);
    }

    // ----- receiving -----

    fn accept(&mut self, id: TransferId, out: &mut Vec<Action>) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        if t.state != TransferState::AwaitingConsent {
            return;
        }
        // Stays "awaiting" in the UI's eyes only until the .part exists.
        t.state = TransferState::Transferring;
        out.push(Action::CreatePart {
            id,
            name: t.name.clone(),
        });
    }

    fn on_offer(
        &mut self,
        id: TransferId,
        name: String,
        size: u64,
        media_type: Option<String>,
        sha256: Option<String>,
        out: &mut Vec<Action>,
    ) {
        if let Some(t) = self.incoming.get_mut(&id) {
            if t.size != size {
                // Same id, different file: not a re-offer we can resume.
                self.violations += 1;
                self.fail_incoming(id, "the sender changed the file's size".into(), out);
                return;
            }
            match &t.state {
                TransferState::AwaitingConsent
                | TransferState::Paused(_)
                | TransferState::Verifying => {}
                TransferState::Transferring | TransferState::Interrupted => {
                    t.state = TransferState::Transferring;
                    t.resume_owed = true;
                    self.settle_resume(id, out);
                }
                TransferState::Completed => out.push(Action::SendControl(Control::Complete { id })),
                TransferState::Offered => {}
                TransferState::Declined(reason)
                | TransferState::Cancelled(reason)
                | TransferState::Failed(reason) => out.push(Action::SendControl(Control::Cancel {
                    id,
                    reason: reason.clone(),
                })),
            }
            return;
        }
        let safe_name = super::names::sanitize(&name);
        let pending = self
            .incoming
            .values()
            .filter(|t| t.state == TransferState::AwaitingConsent)
            .count();
        let refusal = if size > self.config.max_incoming {
            Some(format!(
                "the file is larger than the receiver accepts ({} bytes)",
                self.config.max_incoming
            ))
        } else if pending >= self.config.max_pending_offers {
            Some("too many offers waiting for an answer".to_owned())
        } else {
            None
        };
        let state = match &refusal {
            Some(reason) => TransferState::Declined(reason.clone()),
            None => TransferState::AwaitingConsent,
        };
        self.incoming.insert(
            id,
            Incoming {
                name: safe_name,
                size,
                media_type,
                expected_sha: sha256,
                state,
                received: 0,
                written: 0,
                pending_writes: 0,
                since_ack: 0,
                hasher: Sha256::new(),
                has_part: false,
                resume_owed: false,
                path: None,
                sha256: None,
                speed: SpeedMeter::default(),
            },
        );
        if let Some(reason) = refusal {
            out.push(Action::SendControl(Control::Decline { id, reason }));
        }
        // Accepted without asking, the first report already says so: the app would otherwise
        // show Accept / Decline (and notify an offer) for a moment.
        if self.config.auto_accept && size <= self.config.auto_accept_max {
            self.accept(id, out);
        }
        self.report_in(id, out);
    }

    /// Sends `resume` once nothing is in flight to the disk, re-hashing if needed.
    fn settle_resume(&mut self, id: TransferId, out: &mut Vec<Action>) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        if !t.resume_owed || t.pending_writes > 0 {
            return;
        }
        t.resume_owed = false;
        if t.received != t.written {
            // Hashed bytes that never reached the disk: hash what is there.
            out.push(Action::HashPrefix { id, len: t.written });
            return;
        }
        out.push(Action::SendControl(Control::Resume {
            id,
            offset: t.written,
        }));
        self.report_in(id, out);
    }

    fn on_chunk(&mut self, chunk: Chunk, out: &mut Vec<Action>) {
        let id = chunk.id;
        let Some(t) = self.incoming.get_mut(&id) else {
            self.violations += 1;
            out.push(Action::SendControl(Control::Cancel {
                id,
                reason: "unknown transfer".into(),
            }));
            return;
        };
        if t.state != TransferState::Transferring || !t.has_part {
            // Chunks still in flight when we cancelled or paused.
            return;
        }
        let len = chunk.data.len() as u64;
        if chunk.offset != t.received {
            self.violations += 1;
            self.fail_incoming(id, "the sender sent data out of order".into(), out);
            return;
        }
        if t.received + len > t.size {
            self.violations += 1;
            self.fail_incoming(
                id,
                "the sender sent more data than it announced".into(),
                out,
            );
            return;
        }
        t.hasher.update(&chunk.data);
        t.received += len;
        t.pending_writes += 1;
        out.push(Action::WriteChunk {
            id,
            offset: chunk.offset,
            data: chunk.data,
        });
    }

    fn on_written(
        &mut self,
        id: TransferId,
        offset: u64,
        len: u64,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        t.pending_writes = t.pending_writes.saturating_sub(1);
        if t.state.is_final() {
            return;
        }
        // Writes complete in order; one that does not continue the file follows a failed write
        // and does not count.
        if offset != t.written {
            return;
        }
        t.written += len;
        t.since_ack += len;
        t.speed.record(now, t.written);
        if t.since_ack >= self.config.ack_every || t.written == t.size {
            t.since_ack = 0;
            out.push(Action::SendControl(Control::Progress {
                id,
                received: t.written,
            }));
        }
        if t.state == TransferState::Verifying && t.pending_writes == 0 {
            out.push(Action::FinishFile(id));
        }
        self.settle_resume(id, out);
    }

    fn on_write_failed(
        &mut self,
        id: TransferId,
        error: String,
        disk_full: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        t.pending_writes = t.pending_writes.saturating_sub(1);
        if t.state.is_final() || matches!(t.state, TransferState::Paused(_)) {
            return;
        }
        if disk_full {
            // Keep what we have; the user can free space and retry.
            let reason = "the disk is full; free some space and retry".to_owned();
            t.state = TransferState::Paused(reason.clone());
            out.push(Action::SendControl(Control::Pause { id, reason }));
            self.report_in(id, out);
        } else {
            self.fail_incoming(id, format!("cannot write the file: {error}"), out);
        }
    }

    fn retry(&mut self, id: TransferId, out: &mut Vec<Action>) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        if !matches!(t.state, TransferState::Paused(_)) || !self.connected {
            return;
        }
        t.state = TransferState::Transferring;
        t.resume_owed = true;
        self.settle_resume(id, out);
    }

    fn on_prefix_hashed(
        &mut self,
        id: TransferId,
        len: u64,
        hasher: Sha256,
        out: &mut Vec<Action>,
    ) {
        if let Some(t) = self.outgoing.get_mut(&id) {
            t.hashing = false;
            if t.state == TransferState::Transferring {
                t.hasher = hasher;
                t.next_read = len;
                self.pump(out);
            }
            return;
        }
        if let Some(t) = self.incoming.get_mut(&id) {
            if t.state != TransferState::Transferring {
                return;
            }
            t.hasher = hasher;
            t.received = len;
            t.written = len;
            out.push(Action::SendControl(Control::Resume { id, offset: len }));
            self.report_in(id, out);
        }
    }

    fn fail_incoming(&mut self, id: TransferId, reason: String, out: &mut Vec<Action>) {
        let Some(t) = self.incoming.get_mut(&id) else {
            return;
        };
        if t.state.is_final() {
            return;
        }
        t.state = TransferState::Failed(reason.clone());
        if t.has_part {
            t.has_part = false;
            out.push(Action::DeletePart(id));
        }
        out.push(Action::SendControl(Control::Cancel { id, reason }));
        self.report_in(id, out);
    }

    // ----- both -----

    fn on_control(&mut self, msg: Control, out: &mut Vec<Action>) {
        match msg {
            Control::Offer {
                id,
                name,
                size,
                media_type,
                sha256,
            } => self.on_offer(id, name, size, media_type, sha256, out),
            Control::Accept { id, offset } => {
                if self
                    .outgoing
                    .get(&id)
                    .is_some_and(|t| t.state == TransferState::Offered)
                {
                    self.start_sending(id, offset, out);
                }
            }
            Control::Resume { id, offset } => {
                let resumable = self.outgoing.get(&id).is_some_and(|t| {
                    matches!(
                        t.state,
                        TransferState::Offered
                            | TransferState::Transferring
                            | TransferState::Interrupted
                            | TransferState::Paused(_)
                            | TransferState::Verifying
                    )
                });
                if resumable {
                    self.start_sending(id, offset, out);
                } else if !self.outgoing.contains_key(&id) {
                    out.push(Action::SendControl(Control::Cancel {
                        id,
                        reason: "unknown transfer".into(),
                    }));
                }
            }
            Control::Decline { id, reason } => {
                if let Some(t) = self.outgoing.get_mut(&id)
                    && !t.state.is_final()
                {
                    t.state = TransferState::Declined(reason);
                    out.push(Action::CloseSource(id));
                    self.report_out(id, out);
                }
            }
            Control::Progress { id, received } => {
                if let Some(t) = self.outgoing.get_mut(&id) {
                    if received > t.size {
                        self.violations += 1;
                        return;
                    }
                    t.acked = t.acked.max(received);
                    self.pump(out);
                }
            }
            Control::Pause { id, reason } => {
                if let Some(t) = self.outgoing.get_mut(&id)
                    && t.state == TransferState::Transferring
                {
                    t.state = TransferState::Paused(format!("the receiver paused: {reason}"));
                    self.report_out(id, out);
                }
            }
            Control::Done { id, sha256 } => self.on_done(id, sha256, out),
            Control::Complete { id } => {
                if let Some(t) = self.outgoing.get_mut(&id)
                    && !t.state.is_final()
                {
                    t.state = TransferState::Completed;
                    t.acked = t.size;
                    out.push(Action::CloseSource(id));
                    self.report_out(id, out);
                }
            }
            Control::Cancel { id, reason } => {
                if let Some(t) = self.outgoing.get_mut(&id)
                    && !t.state.is_final()
                {
                    t.state =
                        TransferState::Cancelled(format!("the receiver stopped it: {reason}"));
                    out.push(Action::CloseSource(id));
                    self.report_out(id, out);
                }
                if let Some(t) = self.incoming.get_mut(&id)
                    && !t.state.is_final()
                {
                    t.state = TransferState::Cancelled(format!("the sender stopped it: {reason}"));
                    if t.has_part {
                        t.has_part = false;
                        out.push(Action::DeletePart(id));
                    }
                    self.report_in(id, out);
                }
            }
        }
    }

    fn on_done(&mut self, id: TransferId, sha256: String, out: &mut Vec<Action>) {
        let Some(t) = self.incoming.get_mut(&id) else {
            self.violations += 1;
            return;
        };
        if t.state != TransferState::Transferring {
            return;
        }
        if t.received != t.size {
            let reason = format!(
                "the sender stopped after {} of the {} bytes it announced",
                t.received, t.size
            );
            self.violations += 1;
            return self.fail_incoming(id, reason, out);
        }
        let ours = hex(&t.hasher);
        let theirs_ok = sha256.eq_ignore_ascii_case(&ours);
        let offer_ok = t
            .expected_sha
            .as_ref()
            .is_none_or(|e| e.eq_ignore_ascii_case(&ours));
        if !theirs_ok || !offer_ok {
            self.violations += 1;
            return self.fail_incoming(
                id,
                "the file arrived damaged (SHA-256 mismatch) and was discarded".into(),
                out,
            );
        }
        t.sha256 = Some(ours);
        t.state = TransferState::Verifying;
        if t.pending_writes == 0 {
            out.push(Action::FinishFile(id));
        }
        self.report_in(id, out);
    }

    fn cancel_local(&mut self, id: TransferId, out: &mut Vec<Action>) {
        if let Some(t) = self.outgoing.get_mut(&id)
            && !t.state.is_final()
        {
            t.state = TransferState::Cancelled("you cancelled".into());
            out.push(Action::SendControl(Control::Cancel {
                id,
                reason: "cancelled by the sender".into(),
            }));
            out.push(Action::CloseSource(id));
            self.report_out(id, out);
        }
        if let Some(t) = self.incoming.get_mut(&id)
            && !t.state.is_final()
        {
            t.state = TransferState::Cancelled("you cancelled".into());
            if t.has_part {
                t.has_part = false;
                out.push(Action::DeletePart(id));
            }
            out.push(Action::SendControl(Control::Cancel {
                id,
                reason: "cancelled by the receiver".into(),
            }));
            self.report_in(id, out);
        }
    }

    fn report_out(&self, id: TransferId, out: &mut Vec<Action>) {
        if let Some(t) = self.outgoing.get(&id) {
            out.push(Action::Report(Self::out_update(id, t)));
        }
    }

    fn report_in(&self, id: TransferId, out: &mut Vec<Action>) {
        if let Some(t) = self.incoming.get(&id) {
            out.push(Action::Report(Self::in_update(id, t)));
        }
    }

    fn out_update(id: TransferId, t: &Outgoing) -> TransferUpdate {
        let rate = t.speed.rate();
        TransferUpdate {
            id,
            direction: Direction::Outgoing,
            name: t.name.clone(),
            size: t.size,
            media_type: t.media_type.clone(),
            state: t.state.clone(),
            bytes_done: t.acked,
            bytes_sent_total: t.sent_total,
            bytes_per_sec: rate,
            eta_secs: (rate > 0.0).then(|| (t.size - t.acked.min(t.size)) as f64 / rate),
            path: None,
            sha256: (t.state == TransferState::Completed).then(|| hex(&t.hasher)),
        }
    }

    fn in_update(id: TransferId, t: &Incoming) -> TransferUpdate {
        let rate = t.speed.rate();
        TransferUpdate {
            id,
            direction: Direction::Incoming,
            name: t.name.clone(),
            size: t.size,
            media_type: t.media_type.clone(),
            state: t.state.clone(),
            bytes_done: t.written,
            bytes_sent_total: 0,
            bytes_per_sec: rate,
            eta_secs: (rate > 0.0).then(|| (t.size - t.written.min(t.size)) as f64 / rate),
            path: t.path.clone(),
            sha256: t.sha256.clone(),
        }
    }
}

#[cfg(test)]
mod tests;

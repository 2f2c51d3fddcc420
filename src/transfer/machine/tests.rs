//! The transfer state machine on a simulated link: two machines, an in-memory wire that can
//! drop everything in flight, and an in-memory disk. No sockets, no files, no sleeps.

use super::*;
use crate::transfer::protocol::Control;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

enum Msg {
    Control(Control),
    Chunk(Chunk),
}

#[derive(Default)]
struct Disk {
    sources: HashMap<TransferId, Vec<u8>>,
    parts: HashMap<TransferId, Vec<u8>>,
    saved: HashMap<TransferId, Vec<u8>>,
    capacity: Option<usize>,
}

struct Side {
    m: PeerTransfers,
    disk: Disk,
    io: VecDeque<Input>,
    updates: Vec<TransferUpdate>,
}

impl Side {
    fn new(config: MachineConfig) -> Self {
        Side {
            m: PeerTransfers::new(config),
            disk: Disk::default(),
            io: VecDeque::new(),
            updates: Vec::new(),
        }
    }
    fn last(&self, id: TransferId) -> Option<&TransferUpdate> {
        self.updates.iter().rev().find(|u| u.id == id)
    }
    fn state(&self, id: TransferId) -> Option<TransferState> {
        self.last(id).map(|u| u.state.clone())
    }
}

struct Sim {
    a: Side,
    b: Side,
    /// a → b and b → a.
    ab: VecDeque<Msg>,
    ba: VecDeque<Msg>,
    connected: bool,
    now: Instant,
    rng: StdRng,
}

fn config() -> MachineConfig {
    MachineConfig {
        window: 256 * 1024,
        ack_every: 64 * 1024,
        chunk: 16 * 1024,
        ..MachineConfig::default()
    }
}

impl Sim {
    fn new(seed: u64, receiver: MachineConfig) -> Self {
        let mut sim = Sim {
            a: Side::new(config()),
            b: Side::new(receiver),
            ab: VecDeque::new(),
            ba: VecDeque::new(),
            connected: false,
            now: Instant::now(),
            rng: StdRng::seed_from_u64(seed),
        };
        sim.connect();
        sim
    }

    fn input(&mut self, to_a: bool, input: Input) {
        self.now += Duration::from_millis(1);
        let side = if to_a { &mut self.a } else { &mut self.b };
        let actions = side.m.handle(input, self.now);
        self.run(to_a, actions);
    }

    fn run(&mut self, from_a: bool, actions: Vec<Action>) {
        for action in actions {
            let connected = self.connected;
            let (side, wire) = if from_a {
                (&mut self.a, &mut self.ab)
            } else {
                (&mut self.b, &mut self.ba)
            };
            match action {
                Action::SendControl(c) => {
                    if connected {
                        wire.push_back(Msg::Control(c));
                    }
                }
                Action::SendChunk { id, offset, data } => {
                    if connected {
                        wire.push_back(Msg::Chunk(Chunk { id, offset, data }));
                    }
                }
                Action::ReadChunk { id, offset, len } => {
                    let src = &side.disk.sources[&id];
                    let o = offset as usize;
                    side.io.push_back(Input::ChunkRead {
                        id,
                        offset,
                        data: Bytes::copy_from_slice(&src[o..o + len]),
                    });
                }
                Action::CloseSource(_) => {}
                Action::CreatePart { id, name } => {
                    side.disk.parts.insert(id, Vec::new());
                    side.io.push_back(Input::PartCreated {
                        id,
                        path: PathBuf::from(name),
                    });
                }
                Action::WriteChunk { id, offset, data } => {
                    let total: usize = side.disk.parts.values().map(Vec::len).sum();
                    if side.disk.capacity.is_some_and(|c| total + data.len() > c) {
                        side.io.push_back(Input::WriteFailed {
                            id,
                            error: "no space".into(),
                            disk_full: true,
                        });
                        continue;
                    }
                    let part = side.disk.parts.entry(id).or_default();
                    let o = offset as usize;
                    part.truncate(o);
                    part.extend_from_slice(&data);
                    side.io.push_back(Input::ChunkWritten {
                        id,
                        offset,
                        len: data.len() as u64,
                    });
                }
                Action::FinishFile(id) => {
                    if let Some(p) = side.disk.parts.remove(&id) {
                        side.disk.saved.insert(id, p);
                    }
                    side.io.push_back(Input::Finished {
                        id,
                        path: PathBuf::from(format!("saved-{id}")),
                    });
                }
                Action::DeletePart(id) => {
                    side.disk.parts.remove(&id);
                }
                Action::HashPrefix { id, len } => {
                    let bytes = side
                        .disk
                        .sources
                        .get(&id)
                        .or_else(|| side.disk.parts.get(&id))
                        .map(|b| b[..len as usize].to_vec())
                        .unwrap_or_default();
                    let mut hasher = Sha256::new();
                    hasher.update(&bytes);
                    side.io.push_back(Input::PrefixHashed { id, len, hasher });
                }
                Action::Report(u) => side.updates.push(u),
            }
        }
    }

    /// Performs one random pending step; false when nothing is pending.
    fn step(&mut self) -> bool {
        let mut choices = Vec::new();
        if !self.ab.is_empty() {
            choices.push(0);
        }
        if !self.ba.is_empty() {
            choices.push(1);
        }
        if !self.a.io.is_empty() {
            choices.push(2);
        }
        if !self.b.io.is_empty() {
            choices.push(3);
        }
        if choices.is_empty() {
            return false;
        }
        match choices[self.rng.random_range(0..choices.len())] {
            0 => {
                let msg = self.ab.pop_front().unwrap();
                self.deliver(false, msg);
            }
            1 => {
                let msg = self.ba.pop_front().unwrap();
                self.deliver(true, msg);
            }
            2 => {
                let input = self.a.io.pop_front().unwrap();
                self.input(true, input);
            }
            _ => {
                let input = self.b.io.pop_front().unwrap();
                self.input(false, input);
            }
        }
        true
    }

    fn deliver(&mut self, to_a: bool, msg: Msg) {
        let input = match msg {
            Msg::Control(c) => Input::Control(c),
            Msg::Chunk(c) => Input::Chunk(c),
        };
        self.input(to_a, input);
    }

    fn settle(&mut self) {
        let mut steps = 0;
        while self.step() {
            steps += 1;
            assert!(steps < 1_000_000, "did not settle");
        }
    }

    fn disconnect(&mut self) {
        self.connected = false;
        self.ab.clear();
        self.ba.clear();
        self.input(true, Input::Disconnected);
        self.input(false, Input::Disconnected);
    }

    fn connect(&mut self) {
        self.connected = true;
        self.input(true, Input::Connected);
        self.input(false, Input::Connected);
    }

    fn send(&mut self, id: u64, data: Vec<u8>) -> TransferId {
        let id = TransferId(id);
        let size = data.len() as u64;
        self.a.disk.sources.insert(id, data);
        self.input(
            true,
            Input::Send {
                id,
                name: format!("file-{}.bin", id.0),
                size,
                media_type: None,
            },
        );
        id
    }
}

fn random_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.random()).collect()
}

#[test]
fn a_file_arrives_intact_after_consent() {
    let mut sim = Sim::new(1, config());
    let data = random_bytes(&mut sim.rng, 1_000_000);
    let id = sim.send(7, data.clone());
    sim.settle();
    assert_eq!(sim.b.state(id), Some(TransferState::AwaitingConsent));
    assert!(
        sim.b.disk.parts.is_empty(),
        "nothing written before consent"
    );
    sim.input(false, Input::Accept(id));
    sim.settle();
    assert_eq!(sim.b.state(id), Some(TransferState::Completed));
    assert_eq!(sim.a.state(id), Some(TransferState::Completed));
    assert_eq!(sim.b.disk.saved[&id], data);
    let expected = hex::encode(Sha256::digest(&data));
    assert_eq!(
        sim.b.last(id).unwrap().sha256.as_deref(),
        Some(expected.as_str())
    );
    assert_eq!(sim.a.last(id).unwrap().bytes_sent_total, data.len() as u64);
}

#[test]
fn several_files_in_parallel_and_an_empty_one() {
    let mut receiver = config();
    receiver.auto_accept = true;
    let mut sim = Sim::new(2, receiver);
    let files: Vec<(TransferId, Vec<u8>)> = (0..3)
        .map(|i| {
            let data = random_bytes(&mut sim.rng, 300_000 + i * 77_777);
            (sim.send(100 + i as u64, data.clone()), data)
        })
        .collect();
    let empty = sim.send(200, Vec::new());
    sim.settle();
    for (id, data) in &files {
        assert_eq!(&sim.b.disk.saved[id], data);
    }
    assert_eq!(sim.b.disk.saved[&empty], Vec::<u8>::new());
    assert_eq!(sim.b.m.active(), 0);
}

#[test]
fn connection_loss_at_random_points_resumes_without_resending_much() {
    for seed in 0..40u64 {
        let mut receiver = config();
        receiver.auto_accept = true;
        let mut sim = Sim::new(seed, receiver);
        let len = sim.rng.random_range(0..2_000_000);
        let data = random_bytes(&mut sim.rng, len);
        let id = sim.send(seed + 1, data.clone());
        let losses = sim.rng.random_range(1..4);
        for _ in 0..losses {
            let steps = sim.rng.random_range(0..400);
            for _ in 0..steps {
                if !sim.step() {
                    break;
                }
            }
            sim.disconnect();
            // Disk I/O still completes while the link is down.
            while let Some(input) = sim.b.io.pop_front() {
                sim.input(false, input);
            }
            sim.connect();
        }
        sim.settle();
        assert_eq!(
            sim.b.state(id),
            Some(TransferState::Completed),
            "seed {seed}"
        );
        assert_eq!(sim.b.disk.saved[&id], data, "seed {seed}");
        let sent = sim.a.last(id).unwrap().bytes_sent_total;
        let bound = data.len() as u64 + losses as u64 * config().window;
        assert!(
            sent <= bound,
            "seed {seed}: re-sent too much ({sent} > {bound})"
        );
    }
}

#[test]
fn a_done_lost_with_the_connection_is_sent_again_when_everything_had_arrived() {
    let mut receiver = config();
    receiver.auto_accept = true;
    let mut sim = Sim::new(7, receiver);
    let data = random_bytes(&mut sim.rng, 100_000);
    let id = sim.send(1, data.clone());
    // Everything happens but the delivery of `done`.
    for _ in 0..100_000 {
        if let Some(input) = sim.a.io.pop_front() {
            sim.input(true, input);
        } else if let Some(input) = sim.b.io.pop_front() {
            sim.input(false, input);
        } else if let Some(msg) = sim.ba.pop_front() {
            sim.deliver(true, msg);
        } else if matches!(
            sim.ab.front(),
            Some(Msg::Control(Control::Done { .. })) | None
        ) {
            break;
        } else {
            let msg = sim.ab.pop_front().unwrap();
            sim.deliver(false, msg);
        }
    }
    assert!(
        matches!(sim.ab.front(), Some(Msg::Control(Control::Done { .. }))),
        "stopped just before done"
    );
    sim.disconnect();
    sim.connect();
    sim.settle();
    assert_eq!(sim.b.state(id), Some(TransferState::Completed));
    assert_eq!(sim.b.disk.saved[&id], data);
}

#[test]
fn cancel_at_random_points_leaves_nothing_behind() {
    for seed in 0..40u64 {
        let mut receiver = config();
        receiver.auto_accept = true;
        let mut sim = Sim::new(seed, receiver);
        let data = random_bytes(&mut sim.rng, 700_000);
        let id = sim.send(seed + 1, data);
        let steps = sim.rng.random_range(0..300);
        for _ in 0..steps {
            if !sim.step() {
                break;
            }
        }
        let by_sender = seed % 2 == 0;
        let finished_before = sim.b.state(id) == Some(TransferState::Completed);
        sim.input(by_sender, Input::Cancel(id));
        sim.settle();
        if finished_before {
            continue;
        }
        let (a, b) = (sim.a.state(id).unwrap(), sim.b.state(id).unwrap());
        assert!(a.is_final() && b.is_final(), "seed {seed}: {a:?} / {b:?}");
        assert!(
            matches!(b, TransferState::Cancelled(_) | TransferState::Completed),
            "seed {seed}: {b:?}"
        );
        if matches!(b, TransferState::Cancelled(_)) {
            assert!(
                sim.b.disk.parts.is_empty(),
                "seed {seed}: partial file left"
            );
            assert!(sim.b.disk.saved.is_empty(), "seed {seed}");
        }
    }
}

#[test]
fn declined_offers_write_nothing() {
    let mut sim = Sim::new(3, config());
    let id = sim.send(9, vec![1; 1000]);
    sim.settle();
    sim.input(false, Input::Decline(id));
    sim.settle();
    assert!(matches!(sim.a.state(id), Some(TransferState::Declined(_))));
    assert!(sim.b.disk.parts.is_empty() && sim.b.disk.saved.is_empty());
}

#[test]
fn oversized_offers_are_declined_automatically() {
    let mut receiver = config();
    receiver.max_incoming = 500;
    let mut sim = Sim::new(4, receiver);
    let id = sim.send(9, vec![1; 1000]);
    sim.settle();
    assert!(matches!(sim.a.state(id), Some(TransferState::Declined(r)) if r.contains("larger")));
}

#[test]
fn accepting_without_asking_stops_at_its_size_and_can_be_turned_off() {
    let mut receiver = config();
    receiver.auto_accept = true;
    receiver.auto_accept_max = 1000;
    let mut sim = Sim::new(5, receiver);
    let small = sim.send(1, vec![1; 1000]);
    let large = sim.send(2, vec![2; 1001]);
    sim.settle();
    assert_eq!(sim.b.state(small), Some(TransferState::Completed));
    assert_eq!(sim.b.state(large), Some(TransferState::AwaitingConsent));
    sim.b.m.set_auto_accept(false, u64::MAX);
    let asked = sim.send(3, vec![3; 10]);
    sim.settle();
    assert_eq!(sim.b.state(asked), Some(TransferState::AwaitingConsent));
}

/// Feeds a receiver machine raw messages from a peer that does not follow the rules.
struct Liar {
    m: PeerTransfers,
    actions: Vec<Action>,
    now: Instant,
}

impl Liar {
    fn new() -> Self {
        let mut cfg = config();
        cfg.auto_accept = true;
        let mut m = PeerTransfers::new(cfg);
        let now = Instant::now();
        m.handle(Input::Connected, now);
        Liar {
            m,
            actions: Vec::new(),
            now,
        }
    }
    fn feed(&mut self, input: Input) {
        let mut acts = self.m.handle(input, self.now);
        // Complete disk work at once.
        while let Some(i) = acts.iter().position(|a| {
            matches!(
                a,
                Action::CreatePart { .. } | Action::WriteChunk { .. } | Action::FinishFile(_)
            )
        }) {
            let a = acts.remove(i);
            let follow = match a.clone() {
                Action::CreatePart { id, .. } => Input::PartCreated {
                    id,
                    path: "p".into(),
                },
                Action::WriteChunk { id, offset, data } => Input::ChunkWritten {
                    id,
                    offset,
                    len: data.len() as u64,
                },
                Action::FinishFile(id) => Input::Finished {
                    id,
                    path: "f".into(),
                },
                _ => unreachable!(),
            };
            self.actions.push(a);
            acts.extend(self.m.handle(follow, self.now));
        }
        self.actions.extend(acts);
    }
    fn offer(&mut self, id: u64, size: u64) {
        self.feed(Input::Control(Control::Offer {
            id: TransferId(id),
            name: "x".into(),
            size,
            media_type: None,
            sha256: None,
        }));
    }
    fn chunk(&mut self, id: u64, offset: u64, len: usize) {
        self.feed(Input::Chunk(Chunk {
            id: TransferId(id),
            offset,
            data: Bytes::from(vec![7u8; len]),
        }));
    }
    fn state(&self, id: u64) -> TransferState {
        self.actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Report(u) if u.id == TransferId(id) => Some(u.state.clone()),
                _ => None,
            })
            .unwrap()
    }
    fn deleted(&self, id: u64) -> bool {
        self.actions.contains(&Action::DeletePart(TransferId(id)))
    }
}

#[test]
fn more_data_than_announced_fails_and_removes_the_part() {
    let mut l = Liar::new();
    l.offer(1, 1_000_000);
    for i in 0..30 {
        l.chunk(1, i * 65_000, 65_000);
    }
    assert!(matches!(l.state(1), TransferState::Failed(r) if r.contains("more data")));
    assert!(l.deleted(1));
    assert!(l.m.violations > 0);
    // The link is still usable: a later honest transfer works.
    l.offer(2, 10);
    l.chunk(2, 0, 10);
    let sha = hex::encode(Sha256::digest([7u8; 10]));
    l.feed(Input::Control(Control::Done {
        id: TransferId(2),
        sha256: sha,
    }));
    assert_eq!(l.state(2), TransferState::Completed);
}

#[test]
fn a_wrong_hash_fails_and_removes_the_part() {
    let mut l = Liar::new();
    l.offer(1, 100);
    l.chunk(1, 0, 100);
    l.feed(Input::Control(Control::Done {
        id: TransferId(1),
        sha256: "00".repeat(32),
    }));
    assert!(matches!(l.state(1), TransferState::Failed(r) if r.contains("SHA-256")));
    assert!(l.deleted(1));
    assert!(!l.actions.iter().any(|a| matches!(a, Action::FinishFile(_))));
}

#[test]
fn short_data_unknown_ids_out_of_order_and_duplicates() {
    let mut l = Liar::new();
    // Done before all bytes.
    l.offer(1, 100);
    l.chunk(1, 0, 50);
    l.feed(Input::Control(Control::Done {
        id: TransferId(1),
        sha256: "ab".into(),
    }));
    assert!(matches!(l.state(1), TransferState::Failed(r) if r.contains("50 of the 100")));
    // Chunks for a transfer nobody offered.
    let before = l.m.violations;
    l.chunk(99, 0, 10);
    assert_eq!(l.m.violations, before + 1);
    assert!(l.actions.iter().any(|a| matches!(a,
        Action::SendControl(Control::Cancel { id, .. }) if *id == TransferId(99))));
    // A gap in the data.
    l.offer(3, 100);
    l.chunk(3, 10, 10);
    assert!(matches!(l.state(3), TransferState::Failed(r) if r.contains("out of order")));
    // The same offer twice creates one transfer, one .part.
    l.offer(4, 100);
    l.offer(4, 100);
    let parts = l
        .actions
        .iter()
        .filter(|a| matches!(a, Action::CreatePart { id, .. } if *id == TransferId(4)))
        .count();
    assert_eq!(parts, 1);
    // Same id, different size: refused.
    l.offer(4, 200);
    assert!(matches!(l.state(4), TransferState::Failed(_)));
}

#[test]
fn a_full_disk_pauses_keeps_the_part_and_resumes_on_retry() {
    let mut receiver = config();
    receiver.auto_accept = true;
    let mut sim = Sim::new(5, receiver);
    sim.b.disk.capacity = Some(200_000);
    let data = random_bytes(&mut sim.rng, 600_000);
    let id = sim.send(11, data.clone());
    sim.settle();
    assert!(
        matches!(sim.b.state(id), Some(TransferState::Paused(r)) if r.contains("disk is full"))
    );
    assert!(matches!(sim.a.state(id), Some(TransferState::Paused(_))));
    let kept = sim.b.disk.parts[&id].len();
    assert!(kept > 0 && kept <= 200_000);
    sim.b.disk.capacity = None;
    sim.input(false, Input::Retry(id));
    sim.settle();
    assert_eq!(sim.b.state(id), Some(TransferState::Completed));
    assert_eq!(sim.b.disk.saved[&id], data);
}

//! File transfer between two real engines over a real data channel: large files, several at
//! once, decline, cancel, resume after a dropped connection, hostile names, lying senders.

mod common;

use common::peer::{PeerOptions, TestPeer};
use common::*;
use huddle::engine::{Command, Event};
use huddle::signaling::protocol::PeerId;
use huddle::signaling::server::ServerHandle;
use huddle::transfer::manager::Tamper;
use huddle::transfer::{Direction, TransferCommand, TransferState, TransferUpdate};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;

/// Writes `len` pseudo-random bytes (xorshift, so it is quick) and returns the SHA-256.
fn make_file(path: &Path, len: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

fn file_sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

struct Pair {
    server: ServerHandle,
    sender: TestPeer,
    receiver: TestPeer,
    receiver_id: PeerId,
    sender_id: PeerId,
    src: tempfile::TempDir,
    dst: tempfile::TempDir,
}

async fn pair(room: &str, auto_accept: bool, tamper: Option<Tamper>) -> Pair {
    let server = start_server(test_config()).await;
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut so = PeerOptions::new(1, 440.0, src.path().join("inbox"));
    so.tamper = tamper;
    // No camera: these tests are about the data channel.
    so.video = None;
    let mut ro = PeerOptions::new(2, 660.0, dst.path().into());
    ro.video = None;
    ro.auto_accept = auto_accept;
    let mut sender = TestPeer::start(&url, so);
    let mut receiver = TestPeer::start(&url, ro);
    sender.join(room, "sender").await;
    receiver.join(room, "receiver").await;
    let receiver_id = receiver.id.clone().unwrap();
    let sender_id = sender.id.clone().unwrap();
    sender.connected_to(&receiver_id).await;
    receiver.connected_to(&sender_id).await;
    Pair {
        server,
        sender,
        receiver,
        receiver_id,
        sender_id,
        src,
        dst,
    }
}

impl Pair {
    /// Waits for the receiver to be asked about an incoming file.
    async fn offer_arrives(&mut self) -> TransferUpdate {
        self.receiver
            .transfer_update(Duration::from_secs(10), |u| {
                u.state == TransferState::AwaitingConsent
            })
            .await
    }

    fn send(&self, path: &Path) {
        self.sender
            .send(Command::Transfer(TransferCommand::SendFiles {
                paths: vec![path.to_path_buf()],
                to: Some(self.receiver_id.clone()),
            }));
    }

    async fn finish(self) {
        self.sender.engine.shutdown().await;
        self.receiver.engine.shutdown().await;
        self.server.shutdown().await;
    }
}

fn completed_in(u: &TransferUpdate) -> bool {
    assert!(
        !matches!(u.state, TransferState::Failed(_)),
        "failed: {u:?}"
    );
    u.direction == Direction::Incoming && u.state == TransferState::Completed
}

/// "Send to everyone" in a call's first moments, before any file channel is open: the file
/// still reaches everyone in the room (it used to say "nobody to send to yet").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_to_everyone_before_the_channels_open_still_reaches_the_room() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut so = PeerOptions::new(1, 440.0, src.path().join("inbox"));
    so.video = None;
    let mut ro = PeerOptions::new(2, 660.0, dst.path().into());
    ro.video = None;
    let mut receiver = TestPeer::start(&url, ro);
    receiver.join("early", "receiver").await;
    let mut sender = TestPeer::start(&url, so);
    sender.join("early", "sender").await;
    // Joined and told of the receiver, not yet connected to it.
    assert!(
        !sender
            .seen
            .iter()
            .any(|e| matches!(e, Event::PeerConnected { .. })),
        "too late: already connected"
    );
    let path = src.path().join("early.bin");
    let sha = make_file(&path, 300_000, 7);
    sender.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![path],
        to: None,
    }));
    receiver
        .transfer_update(Duration::from_secs(20), completed_in)
        .await;
    assert_eq!(file_sha(&dst.path().join("early.bin")), sha);
    sender.engine.shutdown().await;
    receiver.engine.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_file_arrives_with_the_right_hash() {
    let mut p = pair("big", true, None).await;
    let path = p.src.path().join("big.bin");
    let sha = make_file(&path, 200 << 20, 7);
    let started = tokio::time::Instant::now();
    p.send(&path);
    let done = p
        .receiver
        .transfer_update(Duration::from_secs(120), completed_in)
        .await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "200 MiB in {secs:.2} s ({:.0} MB/s)",
        200.0 * 1.048_576 / secs
    );
    assert_eq!(done.sha256.as_deref(), Some(sha.as_str()));
    let saved = done.path.unwrap();
    assert_eq!(saved, p.dst.path().join("big.bin"));
    assert_eq!(file_sha(&saved), sha);
    assert_eq!(files_in(p.dst.path()), ["big.bin"], "no .part left");
    p.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_files_in_parallel() {
    let mut p = pair("three", true, None).await;
    let mut expected = Vec::new();
    let mut paths = Vec::new();
    for (i, size) in [3 << 20, 5 << 20, 7 << 20].into_iter().enumerate() {
        let path = p.src.path().join(format!("f{i}.bin"));
        expected.push((format!("f{i}.bin"), make_file(&path, size, i as u64 + 1)));
        paths.push(path);
    }
    p.sender.send(Command::Transfer(TransferCommand::SendFiles {
        paths,
        to: Some(p.receiver_id.clone()),
    }));
    let mut done = Vec::new();
    let mut active_before_first_done = std::collections::HashSet::new();
    while done.len() < 3 {
        let u = p
            .receiver
            .transfer_update(Duration::from_secs(60), |u| {
                u.direction == Direction::Incoming
                    && matches!(
                        u.state,
                        TransferState::Completed | TransferState::Transferring
                    )
            })
            .await;
        if u.state == TransferState::Completed {
            done.push((u.name.clone(), u.sha256.clone().unwrap()));
        } else if done.is_empty() {
            active_before_first_done.insert(u.id);
        }
    }
    done.sort();
    assert_eq!(done, expected);
    assert_eq!(
        active_before_first_done.len(),
        3,
        "all three were under way at once"
    );
    for (name, sha) in &expected {
        assert_eq!(&file_sha(&p.dst.path().join(name)), sha);
    }
    p.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_and_cancel_leave_no_files_behind() {
    let mut p = pair("no-files", false, None).await;
    // Declined: the sender is told, the receiver's folder stays empty.
    let path = p.src.path().join("unwanted.bin");
    make_file(&path, 1 << 20, 3);
    p.send(&path);
    let offer = p.offer_arrives().await;
    p.receiver.send(Command::Transfer(TransferCommand::Decline {
        peer: p.sender_id.clone(),
        id: offer.id,
    }));
    p.sender
        .transfer_update(Duration::from_secs(10), |u| {
            matches!(u.state, TransferState::Declined(_))
        })
        .await;

    // Cancelled by the sender mid-way, then by the receiver mid-way.
    for cancel_by_sender in [true, false] {
        let path = p.src.path().join(format!("cancel-{cancel_by_sender}.bin"));
        make_file(&path, 150 << 20, 5);
        p.send(&path);
        let offer = p.offer_arrives().await;
        p.receiver.send(Command::Transfer(TransferCommand::Accept {
            peer: p.sender_id.clone(),
            id: offer.id,
        }));
        p.receiver
            .transfer_update(Duration::from_secs(20), |u| {
                u.id == offer.id && u.bytes_done > 0
            })
            .await;
        let (who, peer) = if cancel_by_sender {
            (&p.sender, p.receiver_id.clone())
        } else {
            (&p.receiver, p.sender_id.clone())
        };
        who.send(Command::Transfer(TransferCommand::Cancel {
            peer,
            id: offer.id,
        }));
        let end = p
            .receiver
            .transfer_update(Duration::from_secs(10), |u| {
                u.id == offer.id && u.state.is_final()
            })
            .await;
        assert!(matches!(end.state, TransferState::Cancelled(_)), "{end:?}");
        p.sender
            .transfer_update(Duration::from_secs(10), |u| {
                u.id == offer.id && u.state.is_final()
            })
            .await;
    }
    // Deleting the .part happens off the actor; it is gone by the time a later offer is seen.
    let path = p.src.path().join("marker.bin");
    make_file(&path, 10, 1);
    p.send(&path);
    p.receiver
        .transfer_update(Duration::from_secs(10), |u| u.name == "marker.bin")
        .await;
    assert!(
        files_in(p.dst.path()).is_empty(),
        "left behind: {:?}",
        files_in(p.dst.path())
    );
    p.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_without_resending_much() {
    let mut p = pair("resume", true, None).await;
    let path = p.src.path().join("resume.bin");
    let size: u64 = 200 << 20;
    let sha = make_file(&path, size as usize, 11);
    p.send(&path);
    // Let a good part arrive, then cut the connection under it.
    let before = p
        .receiver
        .transfer_update(Duration::from_secs(60), |u| u.bytes_done > size / 3)
        .await;
    p.sender
        .send(Command::DropConnection(p.receiver_id.clone()));
    p.sender
        .transfer_update(Duration::from_secs(10), |u| {
            u.state == TransferState::Interrupted
        })
        .await;
    let done = p
        .receiver
        .transfer_update(Duration::from_secs(120), completed_in)
        .await;
    assert_eq!(done.id, before.id, "the same transfer finished");
    assert_eq!(done.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(file_sha(&done.path.unwrap()), sha);
    let sent = p
        .sender
        .transfer_update(Duration::from_secs(10), |u| {
            u.state == TransferState::Completed
        })
        .await
        .bytes_sent_total;
    let resent = sent - size;
    eprintln!(
        "interrupted at {} MiB; re-sent {:.1} MiB ({:.2} %)",
        before.bytes_done >> 20,
        resent as f64 / 1048576.0,
        resent as f64 * 100.0 / size as f64
    );
    assert!(resent * 10 < size, "re-sent {resent} bytes of {size}");
    assert!(
        p.sender
            .seen
            .iter()
            .any(|e| matches!(e, Event::PeerConnectionClosed { .. })),
        "the connection really went away"
    );
    p.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_land_inside_the_download_folder() {
    let mut p = pair("names", true, None).await;
    let path = p.src.path().join("payload.txt");
    make_file(&path, 100, 2);
    let long = "n".repeat(300);
    let names = [
        "../../etc/passwd",
        "/etc/shadow",
        "C:\\Windows\\x",
        "con",
        "a\u{0}b",
        long.as_str(),
        "",
        ".",
        "..",
    ];
    for name in names {
        p.sender
            .send(Command::Transfer(TransferCommand::SendFileAs {
                path: path.clone(),
                name: name.to_owned(),
                to: p.receiver_id.clone(),
            }));
    }
    let dst = p.dst.path().canonicalize().unwrap();
    for _ in names {
        let done = p
            .receiver
            .transfer_update(Duration::from_secs(20), completed_in)
            .await;
        let saved = done.path.unwrap().canonicalize().unwrap();
        assert_eq!(saved.parent(), Some(dst.as_path()), "{saved:?} escaped");
        let file_name = saved.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !file_name.starts_with('.') && !file_name.contains('\u{0}'),
            "{file_name:?}"
        );
        assert!(file_name.len() <= 200, "{file_name:?}");
    }
    let mut saved = files_in(&dst);
    saved.sort();
    assert_eq!(saved.len(), names.len(), "{saved:?}");
    assert!(saved.contains(&"passwd".to_string()));
    assert!(saved.contains(&"shadow".to_string()));
    assert!(saved.contains(&"x".to_string()));
    assert!(saved.contains(&"_con".to_string()));
    assert!(saved.contains(&"a_b".to_string()));
    assert!(saved.iter().any(|n| n.starts_with("received file")));
    // Nothing appeared outside the folder.
    assert!(!p.dst.path().parent().unwrap().join("passwd").exists());
    p.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_senders_fail_cleanly_and_the_session_goes_on() {
    for tamper in [Tamper::ExtraBytes(1 << 20), Tamper::WrongHash] {
        let mut p = pair("liar", true, Some(tamper)).await;
        let path = p.src.path().join("claims-1mb.bin");
        make_file(&path, 1 << 20, 9);
        p.send(&path);
        let failed = p
            .receiver
            .transfer_update(Duration::from_secs(20), |u| u.state.is_final())
            .await;
        eprintln!("{tamper:?}: {:?}", failed.state);
        assert!(
            matches!(failed.state, TransferState::Failed(_)),
            "{failed:?}"
        );
        p.sender
            .transfer_update(Duration::from_secs(10), |u| {
                matches!(u.state, TransferState::Cancelled(_))
            })
            .await;
        // The partial file is gone and the connection still carries chat and media state.
        let marker = p.src.path().join("after.bin");
        make_file(&marker, 10, 4);
        p.sender.send(Command::Transfer(TransferCommand::SendFiles {
            paths: vec![marker],
            to: Some(p.receiver_id.clone()),
        }));
        p.receiver
            .transfer_update(Duration::from_secs(10), |u| {
                u.name == "after.bin" && u.state.is_final()
            })
            .await;
        let left: Vec<String> = files_in(p.dst.path());
        assert!(
            !left.iter().any(|n| n.starts_with("claims-1mb")),
            "{left:?}"
        );
        assert!(
            !p.receiver
                .seen
                .iter()
                .any(|e| matches!(e, Event::PeerConnectionClosed { .. }))
        );
        p.sender.send(Command::SetAudioMuted(true));
        let sender = p.sender_id.clone();
        p.receiver
            .wait_for(Duration::from_secs(5), |e| match e {
                Event::PeerMediaState {
                    peer, audio: false, ..
                } if *peer == sender => Some(()),
                _ => None,
            })
            .await;
        p.finish().await;
    }
}

/// A front end that stops reading events (a minimised window: eframe stops calling the UI) must
/// not stall the engine. The receiver's queue is shrunk to 16 slots so that twelve seconds of
/// statistics fill it the way an hour of them fills the default 4096.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_events_nobody_reads_keeps_the_call_and_a_transfer_going() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mut so = PeerOptions::new(1, 440.0, src.path().join("inbox"));
    so.video = None;
    let mut ro = PeerOptions::new(2, 660.0, dst.path().into());
    ro.event_queue = Some(16);
    let mut sender = TestPeer::start(&url, so);
    let mut receiver = TestPeer::start(&url, ro);
    sender.join("minimised", "sender").await;
    receiver.join("minimised", "receiver").await;
    let receiver_id = receiver.id.clone().unwrap();
    let sender_id = sender.id.clone().unwrap();
    sender.connected_to(&receiver_id).await;
    receiver.connected_to(&sender_id).await;

    // From here on nobody reads the receiver's events. Wait until statistics have filled its
    // queue up to the quarter kept for events that must arrive.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.events.len() < 12 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queue did not fill: {} events",
            receiver.events.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The engine still acts on commands: a chat message reaches the sender...
    receiver.send(Command::SendChat("still here".into()));
    let text = sender
        .wait_for(Duration::from_secs(10), |e| match e {
            Event::Chat(m) if m.text == "still here" => Some(m.text.clone()),
            _ => None,
        })
        .await;
    assert_eq!(text, "still here");
    // ...its video keeps flowing...
    let video = sender
        .video_frames(&receiver_id, 1, Duration::from_secs(10))
        .await;
    let before = video.stats().frames_decoded;
    // ...and a file sent to it arrives whole.
    let path = src.path().join("while-minimised.bin");
    let sha = make_file(&path, 3 << 20, 99);
    sender.send(Command::Transfer(TransferCommand::SendFiles {
        paths: vec![path],
        to: Some(receiver_id.clone()),
    }));
    let done = sender
        .transfer_update(Duration::from_secs(30), |u| u.state.is_final())
        .await;
    assert_eq!(done.state, TransferState::Completed, "{done:?}");
    assert_eq!(file_sha(&dst.path().join("while-minimised.bin")), sha);
    sender
        .until(Duration::from_secs(5), |_| {
            (video.stats().frames_decoded >= before + 10).then_some(())
        })
        .await;

    // When the front end reads again, what must arrive did: the completed transfer.
    let mut completed = false;
    while let Ok(event) = receiver.events.try_recv() {
        if let Event::Transfer(huddle::transfer::TransferEvent::Update { update, .. }) = &event
            && update.direction == Direction::Incoming
            && update.state == TransferState::Completed
        {
            completed = true;
        }
    }
    assert!(completed, "the completed transfer was not delivered");
    sender.engine.shutdown().await;
    receiver.engine.shutdown().await;
    server.shutdown().await;
}

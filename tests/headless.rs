//! The `huddle join --headless` binary as users and benchmarks run it: two processes through a
//! real server, their JSON-lines logs read back.

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

struct Headless {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    log: Vec<Value>,
}

impl Headless {
    fn start(url: &str, name: &str, extra: &[&str], dir: &Path) -> Headless {
        let mut args = vec!["--recv-dir", dir.to_str().expect("utf-8 temp path")];
        args.extend_from_slice(extra);
        Headless::start_in(url, name, &args, dir)
    }

    /// Starts a peer whose working directory is `cwd`, with exactly `extra` besides the basics.
    fn start_in(url: &str, name: &str, extra: &[&str], cwd: &Path) -> Headless {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_huddle"))
            .current_dir(cwd)
            .args([
                "join",
                "--headless",
                "--server",
                url,
                "--room",
                "cli",
                "--name",
                name,
            ])
            .args(["--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("huddle binary runs");
        let stdout = child.stdout.take().unwrap();
        Headless {
            child,
            lines: BufReader::new(stdout).lines(),
            log: Vec::new(),
        }
    }

    /// Reads log lines until one matches.
    async fn until(&mut self, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out; log so far: {:#?}", self.log))
                .expect("read stdout")
                .unwrap_or_else(|| panic!("process ended; log: {:#?}", self.log));
            let v: Value = serde_json::from_str(&line).expect("every line is JSON");
            self.log.push(v.clone());
            if f(&v) {
                return v;
            }
        }
    }
}

fn is(v: &Value, event: &str) -> bool {
    v["event"] == event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_headless_processes_call_chat_and_send_a_file() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let file = dir_a.path().join("notes.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();

    let mut ann = Headless::start(
        &url,
        "ann",
        &["--source-id", "1", "--audio", "tone:440", "--duration", "8"],
        dir_a.path(),
    );
    ann.until(Duration::from_secs(10), |v| is(v, "joined"))
        .await;
    let mut bob = Headless::start(
        &url,
        "bob",
        &[
            "--source-id",
            "2",
            "--audio",
            "tone:660",
            "--duration",
            "8",
            "--chat",
            "hi ann",
            "--send",
            file.to_str().unwrap(),
        ],
        dir_b.path(),
    );
    let joined = bob
        .until(Duration::from_secs(10), |v| is(v, "joined"))
        .await;
    assert_eq!(joined["peers"][0]["nickname"], "ann");
    bob.until(Duration::from_secs(10), |v| is(v, "connected"))
        .await;
    let first = bob
        .until(Duration::from_secs(10), |v| is(v, "first_frame"))
        .await;
    assert!(first["latency_ms"].as_f64().unwrap() < 500.0);
    // Process start comes before the join, so it is the longer of the two (to within the
    // 20 ms the kernel's clock-tick stamps allow).
    let from_start = first["since_process_start_ms"].as_f64().unwrap();
    let from_join = first["since_join_ms"].as_f64().unwrap();
    assert!(from_start + 20.0 >= from_join, "{first}");
    assert!(from_start < 60_000.0, "{first}");
    // Ann was in the room when bob joined: bob knew of her from his join on.
    let from_known = first["since_peer_known_ms"].as_f64().unwrap();
    assert!(from_known <= from_join + 1.0, "{first}");
    assert!(from_known + 100.0 >= from_join, "{first}");

    let chat = ann
        .until(Duration::from_secs(10), |v| {
            is(v, "chat") && v["text"] == "hi ann"
        })
        .await;
    assert_eq!(chat["nickname"], "bob");
    let received = ann
        .until(Duration::from_secs(20), |v| is(v, "file_received"))
        .await;
    assert_eq!(received["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(received["name"], "notes.bin");
    let saved = std::fs::read(received["path"].as_str().unwrap()).unwrap();
    assert_eq!(saved, data);

    // Stats lines show video and the tone from the other side.
    let stats = ann
        .until(Duration::from_secs(10), |v| {
            is(v, "stats")
                && v["video"]["fps"].as_f64().unwrap_or(0.0) > 20.0
                && v["audio"]["frequency_hz"].is_number()
        })
        .await;
    let hz = stats["audio"]["frequency_hz"].as_f64().unwrap();
    assert!((hz - 660.0).abs() < 13.0, "{hz}");
    assert_eq!(stats["video"]["out_of_order"], 0);

    let leaving = ann
        .until(Duration::from_secs(15), |v| is(v, "leaving"))
        .await;
    assert_eq!(leaving["files_received"], 1);
    let status = tokio::time::timeout(Duration::from_secs(10), ann.child.wait())
        .await
        .expect("exits after --duration")
        .unwrap();
    assert!(status.success());
    let _ = bob.child.kill().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_receive_folder_offered_files_are_declined_and_nothing_is_written() {
    let server = start_server(test_config()).await;
    let url = server.url();
    let cwd = tempfile::tempdir().unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let file = outbox.path().join("unsolicited.bin");
    std::fs::write(&file, vec![7u8; 200_000]).unwrap();
    let quiet = ["--video", "none", "--audio", "none", "--duration", "20"];
    let mut ann = Headless::start_in(&url, "ann", &quiet, cwd.path());
    ann.until(Duration::from_secs(10), |v| is(v, "joined"))
        .await;
    let mut args = quiet.to_vec();
    args.extend(["--send", file.to_str().unwrap()]);
    let mut bob = Headless::start_in(&url, "bob", &args, outbox.path());
    let outcome = bob
        .until(Duration::from_secs(20), |v| {
            is(v, "transfer") || is(v, "file_sent")
        })
        .await;
    assert_eq!(outcome["event"], "transfer", "{outcome}");
    assert_eq!(outcome["state"]["state"], "declined", "{outcome}");
    let declined = ann
        .until(Duration::from_secs(10), |v| is(v, "file_declined"))
        .await;
    assert_eq!(declined["name"], "unsolicited.bin");
    let written: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(written.is_empty(), "files appeared: {written:?}");
    let _ = ann.child.kill().await;
    let _ = bob.child.kill().await;
    server.shutdown().await;
}

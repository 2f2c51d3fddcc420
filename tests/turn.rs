//! TURN for real deployments: a real coturn (Debian's `coturn`, `use-auth-secret`) on loopback,
//! a `huddle serve` that hands each client time-limited credentials for it, and two headless
//! peers forced to relay-only ICE. The call must come up through the relay and carry video.
//! Without coturn installed the test says it was skipped (and fails when `CI` is set).

mod common;

use common::*;
use huddle::signaling::turn::TurnConfig;
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const SECRET: &str = "turn-test-secret";

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

struct Peer {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    log: Vec<Value>,
}

impl Peer {
    fn start(url: &str, name: &str) -> Peer {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_huddle"))
            .args(["join", "--headless", "--server", url, "--room", "relay"])
            .args(["--name", name, "--bind", "127.0.0.1:0", "--relay-only"])
            .args([
                "--decline-files",
                "--stats-interval",
                "0.5",
                "--duration",
                "60",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("huddle runs");
        let stdout = child.stdout.take().expect("stdout");
        Peer {
            _child: child,
            lines: BufReader::new(stdout).lines(),
            log: Vec::new(),
        }
    }

    async fn until(&mut self, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out; log: {:#?}", self.log))
                .expect("read")
                .unwrap_or_else(|| panic!("exited; log: {:#?}", self.log));
            let v: Value = serde_json::from_str(&line).expect("JSON line");
            self.log.push(v.clone());
            if f(&v) {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_call_goes_through_coturn_with_minted_credentials() {
    if std::process::Command::new("turnserver")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "coturn (turnserver) is missing in CI"
        );
        eprintln!("SKIPPED: coturn is not installed (apt-get install coturn)");
        return;
    }
    let port = free_udp_port();
    let relay_min = free_udp_port().max(20_000);
    let mut coturn = tokio::process::Command::new("turnserver")
        .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
        .arg(format!("--listening-port={port}"))
        .arg(format!("--min-port={relay_min}"))
        .arg(format!("--max-port={}", relay_min + 200))
        .args([
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
        ])
        .args(["--realm=huddle.test", "--allow-loopback-peers", "--no-cli"])
        .args(["--no-tls", "--no-dtls", "--log-file=stdout", "--simple-log"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("turnserver starts");
    // Wait until its servers are up (its last start-up line before serving).
    let mut turn_log = BufReader::new(coturn.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = turn_log.next_line().await {
            if line.contains("Total General servers") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "coturn did not start listening");
    // Keep reading its log so it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = turn_log.next_line().await {} });

    let mut config = test_config();
    config.turn = Some(
        TurnConfig::new(
            vec![format!("turn:127.0.0.1:{port}")],
            SECRET,
            Duration::from_secs(600),
        )
        .expect("valid TURN config"),
    );
    let server = start_server(config).await;
    let url = server.url();
    let mut a = Peer::start(&url, "a");
    let mut b = Peer::start(&url, "b");
    for p in [&mut a, &mut b] {
        p.until(Duration::from_secs(30), |v| v["event"] == "first_frame")
            .await;
        // The selected pair is relay on both ends, and video keeps coming through it.
        let relayed = p
            .until(Duration::from_secs(15), |v| {
                v["event"] == "stats"
                    && v["network"]["path"]["local"] == "relay"
                    && v["video"]["fps"].as_f64().unwrap_or(0.0) > 5.0
            })
            .await;
        assert_eq!(relayed["network"]["path"]["remote"], "relay", "{relayed:#}");
    }
    drain.abort();
}

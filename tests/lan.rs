//! Rooms on the local network with no configured server: two network namespaces joined by a
//! veth pair stand in for two machines on a LAN. In one, a Huddle server announces its rooms over
//! mDNS and a peer waits in a room; in the other, a peer finds that room by mDNS alone, joins it
//! and exchanges video. Needs root (CAP_NET_ADMIN) to create the namespaces, as CI has.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Two namespaces with a veth pair between them; removed on drop.
struct Lan {
    a: String,
    b: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2 is installed");
    assert!(
        out.status.success(),
        "ip {}: {} (creating network namespaces needs root / CAP_NET_ADMIN)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lan {
    fn new() -> Lan {
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let lan = Lan {
            a: format!("hudA{tag}"),
            b: format!("hudB{tag}"),
        };
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        ip(&["netns", "add", &lan.a]);
        ip(&["netns", "add", &lan.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &lan.a]);
        ip(&["link", "set", &vb, "netns", &lan.b]);
        ip(&["-n", &lan.a, "addr", "add", "10.77.0.1/24", "dev", &va]);
        ip(&["-n", &lan.b, "addr", "add", "10.77.0.2/24", "dev", &vb]);
        for (ns, dev) in [(&lan.a, &va), (&lan.b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        lan
    }

    fn spawn(&self, ns: &str, args: &[&str]) -> Proc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_huddle")])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        // Bounded: when the test stops reading, the reader waits and the child's pipe fills.
        let (tx, lines) = mpsc::sync_channel(1024);
        std::thread::Builder::new()
            .name("child-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .unwrap();
        Proc { child, lines }
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth pair, and with it the other end.
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// The first output line `pick` accepts, within `within`.
    fn next<T>(&self, what: &str, within: Duration, pick: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} within {within:?}"));
            if let Some(found) = pick(&line) {
                return found;
            }
        }
    }

    /// The first JSON line `f` accepts.
    fn until(&self, what: &str, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
        self.next(what, within, |line| {
            serde_json::from_str::<Value>(line).ok().filter(|v| f(v))
        })
    }

    fn line_containing(&self, text: &str, within: Duration) -> String {
        self.next(&format!("line with {text:?}"), within, |line| {
            line.contains(text).then(|| line.to_owned())
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_room_hosted_on_the_lan_is_found_by_mdns_and_joined() {
    let lan = Lan::new();
    let server = lan.spawn(
        &lan.a,
        &[
            "serve",
            "--bind",
            "0.0.0.0:8787",
            "--announce",
            "Alice's Huddle",
        ],
    );
    // `serve` prints its address on stdout once listening.
    server.line_containing("ws://", Duration::from_secs(10));
    let alice = lan.spawn(
        &lan.a,
        &[
            "join",
            "--headless",
            "--server",
            "ws://127.0.0.1:8787",
            "--room",
            "LAN party",
            "--name",
            "alice",
            "--source-id",
            "1",
            "--bind",
            "0.0.0.0:0",
            "--duration",
            "60",
        ],
    );
    alice.until("alice joined", Duration::from_secs(10), |v| {
        v["event"] == "joined"
    });

    // Bob knows only the room's name.
    let bob = lan.spawn(
        &lan.b,
        &[
            "join",
            "--headless",
            "--discover",
            "--room",
            "LAN party",
            "--name",
            "bob",
            "--source-id",
            "2",
            "--bind",
            "0.0.0.0:0",
            "--duration",
            "60",
        ],
    );
    let found = bob.until("discovery", Duration::from_secs(25), |v| {
        v["event"] == "discovered"
    });
    assert_eq!(found["server"], "ws://10.77.0.1:8787");
    assert_eq!(found["host"], "Alice's Huddle");
    let joined = bob.until("bob joined", Duration::from_secs(10), |v| {
        v["event"] == "joined"
    });
    assert_eq!(joined["peers"][0]["nickname"], "alice");
    bob.until("a connection", Duration::from_secs(15), |v| {
        v["event"] == "connected"
    });
    bob.until("alice's video", Duration::from_secs(15), |v| {
        v["event"] == "first_frame"
    });
    let stats = bob.until("frames flowing", Duration::from_secs(10), |v| {
        v["event"] == "stats" && v["video"]["frames_decoded"].as_u64().unwrap_or(0) >= 30
    });
    assert_eq!(stats["video"]["out_of_order"], 0);
    alice.until("bob's video at alice", Duration::from_secs(15), |v| {
        v["event"] == "first_frame"
    });
    drop((bob, alice, server));
}

//! Calls across emulated links: the signaling server and one headless peer in network namespace
//! A, the other peer in namespace B, joined by Huddle's userspace link emulator (TUN devices,
//! RFC 2544 addresses; nothing leaves the machine). Needs root, as CI runs; elsewhere the tests
//! say they were skipped (and fail when `CI` is set, so CI cannot skip them silently).
//! The calls run one at a time: two peers encoding 640x480 each fill this machine's two cores.

use huddle::linkemu::{LinkEmulator, LinkProfile, Side};
use serde_json::Value;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout};

static ONE_CALL_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The emulator, or `None` (with a note) where it cannot run and we are not in CI.
fn emulator(profile: &str) -> Option<LinkEmulator> {
    let profile = LinkProfile::named(profile).expect("named profile");
    match LinkEmulator::start(&profile, 7) {
        Ok(e) => Some(e),
        Err(huddle::linkemu::LinkError::Unavailable(why)) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: the link emulator cannot run here ({why}); run as root");
            None
        }
        Err(e) => panic!("link emulator: {e}"),
    }
}

struct Process {
    _child: Child,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    name: &'static str,
    log: Vec<(Duration, Value)>,
    started: Instant,
}

impl Process {
    fn start<S: AsRef<std::ffi::OsStr>>(
        emu: &LinkEmulator,
        side: Side,
        name: &'static str,
        args: &[S],
    ) -> Process {
        let mut child = emu
            .tokio_command(side, env!("CARGO_BIN_EXE_huddle"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("huddle runs in the namespace");
        let stdout = child.stdout.take().expect("stdout");
        Process {
            _child: child,
            lines: BufReader::new(stdout).lines(),
            name,
            log: Vec::new(),
            started: Instant::now(),
        }
    }

    /// The next line, or `None` at `deadline`.
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        let line = tokio::time::timeout_at(deadline, self.lines.next_line())
            .await
            .ok()?
            .expect("read stdout")
            .unwrap_or_else(|| panic!("{} exited; log: {:#?}", self.name, self.log));
        let value: Value = serde_json::from_str(&line).unwrap_or(Value::String(line));
        self.log.push((self.started.elapsed(), value.clone()));
        Some(value)
    }

    async fn until(&mut self, within: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match self.next(deadline).await {
                Some(v) if f(&v) => return v,
                Some(_) => {}
                None => panic!(
                    "{}: nothing expected within {within:?}: {:#?}",
                    self.name, self.log
                ),
            }
        }
    }
}

/// A call between a peer in A and a peer in B through a server in A.
struct Call {
    emu: LinkEmulator,
    _server: Process,
    a: Process,
    b: Process,
}

/// `huddle serve` on side A at 198.18.0.1:8787 with `extra` arguments, once it listens.
async fn server_in_a(emu: &LinkEmulator, extra: &[&str]) -> Process {
    let mut args = vec!["serve", "--bind", "198.18.0.1:8787", "--insecure"];
    args.extend_from_slice(extra);
    let mut server = Process::start(emu, Side::A, "server", &args);
    // The server prints its URL once it listens.
    server
        .until(Duration::from_secs(20), |v| {
            v.as_str().is_some_and(|s| s.contains("ws://"))
        })
        .await;
    server
}

/// A headless peer's arguments: joining `room` on that server as `name`, bound to its side's
/// address, a stats line every `stats_every` seconds.
fn peer_args(room: &str, name: &str, source: &str, side: Side, stats_every: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "join",
        "--headless",
        "--server",
        "ws://198.18.0.1:8787",
        "--room",
        room,
        "--name",
        name,
        "--source-id",
        source,
        "--duration",
        "120",
        "--stats-interval",
        stats_every,
        "--decline-files",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--bind".to_string(), format!("{}:0", side.addr())]);
    args
}

async fn call(profile: &str, extra: &[&str]) -> Option<Call> {
    let emu = emulator(profile)?;
    let server = server_in_a(&emu, &[]).await;
    let peer = |side: Side, name: &'static str, source: &'static str| {
        let mut args = peer_args("net", name, source, side, "0.25");
        args.extend(["--video".to_string(), "scene".to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Process::start(&emu, side, name, &args)
    };
    let mut a = peer(Side::A, "a", "1");
    let mut b = peer(Side::B, "b", "2");
    for p in [&mut a, &mut b] {
        p.until(Duration::from_secs(30), |v| v["event"] == "joined")
            .await;
    }
    emu.arm();
    Some(Call {
        emu,
        _server: server,
        a,
        b,
    })
}

/// Frames decoded as (seconds since `since`, cumulative count), from `p`'s stats lines.
fn frame_times(p: &Process) -> Vec<(f64, u64)> {
    p.log
        .iter()
        .filter(|(_, v)| v["event"] == "stats")
        .filter_map(|(t, v)| Some((t.as_secs_f64(), v["video"]["frames_decoded"].as_u64()?)))
        .collect()
}

/// The cumulative frame count last reported at or before `t` (process time), if any.
fn frames_at(frames: &[(f64, u64)], t: f64) -> Option<u64> {
    frames
        .iter()
        .rev()
        .find(|(ft, _)| *ft <= t)
        .map(|(_, n)| *n)
}

/// Reads both peers' logs for `span`.
async fn run_for(call: &mut Call, span: Duration) {
    let deadline = tokio::time::Instant::now() + span;
    loop {
        tokio::select! {
            v = call.a.next(deadline) => if v.is_none() { break },
            v = call.b.next(deadline) => if v.is_none() { break },
        }
    }
}

fn last_stats(p: &Process) -> Value {
    p.log
        .iter()
        .rev()
        .find(|(_, v)| v["event"] == "stats" && v.get("network").is_some())
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{}: no stats with network figures: {:#?}", p.name, p.log))
}

/// Seconds (1 s windows from `from` to `to`, in process time) with fewer than `min` new frames.
fn slow_seconds(p: &Process, from: f64, to: f64, min: u64) -> Vec<f64> {
    let frames = frame_times(p);
    let at = |t: f64| frames_at(&frames, t).unwrap_or(0);
    let mut slow = Vec::new();
    let mut t = from;
    while t + 1.0 <= to {
        if at(t + 1.0).saturating_sub(at(t)) < min {
            slow.push(t);
        }
        t += 1.0;
    }
    slow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_keeps_flowing_at_five_percent_loss_with_retransmissions() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let Some(mut call) = call("lossy", &[]).await else {
        return;
    };
    let armed = call.a.started.elapsed().as_secs_f64();
    run_for(&mut call, Duration::from_secs(15)).await;
    let end = call.a.started.elapsed().as_secs_f64();
    for p in [&call.a, &call.b] {
        // Once the ramp-up is over (5 s: the picture climbs the ladder, each step a keyframe
        // that loss can hold up), no more than one second without at least 10 new frames. The
        // ramp-up itself is measured by the benchmark (`first frame`, freezes), not here: it
        // stalls for a second now and then at 5 % loss, which is a known open problem.
        let slow = slow_seconds(p, armed + 5.0, end - 0.5, 10);
        assert!(slow.len() <= 1, "{}: slow seconds at {slow:?}", p.name);
        let s = last_stats(p);
        let n = &s["network"];
        // Loss happened, and NACKs brought packets back.
        assert!(n["packets_lost"].as_i64().unwrap_or(0) > 0, "{n}");
        assert!(n["nacks_sent"].as_u64().unwrap_or(0) > 0, "{n}");
        assert!(
            n["retransmissions_received"].as_u64().unwrap_or(0) > 0,
            "{n}"
        );
        assert!(n["retransmissions_sent"].as_u64().unwrap_or(0) > 0, "{n}");
    }
    // The emulator really applied the profile's 5 % loss: a binomial count over at least a
    // thousand packets lands well inside 3-7 % (the bound is over 4 standard deviations wide).
    for side in [Side::A, Side::B] {
        let link = call.emu.stats(side);
        assert!(
            link.packets_in >= 1000,
            "too few packets to judge: {link:?}"
        );
        let lost = link.dropped_loss as f64 / link.packets_in as f64;
        assert!((0.03..=0.07).contains(&lost), "lost {lost:.3}: {link:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_second_outage_does_not_end_the_call_and_video_comes_back() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    // The outage starts 8 s after arming and lasts 3 s.
    let Some(mut call) = call("outage", &[]).await else {
        return;
    };
    let armed = call.a.started.elapsed().as_secs_f64();
    run_for(&mut call, Duration::from_secs(16)).await;
    for p in [&call.a, &call.b] {
        assert!(
            !p.log
                .iter()
                .any(|(_, v)| v["event"] == "connection_closed" || v["event"] == "peer_left"),
            "{}: the call ended: {:#?}",
            p.name,
            p.log
        );
        let back = armed + 11.0;
        let frames = frame_times(p);
        let before = frames_at(&frames, back).expect("frames before the outage ended");
        let again = frames
            .iter()
            .find(|(t, n)| *t > back && *n > before)
            .map(|(t, _)| t - back);
        let again = again.unwrap_or_else(|| panic!("{}: no frame after the outage", p.name));
        // Behaviour, not the benchmark's 1 s target: it comes back within a few seconds.
        assert!(again < 4.0, "{}: frames again after {again:.1} s", p.name);
        let slow = slow_seconds(p, back + 2.0, armed + 16.0 - 0.5, 10);
        assert!(slow.is_empty(), "{}: still slow at {slow:?}", p.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_uplink_gets_a_smaller_picture_that_keeps_moving() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let Some(mut call) = call("slow-uplink", &[]).await else {
        return;
    };
    let armed = call.a.started.elapsed().as_secs_f64();
    run_for(&mut call, Duration::from_secs(20)).await;
    let end = call.a.started.elapsed().as_secs_f64();
    for (p, other) in [(&call.a, &call.b), (&call.b, &call.a)] {
        let s = last_stats(p);
        // The sender measured the 200 kbit/s link and steps down its picture to fit it.
        let estimate = s["network"]["estimate_kbps"].as_f64().unwrap_or(f64::MAX);
        assert!(estimate < 260.0, "{}: estimate {estimate} kbit/s", p.name);
        let sending = &s["network"]["sending"];
        assert!(
            sending["width"].as_u64().unwrap_or(640) < 640,
            "{}: still sending {sending}",
            p.name
        );
        // The receiver keeps getting pictures in the second half.
        let slow = slow_seconds(other, armed + 10.0, end - 0.5, 5);
        assert!(slow.len() <= 2, "{}: slow seconds at {slow:?}", other.name);
    }
}

/// Stats lines of `p` between two process times, with their network figures.
fn network_between(p: &Process, from: f64, to: f64) -> Vec<&Value> {
    p.log
        .iter()
        .filter(|(t, v)| {
            (from..to).contains(&t.as_secs_f64())
                && v["event"] == "stats"
                && v.get("network").is_some_and(|n| !n.is_null())
        })
        .map(|(_, v)| &v["network"])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thirty_second_outage_rebuilds_the_call_without_anyone_acting() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    // 30 s without a single packet from t = 8 s: ICE gives up, signaling drops, and both
    // sides must find each other again on their own.
    let Some(mut call) = call("long-outage", &[]).await else {
        return;
    };
    let armed = call.a.started.elapsed().as_secs_f64();
    let back = armed + 38.0;
    run_for(&mut call, Duration::from_secs(60)).await;
    for p in [&call.a, &call.b] {
        // The quality badge saw it: poor while nothing arrived.
        let during = network_between(p, armed + 11.0, armed + 20.0);
        assert!(
            during.iter().any(|n| n["quality"] == "poor"),
            "{}: quality during the outage: {during:?}",
            p.name
        );
        let frames = frame_times(p);
        let before = frames_at(&frames, back).unwrap_or(0);
        // Counters restart with a rebuilt connection: any change after the link returns is a
        // new picture.
        let again = frames
            .iter()
            .find(|(t, n)| *t > back && *n != before)
            .map(|(t, _)| t - back)
            .unwrap_or_else(|| panic!("{}: no video after the outage: {:#?}", p.name, p.log));
        assert!(again < 20.0, "{}: video again after {again:.1} s", p.name);
        // And it keeps flowing at the end.
        let end = p.started.elapsed().as_secs_f64();
        let slow = slow_seconds(p, end - 4.5, end - 0.5, 10);
        assert!(slow.is_empty(), "{}: still slow at {slow:?}", p.name);
    }
}

/// Janus (its files in `dir`) and a server putting every room on it, both in namespace A, as
/// at a data centre.
async fn janus_and_server_in_a(
    emu: &LinkEmulator,
    dir: &std::path::Path,
) -> (huddle::signaling::janus::LocalJanus, Process) {
    let key = "network test janus key";
    let janus =
        huddle::signaling::janus::LocalJanus::start_in(dir, key, Some(emu.namespace(Side::A)))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let server = server_in_a(
        emu,
        &["--sfu", &janus.url, "--sfu-secret", key, "--sfu-above", "0"],
    )
    .await;
    (janus, server)
}

/// Whether `v` is a stats line about `nickname`'s camera decoded at `width` with new frames.
fn decoding_at(v: &Value, nickname: &str, width: u64) -> bool {
    v["event"] == "stats"
        && v["nickname"] == nickname
        && v["video"]["width"].as_u64() == Some(width)
        && v["video"]["fps"].as_f64().is_some_and(|fps| fps > 3.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_sfu_a_receiver_behind_a_slow_link_gets_the_low_layer_and_others_the_high_one() {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let Some(emu) = emulator("slow-uplink") else {
        return;
    };
    // Janus and the server in namespace A, as at a data centre; a1 and a2 beside them on
    // clean links, b behind the 200 kbit/s link (both ways).
    let dir = tempfile::tempdir().unwrap();
    let (janus, _server) = janus_and_server_in_a(&emu, dir.path()).await;
    // a1 is read only at the end: it reports rarely, so its output never fills the pipe.
    let peer = |side: Side, name: &'static str, source: &str, camera: bool, every: &str| {
        let mut args = peer_args("sfu-net", name, source, side, every);
        if !camera {
            args.extend(["--video".to_string(), "none".to_string()]);
        }
        Process::start(&emu, side, name, &args)
    };
    let mut a1 = peer(Side::A, "a1", "1", true, "4");
    let mut a2 = peer(Side::A, "a2", "2", false, "0.5");
    let mut b = peer(Side::B, "b", "3", true, "0.5");
    for p in [&mut a1, &mut a2, &mut b] {
        p.until(Duration::from_secs(30), |v| v["event"] == "joined")
            .await;
    }
    emu.arm();
    // a2 gets a1's top layer; b, whose downlink cannot carry it, a1's lowest.
    a2.until(Duration::from_secs(40), |v| decoding_at(v, "a1", 640))
        .await;
    b.until(Duration::from_secs(40), |v| decoding_at(v, "a1", 160))
        .await;
    // And keeps getting it for twenty seconds while a2 keeps the top one (read side by side).
    // Twenty, not ten: b tries a step up now and then (the first about fifteen seconds after
    // the cut), which overloads its link and stalls the picture until it is undone; a window
    // that happened to hold one such try was too short to say "most of the time".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (mut b_lines, mut a2_lines) = (Vec::new(), Vec::new());
    loop {
        tokio::select! {
            v = b.next(deadline) => match v {
                Some(v) if v["event"] == "stats" && v["nickname"] == "a1" => b_lines.push(v),
                Some(_) => {}
                None => break,
            },
            v = a2.next(deadline) => match v {
                Some(v) if v["event"] == "stats" && v["nickname"] == "a1" => a2_lines.push(v),
                Some(_) => {}
                None => break,
            },
        }
    }
    let share = |lines: &[Value], width: u64| {
        lines.iter().filter(|v| decoding_at(v, "a1", width)).count() as f64
            / lines.len().max(1) as f64
    };
    // Width@fps of each half-second sample, short enough to survive a truncated CI log.
    let samples = |lines: &[Value]| {
        lines
            .iter()
            .map(|v| format!("{}@{}", v["video"]["width"], v["video"]["fps"]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        share(&b_lines, 160) >= 0.8,
        "b decodes a1 at 160x120 and moving most of the time: {}",
        samples(&b_lines)
    );
    assert!(
        share(&a2_lines, 640) >= 0.8,
        "a2 decodes a1 at 640x480 and moving most of the time: {}",
        samples(&a2_lines)
    );
    // b's own uplink carries only its lowest layer, so that is what a1 gets of b.
    a1.until(Duration::from_secs(20), |v| decoding_at(v, "b", 160))
        .await;
    drop(janus);
}

/// Whether `v` is a stats line showing `nickname`'s camera with new frames.
fn moving(v: &Value, nickname: &str) -> bool {
    v["event"] == "stats"
        && v["nickname"] == nickname
        && v["video"]["fps"].as_f64().is_some_and(|fps| fps > 3.0)
}

/// A room on the SFU (Janus and the server in A, a beside them, b behind `profile`) whose
/// link from b carries nothing, or no UDP, for 30 s from 8 s after it is armed: both must see
/// each other's video again within 20 s of the link's return, and still at the end.
async fn on_the_sfu_video_comes_back_after(profile: &str) {
    let _one = ONE_CALL_AT_A_TIME.lock().await;
    let Some(emu) = emulator(profile) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (janus, server) = janus_and_server_in_a(&emu, dir.path()).await;
    let room = format!("sfu-{profile}");
    let mut a = Process::start(
        &emu,
        Side::A,
        "a",
        &peer_args(&room, "a", "1", Side::A, "0.5"),
    );
    let mut b = Process::start(
        &emu,
        Side::B,
        "b",
        &peer_args(&room, "b", "2", Side::B, "0.5"),
    );
    for p in [&mut a, &mut b] {
        p.until(Duration::from_secs(30), |v| v["event"] == "joined")
            .await;
    }
    a.until(Duration::from_secs(40), |v| moving(v, "b")).await;
    b.until(Duration::from_secs(40), |v| moving(v, "a")).await;
    emu.arm();
    let back = a.started.elapsed().as_secs_f64() + 38.0;
    let mut call = Call {
        emu,
        _server: server,
        a,
        b,
    };
    run_for(&mut call, Duration::from_secs(60)).await;
    let other_of = |p: &Process| if p.name == "a" { &call.b } else { &call.a };
    for (p, other) in [(&call.a, "b"), (&call.b, "a")] {
        let again = p
            .log
            .iter()
            .find(|(t, v)| t.as_secs_f64() > back && moving(v, other))
            .map(|(t, _)| t.as_secs_f64() - back)
            .unwrap_or_else(|| {
                panic!(
                    "{}: no video after the outage (back at {back:.1} s):\n{}\n{}:\n{}",
                    p.name,
                    summary(p),
                    other_of(p).name,
                    summary(other_of(p))
                )
            });
        assert!(again < 20.0, "{}: video again after {again:.1} s", p.name);
        eprintln!(
            "{profile}: {}: {other}'s video again {again:.1} s after the link came back",
            p.name
        );
        // And it keeps coming at the end.
        let last: Vec<_> = p
            .log
            .iter()
            .rev()
            .filter(|(_, v)| v["event"] == "stats" && v["nickname"] == other)
            .take(4)
            .collect();
        assert!(
            last.len() == 4 && last.iter().all(|(_, v)| moving(v, other)),
            "{}: {other}'s video at the end: {last:#?}",
            p.name
        );
    }
    drop(janus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_sfu_a_thirty_second_outage_brings_the_call_back_without_anyone_acting() {
    // Nothing passes: b's connections with Janus and with the server both die; b resumes its
    // place on the server and its SFU membership is made again.
    on_the_sfu_video_comes_back_after("long-outage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_sfu_thirty_seconds_without_udp_bring_the_call_back_without_anyone_acting() {
    // Only UDP stops: the signaling connection stays up while b's connections with Janus fail,
    // so b must ask for its SFU membership to start over (sfu_restart) until media flows again.
    on_the_sfu_video_comes_back_after("udp-outage").await;
}

/// One short line per logged event: stats lines as the peer's video width and fps.
fn summary(p: &Process) -> String {
    p.log
        .iter()
        .map(|(t, v)| {
            let t = t.as_secs_f64();
            if v["event"] == "stats" {
                format!(
                    "{t:.1} stats {} {}@{}",
                    v["nickname"], v["video"]["width"], v["video"]["fps"]
                )
            } else {
                format!("{t:.1} {v}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

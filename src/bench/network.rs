//! `huddle bench --only network`: calls across emulated links. For each named link profile, a
//! signaling server and one headless peer run in network namespace A (198.18.0.1), the other
//! peer in namespace B (198.18.0.2), joined by the userspace link emulator; both send the
//! synthetic scene (640x480, encodes like a camera) and a tone. The schedule (rate steps,
//! outages) starts when both have joined. Figures per profile and direction, from the receiver's
//! JSON log (every 100 ms), the sender's, and the emulator's own counters.

use super::{BenchError, BenchOptions, Proc, fail, num, start_server_command};
use crate::linkemu::{LinkEmulator, LinkProfile, Side};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Port of the signaling server inside namespace A.
const SERVER_PORT: u16 = 8787;

pub(super) async fn run(opts: &BenchOptions) -> Result<Value, BenchError> {
    let names: Vec<String> = if opts.profiles.is_empty() {
        LinkProfile::NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        opts.profiles.clone()
    };
    let mut out = json!({
        "what": "two headless peers (640x480 synthetic scene at 30 fps, Opus tone) in two network namespaces joined by Huddle's userspace link emulator; per direction, figures from the receiver. With --network-screen-fps, A also shares the synthetic 1920x1080 text page (--screen test) and B compares every share picture it decodes with that page (psnr_*: luma PSNR below the stamp, against the page after the sharer's RGB to I420 conversion; *_at_s: seconds since both peers had joined and the link profile started, at the first receiver stats line that reached it)",
        "profiles": {},
    });
    for name in names {
        let profile = LinkProfile::named(&name)
            .ok_or_else(|| fail(format!("unknown link profile {name:?}")))?;
        let seconds = opts
            .network_seconds
            .unwrap_or(profile.suggested_run.as_secs_f64());
        let seed = opts.link_seed.unwrap_or_else(rand::random);
        eprintln!("bench: network profile {name}, {seconds:.0} s, link seed {seed}");
        let mut result = profile_run(opts, &profile, seconds, seed)
            .await
            .unwrap_or_else(|e| json!({"error": e.to_string()}));
        result["link_seed"] = json!(seed);
        out["profiles"][&name] = result;
    }
    Ok(out)
}

/// One line of a peer's log, with its time since the schedule was armed.
struct Line {
    at: f64,
    value: Value,
}

async fn profile_run(
    opts: &BenchOptions,
    profile: &LinkProfile,
    seconds: f64,
    seed: u64,
) -> Result<Value, BenchError> {
    let emu = LinkEmulator::start(profile, seed).map_err(|e| fail(e.to_string()))?;
    let mut cmd = emu.tokio_command(Side::A, &opts.exe);
    let bind = format!("{}:{SERVER_PORT}", Side::A.addr());
    // 198.18.0.0/15 is not a private range, so plain ws needs --insecure.
    cmd.args(["serve", "--bind", &bind, "--insecure"]);
    let server = start_server_command(cmd).await?;
    let url = format!("ws://{bind}");
    let mut peers = Vec::new();
    for (side, name, source) in [(Side::A, "a", "1"), (Side::B, "b", "2")] {
        let mut cmd = emu.tokio_command(side, &opts.exe);
        let local = format!("{}:0", side.addr());
        cmd.args([
            "join",
            "--headless",
            "--server",
            &url,
            "--room",
            "net",
            "--name",
            name,
            "--bind",
            &local,
            "--video",
            "scene",
            "--source-id",
            source,
            "--audio",
            "tone",
            "--duration",
            "600",
            "--stats-interval",
            "0.1",
            "--warmup",
            "1",
            "--decline-files",
        ]);
        match (side, opts.network_screen_fps) {
            (Side::A, Some(fps)) => {
                cmd.args(["--screen", "test", "--screen-fps", &fps.to_string()]);
            }
            (Side::B, Some(_)) => {
                cmd.arg("--compare-screen");
            }
            _ => {}
        }
        // Each peer's own log (RUST_LOG applies), for a closer look at a failed run.
        let stderr = std::fs::File::create(
            opts.work_dir
                .join(format!("network-{}-{name}.log", profile.name)),
        )?;
        peers.push(Proc::spawn_command(cmd, name, stderr.into())?);
    }
    let mut ids = Vec::new();
    for p in peers.iter_mut() {
        let (_, joined) = p.event(Duration::from_secs(30), "joined").await?;
        ids.push(joined["peer_id"].as_str().unwrap_or_default().to_owned());
    }
    emu.arm();
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let mut logs: [Vec<Line>; 2] = [Vec::new(), Vec::new()];
    let mut link: Vec<Value> = Vec::new();
    let mut next_sample = t0;
    let (first, rest) = peers.split_at_mut(1);
    let (a, b) = (&mut first[0], &mut rest[0]);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if now >= next_sample {
            next_sample += Duration::from_secs(1);
            let (ab, ba) = (emu.stats(Side::A), emu.stats(Side::B));
            link.push(json!({
                "at": now.duration_since(t0).as_secs_f64(),
                "a_to_b": {"delivered_bytes": ab.delivered_bytes, "dropped": ab.dropped(), "capacity_bps": emu.rate_now(Side::A)},
                "b_to_a": {"delivered_bytes": ba.delivered_bytes, "dropped": ba.dropped(), "capacity_bps": emu.rate_now(Side::B)},
            }));
        }
        let wake = tokio::time::Instant::from_std(end.min(next_sample));
        tokio::select! {
            line = a.lines.next_line() => record(&mut logs[0], line, t0, "a")?,
            line = b.lines.next_line() => record(&mut logs[1], line, t0, "b")?,
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
    a.interrupt();
    b.interrupt();
    let summaries = [a.summary().await?, b.summary().await?];
    // The raw logs, for a closer look: WORK_DIR/network-PROFILE-{a,b}.jsonl.
    for (log, who) in logs.iter().zip(["a", "b"]) {
        let text: String = log
            .iter()
            .map(|l| format!("{{\"t\":{:.3},\"line\":{}}}\n", l.at, l.value))
            .collect();
        let path = opts
            .work_dir
            .join(format!("network-{}-{who}.jsonl", profile.name));
        std::fs::write(path, text)?;
    }
    let link_stats = [emu.stats(Side::A), emu.stats(Side::B)];
    drop(server);
    drop(emu);

    let mut directions = Vec::new();
    for (from, to) in [(0usize, 1usize), (1, 0)] {
        let label = if from == 0 { "a_to_b" } else { "b_to_a" };
        let mut d = direction(
            &logs[to],
            &logs[from],
            &summaries[to],
            &ids[from],
            seconds,
            profile,
        );
        let l = &link_stats[from];
        d["direction"] = json!(label);
        d["link"] = json!({
            "packets_in": l.packets_in, "delivered": l.delivered_packets,
            "dropped_random_or_burst_loss": l.dropped_loss, "dropped_queue_full": l.dropped_queue,
            "dropped_outage": l.dropped_outage, "dropped_emulator_overflow": l.dropped_overflow,
            "loss_percent": round1(100.0 * l.dropped() as f64 / l.packets_in.max(1) as f64),
            "max_queue_delay_ms": round1(l.max_queue_delay_us as f64 / 1000.0),
        });
        d["link_mean_capacity_kbps"] = json!(mean_capacity_kbps(&link, label));
        d["link_delivered_kbps"] = json!(delivered_kbps(&link, label));
        d["targets"] = targets(profile, &d);
        directions.push(d);
    }
    Ok(json!({
        "seconds": seconds,
        "profile": describe(profile),
        "directions": directions,
        "link_per_second": link,
    }))
}

fn record(
    log: &mut Vec<Line>,
    line: std::io::Result<Option<String>>,
    t0: Instant,
    who: &str,
) -> Result<(), BenchError> {
    let line = line?.ok_or_else(|| fail(format!("peer {who} exited during the run")))?;
    if let Ok(value) = serde_json::from_str::<Value>(&line) {
        log.push(Line {
            at: t0.elapsed().as_secs_f64(),
            value,
        });
    }
    Ok(())
}

pub(super) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn describe(p: &LinkProfile) -> Value {
    let s = &p.a_to_b;
    json!({
        "name": p.name,
        "one_way_delay_ms": s.delay.as_millis() as u64,
        "jitter_ms": s.jitter.as_millis() as u64,
        "loss": format!("{:?}", s.loss),
        "average_loss_percent": round1(s.loss.average() * 100.0),
        "rate_schedule_bps": s.rate.iter().map(|(t, r)| json!([t.as_secs_f64(), r])).collect::<Vec<_>>(),
        "queue_ms": s.queue.as_millis() as u64,
        "outages_s": s.outages.iter().map(|(t, l)| json!([t.as_secs_f64(), l.as_secs_f64()])).collect::<Vec<_>>(),
        "symmetric": p.a_to_b == p.b_to_a,
    })
}

fn mean_capacity_kbps(link: &[Value], dir: &str) -> Option<f64> {
    let caps: Vec<f64> = link
        .iter()
        .filter_map(|s| s[dir]["capacity_bps"].as_f64())
        .collect();
    (!caps.is_empty()).then(|| round1(caps.iter().sum::<f64>() / caps.len() as f64 / 1000.0))
}

fn delivered_kbps(link: &[Value], dir: &str) -> Option<f64> {
    let first = link.first()?;
    let last = link.last()?;
    let bytes = num(&last[dir]["delivered_bytes"]) - num(&first[dir]["delivered_bytes"]);
    let secs = num(&last["at"]) - num(&first["at"]);
    (secs > 0.0).then(|| round1(bytes * 8.0 / secs / 1000.0))
}

/// The receiver's stats lines about the sender, in time order.
fn stats_lines<'a>(log: &'a [Line], peer: &'a str) -> impl Iterator<Item = &'a Line> {
    log.iter()
        .filter(move |l| l.value["event"] == "stats" && l.value["peer"] == peer)
}

/// A screen share's figures for one direction, if the sender shared: decoded fps from its first
/// picture, the slowest second, the receiver's capture stamp → decoded latency over the run,
/// freezes, and the sender's screen-encoder bitrate over the same span.
fn screen_direction(rx: &[Line], tx: &[Line], sender_id: &str) -> Option<Value> {
    let lines: Vec<&Line> = stats_lines(rx, sender_id)
        .filter(|l| num(&l.value["screen"]["frames_decoded"]) > 0.0)
        .collect();
    let (first, last) = (lines.first()?, lines.last()?);
    let frames = |l: &Line| num(&l.value["screen"]["frames_decoded"]);
    let span = last.at - first.at;
    // The receiver writes stats every 0.1 s here: the slowest span of about a second.
    let mut slowest_second: Option<f64> = None;
    let mut i = 0;
    for (j, l) in lines.iter().enumerate() {
        while l.at - lines[i].at > 1.0 {
            i += 1;
        }
        if j > i && l.at - lines[i].at >= 0.95 {
            let fps = (frames(l) - frames(lines[i])) / (l.at - lines[i].at);
            slowest_second = Some(slowest_second.map_or(fps, |s: f64| s.min(fps)));
        }
    }
    let encoder = |l: &Line| num(&l.value["screen_encoder"]["bytes"]);
    let tx_lines: Vec<&Line> = tx
        .iter()
        .filter(|l| {
            l.value["event"] == "stats"
                && l.value["screen_encoder"].is_object()
                && l.at >= first.at
                && l.at <= last.at
        })
        .collect();
    let bitrate = match (tx_lines.first(), tx_lines.last()) {
        (Some(a), Some(b)) if b.at > a.at => Some(round1(
            8.0 * (encoder(b) - encoder(a)) / (b.at - a.at) / 1000.0,
        )),
        _ => None,
    };
    // Sharpness: the receiver compares what it decodes with the page shared.
    let psnr = |l: &Line| l.value["screen"]["psnr_db"].as_f64();
    let sharp_at = |db: f64| {
        lines
            .iter()
            .find(|l| psnr(l).is_some_and(|p| p >= db))
            .map(|l| round1(l.at))
    };
    Some(json!({
        "first_picture_at_s": round1(first.at),
        "psnr_first_picture_db": psnr(first),
        "psnr_30db_at_s": sharp_at(30.0),
        "psnr_35db_at_s": sharp_at(35.0),
        "psnr_last_db": psnr(last),
        "fps_mean_from_first_picture": (span > 0.0).then(|| round1((frames(last) - frames(first)) / span)),
        "fps_slowest_second": slowest_second.map(round1),
        "latency_p50_ms": last.value["screen"]["latency_p50_ms"],
        "latency_p95_ms": last.value["screen"]["latency_p95_ms"],
        "freezes": num(&last.value["screen"]["freezes"]) - num(&first.value["screen"]["freezes"]),
        "frozen_ms": num(&last.value["screen"]["frozen_ms"]) - num(&first.value["screen"]["frozen_ms"]),
        "width": last.value["screen"]["width"], "height": last.value["screen"]["height"],
        "encoder_kbps": bitrate,
    }))
}

/// Figures for one direction: `rx` is the receiver's log, `tx` the sender's.
fn direction(
    rx: &[Line],
    tx: &[Line],
    rx_summary: &Value,
    sender_id: &str,
    seconds: f64,
    profile: &LinkProfile,
) -> Value {
    // Lines from before the sender's video arrived carry no video figures.
    let lines: Vec<&Line> = stats_lines(rx, sender_id)
        .filter(|l| l.value["video"].is_object() && l.value["audio"].is_object())
        .collect();
    let frames = |l: &Line| num(&l.value["video"]["frames_decoded"]);
    // Two clocks for the first picture: from the receiver's own join, and from when both were
    // in the room as the receiver saw it (its own join if the sender was there first, the
    // sender's arrival otherwise). The target is judged on the second: for the peer that
    // joined first, the first includes the other's start-up and its signaling across the link.
    let first_frame = rx.iter().find(|l| l.value["event"] == "first_frame");
    let first_frame_after_receiver_joined_ms = first_frame.map(|l| num(&l.value["since_join_ms"]));
    let first_frame_ms = first_frame.map(|l| num(&l.value["since_peer_known_ms"]));
    // Frames decoded in each second of the run, and the resolution at its end.
    let mut per_second = Vec::new();
    let whole = seconds.floor() as usize;
    let at_or_before = |t: f64| lines.iter().rev().find(|l| l.at <= t).copied();
    for s in 0..whole {
        let (Some(a), Some(b)) = (at_or_before(s as f64), at_or_before(s as f64 + 1.0)) else {
            per_second.push(json!({"s": s, "fps": 0.0}));
            continue;
        };
        per_second.push(json!({
            "s": s,
            "fps": round1((frames(b) - frames(a)).max(0.0)),
            "width": b.value["video"]["width"], "height": b.value["video"]["height"],
            "latency_p50_ms": b.value["video"]["window_latency_p50_ms"],
            "send_kbps": tx_line_at(tx, s as f64 + 1.0).map(|l| l.value["network"]["send_kbps"].clone()),
            "estimate_kbps": tx_line_at(tx, s as f64 + 1.0).map(|l| l.value["network"]["estimate_kbps"].clone()),
        }));
    }
    let first = lines.first();
    let last = lines.last();
    let delta = |f: &dyn Fn(&Line) -> f64| match (first, last) {
        (Some(a), Some(b)) => f(b) - f(a),
        _ => 0.0,
    };
    let fps_mean = delta(&frames) / seconds.max(0.001);
    // The same from the receiver's first decoded frame on: the start-up (signaling, ICE, DTLS,
    // first keyframe) is judged by its own figure, `first_frame_after_both_in_room_ms`.
    let first_decoded = lines.iter().find(|l| frames(l) > 0.0);
    let (fps_from_first_frame, seconds_from_first_frame) = match (first_decoded, last) {
        (Some(a), Some(b)) if b.at > a.at => ((frames(b) - frames(a)) / (b.at - a.at), b.at - a.at),
        _ => (0.0, 0.0),
    };
    let fps_values: Vec<f64> = per_second.iter().map(|s| num(&s["fps"])).collect();
    let seconds_under_5 = fps_values.iter().filter(|f| **f < 5.0).count();
    let mut sizes: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &per_second {
        if let (Some(w), Some(h)) = (s["width"].as_u64(), s["height"].as_u64()) {
            *sizes.entry(format!("{w}x{h}")).or_default() += 1;
        }
    }
    let freezes = delta(&|l| num(&l.value["video"]["freezes"]));
    let frozen_ms = delta(&|l| num(&l.value["video"]["frozen_ms"]));
    let concealed = delta(&|l| num(&l.value["audio"]["concealed"]));
    let fec = delta(&|l| num(&l.value["audio"]["fec_decoded"]));
    let played = delta(&|l| num(&l.value["audio"]["frames_played"]));
    let rx_net = last.map(|l| l.value["network"].clone()).unwrap_or_default();
    let tx_last = tx.iter().rev().find(|l| l.value["event"] == "stats");
    let tx_net = tx_last
        .map(|l| l.value["network"].clone())
        .unwrap_or_default();
    let send_kbps: Vec<f64> = per_second
        .iter()
        .filter_map(|s| s["send_kbps"].as_f64())
        .collect();
    let summary_peer = rx_summary["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["peer"] == sender_id))
        .cloned()
        .unwrap_or_default();
    let screen = screen_direction(rx, tx, sender_id);
    json!({
        "screen": screen,
        "first_frame_after_both_in_room_ms": first_frame_ms,
        "first_frame_after_receiver_joined_ms": first_frame_after_receiver_joined_ms,
        "fps_mean_whole_run": round1(fps_mean),
        "fps_mean_from_first_frame": round1(fps_from_first_frame),
        "seconds_from_first_frame": round1(seconds_from_first_frame),
        "fps_per_second": fps_values,
        "seconds_under_5_fps": seconds_under_5,
        "resolution_seconds": sizes,
        "freezes": freezes,
        "frozen_ms": frozen_ms,
        "capture_to_decoded_latency_ms": summary_peer["latency_ms"],
        "sent_kbps_mean": (!send_kbps.is_empty()).then(|| round1(send_kbps.iter().sum::<f64>() / send_kbps.len() as f64)),
        "receiver_packets_lost_first_time": rx_net["packets_lost"],
        "receiver_nacks_sent": rx_net["nacks_sent"],
        "receiver_holes_filled_by_retransmission": rx_net["retransmissions_received"],
        "receiver_video_packets_abandoned": rx_net["video_packets_abandoned"],
        "receiver_keyframe_requests": rx_net["keyframe_requests_sent"],
        "sender_retransmissions": tx_net["retransmissions_sent"],
        "sender_estimate_kbps_at_end": tx_net["estimate_kbps"],
        "sender_estimator_backoffs": tx_net["backoffs"],
        "audio_concealed_percent": (played > 0.0).then(|| round1(100.0 * concealed / played)),
        "audio_fec_decoded_percent": (played > 0.0).then(|| round1(100.0 * fec / played)),
        "recovery": recovery(&lines, profile),
        "per_second": per_second,
    })
}

fn tx_line_at(tx: &[Line], t: f64) -> Option<&Line> {
    tx.iter()
        .rev()
        .find(|l| l.at <= t && l.value["event"] == "stats" && l.value.get("network").is_some())
}

/// Recovery after the profile's disturbance, from the receiver's 100 ms lines.
fn recovery(lines: &[&Line], profile: &LinkProfile) -> Value {
    let spec = &profile.a_to_b;
    let frames = |l: &Line| num(&l.value["video"]["frames_decoded"]);
    if let Some((from, len)) = spec.outages.first() {
        let back = (*from + *len).as_secs_f64();
        let before = lines.iter().rev().find(|l| l.at <= back).map(|l| frames(l));
        let again = before.and_then(|n| lines.iter().find(|l| l.at > back && frames(l) > n));
        return json!({
            "link_back_at_s": back,
            "first_frame_after_link_back_ms": again.map(|l| round1((l.at - back) * 1000.0)),
        });
    }
    if spec.rate.len() >= 3 {
        let drop_at = spec.rate[1].0.as_secs_f64();
        let back_at = spec.rate[2].0.as_secs_f64();
        let latency = |l: &Line| l.value["video"]["window_latency_p50_ms"].as_f64();
        // The last moment in the low phase at which latency was still 300 ms or more.
        let last_high = lines
            .iter()
            .filter(|l| l.at > drop_at && l.at < back_at)
            .filter(|l| latency(l).is_some_and(|v| v >= 300.0))
            .map(|l| l.at)
            .fold(None, |_, t| Some(t));
        let full = lines
            .iter()
            .filter(|l| l.at < drop_at)
            .map(|l| num(&l.value["video"]["width"]))
            .fold(0.0, f64::max);
        let full_again = lines
            .iter()
            .find(|l| l.at > back_at && num(&l.value["video"]["width"]) >= full)
            .map(|l| round1(l.at - back_at));
        return json!({
            "capacity_drop_at_s": drop_at,
            "latency_under_300ms_after_drop_s": Some(last_high.map_or(0.0, |t| round1(t - drop_at))),
            "capacity_back_at_s": back_at,
            "full_resolution_width": full,
            "full_resolution_again_after_s": full_again,
        });
    }
    Value::Null
}

/// The targets for this profile, each with the measured value and whether it was met.
fn targets(profile: &LinkProfile, d: &Value) -> Value {
    let mut t = Vec::new();
    let mut check = |what: &str, value: Value, met: bool| {
        t.push(json!({"target": what, "value": value, "met": met}));
    };
    // Frame rate and resolution count from the first decoded frame; the start-up has its own
    // figure (and, on `lossy`, its own target).
    let fps = num(&d["fps_mean_from_first_frame"]);
    let freezes = num(&d["freezes"]);
    let seconds = num(&d["seconds_from_first_frame"]).floor();
    let vga = d["resolution_seconds"]["640x480"].as_u64().unwrap_or(0) as f64;
    let p95 = num(&d["capture_to_decoded_latency_ms"]["p95"]);
    match profile.name.as_str() {
        "lossy" => {
            check("fps mean from first frame >= 25", json!(fps), fps >= 25.0);
            check("640x480 most of the time", json!(vga), vga >= seconds * 0.8);
            let per20 = freezes * 20.0 / seconds.max(1.0);
            check("<= 1 freeze per 20 s", json!(round1(per20)), per20 <= 1.0);
            let ff = num(&d["first_frame_after_both_in_room_ms"]);
            check(
                "first frame <= 1 s after both are in the room",
                json!(ff),
                ff <= 1000.0,
            );
        }
        "slow-uplink" => {
            check("fps mean from first frame >= 20", json!(fps), fps >= 20.0);
            check("latency p95 <= 400 ms", json!(p95), p95 <= 400.0);
            let c = num(&d["audio_concealed_percent"]);
            check("audio concealment <= 2 %", json!(c), c <= 2.0);
        }
        "capacity-drop" => {
            let l = num(&d["recovery"]["latency_under_300ms_after_drop_s"]);
            check(
                "latency < 300 ms within 4 s of the drop",
                json!(l),
                l <= 4.0,
            );
            let r = num(&d["recovery"]["full_resolution_again_after_s"]);
            check(
                "full resolution within 10 s of the recovery",
                json!(r),
                r <= 10.0,
            );
        }
        "4g" => {
            check("fps mean from first frame >= 28", json!(fps), fps >= 28.0);
            check("640x480 most of the time", json!(vga), vga >= seconds * 0.8);
            check("no freeze", json!(freezes), freezes == 0.0);
        }
        "outage" => {
            let r = num(&d["recovery"]["first_frame_after_link_back_ms"]);
            check(
                "frames <= 1 s after the link returns",
                json!(r),
                r <= 1000.0,
            );
        }
        _ => {}
    }
    json!(t)
}

/// The network section of the readable table.
pub(super) fn table(n: &Value) -> String {
    let mut out = String::from("Network (two peers across the link emulator, 640x480 scene)\n");
    let Some(profiles) = n["profiles"].as_object() else {
        return out;
    };
    for (name, p) in profiles {
        if let Some(e) = p.get("error") {
            out.push_str(&format!("  {name}: FAILED: {e}\n"));
            continue;
        }
        for d in p["directions"].as_array().into_iter().flatten() {
            let lat = &d["capture_to_decoded_latency_ms"];
            let res: Vec<String> = d["resolution_seconds"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}:{v}s"))
                .collect();
            out.push_str(&format!(
                "  {name:<13} {:<6} fps from first frame {:>5} (whole run {}, <5 fps: {}s)  res {}  freezes {} ({} ms)  latency p50/p95 {}/{} ms  sent {} kbit/s (link {} kbit/s)  link loss {}%  retx {}  audio concealed {}%  first frame {} ms after both in the room  recovery {}\n",
                d["direction"].as_str().unwrap_or("?"),
                d["fps_mean_from_first_frame"],
                d["fps_mean_whole_run"],
                d["seconds_under_5_fps"],
                res.join(" "),
                d["freezes"],
                d["frozen_ms"],
                lat["p50"],
                lat["p95"],
                d["sent_kbps_mean"],
                match d["link_mean_capacity_kbps"].as_f64() {
                    Some(c) => c.to_string(),
                    None => "unlimited".into(),
                },
                d["link"]["loss_percent"],
                d["sender_retransmissions"],
                d["audio_concealed_percent"],
                d["first_frame_after_both_in_room_ms"],
                d["recovery"],
            ));
            if let Some(sc) = d.get("screen").filter(|v| v.is_object()) {
                out.push_str(&format!(
                    "                screen share: {}x{}, fps from first picture {} (slowest second {}), first picture at {} s ({} dB), PSNR >= 30 dB at {} s, >= 35 dB at {} s, last {} dB, latency p50/p95 {}/{} ms, freezes {} ({} ms), encoder {} kbit/s\n",
                    sc["width"], sc["height"], sc["fps_mean_from_first_picture"], sc["fps_slowest_second"],
                    sc["first_picture_at_s"], sc["psnr_first_picture_db"], sc["psnr_30db_at_s"],
                    sc["psnr_35db_at_s"], sc["psnr_last_db"], sc["latency_p50_ms"], sc["latency_p95_ms"], sc["freezes"],
                    sc["frozen_ms"], sc["encoder_kbps"],
                ));
            }
            for t in d["targets"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "      {} {}: {}\n",
                    if t["met"] == true { "MET " } else { "MISS" },
                    t["target"].as_str().unwrap_or("?"),
                    t["value"]
                ));
            }
        }
    }
    out
}

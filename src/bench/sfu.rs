//! `bench --only sfu`: the same call with 4, 6, 8 and 12 headless peers as a peer-to-peer mesh
//! (where the mesh goes: up to 8, past which it has no use on this machine) and on a local Janus SFU, everything on this machine. Per
//! peer: CPU, upload bitrate and received frame rate; and Janus's own CPU.

use super::{BenchError, BenchOptions, Proc, fail, num, peer_args, start_server, stats};
use crate::procstat;
use crate::signaling::janus;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "huddle bench admin key";
const SIZES: [usize; 4] = [4, 6, 8, 12];
const MESH_UP_TO: usize = 8;

/// A Janus on this machine for the run, killed when dropped.
struct Janus(janus::LocalJanus);

impl Janus {
    /// Writes its configuration into `dir` (the bench's work folder).
    async fn start(dir: &std::path::Path) -> Result<Janus, BenchError> {
        janus::LocalJanus::start(dir, ADMIN_KEY)
            .await
            .map(Janus)
            .map_err(|e| fail(e.to_string()))
    }

    fn cpu_seconds(&self) -> f64 {
        self.0
            .pid()
            .and_then(|pid| procstat::usage(Some(pid)))
            .map_or(f64::NAN, |u| u.cpu_seconds)
    }
}

pub async fn run(opts: &BenchOptions) -> Result<Value, BenchError> {
    let janus = Janus::start(&opts.work_dir.join("janus")).await?;
    let mut out = json!({
        "what": "one call of N headless peers (640x480 test pattern at 30 fps, a tone each), all on this machine with the server and Janus, for the call length after everyone joined. cpu: the peer process's CPU time over its time in the room / that time (1.0 = one core). upload_kbps: bytes the peer sent on its media connections (mesh: its connections to every other peer; SFU: its one publishing connection) over its time in the room. received_fps: frames decoded per other peer over the time in the room (the first second or two without pictures included; only peers still in the room when the summary was written). streams_never_decoded: other peers a peer never got a first frame from. janus_cpu: Janus's CPU time over the same call / its length.",
        "call_seconds": opts.call_seconds,
    });
    for n in SIZES {
        for sfu in [false, true] {
            if !sfu && n > MESH_UP_TO {
                continue;
            }
            let label = format!("{}-{n}", if sfu { "sfu" } else { "mesh" });
            let result = one_call(opts, &janus, n, sfu).await;
            eprintln!("bench: sfu section, {label} done");
            out[label] = result.unwrap_or_else(|e| json!({"error": e.to_string()}));
        }
    }
    Ok(out)
}

async fn one_call(
    opts: &BenchOptions,
    janus: &Janus,
    n: usize,
    sfu: bool,
) -> Result<Value, BenchError> {
    let size = n.to_string();
    let mut server_args = vec!["--max-room-size", size.as_str()];
    if sfu {
        server_args.extend([
            "--sfu",
            janus.0.url.as_str(),
            "--sfu-secret",
            ADMIN_KEY,
            "--sfu-above",
            "0",
        ]);
    }
    let server = start_server(&opts.exe, &server_args).await?;
    let room = format!("{}-{n}", if sfu { "sfu" } else { "mesh" });
    let mut peers = Vec::new();
    for i in 0..n {
        let name = format!("p{i}");
        let tone = format!("tone:{}", 300 + 40 * i);
        let source = (i + 1).to_string();
        let mut args = peer_args(
            &server.url,
            &room,
            &name,
            &[
                "--source-id",
                &source,
                "--audio",
                &tone,
                "--stats-interval",
                "5",
            ],
        );
        if sfu {
            // Janus offers no loopback candidates: the peers use this machine's addresses.
            if let Some(bind) = args.iter().position(|a| a == "--bind") {
                args[bind + 1] = "0.0.0.0:0".into();
            }
        }
        let mut p = Proc::spawn(&opts.exe, &args, &name)?;
        p.event(Duration::from_secs(15), "joined").await?;
        peers.push(p);
    }
    let janus_before = janus.cpu_seconds();
    let started = Instant::now();
    // Every peer's log is read meanwhile, so no child ever blocks on a full pipe.
    let call = Duration::from_secs_f64(opts.call_seconds);
    let reads = futures_util::future::join_all(peers.iter_mut().map(|p| p.read_for(call))).await;
    for read in reads {
        read?;
    }
    for p in &peers {
        p.interrupt();
    }
    let mut summaries = Vec::new();
    for p in peers.iter_mut() {
        summaries.push(p.summary().await?);
    }
    let janus_cores = (janus.cpu_seconds() - janus_before) / started.elapsed().as_secs_f64();
    drop(server);
    let mut cpu = Vec::new();
    let mut upload = Vec::new();
    let mut fps = Vec::new();
    // Streams a peer decoded at least once (its `first_frame` events): the summary lists only
    // the peers still in the room when it was written.
    let streams_missing: usize = peers
        .iter()
        .map(|p| {
            let seen: std::collections::HashSet<String> = p
                .log
                .iter()
                .filter(|(_, v)| v["event"] == "first_frame")
                .filter_map(|(_, v)| v["peer"].as_str().map(str::to_owned))
                .collect();
            (n - 1).saturating_sub(seen.len())
        })
        .sum();
    for s in &summaries {
        let seconds = num(&s["seconds_in_room"]);
        cpu.push(num(&s["cpu_seconds_in_room"]) / seconds);
        let sent: f64 = if sfu {
            num(&s["sfu_publisher"]["bytes_sent"])
        } else {
            s["peers"]
                .as_array()
                .map(|ps| ps.iter().map(|p| num(&p["network"]["bytes_sent"])).sum())
                .unwrap_or(f64::NAN)
        };
        upload.push(sent * 8.0 / 1000.0 / seconds);
        for p in s["peers"].as_array().cloned().unwrap_or_default() {
            fps.push(num(&p["frames_decoded"]) / seconds);
        }
    }
    Ok(json!({
        "peers": n,
        "cpu_per_peer": stats(cpu),
        "upload_kbps_per_peer": stats(upload),
        "received_fps_per_stream": stats(fps),
        "streams_never_decoded": streams_missing,
        "janus_cpu": if sfu { json!((janus_cores * 100.0).round() / 100.0) } else { Value::Null },
    }))
}

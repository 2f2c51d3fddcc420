//! `huddle bench --only soak` (opt-in, not part of the default run): a 1:1 call of two headless
//! peers on loopback (640x480 synthetic scene at 30 fps and a tone both ways) kept up for
//! `--soak-minutes`, sampled every `SAMPLE_EVERY`: each peer's RSS and CPU from /proc and the
//! frames it decoded from its own stats lines. Finds what short runs cannot: slow leaks, CPU
//! creeping up, a stream that stalls after many minutes.

use super::network::round1;
use super::{BenchError, BenchOptions, Proc, fail, peer_args, start_server};
use crate::procstat;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// How often the peers are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);
/// Samples before this are warm-up: growth is measured from the first one after it.
const WARMUP: Duration = Duration::from_secs(60);

/// What was last read of one peer, to turn counters into rates.
struct Watched {
    proc: Proc,
    usage: Option<procstat::Usage>,
    frames_decoded: Option<u64>,
}

impl Watched {
    /// Reads the peer's lines for `span`, keeping its latest decoded-frame count. Reading is
    /// what keeps the peer going: its stdout is a pipe that would fill and block it.
    async fn follow(&mut self, span: Duration) -> Result<(), BenchError> {
        let deadline = tokio::time::Instant::now() + span;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.proc.lines.next_line()).await {
                Err(_) => return Ok(()),
                Ok(line) => line?,
            };
            let line = line.ok_or_else(|| fail(format!("{}: exited early", self.proc.name)))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["event"] == "stats"
                && let Some(n) = v["video"]["frames_decoded"].as_u64()
            {
                self.frames_decoded = Some(n);
            }
        }
    }
}

pub(super) async fn run(opts: &BenchOptions) -> Result<Value, BenchError> {
    let minutes = opts.soak_minutes.max(1.0);
    let length = Duration::from_secs_f64(minutes * 60.0);
    let server = start_server(&opts.exe, &[]).await?;
    let duration = format!("{}", length.as_secs() + 120);
    let mut peers = Vec::new();
    for (name, source) in [("a", "1"), ("b", "2")] {
        let mut args = peer_args(&server.url, "soak", name, &["--source-id", source]);
        // Outlive the soak: peer_args' default duration is for short calls.
        if let Some(i) = args.iter().position(|a| a == "--duration") {
            args[i + 1] = duration.clone();
        }
        let mut proc = Proc::spawn(&opts.exe, &args, name)?;
        proc.event(Duration::from_secs(15), "joined").await?;
        peers.push(proc);
    }
    for p in &mut peers {
        p.event(Duration::from_secs(15), "first_frame").await?;
    }
    let mut watched: Vec<Watched> = peers
        .into_iter()
        .map(|proc| {
            let usage = proc.child.id().and_then(|pid| procstat::usage(Some(pid)));
            Watched {
                proc,
                usage,
                frames_decoded: None,
            }
        })
        .collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut missing_samples = 0u64;
    while started.elapsed() < length {
        let span_started = Instant::now();
        let [a, b] = watched.as_mut_slice() else {
            return Err(fail("soak: expected two peers"));
        };
        tokio::try_join!(a.follow(SAMPLE_EVERY), b.follow(SAMPLE_EVERY))?;
        let wall = span_started.elapsed();
        let mut per_peer = Vec::new();
        for w in &mut watched {
            let usage = w.proc.child.id().and_then(|pid| procstat::usage(Some(pid)));
            let cpu = w
                .usage
                .as_ref()
                .zip(usage.as_ref())
                .map(|(b, a)| procstat::cpu_share(b, a, wall));
            if usage.is_none() || w.frames_decoded.is_none() {
                missing_samples += 1;
            }
            per_peer.push(json!({
                "rss_mb": usage.as_ref().map(|u| round1(u.rss_mb)),
                "cpu_cores": cpu.map(|c| (c * 1000.0).round() / 1000.0),
                "frames_decoded": w.frames_decoded,
            }));
            w.usage = usage;
        }
        samples.push((started.elapsed(), wall, per_peer));
    }
    for w in &mut watched {
        w.proc.finish().await?;
    }
    drop(server);
    Ok(summarise(minutes, &samples, missing_samples))
}

type Sample = (Duration, Duration, Vec<Value>);

/// The series with fps per interval, and growth from the first sample after warm-up.
fn summarise(minutes: f64, samples: &[Sample], missing_samples: u64) -> Value {
    let mut series = Vec::new();
    let mut previous_frames: Vec<Option<u64>> = vec![None; 2];
    for (at, wall, per_peer) in samples {
        let mut peers = Vec::new();
        for (i, p) in per_peer.iter().enumerate() {
            let frames = p["frames_decoded"].as_u64();
            let fps = frames
                .zip(previous_frames.get(i).copied().flatten())
                .map(|(now, before)| now.saturating_sub(before) as f64 / wall.as_secs_f64());
            if let Some(slot) = previous_frames.get_mut(i) {
                *slot = frames;
            }
            peers.push(json!({
                "rss_mb": p["rss_mb"],
                "cpu_cores": p["cpu_cores"],
                "fps": fps.map(round1),
            }));
        }
        series.push(json!({"at_s": round1(at.as_secs_f64()), "peers": peers}));
    }
    let rss = |s: &Value, i: usize| s["peers"][i]["rss_mb"].as_f64();
    let after_warmup = series
        .iter()
        .zip(samples)
        .find(|(_, (at, _, _))| *at >= WARMUP)
        .map(|(s, _)| s.clone());
    let last = series.last().cloned();
    let growth: Vec<Option<f64>> = (0..2)
        .map(|i| {
            let from = after_warmup.as_ref().and_then(|s| rss(s, i))?;
            let to = last.as_ref().and_then(|s| rss(s, i))?;
            Some(round1(to - from))
        })
        .collect();
    let stat = |key: &str, i: usize| -> Vec<f64> {
        series
            .iter()
            .filter_map(|s| s["peers"][i][key].as_f64())
            .collect()
    };
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let min = |v: &[f64]| v.iter().copied().reduce(f64::min);
    let per_peer: Vec<Value> = (0..2)
        .map(|i| {
            let fps = stat("fps", i);
            let cpu = stat("cpu_cores", i);
            json!({
                "rss_growth_mb_after_warmup": growth[i],
                "fps_mean": mean(&fps).map(round1),
                "fps_lowest_interval": min(&fps).map(round1),
                "cpu_cores_mean": mean(&cpu).map(|c| (c * 1000.0).round() / 1000.0),
                "cpu_cores_highest_interval": cpu.iter().copied().reduce(f64::max),
            })
        })
        .collect();
    json!({
        "what": "1:1 call of two headless peers on loopback (640x480 scene at 30 fps and a tone both ways); every 30 s each peer's RSS and CPU from /proc and the frames it decoded in the interval (from its own stats lines); growth from the first sample after 60 s to the last",
        "minutes": minutes,
        "samples": series.len(),
        "samples_missing_a_figure": missing_samples,
        "per_peer": per_peer,
        "series": series,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: u64, rss: [f64; 2], frames: [u64; 2]) -> Sample {
        let peers = (0..2)
            .map(|i| json!({"rss_mb": rss[i], "cpu_cores": 0.1, "frames_decoded": frames[i]}))
            .collect();
        (Duration::from_secs(at), Duration::from_secs(30), peers)
    }

    #[test]
    fn growth_counts_from_after_the_warm_up_and_fps_from_the_frames_between_samples() {
        let samples = vec![
            sample(30, [30.0, 31.0], [900, 900]),
            sample(60, [35.0, 36.0], [1800, 1800]),
            sample(90, [35.5, 36.0], [2700, 2400]),
            sample(120, [36.0, 36.5], [3600, 3000]),
        ];
        let v = summarise(2.0, &samples, 1);
        assert_eq!(v["per_peer"][0]["rss_growth_mb_after_warmup"], json!(1.0));
        assert_eq!(v["per_peer"][1]["rss_growth_mb_after_warmup"], json!(0.5));
        // The first sample has nothing before it: three intervals of fps.
        assert_eq!(v["series"][0]["peers"][0]["fps"], Value::Null);
        assert_eq!(v["per_peer"][0]["fps_mean"], json!(30.0));
        assert_eq!(v["per_peer"][1]["fps_lowest_interval"], json!(20.0));
        assert_eq!(v["samples_missing_a_figure"], json!(1));
    }
}

//! `huddle bench --only app`: the desktop app as people run it, under Xvfb, in a 1:1 call with a
//! headless peer sending the stamped 640x480 test pattern: with the renderer it chooses there
//! (software: no GPU), then again with GL (Mesa's llvmpipe) for comparison. Reads the app's
//! `--display-stats` lines: frames decoded, uploaded and painted, capture stamp → paint latency,
//! passes run and painted; CPU and RSS come from /proc. Needs the `Xvfb` binary.

use super::network::round1;
use super::{BenchError, BenchOptions, Proc, fail, peer_args, start_server, stats};
use crate::procstat;
use crate::xvfb::Xvfb;
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// After the first painted remote frame, before measuring: the ladder climbs, caches fill.
const WARMUP: Duration = Duration::from_secs(4);

/// A virtual display for the app (or a shared screen), started off the async threads: Xvfb
/// is waited for until it reports its display.
pub(super) async fn virtual_display(width: usize, height: usize) -> Result<Xvfb, BenchError> {
    tokio::task::spawn_blocking(move || Xvfb::start(width, height))
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(|e| fail(e.to_string()))
}

/// Counters of one display line, for differences over the window.
#[derive(Debug)]
struct DisplayCounters {
    passes_run: f64,
    passes_painted: f64,
    pass_cpu_seconds: f64,
    pass_cpu_count: f64,
    /// Per stream: decoded, uploaded, painted.
    streams: Vec<(String, [f64; 3])>,
}

impl DisplayCounters {
    fn read(line: &Value) -> DisplayCounters {
        let n = |v: &Value| v.as_f64().unwrap_or(0.0);
        DisplayCounters {
            passes_run: n(&line["passes_run"]),
            passes_painted: n(&line["passes_painted"]),
            pass_cpu_seconds: n(&line["pass_cpu_seconds"]),
            pass_cpu_count: n(&line["pass_cpu_count"]),
            streams: line["streams"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or("?").to_owned(),
                        [n(&s["decoded"]), n(&s["uploaded"]), n(&s["painted"])],
                    )
                })
                .collect(),
        }
    }

    fn painted_any(&self) -> bool {
        self.streams.iter().any(|(_, c)| c[2] > 0.0)
    }
}

/// Lobby start-ups measured before the call.
const LOBBY_STARTS: usize = 5;

/// The app started with no room, as a person double-clicking it, with the renderer it chooses:
/// process start (the kernel's record, exec and dynamic linking included) → the painter reaching
/// the first lobby pass (rasterised, not yet presented). A fresh settings file each time, so no
/// saved room or window geometry plays a part; the server is running already.
async fn lobby_starts(
    opts: &BenchOptions,
    display: &Xvfb,
    server_url: &str,
) -> Result<Value, BenchError> {
    let mut samples = Vec::new();
    for i in 0..LOBBY_STARTS {
        let settings = opts.work_dir.join(format!("app-bench-lobby-{i}.json"));
        let _ = std::fs::remove_file(&settings);
        let mut cmd = Command::new(&opts.exe);
        cmd.args(["--server", server_url, "--display-stats"])
            .arg("--settings")
            .arg(&settings)
            .env("DISPLAY", &display.display)
            .env_remove("HUDDLE_RENDERER");
        let mut app = Proc::spawn_command(cmd, "app (lobby)", Stdio::null())?;
        let (_, line) = app
            .until(Duration::from_secs(30), |v| {
                v["event"] == "display" && v["first_pass_painted_since_process_start_ms"].is_u64()
            })
            .await?;
        samples.push(
            line["first_pass_painted_since_process_start_ms"]
                .as_f64()
                .unwrap_or(0.0),
        );
    }
    Ok(json!({
        "what": "process start (kernel's record) -> first lobby pass painted by the renderer the app chooses under Xvfb (software: rasterised, before it is presented), fresh settings, release build",
        "ms": stats(samples.clone()),
        "samples_ms": samples,
    }))
}

pub(super) async fn run(opts: &BenchOptions) -> Result<Value, BenchError> {
    let display = virtual_display(1280, 800).await?;
    let server = start_server(&opts.exe, &[]).await?;
    let lobby = lobby_starts(opts, &display, &server.url).await?;
    let room = "app-bench";
    let mut peer = Proc::spawn(
        &opts.exe,
        &peer_args(
            &server.url,
            room,
            "peer",
            &["--video", "test", "--source-id", "1", "--audio", "tone:660"],
        ),
        "peer",
    )?;
    peer.event(Duration::from_secs(15), "joined").await?;
    let software = call(opts, &display, &server.url, room, "software").await?;
    let gl = call(opts, &display, &server.url, room, "gl").await?;
    peer.interrupt();
    drop(server);
    drop(display);
    let mut report = software;
    report["renderer"] = json!("software (the app's choice with no GPU render node)");
    report["gl_for_comparison"] = gl;
    report["process_start_to_first_lobby_paint"] = lobby;
    Ok(report)
}

/// One call with the app painting through `renderer`, measured after a warm-up.
async fn call(
    opts: &BenchOptions,
    display: &Xvfb,
    server_url: &str,
    room: &str,
    renderer: &str,
) -> Result<Value, BenchError> {
    let settings = opts
        .work_dir
        .join(format!("app-bench-settings-{renderer}.json"));
    std::fs::write(
        &settings,
        json!({"nickname": "app", "camera": "test:640x480", "microphone": "tone:440", "speaker": "none"})
            .to_string(),
    )?;
    let mut cmd = Command::new(&opts.exe);
    cmd.args(["--server", server_url, "--room", room, "--nickname", "app"])
        .arg("--settings")
        .arg(&settings)
        .args(["--display-stats", "--renderer", renderer])
        .env("DISPLAY", &display.display)
        .env("LIBGL_ALWAYS_SOFTWARE", "1");
    let mut app = Proc::spawn_command(cmd, "app", Stdio::null())?;
    app.until(Duration::from_secs(30), |v| {
        v["event"] == "display" && DisplayCounters::read(v).painted_any()
    })
    .await?;
    // Warm up, then measure from the next line on.
    let warm_until = tokio::time::Instant::now() + WARMUP;
    loop {
        let left = warm_until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        if app.until(left, |v| v["event"] == "display").await.is_err() {
            break;
        }
    }
    let pid = app
        .child
        .id()
        .ok_or_else(|| fail("app: exited during warm-up"))?;
    let (_, line) = app
        .until(Duration::from_secs(5), |v| v["event"] == "display")
        .await?;
    let before = DisplayCounters::read(&line);
    let usage_before = procstat::usage(Some(pid)).ok_or_else(|| fail("app: no /proc"))?;
    let x_before = procstat::usage(Some(display.pid())).ok_or_else(|| fail("Xvfb: no /proc"))?;
    let wall_started = Instant::now();
    let window = Duration::from_secs_f64(opts.call_seconds.max(2.0));
    let mut latencies = Vec::new();
    let mut samples_not_kept = 0.0;
    let mut last = line;
    let mut not_kept_before = not_kept(&last);
    while wall_started.elapsed() < window {
        let (_, line) = app
            .until(Duration::from_secs(5), |v| v["event"] == "display")
            .await?;
        for s in line["streams"].as_array().into_iter().flatten() {
            for pair in s["paint_us_and_latency_us"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(l) = pair[1].as_f64() {
                    latencies.push(l / 1000.0);
                }
            }
        }
        let nk = not_kept(&line);
        samples_not_kept += nk - not_kept_before;
        not_kept_before = nk;
        last = line;
    }
    let wall = wall_started.elapsed();
    let usage_after = procstat::usage(Some(pid)).ok_or_else(|| fail("app: no /proc"))?;
    let x_after = procstat::usage(Some(display.pid())).ok_or_else(|| fail("Xvfb: no /proc"))?;
    let largest_files = procstat::largest_resident_files(pid, 4).unwrap_or_default();
    let after = DisplayCounters::read(&last);
    let first_picture_ms = last["first_remote_picture_since_process_start_ms"].as_f64();
    drop(app);
    let mut report = summarise(
        &before,
        &after,
        wall,
        (usage_before, usage_after),
        latencies,
        samples_not_kept,
    );
    report["renderer"] = json!(renderer);
    // Both renderers hand finished pixels to the X server (MIT-SHM); its copy is its CPU.
    report["xvfb_cpu_cores"] =
        json!((procstat::cpu_share(&x_before, &x_after, wall) * 1000.0).round() / 1000.0);
    // Join time as a person sees it (issue 17 item 3): from the kernel's record of the app's
    // start (exec and dynamic linking included, good to about 20 ms) to its first remote picture
    // in a texture; the peer was already in the room.
    report["process_start_to_first_remote_picture_uploaded_ms"] = json!(first_picture_ms);
    // What the resident memory is made of: mapped files' pages (code of the executable and
    // libraries, such as Mesa's LLVM for software GL) are clean and shared; anonymous is the
    // app's own.
    report["rss_largest_files_mb"] = largest_files
        .iter()
        .map(|(path, mb)| json!({"file": path, "mb": round1(*mb)}))
        .collect();
    Ok(report)
}

fn not_kept(line: &Value) -> f64 {
    line["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["latency_samples_not_kept"].as_f64())
        .sum()
}

fn summarise(
    before: &DisplayCounters,
    after: &DisplayCounters,
    wall: Duration,
    (usage_before, usage_after): (procstat::Usage, procstat::Usage),
    latencies_ms: Vec<f64>,
    samples_not_kept: f64,
) -> Value {
    let secs = wall.as_secs_f64().max(1e-9);
    let cpu = procstat::cpu_share(&usage_before, &usage_after, wall);
    let painted_passes = after.passes_painted - before.passes_painted;
    let cpu_seconds = usage_after.cpu_seconds - usage_before.cpu_seconds;
    let pass_cpu_count = after.pass_cpu_count - before.pass_cpu_count;
    let streams: Vec<Value> = after
        .streams
        .iter()
        .map(|(name, a)| {
            let b = before
                .streams
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
            json!({
                "decoded_per_s": round1(d[0] / secs),
                "uploaded_per_s": round1(d[1] / secs),
                "painted_per_s": round1(d[2] / secs),
                "decoded": d[0],
                "painted": d[2],
                "decoded_never_painted": (d[0] - d[2]).max(0.0),
            })
        })
        .collect();
    json!({
        "what": "the desktop app under Xvfb 1280x800 in a 1:1 call on loopback with a headless peer sending the stamped 640x480 test pattern at 30 fps; the app sends its 640x480 test pattern too and shows its self-view. Latency: capture stamp in the peer's frame to the moment the app's painter had that picture drawn (gl: a paint callback right after issuing its draw, the buffer swap where llvmpipe rasterises not included; software: the pass rasterised, its copy to the window not included), first paint of each frame only. Never painted: frames decoded in the window minus distinct frames painted (replaced in the latest-frame slot before the UI took them, or uploaded and replaced before a paint); counters are read once a second, so the window's edges can shift a frame or two",
        "seconds": round1(secs),
        "cpu_cores": (cpu * 1000.0).round() / 1000.0,
        "rss_mb": round1(usage_after.rss_mb),
        "peak_rss_mb": round1(usage_after.peak_rss_mb),
        "rss_anonymous_mb": round1(usage_after.rss_anon_mb),
        "rss_file_backed_mb": round1(usage_after.rss_file_mb),
        "rss_shared_memory_mb": round1(usage_after.rss_shmem_mb),
        "passes_run_per_s": round1((after.passes_run - before.passes_run) / secs),
        "passes_painted_per_s": round1(painted_passes / secs),
        "cpu_ms_per_painted_pass": (painted_passes > 0.0).then(|| round1(cpu_seconds * 1000.0 / painted_passes)),
        "ui_thread_ms_per_pass_what": "gl: eframe's CPU time of a pass without the buffer swap (where llvmpipe rasterises); software: the whole pass, painting and presenting included",
        "ui_thread_ms_per_pass_mean": (pass_cpu_count > 0.0).then(|| {
            round1((after.pass_cpu_seconds - before.pass_cpu_seconds) * 1000.0 / pass_cpu_count)
        }),
        "streams": streams,
        "capture_to_paint_latency_ms": stats(latencies_ms),
        "latency_samples_not_kept": samples_not_kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(passes: u64, painted_passes: u64, decoded: u64, painted: u64) -> Value {
        json!({
            "event": "display", "passes_run": passes, "passes_painted": painted_passes,
            "pass_cpu_seconds": passes as f64 * 0.004, "pass_cpu_count": passes,
            "streams": [{"name": "p1", "decoded": decoded, "uploaded": painted, "painted": painted}],
        })
    }

    #[test]
    fn figures_are_differences_over_the_window() {
        let before = DisplayCounters::read(&line(100, 90, 300, 290));
        let after = DisplayCounters::read(&line(400, 390, 600, 585));
        let usage = |cpu: f64| procstat::Usage {
            cpu_seconds: cpu,
            rss_mb: 100.0,
            peak_rss_mb: 120.0,
            rss_anon_mb: 60.0,
            rss_file_mb: 38.0,
            rss_shmem_mb: 2.0,
        };
        let v = summarise(
            &before,
            &after,
            Duration::from_secs(10),
            (usage(1.0), usage(4.0)),
            vec![30.0, 40.0, 50.0],
            2.0,
        );
        assert_eq!(v["cpu_cores"], 0.3);
        assert_eq!(v["passes_painted_per_s"], 30.0);
        assert_eq!(v["cpu_ms_per_painted_pass"], 10.0);
        assert_eq!(v["ui_thread_ms_per_pass_mean"], 4.0);
        assert_eq!(v["streams"][0]["decoded_per_s"], 30.0);
        assert_eq!(v["streams"][0]["decoded_never_painted"], 5.0);
        assert_eq!(v["capture_to_paint_latency_ms"]["p50"], 40.0);
        assert_eq!(v["latency_samples_not_kept"], 2.0);
        assert!(DisplayCounters::read(&line(1, 1, 1, 1)).painted_any());
        assert!(!DisplayCounters::read(&line(1, 1, 1, 0)).painted_any());
    }
}

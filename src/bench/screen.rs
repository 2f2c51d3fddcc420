//! `huddle bench --only screen`: a screen share between two headless peers on loopback. The
//! sharer sends the synthetic text page (`--screen test`, 1920x1080, camera off) at 5 and at
//! 15 fps; the viewer decodes it. Reports the share's latency, frame rate and resolution as the
//! viewer saw them, the sharer's CPU, and the screen encoder's bitrate from its byte counter.
//! Then the same page on an Xvfb display captured as a real share (`--screen x11`), for the
//! capture's cost.

use super::app::virtual_display;
use super::network::round1;
use super::{BenchError, BenchOptions, Proc, fail, num, peer_args, start_server, stats};
use crate::media::screen::{ScreenPicture, show_on_x11_root};
use crate::procstat;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// From the viewer's first share picture to the start of the measurement: the estimate climbs
/// from its start value and the ladder reaches full size, and the first keyframe is paid off.
const WARMUP: Duration = Duration::from_secs(6);
/// Share frame rates measured: the default and the top of the default range.
const SHARE_FPS: [u32; 2] = [5, 15];

pub(super) async fn run(opts: &BenchOptions) -> Result<Value, BenchError> {
    let mut out = json!({
        "what": "1:1 call on loopback: peer A shares the synthetic 1920x1080 text page (one-pixel text, ruled lines, a small moving block; camera off, a tone as microphone), peer B (camera off) decodes it. latency_ms: capture stamp in the shared picture -> decoded picture handed to the display at B (encode, network, decode and playout included; no paint, no X capture: the picture is drawn in memory), every frame after warm-up. sharer_cpu_cores: A's whole process (share and audio) over the measurement, from /proc. Bitrates come from A's screen encoder byte counter: steady over the measurement, and over the whole share including its first keyframe. x11_*: the same page drawn on the root window of an Xvfb 1920x1080 display and shared with --screen x11 (MIT-SHM capture, pointer drawn in), so the capture's cost is in the sharer's CPU; that picture carries no stamps, so those runs have no latency samples.",
        "warmup_after_first_picture_s": WARMUP.as_secs_f64(),
        "measure_s": opts.call_seconds,
    });
    for fps in SHARE_FPS {
        out[format!("{fps}_fps")] = share(opts, fps, None).await?;
    }
    // The same page on a real X server (Xvfb), captured through MIT-SHM: the capture's cost is
    // in the sharer's CPU. The picture carries no stamps, so there is no latency figure.
    match virtual_display(1920, 1080).await {
        Ok(display) => {
            show_on_x11_root(
                &display.display,
                &ScreenPicture::rgba(1920, 1080),
                1920,
                1080,
            )
            .map_err(|e| fail(e.to_string()))?;
            for fps in SHARE_FPS {
                out[format!("x11_{fps}_fps")] = share(opts, fps, Some(&display.display)).await?;
            }
        }
        Err(e) => out["x11_error"] = json!(e.to_string()),
    }
    Ok(out)
}

/// One share at `fps`: the synthetic page, or the X display `x11` when given.
async fn share(opts: &BenchOptions, fps: u32, x11: Option<&str>) -> Result<Value, BenchError> {
    let server = start_server(&opts.exe, &[]).await?;
    let room = format!("screen-{fps}{}", if x11.is_some() { "-x11" } else { "" });
    let measure = Duration::from_secs_f64(opts.call_seconds);
    // The viewer resets its latency samples this long after joining: the sharer joins right
    // after it, so every sample left is from after the warm-up.
    let viewer_warmup = WARMUP.as_secs_f64().to_string();
    let mut viewer = Proc::spawn(
        &opts.exe,
        &peer_args(
            &server.url,
            &room,
            "viewer",
            &[
                "--video",
                "none",
                "--audio",
                "tone:440",
                "--warmup",
                &viewer_warmup,
            ],
        ),
        "viewer",
    )?;
    viewer.event(Duration::from_secs(10), "joined").await?;
    let fps_arg = fps.to_string();
    let mut command = tokio::process::Command::new(&opts.exe);
    command.args(peer_args(
        &server.url,
        &room,
        "sharer",
        &[
            "--video",
            "none",
            "--audio",
            "tone:660",
            "--screen",
            if x11.is_some() { "x11" } else { "test" },
            "--screen-fps",
            &fps_arg,
            "--source-id",
            "1",
        ],
    ));
    if let Some(display) = x11 {
        command.env("DISPLAY", display);
    }
    let mut sharer = Proc::spawn_command(command, "sharer", std::process::Stdio::null())?;
    sharer.event(Duration::from_secs(10), "joined").await?;
    let sharer_pid = sharer.child.id().ok_or_else(|| fail("the sharer exited"))?;
    let (first_at, _) = viewer
        .event(Duration::from_secs(30), "first_screen_frame")
        .await?;
    // Read both logs while waiting, so neither pipe fills.
    let measure_from = first_at + WARMUP;
    drain_until(&mut viewer, &mut sharer, measure_from).await?;
    let cpu_before = procstat::usage(Some(sharer_pid));
    let started = Instant::now();
    drain_until(&mut viewer, &mut sharer, started + measure).await?;
    let cpu_after = procstat::usage(Some(sharer_pid));
    let wall = started.elapsed();
    viewer.interrupt();
    sharer.interrupt();
    let viewer_summary = viewer.summary().await?;
    let sharer_summary = sharer.summary().await?;
    drop(server);

    let encoder = &sharer_summary["screen_encoder"];
    let seen = viewer_summary["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["nickname"] == "sharer"))
        .map(|p| p["screen"].clone())
        .filter(|s| !s.is_null())
        .ok_or_else(|| fail("the viewer's summary has no screen figures"))?;
    // The screen encoder's byte counter at the sharer's stats lines nearest the window's ends.
    let counter = |at: Instant| {
        sharer
            .log
            .iter()
            .filter(|(_, v)| v["event"] == "stats" && v["screen_encoder"].is_object())
            .min_by_key(|(t, _)| (*t).max(at) - (*t).min(at))
            .map(|(t, v)| {
                (
                    *t,
                    num(&v["screen_encoder"]["bytes"]),
                    num(&v["screen_encoder"]["frames"]),
                )
            })
    };
    let steady = counter(started)
        .zip(counter(started + measure))
        .and_then(|(a, b)| {
            let secs = b.0.duration_since(a.0).as_secs_f64();
            (secs > 0.5).then(|| (8.0 * (b.1 - a.1) / secs / 1000.0, (b.2 - a.2) / secs, secs))
        });
    // Frames per second the viewer decoded, one figure per stats interval in the window.
    let viewer_fps: Vec<f64> = viewer
        .log
        .iter()
        .filter(|(t, v)| *t > started && v["event"] == "stats" && v["screen"].is_object())
        .map(|(_, v)| num(&v["screen"]["fps"]))
        .collect();
    let share_seconds = num(&sharer_summary["seconds_in_room"]);
    Ok(json!({
        "chosen_fps": fps,
        "latency_ms": seen["latency_ms"],
        "received_width": seen["width"], "received_height": seen["height"],
        "frames_decoded": seen["frames_decoded"],
        "freezes": seen["freezes"], "frozen_ms": seen["frozen_ms"],
        "viewer_fps_per_second": stats(viewer_fps),
        "sent_fps_steady": steady.map(|s| round1(s.1)),
        "bitrate_kbps_steady": steady.map(|s| round1(s.0)),
        "steady_window_s": steady.map(|s| round1(s.2)),
        "bitrate_kbps_whole_share": round1(8.0 * num(&encoder["bytes"]) / share_seconds.max(1e-3) / 1000.0),
        "encoder": encoder,
        "sharer_cpu_cores": cpu_before.zip(cpu_after).map(|(b, a)| (procstat::cpu_share(&b, &a, wall) * 1000.0).round() / 1000.0),
        "sharer_rss_mb": cpu_after.map(|u| round1(u.rss_mb)),
    }))
}

/// Reads both peers' lines (kept in their logs) until `deadline`.
async fn drain_until(a: &mut Proc, b: &mut Proc, deadline: Instant) -> Result<(), BenchError> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        // Each peer writes a stats line a second; short turns keep both pipes empty.
        let turn = left.min(Duration::from_millis(200));
        a.read_for(turn / 2).await?;
        b.read_for(turn / 2).await?;
    }
}

/// The section's lines in the readable table.
pub(super) fn table(report: &Value) -> String {
    let mut out = String::from(
        "Screen share, synthetic 1920x1080 text page, 1:1 on loopback (see `what` in the JSON)\n",
    );
    let runs = SHARE_FPS
        .iter()
        .map(|fps| (format!("{fps}_fps"), format!("{fps} fps")))
        .chain(
            SHARE_FPS
                .iter()
                .map(|fps| (format!("x11_{fps}_fps"), format!("X11 {fps} fps"))),
        );
    for (key, label) in runs {
        let r = &report[key];
        if r.is_null() {
            continue;
        }
        let lat = &r["latency_ms"];
        let rows = [
            (
                "capture stamp → decoded (ms)",
                if lat["count"].as_u64().unwrap_or(0) == 0 {
                    "no samples (an X picture carries no stamps)".to_owned()
                } else {
                    format!(
                        "p50 {} / p95 {} / max {}  (n={})",
                        lat["p50"], lat["p95"], lat["max"], lat["count"]
                    )
                },
            ),
            (
                "received size; fps sent / decoded p50 (min)",
                format!(
                    "{}x{}; {} / {} ({})",
                    r["received_width"],
                    r["received_height"],
                    r["sent_fps_steady"],
                    r["viewer_fps_per_second"]["p50"],
                    r["viewer_fps_per_second"]["min"]
                ),
            ),
            (
                "bitrate kbit/s steady / whole share",
                format!(
                    "{} / {} ({} keyframes)",
                    r["bitrate_kbps_steady"],
                    r["bitrate_kbps_whole_share"],
                    r["encoder"]["keyframes"]
                ),
            ),
            (
                "sharer CPU (cores), RSS (MB)",
                format!("{}, {}", r["sharer_cpu_cores"], r["sharer_rss_mb"]),
            ),
        ];
        for (k, v) in rows {
            out.push_str(&format!("  {:<48} {v}\n", format!("{label}: {k}")));
        }
    }
    out
}

//! What reached the screen (issue 17 items 1 and 4): for each remote tile, frames painted and the
//! capture stamp → paint latency, taken by a paint callback that the painter runs once the
//! tile's picture is drawn (egui's glow painter right after issuing it; the CPU painter once the
//! pass is rasterised, before it is presented); and the painted passes themselves. Opt-in
//! (`huddle --display-stats`): once a second one JSON line goes to stdout through a writer thread
//! the meter owns, so a slow reader never blocks the UI. Imports egui, eframe, the painters'
//! callback types (`ui::Renderer`, `ui::cpu_painter`) and the clock the frame stamps use
//! (`services::now_us`, `services::process_age`).

use crate::services::now_us;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Latency samples kept between two reports (a report empties them); more are counted, not kept.
const MAX_SAMPLES_PER_REPORT: usize = 1024;
const REPORT_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct StreamPaints {
    /// Distinct frames painted at least once.
    painted: u64,
    /// The last frame painted (the tile's upload count), to count each frame once.
    last_frame: Option<u64>,
    /// (paint time, capture stamp → paint) in µs, since the last report.
    samples: Vec<(u64, u64)>,
    samples_not_kept: u64,
}

#[derive(Default)]
struct Painted {
    /// Passes that reached the painter (a pass with nothing visible is not painted).
    passes: u64,
    /// Process start (the kernel's record) → the painter reached the first pass's marker: its
    /// GL commands issued, the buffer swap not yet done.
    first_pass: Option<Duration>,
    streams: BTreeMap<String, StreamPaints>,
}

/// What the UI knows of one remote stream when it reports.
pub struct StreamCounts {
    pub name: String,
    pub decoded: u64,
    pub uploaded: u64,
}

pub struct DisplayMeter {
    /// Whose paint callbacks the marks are.
    renderer: super::Renderer,
    painted: Arc<Mutex<Painted>>,
    /// `ui` passes run (painted or not), and eframe's CPU time per pass (UI, tessellation and
    /// GL calls; not the buffer swap, where a software rasteriser does most of its work).
    passes_run: u64,
    pass_cpu_seconds: f64,
    pass_cpu_count: u64,
    next_report: Instant,
    lines: Option<mpsc::SyncSender<String>>,
    reports_dropped: u64,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Process start (the kernel's record) → the first remote picture in a texture.
    first_remote_picture: Option<Duration>,
}

fn lock(m: &Mutex<Painted>) -> std::sync::MutexGuard<'_, Painted> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DisplayMeter {
    /// A meter that reports to stdout once a second.
    pub fn to_stdout(renderer: super::Renderer) -> Result<DisplayMeter, std::io::Error> {
        let (tx, rx) = mpsc::sync_channel::<String>(4);
        let writer = std::thread::Builder::new()
            .name("display-stats".into())
            .spawn(move || {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                // Ends when the meter (the only sender) is dropped.
                while let Ok(line) = rx.recv() {
                    if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                        return;
                    }
                }
            })?;
        let mut meter = DisplayMeter::silent();
        meter.renderer = renderer;
        meter.lines = Some(tx);
        meter.writer = Some(writer);
        Ok(meter)
    }

    /// A meter that only counts (tests read it with [`DisplayMeter::report`]).
    pub fn silent() -> DisplayMeter {
        DisplayMeter {
            renderer: super::Renderer::Gl,
            painted: Arc::default(),
            passes_run: 0,
            pass_cpu_seconds: 0.0,
            pass_cpu_count: 0,
            next_report: Instant::now() + REPORT_EVERY,
            lines: None,
            reports_dropped: 0,
            writer: None,
            first_remote_picture: None,
        }
    }

    /// Notes one `ui` pass and eframe's CPU time for the previous one.
    pub fn pass_ran(&mut self, previous_pass_cpu: Option<f32>) {
        self.passes_run += 1;
        if let Some(s) = previous_pass_cpu {
            self.pass_cpu_seconds += f64::from(s);
            self.pass_cpu_count += 1;
        }
    }

    /// The first remote picture reached a texture this long after the process started.
    pub fn note_first_remote_picture(&mut self, since_process_start: Duration) {
        self.first_remote_picture.get_or_insert(since_process_start);
    }

    /// A shape that counts the pass when the painter reaches it.
    pub fn pass_marker(&self, rect: egui::Rect) -> egui::Shape {
        let painted = self.painted.clone();
        callback(self.renderer, rect, move || {
            let mut p = lock(&painted);
            p.passes += 1;
            if p.first_pass.is_none() {
                p.first_pass = crate::services::process_age();
            }
        })
    }

    /// A shape to add right after a tile's picture: when painted, it counts the frame (once per
    /// `frame`, the tile's upload count) and its capture → paint latency (when it has a stamp).
    pub fn tile_marker(
        &self,
        rect: egui::Rect,
        stream: &str,
        frame: u64,
        capture_us: u64,
    ) -> egui::Shape {
        let mark = self.tile_mark(stream, frame, capture_us);
        callback(self.renderer, rect, move || mark.painted_at(now_us()))
    }

    fn tile_mark(&self, stream: &str, frame: u64, capture_us: u64) -> TileMark {
        TileMark {
            painted: self.painted.clone(),
            stream: stream.to_owned(),
            frame,
            capture_us,
        }
    }

    /// The report line, taking the latency samples gathered since the last one.
    pub fn report(&mut self, streams: &[StreamCounts]) -> serde_json::Value {
        let mut p = lock(&self.painted);
        let per_stream: Vec<serde_json::Value> = streams
            .iter()
            .map(|c| {
                let s = p.streams.entry(c.name.clone()).or_default();
                let samples = std::mem::take(&mut s.samples);
                serde_json::json!({
                    "name": c.name,
                    "decoded": c.decoded,
                    "uploaded": c.uploaded,
                    "painted": s.painted,
                    "latency_samples_not_kept": s.samples_not_kept,
                    "paint_us_and_latency_us": samples,
                })
            })
            .collect();
        serde_json::json!({
            "event": "display",
            "unix_us": now_us(),
            "passes_run": self.passes_run,
            "passes_painted": p.passes,
            "pass_cpu_seconds": self.pass_cpu_seconds,
            "pass_cpu_count": self.pass_cpu_count,
            "reports_dropped": self.reports_dropped,
            "first_remote_picture_since_process_start_ms":
                self.first_remote_picture.map(|d| d.as_millis() as u64),
            "first_pass_painted_since_process_start_ms":
                p.first_pass.map(|d| d.as_millis() as u64),
            "streams": per_stream,
        })
    }

    /// Sends a report when one is due; never waits for the reader.
    pub fn maybe_report(&mut self, streams: impl FnOnce() -> Vec<StreamCounts>) {
        if self.lines.is_none() || Instant::now() < self.next_report {
            return;
        }
        self.next_report = Instant::now() + REPORT_EVERY;
        let line = self.report(&streams()).to_string();
        if let Some(tx) = &self.lines
            && tx.try_send(line).is_err()
        {
            self.reports_dropped += 1;
        }
    }
}

impl Drop for DisplayMeter {
    fn drop(&mut self) {
        self.lines = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// One tile's picture as the painter reaches it.
struct TileMark {
    painted: Arc<Mutex<Painted>>,
    stream: String,
    frame: u64,
    capture_us: u64,
}

impl TileMark {
    fn painted_at(&self, now_us: u64) {
        let mut p = lock(&self.painted);
        let s = p.streams.entry(self.stream.clone()).or_default();
        if s.last_frame == Some(self.frame) {
            return;
        }
        s.last_frame = Some(self.frame);
        s.painted += 1;
        if self.capture_us == 0 {
            return;
        }
        if s.samples.len() < MAX_SAMPLES_PER_REPORT {
            s.samples
                .push((now_us, now_us.saturating_sub(self.capture_us)));
        } else {
            s.samples_not_kept += 1;
        }
    }
}

fn callback(
    renderer: super::Renderer,
    rect: egui::Rect,
    f: impl Fn() + Send + Sync + 'static,
) -> egui::Shape {
    let callback: Arc<dyn std::any::Any + Send + Sync> = match renderer {
        super::Renderer::Gl => Arc::new(eframe::egui_glow::CallbackFn::new(
            move |_info, _painter| f(),
        )),
        super::Renderer::Software => Arc::new(super::cpu_painter::PaintedCallback::new(f)),
    };
    egui::Shape::Callback(egui::PaintCallback { rect, callback })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(decoded: u64, uploaded: u64) -> Vec<StreamCounts> {
        vec![StreamCounts {
            name: "peer".into(),
            decoded,
            uploaded,
        }]
    }

    #[test]
    fn each_frame_counts_once_however_often_it_is_painted() {
        let mut meter = DisplayMeter::silent();
        // Frame 1 painted in three passes (the picture did not change), frame 2 in one.
        for at in [1_050, 1_080, 1_110] {
            meter.tile_mark("peer", 1, 1_000).painted_at(at);
        }
        meter.tile_mark("peer", 2, 1_033).painted_at(1_140);
        let r = meter.report(&counts(3, 2));
        let s = &r["streams"][0];
        assert_eq!(s["painted"], 2);
        assert_eq!(s["decoded"], 3);
        assert_eq!(
            s["paint_us_and_latency_us"],
            serde_json::json!([[1_050, 50], [1_140, 107]])
        );
        // A report takes the samples; counters stay cumulative.
        let r = meter.report(&counts(3, 2));
        assert_eq!(
            r["streams"][0]["paint_us_and_latency_us"],
            serde_json::json!([])
        );
        assert_eq!(r["streams"][0]["painted"], 2);
    }

    #[test]
    fn unstamped_frames_count_without_a_latency_and_overflow_is_counted() {
        let mut meter = DisplayMeter::silent();
        // Frames without a stamp still count as painted, each once.
        meter.tile_mark("peer", 1, 0).painted_at(5);
        meter.tile_mark("peer", 2, 0).painted_at(6);
        for i in 0..(MAX_SAMPLES_PER_REPORT as u64 + 3) {
            meter.tile_mark("peer", 3 + i, 10 + i).painted_at(100 + i);
        }
        let r = meter.report(&counts(0, 0));
        let s = &r["streams"][0];
        assert_eq!(s["painted"], MAX_SAMPLES_PER_REPORT as u64 + 5);
        assert_eq!(s["latency_samples_not_kept"], 3);
        assert_eq!(
            s["paint_us_and_latency_us"].as_array().map(Vec::len),
            Some(MAX_SAMPLES_PER_REPORT)
        );
    }

    #[test]
    fn passes_and_their_cpu_are_counted() {
        let mut meter = DisplayMeter::silent();
        meter.pass_ran(None);
        meter.pass_ran(Some(0.25));
        meter.pass_ran(Some(0.5));
        meter.note_first_remote_picture(Duration::from_millis(480));
        meter.note_first_remote_picture(Duration::from_millis(900));
        let r = meter.report(&[]);
        assert_eq!(r["first_remote_picture_since_process_start_ms"], 480);
        assert_eq!(r["passes_run"], 3);
        assert_eq!(r["pass_cpu_count"], 2);
        assert_eq!(r["pass_cpu_seconds"], 0.75);
        assert_eq!(r["passes_painted"], 0);
    }
}

//! A small Chrome DevTools Protocol client for tests: headless Debian `chromium` with a fake
//! camera and microphone, pages attached through one browser-level WebSocket (flattened
//! sessions), script evaluation, waits that poll with a deadline, file inputs and downloads.
//!
//! Every wait is bounded and panics saying what it waited for, the last value seen, the page's
//! console and the tail of chromium's stderr. Dropping [`Browser`] kills chromium's whole
//! process group and removes its profile and download directories.
//!
//! Downloads use `Browser.setDownloadBehavior {behavior: "allowAndName"}`: chromium saves each
//! file as `download_dir/<guid>` (never renamed to `x (1).bin` when names repeat), and
//! [`Browser::downloaded`] maps the page's suggested file name to that file.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// How long chromium may take to write `DevToolsActivePort`.
const STARTUP: Duration = Duration::from_secs(20);
/// How long one DevTools command (or one `eval`, including the promise it awaits) may take.
const CALL: Duration = Duration::from_secs(30);
/// How long a page may take to fire `load` after `Page.navigate`.
const LOAD: Duration = Duration::from_secs(30);
/// How much of chromium's stderr is kept for failure messages.
const STDERR_TAIL: usize = 32 * 1024;
/// Commands queued for the WebSocket writer (callers wait when it is full).
const OUT_QUEUE: usize = 1024;
/// Console lines kept per page (the oldest are dropped beyond this).
const CONSOLE_MAX: usize = 5_000;
/// Console lines quoted in a failure message.
const CONSOLE_QUOTED: usize = 40;

/// What [`Browser::launch`] starts.
#[derive(Clone, Debug, Default)]
pub struct BrowserOptions {
    /// A WAV file played (looped) as the fake microphone; `None`: chromium's fake beep.
    pub fake_audio_wav: Option<PathBuf>,
    /// `--ignore-certificate-errors`, for servers with self-signed certificates.
    pub ignore_certificate_errors: bool,
    /// More chromium flags, after the defaults.
    pub extra_args: Vec<String>,
}

/// A headless chromium and the DevTools connection to it.
pub struct Browser {
    child: Child,
    conn: Arc<Conn>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    // Removed after chromium is killed (fields drop after `Drop::drop`).
    download_dir: tempfile::TempDir,
    _profile: tempfile::TempDir,
}

/// A tab, attached with a flattened session.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    target: String,
}

impl Browser {
    /// Starts headless chromium (`$HUDDLE_TEST_CHROMIUM` or `/usr/bin/chromium`) and connects
    /// to its browser endpoint.
    pub async fn launch(opts: BrowserOptions) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("huddle-chromium-")
            .tempdir()
            .expect("temp dir for the chromium profile");
        let download_dir = tempfile::Builder::new()
            .prefix("huddle-downloads-")
            .tempdir()
            .expect("temp dir for downloads");
        let binary =
            std::env::var_os("HUDDLE_TEST_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
        let mut cmd = Command::new(&binary);
        cmd.args([
            "--headless=new",
            // Tests run as root in CI, where the sandbox refuses to start.
            "--no-sandbox",
            "--disable-gpu",
            // A small /dev/shm (64 MiB in containers) crashes renderers; use /tmp instead.
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--password-store=basic",
            // Several pages of one browser are all "in front": no timer throttling, no paused
            // renderers, for a call between two tabs.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--remote-debugging-port=0",
            // A fake camera (a moving test pattern) and microphone (a beep, or the WAV), and
            // getUserMedia granted without a prompt.
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            // ICE candidates on 127.0.0.1 and plain host addresses instead of mDNS names.
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            // AudioContexts start "running" and media plays without a click.
            "--autoplay-policy=no-user-gesture-required",
        ]);
        cmd.arg(format!("--user-data-dir={}", profile.path().display()));
        if let Some(wav) = &opts.fake_audio_wav {
            let wav = std::fs::canonicalize(wav)
                .unwrap_or_else(|e| panic!("fake audio file {}: {e}", wav.display()));
            cmd.arg(format!(
                "--use-file-for-fake-audio-capture={}",
                wav.display()
            ));
        }
        if opts.ignore_certificate_errors {
            cmd.arg("--ignore-certificate-errors");
        }
        cmd.args(&opts.extra_args);
        cmd.arg("about:blank");
        // If the test process dies without dropping us (killed by a CI timeout), chromium gets
        // SIGKILL too (and its children follow it). It is sent when the spawning *thread* ends:
        // launch from the test's thread or a runtime worker, not from a short-lived thread.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // Its own process group, so Drop kills the zygote and renderers too.
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.to_string_lossy()));

        // Drain stderr in a thread (a full pipe would block chromium), keeping the tail.
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        {
            let stderr = stderr.clone();
            let mut pipe = child.stderr.take().unwrap();
            let drain = move || {
                let mut buf = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    let mut tail = stderr.lock().unwrap();
                    tail.extend(&buf[..n]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL);
                    tail.drain(..excess);
                }
            };
            std::thread::Builder::new()
                .name("chromium-stderr".into())
                .spawn(drain)
                .expect("a thread for chromium's stderr");
        }

        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + STARTUP;
        let ws_url = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next())
                    && port.parse::<u16>().is_ok()
                    && path.starts_with("/devtools/browser/")
                {
                    break format!("ws://127.0.0.1:{port}{path}");
                }
            }
            if let Some(status) = child.try_wait().expect("chromium's status") {
                panic!(
                    "chromium exited ({status}) before opening its DevTools port; stderr:\n{}",
                    tail_text(&stderr)
                );
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                panic!(
                    "chromium wrote no {} within {STARTUP:?}; stderr:\n{}",
                    port_file.display(),
                    tail_text(&stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };

        // Screenshots and large evaluations exceed tungstenite's 16 MiB default.
        let config = WebSocketConfig::default()
            .max_message_size(Some(512 << 20))
            .max_frame_size(Some(512 << 20));
        let connect = tokio_tungstenite::connect_async_with_config(&ws_url, Some(config), true);
        let ws = match tokio::time::timeout(CALL, connect).await {
            Ok(Ok((ws, _))) => ws,
            other => {
                kill_group(&mut child);
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no connection within {CALL:?}"),
                };
                panic!(
                    "DevTools WebSocket {ws_url}: {why}; chromium stderr:\n{}",
                    tail_text(&stderr)
                );
            }
        };
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::channel::<String>(OUT_QUEUE);
        let conn = Arc::new(Conn {
            state: Mutex::new(State::default()),
            changed: watch::channel(0).0,
            out,
            next_id: AtomicU64::new(1),
            stderr,
        });
        let writer = tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let reader = {
            let conn = conn.clone();
            tokio::spawn(async move {
                let why = loop {
                    match stream.next().await {
                        Some(Ok(Message::Text(text))) => conn.dispatch(text.as_str()),
                        Some(Ok(Message::Close(frame))) => break format!("closed: {frame:?}"),
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break format!("socket error: {e}"),
                        None => break "the connection ended".to_owned(),
                    }
                };
                conn.close(format!("DevTools connection lost ({why})"));
            })
        };

        let browser = Browser {
            child,
            conn,
            tasks: vec![writer, reader],
            download_dir,
            _profile: profile,
        };
        browser
            .call(
                "Browser.setDownloadBehavior",
                json!({
                    "behavior": "allowAndName",
                    "downloadPath": browser.download_dir.path(),
                    "eventsEnabled": true,
                }),
            )
            .await;
        browser
    }

    /// Opens a new tab, attaches to it, enables Page, Runtime and Log, navigates to `url` and
    /// waits for its `load` event.
    pub async fn open(&self, url: &str) -> Page {
        let created = self
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = created["targetId"].as_str().expect("targetId").to_owned();
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        let session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned();
        let page = Page {
            conn: self.conn.clone(),
            session,
            target,
        };
        page.call("Page.enable", json!({})).await;
        page.call("Page.setLifecycleEventsEnabled", json!({"enabled": true}))
            .await;
        page.call("Runtime.enable", json!({})).await;
        page.call("Log.enable", json!({})).await;
        page.goto(url).await;
        page
    }

    /// Where downloads are saved (as `<guid>`; see [`Browser::downloaded`]).
    pub fn download_dir(&self) -> &Path {
        self.download_dir.path()
    }

    /// Waits until a download the page named `name` (its suggested file name) has completed,
    /// and returns the file. Each call takes the next such download not returned before, so a
    /// test can download the same name twice. Panics if it is cancelled or not done in time.
    pub async fn downloaded(&self, name: &str, within: Duration) -> PathBuf {
        let dir = self.download_dir.path().to_owned();
        let found = self
            .conn
            .wait_until(within, |state| {
                let d = state
                    .downloads
                    .iter_mut()
                    .find(|d| d.name == name && !d.claimed && d.state != "inProgress")?;
                d.claimed = true;
                Some(match d.state.as_str() {
                    "completed" => {
                        Ok((d.path.clone().unwrap_or_else(|| dir.join(&d.guid)), d.total))
                    }
                    other => Err(format!("download {name:?} ended {other}: {d:?}")),
                })
            })
            .await;
        let (path, total) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(why)) => panic!("{why}\n{}", self.conn.diagnostics(None)),
            Err(why) => panic!(
                "download {name:?} not completed: {why}\ndownloads seen: {:#?}\nin {}: {:?}\n{}",
                self.conn.state.lock().unwrap().downloads,
                dir.display(),
                std::fs::read_dir(&dir).map(|d| d
                    .filter_map(|e| e.ok().map(|e| e.file_name()))
                    .collect::<Vec<_>>()),
                self.conn.diagnostics(None)
            ),
        };
        let len = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("completed download {name:?} at {}: {e}", path.display()))
            .len();
        assert!(
            total == 0 || len == total,
            "download {name:?} at {} has {len} bytes, chromium reported {total}",
            path.display()
        );
        path
    }

    /// Sends a browser-level DevTools command; panics if it fails.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        match self.conn.call(None, method, params, CALL).await {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.conn.diagnostics(None)),
        }
    }

    /// The main chromium process, also its process group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last few KiB chromium wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        tail_text(&self.conn.stderr)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.conn.close("the Browser was dropped".into());
        kill_group(&mut self.child);
    }
}

impl Page {
    /// Navigates to `url` and waits for its `load` event; panics if navigation fails.
    pub async fn goto(&self, url: &str) {
        let nav = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(error) = nav["errorText"].as_str().filter(|e| !e.is_empty()) {
            panic!(
                "navigating to {url} failed: {error}\n{}",
                self.conn.diagnostics(Some(&self.session))
            );
        }
        // A same-document navigation has no loader and fires no load event.
        let Some(loader) = nav["loaderId"].as_str() else {
            return;
        };
        let key = (self.session.clone(), loader.to_owned());
        if let Err(why) = self
            .conn
            .wait_until(LOAD, |state| state.loaded.contains(&key).then_some(()))
            .await
        {
            panic!(
                "{url} did not fire load: {why}\n{}",
                self.conn.diagnostics(Some(&self.session))
            );
        }
    }

    /// Evaluates `js` (awaiting a returned promise) and returns its value as JSON (`undefined`:
    /// null). Panics with the exception if it throws, or if it takes over 30 s.
    pub async fn eval(&self, js: &str) -> Value {
        match self.try_eval(js, CALL).await {
            Ok(v) => v,
            Err(e) => panic!(
                "eval failed: {e}\nscript: {js}\n{}",
                self.conn.diagnostics(Some(&self.session))
            ),
        }
    }

    /// Evaluates the expression `js` every 100 ms until its value is truthy, and returns that
    /// value. An evaluation that throws counts as not yet (the element may not exist yet); the
    /// last exception is in the panic message if time runs out.
    pub async fn wait_for(&self, js: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut last: Result<Value, String> = Err("never evaluated".into());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let closed = self.conn.state.lock().unwrap().closed.clone();
            if left.is_zero() || closed.is_some() {
                let why = closed.unwrap_or_else(|| format!("not within {within:?}"));
                let last = match last {
                    Ok(v) => format!("last value: {v}"),
                    Err(e) => format!("last evaluation failed: {e}"),
                };
                panic!(
                    "waiting for `{js}`: {why}; {last}\n{}",
                    self.conn.diagnostics(Some(&self.session))
                );
            }
            last = self.try_eval(js, left.max(Duration::from_secs(1))).await;
            if let Ok(v) = &last
                && truthy(v)
            {
                return v.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
        }
    }

    /// Sets the files of the `<input type=file>` matched by `selector` (DOM.setFileInputFiles);
    /// the page sees `input` and `change` events.
    pub async fn set_input_files(&self, selector: &str, files: &[PathBuf]) {
        let files: Vec<String> = files
            .iter()
            .map(|f| {
                std::fs::canonicalize(f)
                    .unwrap_or_else(|e| panic!("file for {selector}: {}: {e}", f.display()))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        let found = self
            .call(
                "Runtime.evaluate",
                json!({"expression": format!("document.querySelector({})", json!(selector))}),
            )
            .await;
        if let Some(ex) = found.get("exceptionDetails") {
            panic!("querySelector({selector:?}) threw: {}", exception_text(ex));
        }
        let Some(object) = found["result"]["objectId"].as_str() else {
            panic!(
                "no element matches {selector:?}\n{}",
                self.conn.diagnostics(Some(&self.session))
            );
        };
        self.call(
            "DOM.setFileInputFiles",
            json!({"files": files, "objectId": object}),
        )
        .await;
        self.call("Runtime.releaseObject", json!({"objectId": object}))
            .await;
    }

    /// The page's console messages, uncaught exceptions, log entries (failed loads) and crash
    /// or detach notices so far, oldest first.
    pub fn console(&self) -> Vec<String> {
        let state = self.conn.state.lock().unwrap();
        state
            .console
            .get(&self.session)
            .cloned()
            .unwrap_or_default()
    }

    /// Sends a DevTools command in this page's session; panics if it fails.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        match self
            .conn
            .call(Some(&self.session), method, params, CALL)
            .await
        {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.conn.diagnostics(Some(&self.session))),
        }
    }

    /// Closes the tab.
    pub async fn close(self) {
        let closed = self
            .conn
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": self.target}),
                CALL,
            )
            .await;
        if let Err(e) = closed {
            panic!("{e}\n{}", self.conn.diagnostics(Some(&self.session)));
        }
    }

    async fn try_eval(&self, js: &str, within: Duration) -> Result<Value, String> {
        let params = json!({
            "expression": js,
            "awaitPromise": true,
            "returnByValue": true,
            // As if clicked: downloads, fullscreen and clipboard need a user gesture.
            "userGesture": true,
        });
        let r = self
            .conn
            .call(Some(&self.session), "Runtime.evaluate", params, within)
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(exception_text(ex));
        }
        let result = &r["result"];
        Ok(match result.get("unserializableValue") {
            Some(v) => v.clone(),
            None => result.get("value").cloned().unwrap_or(Value::Null),
        })
    }
}

/// JavaScript truthiness of a value returned by value (`unserializableValue`s are strings).
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !matches!(s.as_str(), "" | "NaN" | "-0" | "0n"),
        Value::Array(_) | Value::Object(_) => true,
    }
}

#[derive(Debug)]
struct Download {
    guid: String,
    name: String,
    url: String,
    state: String,
    received: u64,
    total: u64,
    path: Option<PathBuf>,
    claimed: bool,
}

#[derive(Default)]
struct State {
    pending: HashMap<u64, oneshot::Sender<Result<Value, Value>>>,
    /// By session id ("" for the browser).
    console: HashMap<String, Vec<String>>,
    /// (session id, loader id) of each `load` lifecycle event.
    loaded: HashSet<(String, String)>,
    /// In the order they began.
    downloads: Vec<Download>,
    /// Why the connection is gone.
    closed: Option<String>,
}

struct Conn {
    state: Mutex<State>,
    /// Bumped on every event, so waiters re-check.
    changed: watch::Sender<u64>,
    out: mpsc::Sender<String>,
    next_id: AtomicU64,
    stderr: Arc<Mutex<VecDeque<u8>>>,
}

impl Conn {
    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        within: Duration,
    ) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            msg["sessionId"] = session.into();
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.state.lock().unwrap();
            if let Some(why) = &state.closed {
                return Err(format!("{method}: {why}"));
            }
            state.pending.insert(id, tx);
        }
        if self.out.send(msg.to_string()).await.is_err() {
            self.state.lock().unwrap().pending.remove(&id);
            return Err(format!("{method}: the DevTools writer has stopped"));
        }
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(format!("{method} failed: {error}")),
            Ok(Err(_)) => {
                let why = self.state.lock().unwrap().closed.clone();
                Err(format!("{method}: {}", why.unwrap_or_default()))
            }
            Err(_) => {
                self.state.lock().unwrap().pending.remove(&id);
                Err(format!("{method}: no reply within {within:?}"))
            }
        }
    }

    /// Waits until `check` returns something, re-checking after every event.
    async fn wait_until<T>(
        &self,
        within: Duration,
        mut check: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T, String> {
        let mut changed = self.changed.subscribe();
        let deadline = Instant::now() + within;
        loop {
            {
                let mut state = self.state.lock().unwrap();
                if let Some(found) = check(&mut state) {
                    return Ok(found);
                }
                if let Some(why) = &state.closed {
                    return Err(why.clone());
                }
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Err(format!("not within {within:?}"));
            }
        }
    }

    fn close(&self, why: String) {
        let mut state = self.state.lock().unwrap();
        state.closed.get_or_insert(why);
        // Dropping the senders fails every pending call with the reason above.
        state.pending.clear();
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    fn dispatch(&self, text: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(text) else {
            return;
        };
        let mut state = self.state.lock().unwrap();
        if let Some(id) = msg["id"].as_u64() {
            if let Some(tx) = state.pending.remove(&id) {
                let _ = tx.send(match msg.get("error") {
                    Some(error) => Err(error.clone()),
                    None => Ok(msg["result"].clone()),
                });
            }
            return;
        }
        let Some(method) = msg["method"].as_str() else {
            return;
        };
        let session = msg["sessionId"].as_str().unwrap_or("").to_owned();
        let p = &msg["params"];
        let line = match method {
            "Runtime.consoleAPICalled" => {
                let args: Vec<String> = p["args"]
                    .as_array()
                    .map(|a| a.iter().map(remote_object_text).collect())
                    .unwrap_or_default();
                Some(format!(
                    "console.{}: {}",
                    p["type"].as_str().unwrap_or("?"),
                    args.join(" ")
                ))
            }
            "Runtime.exceptionThrown" => Some(format!(
                "uncaught: {}",
                exception_text(&p["exceptionDetails"])
            )),
            "Log.entryAdded" => {
                let e = &p["entry"];
                Some(format!(
                    "log.{} ({}): {} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["source"].as_str().unwrap_or("?"),
                    e["text"].as_str().unwrap_or(""),
                    e["url"].as_str().unwrap_or("")
                ))
            }
            "Inspector.targetCrashed" => Some("the page crashed (Inspector.targetCrashed)".into()),
            "Inspector.detached" => Some(format!(
                "DevTools detached: {}",
                p["reason"].as_str().unwrap_or("?")
            )),
            // An alert, confirm, prompt or beforeunload would block the page (and every eval)
            // until answered: accept it, and say so in the console.
            "Page.javascriptDialogOpening" => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let answer = json!({
                    "id": id,
                    "method": "Page.handleJavaScriptDialog",
                    "params": {"accept": true},
                    "sessionId": session,
                });
                let sent = self.out.try_send(answer.to_string());
                Some(format!(
                    "dialog ({}) {}: {}",
                    p["type"].as_str().unwrap_or("?"),
                    if sent.is_ok() {
                        "accepted"
                    } else {
                        "NOT answered (queue full)"
                    },
                    p["message"].as_str().unwrap_or("")
                ))
            }
            "Page.lifecycleEvent" => {
                if p["name"] == "load" {
                    let loader = p["loaderId"].as_str().unwrap_or("").to_owned();
                    state.loaded.insert((session.clone(), loader));
                }
                None
            }
            "Browser.downloadWillBegin" => {
                state.downloads.push(Download {
                    guid: p["guid"].as_str().unwrap_or("").to_owned(),
                    name: p["suggestedFilename"].as_str().unwrap_or("").to_owned(),
                    url: p["url"].as_str().unwrap_or("").chars().take(200).collect(),
                    state: "inProgress".into(),
                    received: 0,
                    total: 0,
                    path: None,
                    claimed: false,
                });
                None
            }
            "Browser.downloadProgress" => {
                let guid = p["guid"].as_str().unwrap_or("");
                if let Some(d) = state.downloads.iter_mut().find(|d| d.guid == guid) {
                    d.state = p["state"].as_str().unwrap_or("?").to_owned();
                    d.received = p["receivedBytes"].as_u64().unwrap_or(d.received);
                    d.total = p["totalBytes"].as_u64().unwrap_or(d.total);
                    if let Some(path) = p["filePath"].as_str() {
                        d.path = Some(path.into());
                    }
                }
                None
            }
            _ => None,
        };
        if let Some(line) = line {
            let lines = state.console.entry(session).or_default();
            if lines.len() >= CONSOLE_MAX {
                lines.remove(0);
            }
            lines.push(line);
        }
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }

    /// The recent console of `session` and chromium's stderr tail, for failure messages.
    fn diagnostics(&self, session: Option<&str>) -> String {
        let console = {
            let state = self.state.lock().unwrap();
            let lines = state
                .console
                .get(session.unwrap_or(""))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let from = lines.len().saturating_sub(CONSOLE_QUOTED);
            lines[from..].join("\n  ")
        };
        let stderr = tail_text(&self.stderr);
        // There is no system or session bus in CI; chromium says so many times a second.
        let stderr_lines: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.contains(":ERROR:dbus/") && !l.trim().is_empty())
            .collect();
        let from = stderr_lines.len().saturating_sub(CONSOLE_QUOTED);
        format!(
            "page console (last {CONSOLE_QUOTED}):\n  {console}\nchromium stderr (last {CONSOLE_QUOTED} lines but D-Bus):\n  {}",
            stderr_lines[from..].join("\n  ")
        )
    }
}

/// A console argument as the console would show it.
fn remote_object_text(o: &Value) -> String {
    if let Some(v) = o.get("value") {
        return match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
    }
    for key in ["unserializableValue", "description"] {
        if let Some(s) = o[key].as_str() {
            return s.to_owned();
        }
    }
    o["type"].as_str().unwrap_or("?").to_owned()
}

/// An `exceptionDetails`: the error with its stack if there is one, else the text, and where.
fn exception_text(ex: &Value) -> String {
    let what = ex["exception"]["description"]
        .as_str()
        .or(ex["exception"]["value"].as_str())
        .or(ex["text"].as_str())
        .unwrap_or("?");
    format!(
        "{what} (at {}:{}:{})",
        ex["url"].as_str().unwrap_or("<eval>"),
        ex["lineNumber"].as_i64().unwrap_or(-1) + 1,
        ex["columnNumber"].as_i64().unwrap_or(-1) + 1
    )
}

fn tail_text(tail: &Mutex<VecDeque<u8>>) -> String {
    let tail = tail.lock().unwrap();
    let (a, b) = tail.as_slices();
    String::from_utf8_lossy(&[a, b].concat()).into_owned()
}

/// SIGKILLs chromium's process group and reaps the main process.
fn kill_group(child: &mut Child) {
    if let Ok(pgid) = i32::try_from(child.id())
        && pgid > 0
    {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
    let _ = child.wait();
}

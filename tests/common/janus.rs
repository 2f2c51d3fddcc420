//! A real Janus gateway for tests (Debian's `janus`, 1.1): its WebSocket transport on a free
//! loopback port and the VideoRoom plugin with an admin key, everything else disabled,
//! configured in a temporary folder, killed when dropped.

use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const ADMIN_KEY: &str = "janus test admin key";

pub struct JanusProcess {
    child: tokio::process::Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl JanusProcess {
    pub async fn start() -> JanusProcess {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for (name, text) in
            huddle::signaling::janus::local_config_files(dir.path(), port, ADMIN_KEY)
        {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let conf = dir.path().display().to_string();
        let mut child = tokio::process::Command::new("janus")
            .args(["-C", &format!("{conf}/janus.jcfg"), "-F", &conf, "-o"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start janus ({e}); install it with `scripts/setup --test`")
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = async {
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("WebSockets thread started") {
                    return;
                }
                seen.push(line);
            }
            panic!("janus exited before it was ready:\n{}", seen.join("\n"));
        };
        tokio::time::timeout(Duration::from_secs(20), ready)
            .await
            .expect("janus ready in time");
        // Keep reading its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        JanusProcess {
            child,
            url: format!("ws://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("janus still running")
    }
}

//! A real Janus gateway for tests (Debian's `janus`, 1.1): `huddle::signaling::janus::LocalJanus`
//! configured in a temporary folder, killed when dropped.

use huddle::signaling::janus::LocalJanus;

pub const ADMIN_KEY: &str = "janus test admin key";

pub struct JanusProcess {
    janus: LocalJanus,
    pub url: String,
    dir: tempfile::TempDir,
}

impl JanusProcess {
    pub async fn start() -> JanusProcess {
        let dir = tempfile::tempdir().unwrap();
        let janus = LocalJanus::start(dir.path(), ADMIN_KEY)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        JanusProcess {
            url: janus.url.clone(),
            janus,
            dir,
        }
    }

    /// Kills it, as a crash would.
    pub async fn kill(&mut self) {
        self.janus.kill().await;
    }

    /// Starts it again on the same port (after `kill`), empty as a restarted Janus is.
    pub async fn restart(&mut self) {
        self.janus = LocalJanus::start_at(self.dir.path(), ADMIN_KEY, None, Some(self.janus.port))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn pid(&self) -> u32 {
        self.janus.pid().expect("janus still running")
    }
}

/// A test server (`super::test_config`) putting rooms past `above` people on these instances,
/// with room for 16 publishers in each Janus room.
pub fn server_config(instances: &[&JanusProcess], above: usize) -> huddle::signaling::ServerConfig {
    let mut config = super::test_config();
    config.hub.sfu_above = Some(above);
    config.sfu = Some(huddle::signaling::sfu::SfuConfig {
        janus: instances
            .iter()
            .map(|janus| huddle::signaling::janus::JanusConfig {
                url: janus.url.clone(),
                admin_key: Some(ADMIN_KEY.into()),
                api_secret: None,
            })
            .collect(),
        publishers: 16,
    });
    config
}

//! A real Janus gateway for tests (Debian's `janus`, 1.1): `huddle::signaling::janus::LocalJanus`
//! configured in a temporary folder, killed when dropped.

use huddle::signaling::janus::LocalJanus;

pub const ADMIN_KEY: &str = "janus test admin key";

pub struct JanusProcess {
    janus: LocalJanus,
    pub url: String,
    _dir: tempfile::TempDir,
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
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.janus.pid().expect("janus still running")
    }
}

//! The user's settings, kept as JSON in the platform's config directory: nickname, server,
//! devices, download folder, file-transfer preferences; and the files kept in the state folder
//! (the app's log, `huddle serve`'s rejoin secret). Plain data plus load/save; callers do the
//! saving off the UI thread.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The server address meaning "the server built into this app".
pub const EMBEDDED_SERVER: &str = "embedded";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub nickname: String,
    /// `embedded`, or a `ws://` / `wss://` URL.
    pub server: String,
    pub camera: String,
    pub microphone: String,
    pub speaker: String,
    pub download_dir: Option<PathBuf>,
    /// Accept files from everyone in the room without asking (up to `auto_accept_max_mib`).
    pub auto_accept_files: bool,
    /// Larger files still ask, even from everyone.
    pub auto_accept_max_mib: u64,
    /// Larger offers are declined outright.
    pub max_incoming_mib: u64,
    pub show_stats: bool,
    pub echo_cancellation: bool,
    pub noise_suppression: bool,
    pub gain_control: bool,
    /// A PEM certificate to trust for `wss://` besides the system's roots.
    pub trusted_cert: Option<PathBuf>,
    pub theme: Theme,
    /// Calls open in speaker view (else the grid); the last choice made in a call.
    pub speaker_view: bool,
}

/// The app's colours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Theme {
    Dark,
    Light,
    /// Whatever the desktop says (dark where it says nothing).
    #[default]
    FollowSystem,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            nickname: String::new(),
            server: EMBEDDED_SERVER.into(),
            camera: String::new(),
            microphone: String::new(),
            speaker: String::new(),
            download_dir: None,
            auto_accept_files: false,
            auto_accept_max_mib: 100,
            max_incoming_mib: 16 * 1024,
            show_stats: false,
            echo_cancellation: true,
            noise_suppression: true,
            gain_control: true,
            trusted_cert: None,
            theme: Theme::FollowSystem,
            speaker_view: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot save settings to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where settings live: `$XDG_CONFIG_HOME/huddle/settings.json` on Linux.
pub fn default_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("org", "huddle", "huddle")
        .map(|d| d.config_dir().join("settings.json"))
}

/// `$XDG_STATE_HOME/huddle` on Linux (the data folder where the platform has no state folder).
fn state_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("org", "huddle", "huddle").map(|d| {
        d.state_dir()
            .unwrap_or_else(|| d.data_local_dir())
            .to_owned()
    })
}

/// Where the desktop app's log goes: `huddle.log` in the state folder.
pub fn default_log_path() -> Option<PathBuf> {
    state_dir().map(|d| d.join("huddle.log"))
}

/// Where `huddle serve` keeps the secret its rejoin tokens are signed with: `rejoin-secret` in
/// the state folder.
pub fn default_rejoin_secret_path() -> Option<PathBuf> {
    state_dir().map(|d| d.join("rejoin-secret"))
}

/// The secret (64 hex characters) kept in the file at `path`, created random and readable by
/// its owner only if there is none yet: so that a restarted server still honours the tokens it
/// issued. A file holding fewer than 32 characters is an error, not replaced.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<String> {
    use std::io::Write;
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 32 => return Ok(text.trim().to_owned()),
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds fewer than 32 characters", path.display()),
            ));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            Ok(text)
        }
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_secret(path),
        Err(e) => Err(e),
    }
}

/// Opens a fresh log file at `default_log_path`, keeping the previous run's as
/// `huddle.previous.log` (so the file never holds more than two runs). `None` if the folder
/// cannot be written: the app runs on without a log file.
pub fn open_log_file() -> Option<std::fs::File> {
    let path = default_log_path()?;
    open_log_file_at(&path).ok()
}

pub fn open_log_file_at(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        std::fs::rename(path, path.with_file_name("huddle.previous.log"))?;
    }
    std::fs::File::create(path)
}

/// The platform's Downloads folder, subfolder Huddle.
pub fn default_download_dir() -> PathBuf {
    directories::UserDirs::new()
        .and_then(|u| u.download_dir().map(|d| d.join("Huddle")))
        .or_else(|| {
            directories::BaseDirs::new().map(|b| b.home_dir().join("Downloads").join("Huddle"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("Huddle"))
}

impl Settings {
    /// Reads settings; a missing file gives defaults, an unreadable one an error (and the
    /// caller may use defaults without overwriting the file).
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "settings file unreadable; using defaults");
                Settings::default()
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(source) => Err(SettingsError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes settings atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), SettingsError> {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|source| SettingsError::Write {
            path: path.to_owned(),
            source,
        })
    }

    pub fn download_dir(&self) -> PathBuf {
        self.download_dir
            .clone()
            .unwrap_or_else(default_download_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("rejoin-secret");
        let first = load_or_create_secret(&path).unwrap();
        let again = load_or_create_secret(&path).unwrap();
        assert_eq!(first, again);
        assert!(first.len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "short").unwrap();
        assert!(load_or_create_secret(&path).is_err());
    }

    #[test]
    fn round_trip_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/settings.json");
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
        let s = Settings {
            nickname: "Ann".into(),
            server: "ws://example.org:8787".into(),
            auto_accept_files: true,
            ..Default::default()
        };
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path).unwrap(), s);
        // Unknown or missing fields do not lose the rest.
        std::fs::write(&path, r#"{"nickname":"Bo","future_field":1}"#).unwrap();
        let loaded = Settings::load(&path).unwrap();
        assert_eq!(loaded.nickname, "Bo");
        assert_eq!(loaded.server, EMBEDDED_SERVER);
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(Settings::load(&path).unwrap(), Settings::default());
    }

    #[test]
    fn the_log_file_keeps_this_run_and_the_previous_one() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/huddle/huddle.log");
        let previous = path.with_file_name("huddle.previous.log");
        for run in ["first", "second", "third"] {
            let mut f = open_log_file_at(&path).unwrap();
            writeln!(f, "{run} run").unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "third run\n");
        assert_eq!(std::fs::read_to_string(&previous).unwrap(), "second run\n");
        let files = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(files, 2);
        assert!(default_log_path().is_some_and(|p| p.ends_with("huddle.log")));
    }
}

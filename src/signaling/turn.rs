//! Time-limited TURN credentials, minted per client the way coturn's `use-auth-secret` checks
//! them (the "TURN REST API" convention): the username is `EXPIRY:NAME` (Unix seconds), the
//! password the base64 HMAC-SHA1 of that username under the secret the server shares with the
//! TURN server. No per-user state on either side; a leaked credential stops working at expiry.

use super::protocol::IceServer;
use base64::Engine;
use hmac::{Hmac, Mac};
use std::fmt;
use std::time::Duration;

/// The shared secret and where the TURN servers are.
#[derive(Clone)]
pub struct TurnConfig {
    /// `turn:HOST:PORT` URLs (webrtc 0.21 clients use TURN over UDP).
    pub urls: Vec<String>,
    secret: Vec<u8>,
    /// How long minted credentials stay valid.
    pub ttl: Duration,
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TurnConfigError {
    #[error("the TURN secret is empty")]
    EmptySecret,
    #[error("no TURN URL given (turn:HOST:PORT)")]
    NoUrl,
    #[error("not a TURN URL: {0:?} (expected turn:HOST:PORT or turns:HOST:PORT)")]
    BadUrl(String),
}

impl TurnConfig {
    pub fn new(
        urls: Vec<String>,
        secret: impl Into<Vec<u8>>,
        ttl: Duration,
    ) -> Result<TurnConfig, TurnConfigError> {
        let secret = secret.into();
        if secret.is_empty() {
            return Err(TurnConfigError::EmptySecret);
        }
        if urls.is_empty() {
            return Err(TurnConfigError::NoUrl);
        }
        if let Some(bad) = urls
            .iter()
            .find(|u| !(u.starts_with("turn:") || u.starts_with("turns:")) || u.len() < 7)
        {
            return Err(TurnConfigError::BadUrl(bad.clone()));
        }
        Ok(TurnConfig { urls, secret, ttl })
    }

    /// Credentials for `name` (the client's peer id), valid until `now_unix + ttl`.
    pub fn credentials(&self, name: &str, now_unix: u64) -> IceServer {
        let expiry = now_unix + self.ttl.as_secs();
        let username = format!("{expiry}:{name}");
        IceServer {
            urls: self.urls.clone(),
            credential: Some(password(&self.secret, &username)),
            username: Some(username),
        }
    }
}

/// base64(HMAC-SHA1(secret, username)), as coturn computes it.
fn password(secret: &[u8], username: &str) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<sha1::Sha1>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_follow_the_turn_rest_convention() {
        let cfg = TurnConfig::new(
            vec!["turn:127.0.0.1:3478".into()],
            "north",
            Duration::from_secs(3600),
        )
        .unwrap();
        let ice = cfg.credentials("p1", 1_700_000_000);
        assert_eq!(ice.username.as_deref(), Some("1700003600:p1"));
        // Computed independently: base64(hmac.new(b"north", b"1700003600:p1", sha1)) in Python.
        assert_eq!(
            ice.credential.as_deref(),
            Some("4EEMVinF9VQKZF50YH25G6+f6lw=")
        );
        assert_eq!(
            password(b"key", "The quick brown fox jumps over the lazy dog"),
            "3nybhbi3iqa8ino29wqQcBydtNk="
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let ttl = Duration::from_secs(60);
        assert_eq!(
            TurnConfig::new(vec!["turn:h:1".into()], "", ttl).unwrap_err(),
            TurnConfigError::EmptySecret
        );
        assert_eq!(
            TurnConfig::new(vec![], "s", ttl).unwrap_err(),
            TurnConfigError::NoUrl
        );
        assert!(matches!(
            TurnConfig::new(vec!["stun:h:1".into()], "s", ttl),
            Err(TurnConfigError::BadUrl(_))
        ));
    }
}

//! Who may join which room: room passwords, signed join tokens (JWT, HS256), short-lived rejoin
//! tokens, and the per-connection join rate. Pure functions over `now`; no I/O. Shared by the
//! in-memory hub and the Redis cluster hub. Depends only on `signaling::protocol`.

use super::protocol::{ErrorCode, JoinAccess, PeerId, validate_nickname, validate_room_name};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// The peer ids the server hands out: this many of these characters.
const PEER_ID_LEN: usize = 12;
const PEER_ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh random peer id.
pub fn new_peer_id() -> PeerId {
    let mut rng = rand::rng();
    PeerId(
        (0..PEER_ID_LEN)
            .map(|_| PEER_ID_ALPHABET[rng.random_range(0..PEER_ID_ALPHABET.len())] as char)
            .collect(),
    )
}

/// Whether `id` is one `new_peer_id` could have made.
fn is_server_peer_id(id: &str) -> bool {
    id.len() == PEER_ID_LEN && id.bytes().all(|b| PEER_ID_ALPHABET.contains(&b))
}

/// How long a rejoin token stays valid: long enough to ride out a reconnect with backoff.
pub const REJOIN_TTL: Duration = Duration::from_secs(5 * 60);
/// Longest lifetime `huddle token` will mint: join tokens are meant to be short-lived.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;
/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 2048;
/// Clock skew tolerated between the minting machine and the server.
const LEEWAY_SECS: u64 = 30;

/// A rejected join, with the documented error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token secret is empty")]
    EmptySecret,
    #[error("token lifetime must be between 1 second and {} days", MAX_TOKEN_TTL.as_secs() / 86_400)]
    BadTtl,
    #[error("cannot sign the token: {0}")]
    Sign(String),
}

/// A shared HMAC secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, TokenError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(TokenError::EmptySecret);
        }
        Ok(Secret(bytes))
    }

    /// 32 random bytes, for a process that has no configured secret.
    pub fn random() -> Secret {
        Secret(rand::random::<[u8; 32]>().to_vec())
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// What a token grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Minted by an operator with `huddle token`: may join the room.
    Join,
    /// Issued by the server in `joined`: may come back to the room without password or join
    /// token, and may recreate it (with its privacy and password) if it closed meanwhile.
    Rejoin,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Room key (the normalised, lower-cased room name).
    pub room: String,
    pub kind: TokenKind,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
    /// Rejoin tokens only: the room was private.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    /// Rejoin tokens only: the room's password hash, so a recreated room keeps its password,
    /// sealed (`seal`) so that the token, whose claims anyone can read, reveals nothing about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_password: Option<String>,
    /// Rejoin tokens minted before passwords were sealed carried the room's (older, SHA-256)
    /// password hash in the clear under this name. Read only so that such a token, still valid
    /// during a rolling upgrade, cannot recreate its room without a password: it is not honoured
    /// as a rejoin token at all, and its holder passes the ordinary checks.
    #[serde(default, rename = "password_hash", skip_serializing)]
    pub legacy_password_hash: Option<serde_json::Value>,
    /// Rejoin tokens only: the peer id it was issued to, which its holder may take again in
    /// `hello.resume` after a reconnect (so the others keep their connections to it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// The key a room is stored under: its validated name, lower-cased.
pub fn room_key(display_name: &str) -> String {
    display_name.to_lowercase()
}

/// Argon2id hash (hex) under which a room's password is kept, never the password itself. Slow on
/// purpose (argon2's defaults, OWASP's minimum: 19 MiB, 2 passes), so a leaked hash (Redis, a
/// memory dump) is costly to guess from: call it off the hub, on a blocking thread. The salt
/// comes from the room key, so equal passwords of different rooms differ, while one room's
/// password hashes the same in every process: the hub and the Redis cluster compare stored
/// hashes for equality. `None` only if argon2 refuses its input, which these lengths never make
/// it do.
pub fn password_hash(room_key: &str, password: &str) -> Option<String> {
    let salt = Sha256::new()
        .chain_update(b"huddle-room-password-salt\0")
        .chain_update(room_key.as_bytes())
        .finalize();
    let mut out = [0u8; 32];
    argon2::Argon2::default()
        .hash_password_into(password.as_bytes(), &salt[..16], &mut out)
        .ok()?;
    Some(hex::encode(out))
}

/// Takes a `join`'s password out and puts its hash in, so that whoever calls this pays for the
/// hashing (the server: on a blocking thread, a few at a time) and the hub never sees the
/// password. An empty or over-long password, or an invalid room name, is left as it is for the
/// hub to ignore or refuse with the documented error.
pub fn hash_join_password(room: &str, access: &mut JoinAccess) {
    let Some(password) = access.password.as_deref() else {
        return;
    };
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return;
    }
    let Ok(name) = validate_room_name(room) else {
        return;
    };
    if let Some(hash) = password_hash(&room_key(&name), password) {
        access.password_hash = Some(hash);
        access.password = None;
    }
}

/// The key that seals password hashes inside rejoin tokens, derived from the rejoin secret.
fn seal_cipher(secret: &Secret) -> ChaCha20Poly1305 {
    let key = Sha256::new()
        .chain_update(b"huddle-rejoin-seal\0")
        .chain_update(secret.as_bytes())
        .finalize();
    ChaCha20Poly1305::new(&key)
}

/// `text` encrypted and authenticated: base64url(nonce ‖ ciphertext).
fn seal(secret: &Secret, text: &str) -> Option<String> {
    let nonce: [u8; 12] = rand::random();
    let mut sealed = nonce.to_vec();
    sealed.extend(
        seal_cipher(secret)
            .encrypt(Nonce::from_slice(&nonce), text.as_bytes())
            .ok()?,
    );
    Some(URL_SAFE_NO_PAD.encode(sealed))
}

fn unseal(secret: &Secret, sealed: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(12);
    let plain = seal_cipher(secret)
        .decrypt(Nonce::from_slice(nonce), ciphertext)
        .ok()?;
    String::from_utf8(plain).ok()
}

/// Compares two password hashes in time independent of where they differ.
pub fn hashes_match(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Signs a token. `now_ms` is the current time in milliseconds since the Unix epoch.
pub fn mint(
    secret: &Secret,
    room_key: &str,
    kind: TokenKind,
    ttl: Duration,
    now_ms: u64,
) -> Result<String, TokenError> {
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        return Err(TokenError::BadTtl);
    }
    let iat = now_ms / 1000;
    let claims = Claims {
        room: room_key.to_owned(),
        kind,
        iat,
        exp: iat + ttl.as_secs().max(1),
        private: false,
        sealed_password: None,
        legacy_password_hash: None,
        peer: None,
    };
    sign(secret, &claims)
}

pub fn sign(secret: &Secret, claims: &Claims) -> Result<String, TokenError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| TokenError::Sign(e.to_string()))
}

/// Checks a token's signature, expiry, kind and room. The clock is ours (`now_ms`), not the
/// library's, so tests can move it.
pub fn verify(
    secret: &Secret,
    token: &str,
    room_key: &str,
    kind: TokenKind,
    now_ms: u64,
) -> Result<Claims, Refusal> {
    let claims = verify_any_room(secret, token, kind, now_ms)?;
    if claims.room != room_key {
        return Err(Refusal::new(
            ErrorCode::TokenWrongRoom,
            format!("the token is for room {:?}, not this one", claims.room),
        ));
    }
    Ok(claims)
}

/// `verify` without the room check.
fn verify_any_room(
    secret: &Secret,
    token: &str,
    kind: TokenKind,
    now_ms: u64,
) -> Result<Claims, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::new(ErrorCode::BadToken, "the token is too long"));
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| {
        let why = match e.kind() {
            ErrorKind::InvalidSignature => "its signature does not match this server's secret",
            ErrorKind::InvalidAlgorithm => "it is not signed with HS256",
            _ => "it is not a well-formed Huddle token",
        };
        Refusal::new(ErrorCode::BadToken, format!("the token was refused: {why}"))
    })?;
    let claims = data.claims;
    if claims.kind != kind {
        return Err(Refusal::new(
            ErrorCode::BadToken,
            format!("this is a {:?} token, not a {:?} token", claims.kind, kind).to_lowercase(),
        ));
    }
    if now_ms / 1000 > claims.exp + LEEWAY_SECS {
        return Err(Refusal::new(
            ErrorCode::TokenExpired,
            "the token has expired; ask for a new one",
        ));
    }
    Ok(claims)
}

/// The access rules one server (or cluster) applies to joins.
#[derive(Clone, Debug)]
pub struct AccessConfig {
    /// When set, every join needs a join token signed with this secret (or a rejoin token).
    pub token_secret: Option<Secret>,
    /// Signs rejoin tokens. Shared by every process of a cluster.
    pub rejoin_secret: Secret,
    pub joins_per_minute: u32,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            token_secret: None,
            rejoin_secret: Secret::random(),
            joins_per_minute: 10,
        }
    }
}

/// What a client presented with its join.
#[derive(Clone, Debug, Default)]
pub struct Credentials<'a> {
    pub password: Option<&'a str>,
    /// The password's hash when the connection already computed it (`hash_join_password`).
    pub password_hash: Option<&'a str>,
    pub token: Option<&'a str>,
    pub rejoin_token: Option<&'a str>,
}

/// A join that passed [`AccessConfig::screen_join`]: normalised names and what its credentials
/// proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScreenedJoin {
    pub room_name: String,
    pub nickname: String,
    pub key: String,
    pub admission: Admission,
}

/// What the credentials proved, before looking at the room itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// A valid rejoin token: skip the password check.
    pub rejoining: bool,
    /// From the rejoin token: how to recreate the room if it closed meanwhile.
    pub recreate_private: bool,
    pub recreate_password_hash: Option<String>,
    /// Hash of the password the client gave, if any.
    pub password_hash: Option<String>,
}

impl AccessConfig {
    /// Checks token requirements for joining `room_key`. Room-specific rules (password, full,
    /// nickname) come after, with the room's state.
    pub fn admit(
        &self,
        room_key: &str,
        creds: &Credentials<'_>,
        now_ms: u64,
    ) -> Result<Admission, Refusal> {
        if creds.password.is_some_and(|p| p.len() > MAX_PASSWORD_BYTES) {
            return Err(Refusal::new(
                ErrorCode::WrongPassword,
                format!("passwords are at most {MAX_PASSWORD_BYTES} bytes"),
            ));
        }
        let password_hash = match (creds.password_hash, creds.password) {
            (Some(hash), _) => Some(hash.to_owned()),
            // Not hashed yet (an in-process caller): hash here, at the same cost.
            (None, Some(p)) if !p.is_empty() => {
                Some(password_hash(room_key, p).ok_or_else(|| {
                    Refusal::new(ErrorCode::WrongPassword, "the password cannot be hashed")
                })?)
            }
            (None, _) => None,
        };
        if let Some(rejoin) = creds.rejoin_token {
            // A stale rejoin token (server restarted with a new secret, or it expired) is not
            // fatal: fall through to the ordinary checks.
            if let Ok(claims) = verify(
                &self.rejoin_secret,
                rejoin,
                room_key,
                TokenKind::Rejoin,
                now_ms,
            ) && claims.legacy_password_hash.is_none()
            {
                // A seal that does not open (a bug, since the signature held) must not recreate
                // the room without its password: then the ordinary checks apply.
                let recreate_password_hash = match &claims.sealed_password {
                    Some(sealed) => unseal(&self.rejoin_secret, sealed),
                    None => Some(String::new()),
                };
                if let Some(recreate) = recreate_password_hash {
                    return Ok(Admission {
                        rejoining: true,
                        recreate_private: claims.private,
                        recreate_password_hash: Some(recreate).filter(|h| !h.is_empty()),
                        password_hash,
                    });
                }
            }
        }
        if let Some(secret) = &self.token_secret {
            let Some(token) = creds.token else {
                return Err(Refusal::new(
                    ErrorCode::TokenRequired,
                    "this server requires a join token; ask its operator for one",
                ));
            };
            verify(secret, token, room_key, TokenKind::Join, now_ms)?;
        }
        Ok(Admission {
            rejoining: false,
            recreate_private: false,
            recreate_password_hash: None,
            password_hash,
        })
    }

    /// The checks every join passes before its room is looked at, in the documented order: not
    /// already in a room, the join rate, the room and nickname syntax, then tokens.
    pub fn screen_join(
        &self,
        in_room: bool,
        join_rate: &mut JoinRate,
        room: &str,
        nickname: &str,
        access: &JoinAccess,
        now_ms: u64,
    ) -> Result<ScreenedJoin, Refusal> {
        if in_room {
            return Err(Refusal::new(
                ErrorCode::AlreadyInRoom,
                "you are already in a room; leave it first",
            ));
        }
        join_rate.attempt(self.joins_per_minute, now_ms)?;
        let room_name =
            validate_room_name(room).map_err(|why| Refusal::new(ErrorCode::BadRoomName, why))?;
        let nickname =
            validate_nickname(nickname).map_err(|why| Refusal::new(ErrorCode::BadNickname, why))?;
        let key = room_key(&room_name);
        let creds = Credentials {
            password: access.password.as_deref(),
            password_hash: access.password_hash.as_deref(),
            token: access.token.as_deref(),
            rejoin_token: access.rejoin_token.as_deref(),
        };
        let admission = self.admit(&key, &creds, now_ms)?;
        Ok(ScreenedJoin {
            room_name,
            nickname,
            key,
            admission,
        })
    }

    /// Checks the room's password against what was admitted.
    pub fn check_password(
        &self,
        room_password_hash: Option<&str>,
        admission: &Admission,
    ) -> Result<(), Refusal> {
        let Some(expected) = room_password_hash else {
            return Ok(());
        };
        if admission.rejoining {
            return Ok(());
        }
        match &admission.password_hash {
            None => Err(Refusal::new(
                ErrorCode::PasswordRequired,
                "this room has a password",
            )),
            Some(given) if hashes_match(given, expected) => Ok(()),
            Some(_) => Err(Refusal::new(
                ErrorCode::WrongPassword,
                "the password is not right",
            )),
        }
    }

    /// The peer id a client may take again after a reconnect: the one its rejoin token (sent
    /// as `hello.resume`) was issued to, if the token is ours, unexpired and names a well-formed
    /// id. Whether that id is free is the caller's question.
    pub fn resumable_peer(&self, resume_token: &str, now_ms: u64) -> Option<PeerId> {
        let claims =
            verify_any_room(&self.rejoin_secret, resume_token, TokenKind::Rejoin, now_ms).ok()?;
        let peer = claims.peer?;
        is_server_peer_id(&peer).then_some(PeerId(peer))
    }

    /// A rejoin token for `peer`, who just joined `room_key`.
    pub fn rejoin_token(
        &self,
        room_key: &str,
        private: bool,
        password_hash: Option<&str>,
        peer: &PeerId,
        now_ms: u64,
    ) -> Option<String> {
        let iat = now_ms / 1000;
        let claims = Claims {
            room: room_key.to_owned(),
            kind: TokenKind::Rejoin,
            iat,
            exp: iat + REJOIN_TTL.as_secs(),
            private,
            sealed_password: match password_hash {
                Some(hash) => Some(seal(&self.rejoin_secret, hash)?),
                None => None,
            },
            legacy_password_hash: None,
            peer: Some(peer.as_str().to_owned()),
        };
        sign(&self.rejoin_secret, &claims).ok()
    }

    /// A fresh rejoin token once the last one (issued at `issued_ms`) is half-way to expiry,
    /// so a member always holds one with at least half its lifetime left.
    pub fn renew_rejoin_token(
        &self,
        issued_ms: &mut u64,
        room_key: &str,
        private: bool,
        password_hash: Option<&str>,
        peer: &PeerId,
        now_ms: u64,
    ) -> Option<String> {
        let renew_after = REJOIN_TTL.as_millis() as u64 / 2;
        if now_ms.saturating_sub(*issued_ms) < renew_after {
            return None;
        }
        let token = self.rejoin_token(room_key, private, password_hash, peer, now_ms)?;
        *issued_ms = now_ms;
        Some(token)
    }
}

/// Join attempts of one connection in the last minute. Failed attempts count too, so it also
/// slows down password guessing.
#[derive(Debug, Default)]
pub struct JoinRate {
    attempts_ms: VecDeque<u64>,
}

impl JoinRate {
    /// Records an attempt at `now_ms`, or refuses it if `per_minute` were already made.
    pub fn attempt(&mut self, per_minute: u32, now_ms: u64) -> Result<(), Refusal> {
        while self
            .attempts_ms
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= 60_000)
        {
            self.attempts_ms.pop_front();
        }
        if self.attempts_ms.len() >= per_minute as usize {
            let wait_s = self
                .attempts_ms
                .front()
                .map(|t| 60 - now_ms.saturating_sub(*t) / 1000)
                .unwrap_or(60);
            return Err(Refusal::new(
                ErrorCode::TooManyJoins,
                format!(
                    "at most {per_minute} joins per minute per connection; try again in {wait_s} s"
                ),
            ));
        }
        self.attempts_ms.push_back(now_ms);
        Ok(())
    }
}

/// Parses a duration like `90s`, `30m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 1h or 2d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(scale)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn config_with_tokens() -> AccessConfig {
        AccessConfig {
            token_secret: Some(Secret::new(b"operator secret".to_vec()).unwrap()),
            ..AccessConfig::default()
        }
    }

    fn creds(token: Option<&str>) -> Credentials<'_> {
        Credentials {
            token,
            ..Credentials::default()
        }
    }

    #[test]
    fn join_tokens_valid_expired_forged_and_wrong_room() {
        let config = config_with_tokens();
        let secret = config.token_secret.clone().unwrap();
        let hour = Duration::from_secs(3600);
        let token = mint(&secret, "standup", TokenKind::Join, hour, NOW).unwrap();
        assert!(config.admit("standup", &creds(Some(&token)), NOW).is_ok());

        let code = |r: Result<Admission, Refusal>| r.unwrap_err().code;
        assert_eq!(
            code(config.admit("standup", &creds(None), NOW)),
            ErrorCode::TokenRequired
        );
        assert_eq!(
            code(config.admit("standup", &creds(Some(&token)), NOW + 2 * 3_600_000)),
            ErrorCode::TokenExpired
        );
        assert_eq!(
            code(config.admit("other", &creds(Some(&token)), NOW)),
            ErrorCode::TokenWrongRoom
        );
        let forged = mint(
            &Secret::new(b"guess".to_vec()).unwrap(),
            "standup",
            TokenKind::Join,
            hour,
            NOW,
        )
        .unwrap();
        assert_eq!(
            code(config.admit("standup", &creds(Some(&forged)), NOW)),
            ErrorCode::BadToken
        );
        // A tampered payload (room changed, signature kept) is a forgery too.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].chars().rev().collect();
        assert_eq!(
            code(config.admit("standup", &creds(Some(&parts.join("."))), NOW)),
            ErrorCode::BadToken
        );
        assert_eq!(
            code(config.admit("standup", &creds(Some("not a jwt")), NOW)),
            ErrorCode::BadToken
        );
        // A rejoin token is not a join token.
        let rejoin = config
            .rejoin_token("standup", false, None, &PeerId::from("abcdefghijkl"), NOW)
            .unwrap();
        assert_eq!(
            code(config.admit("standup", &creds(Some(&rejoin)), NOW)),
            ErrorCode::BadToken
        );
    }

    #[test]
    fn a_rejoin_token_names_its_peer_which_may_resume_with_it_in_any_room() {
        let config = AccessConfig::default();
        let peer = PeerId::from("abcdefghij12");
        let token = config.rejoin_token("r", false, None, &peer, NOW).unwrap();
        assert_eq!(
            config.resumable_peer(&token, NOW + 1000),
            Some(peer.clone())
        );
        // Expired, or from another server's secret: no resume.
        let late = NOW + (REJOIN_TTL.as_secs() + LEEWAY_SECS + 1) * 1000;
        assert_eq!(config.resumable_peer(&token, late), None);
        assert_eq!(AccessConfig::default().resumable_peer(&token, NOW), None);
        // A join token is not a resume token, and neither is junk.
        let join = mint(
            &config.rejoin_secret,
            "r",
            TokenKind::Join,
            Duration::from_secs(60),
            NOW,
        )
        .unwrap();
        assert_eq!(config.resumable_peer(&join, NOW), None);
        assert_eq!(config.resumable_peer("not.a.token", NOW), None);
        // A signed token naming an id the server would never hand out is not honoured.
        let claims = Claims {
            room: "r".into(),
            kind: TokenKind::Rejoin,
            iat: NOW / 1000,
            exp: NOW / 1000 + 60,
            private: false,
            sealed_password: None,
            legacy_password_hash: None,
            peer: Some("../../etc".into()),
        };
        let odd = sign(&config.rejoin_secret, &claims).unwrap();
        assert_eq!(config.resumable_peer(&odd, NOW), None);
    }

    #[test]
    fn rejoin_tokens_are_renewed_half_way_to_expiry() {
        let config = AccessConfig::default();
        let half = REJOIN_TTL.as_millis() as u64 / 2;
        let mut issued = NOW;
        let renew = |issued: &mut u64, at| {
            config.renew_rejoin_token(issued, "r", false, None, &PeerId::from("abcdefghijkl"), at)
        };
        assert_eq!(renew(&mut issued, NOW + half - 1), None);
        assert_eq!(issued, NOW);
        let token = renew(&mut issued, NOW + half).expect("due");
        assert_eq!(issued, NOW + half);
        let creds = Credentials {
            rejoin_token: Some(&token),
            ..Credentials::default()
        };
        // The renewed token outlives the first one.
        let admission = config.admit("r", &creds, NOW + REJOIN_TTL.as_millis() as u64 + 60_000);
        assert!(admission.unwrap().rejoining);
        assert_eq!(renew(&mut issued, NOW + half + 1), None);
    }

    #[test]
    fn rejoin_token_skips_password_and_token_but_only_for_its_room() {
        let config = config_with_tokens();
        let hash = password_hash("r", "hunter2").unwrap();
        let rejoin = config
            .rejoin_token("r", true, Some(&hash), &PeerId::from("abcdefghijkl"), NOW)
            .unwrap();
        // Anyone can read a JWT's claims: the hash is not among them, not even encoded.
        let claims = rejoin.split('.').nth(1).unwrap();
        let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert!(claims.contains("sealed_password"), "{claims}");
        assert!(!claims.contains(&hash), "{claims}");
        let hash_bytes = hex::decode(&hash).unwrap();
        for encoded in [
            URL_SAFE_NO_PAD.encode(&hash_bytes),
            base64::engine::general_purpose::STANDARD.encode(&hash_bytes),
        ] {
            assert!(!rejoin.contains(&encoded));
        }
        let with_rejoin = Credentials {
            rejoin_token: Some(&rejoin),
            ..Credentials::default()
        };
        let admission = config.admit("r", &with_rejoin, NOW + 60_000).unwrap();
        assert!(admission.rejoining);
        assert!(admission.recreate_private);
        assert_eq!(admission.recreate_password_hash.as_deref(), Some(&*hash));
        assert!(config.check_password(Some(&hash), &admission).is_ok());
        // Other room, or too late: back to the ordinary rules (here: a join token is needed).
        assert_eq!(
            config.admit("s", &with_rejoin, NOW).unwrap_err().code,
            ErrorCode::TokenRequired
        );
        let late = NOW + REJOIN_TTL.as_millis() as u64 + 120_000;
        assert_eq!(
            config.admit("r", &with_rejoin, late).unwrap_err().code,
            ErrorCode::TokenRequired
        );
    }

    #[test]
    fn a_rejoin_token_from_before_sealed_passwords_is_not_honoured() {
        // Minted by an older server sharing the cluster's rejoin secret: the password hash in
        // the clear. Honouring it would recreate the room without any password.
        let config = config_with_tokens();
        let iat = NOW / 1000;
        let legacy = serde_json::json!({
            "room": "r", "kind": "rejoin", "iat": iat, "exp": iat + 600,
            "private": true, "password_hash": "ab".repeat(32),
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &legacy,
            &EncodingKey::from_secret(config.rejoin_secret.as_bytes()),
        )
        .unwrap();
        let claims = verify(&config.rejoin_secret, &token, "r", TokenKind::Rejoin, NOW).unwrap();
        assert!(claims.legacy_password_hash.is_some());
        let creds = Credentials {
            rejoin_token: Some(&token),
            ..Credentials::default()
        };
        // Ordinary rules instead: this server wants a join token.
        assert_eq!(
            config.admit("r", &creds, NOW).unwrap_err().code,
            ErrorCode::TokenRequired
        );
        // And the field is never written into new tokens.
        let fresh = config
            .rejoin_token("r", false, None, &PeerId::from("abcdefghijkl"), NOW)
            .unwrap();
        let fresh = verify(&config.rejoin_secret, &fresh, "r", TokenKind::Rejoin, NOW).unwrap();
        assert_eq!(fresh.legacy_password_hash, None);
    }

    #[test]
    fn passwords() {
        let config = AccessConfig::default();
        let hash = password_hash("r", "hunter2").unwrap();
        // Argon2id, 32 bytes, salted per room, the same in every process.
        assert_eq!(hash.len(), 64);
        assert_eq!(Some(&hash), password_hash("r", "hunter2").as_ref());
        assert_ne!(Some(&hash), password_hash("s", "hunter2").as_ref());
        assert_ne!(Some(&hash), password_hash("r", "hunter3").as_ref());
        // Not the old single salted SHA-256.
        let sha = Sha256::new()
            .chain_update(b"huddle-room-password\0r\0hunter2")
            .finalize();
        assert_ne!(hash, hex::encode(sha));
        let admit = |pw: Option<&str>| {
            config
                .admit(
                    "r",
                    &Credentials {
                        password: pw,
                        ..Credentials::default()
                    },
                    NOW,
                )
                .unwrap()
        };
        assert!(config.check_password(None, &admit(None)).is_ok());
        assert!(
            config
                .check_password(Some(&hash), &admit(Some("hunter2")))
                .is_ok()
        );
        assert_eq!(
            config
                .check_password(Some(&hash), &admit(None))
                .unwrap_err()
                .code,
            ErrorCode::PasswordRequired
        );
        assert_eq!(
            config
                .check_password(Some(&hash), &admit(Some("hunter3")))
                .unwrap_err()
                .code,
            ErrorCode::WrongPassword
        );
        // Hashed ahead by the connection: the password leaves, its hash arrives, same outcome.
        let mut access = JoinAccess {
            password: Some("hunter2".into()),
            ..JoinAccess::default()
        };
        hash_join_password("R", &mut access);
        assert_eq!(access.password, None);
        assert_eq!(access.password_hash.as_deref(), Some(&*hash));
        let prehashed = config
            .admit(
                "r",
                &Credentials {
                    password_hash: access.password_hash.as_deref(),
                    ..Credentials::default()
                },
                NOW,
            )
            .unwrap();
        assert!(config.check_password(Some(&hash), &prehashed).is_ok());
        let long = "x".repeat(MAX_PASSWORD_BYTES + 1);
        // Too long to hash: left for the admission below to refuse.
        let mut too_long = JoinAccess {
            password: Some(long.clone()),
            ..JoinAccess::default()
        };
        hash_join_password("r", &mut too_long);
        assert_eq!(too_long.password.as_deref(), Some(&*long));
        let refused = config.admit(
            "r",
            &Credentials {
                password: Some(&long),
                ..Credentials::default()
            },
            NOW,
        );
        assert_eq!(refused.unwrap_err().code, ErrorCode::WrongPassword);
    }

    #[test]
    fn join_rate_counts_a_sliding_minute() {
        let mut rate = JoinRate::default();
        for i in 0..3 {
            assert!(rate.attempt(3, NOW + i * 1000).is_ok());
        }
        let refused = rate.attempt(3, NOW + 10_000).unwrap_err();
        assert_eq!(refused.code, ErrorCode::TooManyJoins);
        assert!(refused.message.contains("50 s"), "{}", refused.message);
        assert!(rate.attempt(3, NOW + 60_000).is_ok());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(mint(&Secret::random(), "r", TokenKind::Join, Duration::ZERO, NOW).is_err());
        assert!(Secret::new(Vec::new()).is_err());
    }
}

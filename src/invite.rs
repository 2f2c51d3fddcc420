//! Invite links: `huddle://HOST[:PORT]/ROOM[?token=T&tls=1]`. Double-clicking one (the desktop
//! entry registers Huddle for `huddle:` links) opens the app straight into the room. Plain data
//! and parsing; depends on `signaling::protocol` for the room-name rules.

use crate::signaling::protocol::validate_room_name;
use std::fmt;

pub const SCHEME: &str = "huddle://";
pub const DEFAULT_PORT: u16 = 8787;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invite {
    /// Host name, IPv4 address, or IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    pub room: String,
    /// A signed join token (private rooms, servers that require tokens).
    pub token: Option<String>,
    /// The server speaks `wss://`.
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("an invite link starts with huddle://")]
    Scheme,
    #[error("the link has no server address")]
    NoHost,
    #[error("the server address {0:?} is not valid")]
    BadHost(String),
    #[error("the port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("the link does not name a room")]
    NoRoom,
    #[error("the room name is not valid: {0}")]
    BadRoom(String),
    #[error("the link has a broken %-escape")]
    BadEscape,
}

fn percent_decode(s: &str) -> Result<String, InviteError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or(InviteError::BadEscape)?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| InviteError::BadEscape)
}

use crate::signaling::web::percent_encode;

fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl Invite {
    pub fn parse(link: &str) -> Result<Invite, InviteError> {
        let link = link.trim();
        let rest = link
            .get(..SCHEME.len())
            .filter(|s| s.eq_ignore_ascii_case(SCHEME))
            .map(|_| &link[SCHEME.len()..])
            .ok_or(InviteError::Scheme)?;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = before_query
            .split_once('/')
            .ok_or(if before_query.is_empty() {
                InviteError::NoHost
            } else {
                InviteError::NoRoom
            })?;
        if authority.is_empty() {
            return Err(InviteError::NoHost);
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| InviteError::BadHost(authority.into()))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(InviteError::BadHost(h.into()));
            }
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(InviteError::BadHost(authority.into())),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        if !valid_host(&host) {
            return Err(InviteError::BadHost(host));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| InviteError::BadPort(p.into()))?,
        };
        let room = percent_decode(path.trim_end_matches('/'))?;
        if room.is_empty() {
            return Err(InviteError::NoRoom);
        }
        let room = validate_room_name(&room).map_err(InviteError::BadRoom)?;
        let mut token = None;
        let mut tls = false;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "token" => token = Some(percent_decode(v)?),
                "tls" => tls = matches!(v, "1" | "true" | "yes"),
                _ => {} // unknown options from newer versions are ignored
            }
        }
        Ok(Invite {
            host,
            port,
            room,
            token,
            tls,
        })
    }

    /// The signaling server URL this invite points at.
    pub fn server_url(&self) -> String {
        let scheme = if self.tls { "wss" } else { "ws" };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// An invite for `room` on the server at `server_url` (`ws://` or `wss://`).
    pub fn for_server(server_url: &str, room: &str) -> Option<Invite> {
        let (tls, rest) = if let Some(r) = server_url.strip_prefix("wss://") {
            (true, r)
        } else {
            (false, server_url.strip_prefix("ws://")?)
        };
        let authority = rest.split('/').next()?;
        Invite::parse(&format!("{SCHEME}{authority}/{}", percent_encode(room)))
            .ok()
            .map(|i| Invite { tls, ..i })
    }
}

impl Invite {
    /// The same room's page for a guest with only a browser, on the same server and port:
    /// `https://HOST:PORT/ROOM` (`http://` when the server speaks plain `ws://`), carrying the
    /// join token if the invite has one.
    pub fn guest_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let mut url = format!(
            "{scheme}://{host}:{}/{}",
            self.port,
            percent_encode(&self.room)
        );
        if let Some(token) = &self.token {
            url.push_str("?token=");
            url.push_str(&percent_encode(token));
        }
        url
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "{SCHEME}{host}:{}/{}",
            self.port,
            percent_encode(&self.room)
        )?;
        let mut sep = '?';
        if let Some(t) = &self.token {
            write!(f, "{sep}token={}", percent_encode(t))?;
            sep = '&';
        }
        if self.tls {
            write!(f, "{sep}tls=1")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_links() {
        let i = Invite::parse("huddle://meet.example.org:9000/Design%20review").unwrap();
        assert_eq!(
            (i.host.as_str(), i.port, i.room.as_str(), i.tls),
            ("meet.example.org", 9000, "Design review", false)
        );
        assert_eq!(i.server_url(), "ws://meet.example.org:9000");
        assert_eq!(
            i.to_string(),
            "huddle://meet.example.org:9000/Design%20review"
        );
        let i = Invite::parse("HUDDLE://10.0.0.5/standup/").unwrap();
        assert_eq!((i.port, i.room.as_str()), (DEFAULT_PORT, "standup"));
        let i = Invite::parse("huddle://[::1]:8787/r?token=abc.def&tls=1&future=x").unwrap();
        assert_eq!(i.host, "::1");
        assert_eq!(i.token.as_deref(), Some("abc.def"));
        assert_eq!(i.server_url(), "wss://[::1]:8787");
        assert_eq!(Invite::parse(&i.to_string()).unwrap(), i);
        let made = Invite::for_server("ws://192.168.1.20:8787", "Team sync").unwrap();
        assert_eq!(made.to_string(), "huddle://192.168.1.20:8787/Team%20sync");
    }

    #[test]
    fn guest_links_point_at_the_same_server_over_http() {
        let lan = Invite::for_server("ws://192.168.1.20:8787", "Team sync").unwrap();
        assert_eq!(lan.guest_url(), "http://192.168.1.20:8787/Team%20sync");
        let i = Invite::parse("huddle://[::1]:443/r?token=abc.def&tls=1").unwrap();
        assert_eq!(i.guest_url(), "https://[::1]:443/r?token=abc.def");
    }

    #[test]
    fn malformed_links_say_what_is_wrong() {
        let cases = [
            ("http://x/r", InviteError::Scheme),
            ("huddle://", InviteError::NoHost),
            ("huddle:///room", InviteError::NoHost),
            ("huddle://host", InviteError::NoRoom),
            ("huddle://host/", InviteError::NoRoom),
            (
                "huddle://host:99999/r",
                InviteError::BadPort("99999".into()),
            ),
            ("huddle://host:0/r", InviteError::BadPort("0".into())),
            (
                "huddle://bad_host!/r",
                InviteError::BadHost("bad_host!".into()),
            ),
            ("huddle://[zz]/r", InviteError::BadHost("zz".into())),
            ("huddle://host/%zz", InviteError::BadEscape),
        ];
        for (link, expected) in cases {
            assert_eq!(Invite::parse(link), Err(expected), "{link}");
        }
        assert!(matches!(
            Invite::parse("huddle://host/..%2F..%2Fetc"),
            Err(InviteError::BadRoom(_))
        ));
        assert!(matches!(
            Invite::parse(&format!("huddle://host/{}", "r".repeat(70))),
            Err(InviteError::BadRoom(_))
        ));
    }
}

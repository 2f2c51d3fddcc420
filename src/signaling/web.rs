//! The guest page's HTTP side of the signaling port: reads a request head, tells a WebSocket
//! upgrade from a page request, and answers page requests with the HTML, CSS and JavaScript
//! bundled in the binary (`assets/web/`). No I/O beyond the one connection it is handed; depends
//! on nothing else in the crate.
//!
//! Routes: `/` picks a room, `/ROOM` is the call page for that room (the script reads the room
//! from the path and `?name=` from the query), `/_/FILE` the bundled files. Room names cannot
//! contain `/`, so `/_/` never shadows a room.

use bytes::{Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A request head larger than this is refused: browsers send a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

/// One file of the page, as served.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const PAGE_HTML: &[u8] = include_bytes!("../../assets/web/index.html");
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// A file of `assets/web/`, served at `/_/FILE`.
macro_rules! web_asset {
    ($file:literal, $content_type:expr) => {
        Asset {
            path: concat!("/_/", $file),
            content_type: $content_type,
            body: include_bytes!(concat!("../../assets/web/", $file)),
        }
    };
}

const ASSETS: &[Asset] = &[
    web_asset!("huddle.css", "text/css; charset=utf-8"),
    web_asset!("app.js", JAVASCRIPT),
    web_asset!("room.js", JAVASCRIPT),
    web_asset!("files.js", JAVASCRIPT),
    web_asset!("sha256.js", JAVASCRIPT),
    Asset {
        path: "/_/icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../assets/icon.svg"),
    },
];

/// What a connection's first request asks for.
#[derive(Debug)]
pub enum Request {
    /// A WebSocket upgrade: hand the connection (with the bytes already read) to the handshake.
    Upgrade,
    /// A page or file: answer with this response and close.
    Page(Response),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    pub body: Bytes,
    /// `HEAD`: send the headers only.
    pub head_only: bool,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("reading the request: {0}")]
    Io(#[from] io::Error),
    #[error("the connection closed before a whole request head arrived")]
    Truncated,
    #[error("no request head within {0:?}")]
    Timeout(Duration),
}

/// Reads one request head (through the blank line) from `stream`. Returns the bytes read, which
/// may run past the head, for [`Rewound`].
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    within: Duration,
) -> Result<BytesMut, WebError> {
    let read = async {
        let mut buf = BytesMut::with_capacity(1024);
        // Where the blank line could start, so a head trickled a byte at a time is scanned
        // once, not once per read.
        let mut scanned = 0;
        loop {
            if head_end(&buf[scanned..]).is_some() || buf.len() >= MAX_HEAD {
                return Ok(buf);
            }
            scanned = buf.len().saturating_sub(3);
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(WebError::Truncated);
            }
        }
    };
    tokio::time::timeout(within, read)
        .await
        .map_err(|_| WebError::Timeout(within))?
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Decides what a request head asks for. Anything that is not a well-formed GET or HEAD of a
/// known route gets an error page, never a panic.
pub fn route(head: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Request::Page(error(431, "Request Header Fields Too Large"));
        }
        Err(_) => return Request::Page(error(400, "Bad Request")),
    }
    let is_upgrade = request.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("upgrade")
            && std::str::from_utf8(h.value)
                .is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
    });
    if is_upgrade {
        return Request::Upgrade;
    }
    let head_only = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => {
            let mut refusal = error(405, "Method Not Allowed");
            refusal.allow = Some("GET, HEAD");
            return Request::Page(refusal);
        }
    };
    let path = request.path.unwrap_or("/");
    let path = path.split(['?', '#']).next().unwrap_or("/");
    let mut response = if let Some(asset) = ASSETS.iter().find(|a| a.path == path) {
        ok(asset.content_type, asset.body)
    } else if path == "/favicon.ico" {
        ok("image/svg+xml", include_bytes!("../../assets/icon.svg"))
    } else if path.starts_with("/_/") || path.matches('/').count() != 1 {
        error(404, "Not Found")
    } else {
        // `/` and `/ROOM`: one page; the script reads the path. The room name is checked by the
        // server when the page joins, so a bad one gets the same error a native client sees.
        ok("text/html; charset=utf-8", PAGE_HTML)
    };
    response.head_only = head_only;
    Request::Page(response)
}

fn ok(content_type: &'static str, body: &'static [u8]) -> Response {
    Response {
        status: 200,
        reason: "OK",
        content_type,
        body: Bytes::from_static(body),
        head_only: false,
        allow: None,
    }
}

fn error(status: u16, reason: &'static str) -> Response {
    Response {
        status,
        reason,
        content_type: "text/plain; charset=utf-8",
        body: Bytes::from(format!("{status} {reason}\n")),
        head_only: false,
        allow: None,
    }
}

/// Only the page's own files: no inline script, no other site, no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     img-src 'self' data: blob:; media-src 'self' blob: mediastream:; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
             Referrer-Policy: no-referrer\r\nContent-Security-Policy: {}\r\n\
             Connection: close\r\n{}\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            CONTENT_SECURITY_POLICY,
            self.allow
                .map(|a| format!("Allow: {a}\r\n"))
                .unwrap_or_default(),
        );
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// Writes the response and closes the write side.
    pub async fn send<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> io::Result<()> {
        stream.write_all(&self.encode()).await?;
        stream.shutdown().await
    }
}

/// The `error` response for a refused connection (server full, too many from one address).
pub fn unavailable(message: &str) -> Response {
    Response {
        status: 503,
        reason: "Service Unavailable",
        content_type: "text/plain; charset=utf-8",
        body: Bytes::from(format!("{message}\n")),
        head_only: false,
        allow: None,
    }
}

/// The page's own origin is allowed to open the WebSocket, but only where the `Host` header can
/// be trusted to name this server: behind TLS (a rebinding attacker's name fails the
/// certificate) or when it is an IP address or `localhost` (no DNS to rebind). A page served
/// under any other plain-HTTP name must be listed with `--allowed-origin`.
pub fn is_own_origin(origin: &str, host: Option<&str>, tls: bool) -> bool {
    let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    let origin = origin.trim_end_matches('/');
    let Some(origin_host) = origin
        .strip_prefix(scheme)
        .and_then(|rest| rest.strip_prefix("://"))
    else {
        return false;
    };
    if !origin_host.eq_ignore_ascii_case(host) {
        return false;
    }
    tls || host_is_literal(host)
}

/// `127.0.0.1:8787`, `[::1]:8787`, `localhost:8787`, `192.168.1.5` (no port).
fn host_is_literal(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => return ip.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Escapes everything but unreserved characters (RFC 3986), for a room name in a path or a
/// token in a query.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A stream that first yields bytes already read from it, then reads on: the WebSocket
/// handshake reads the request head again from the start.
pub struct Rewound<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewound { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(head: &str) -> Response {
        match route(head.as_bytes()) {
            Request::Page(r) => r,
            Request::Upgrade => panic!("not a page: {head}"),
        }
    }

    #[test]
    fn routes_pages_files_and_upgrades() {
        let lobby = page("GET / HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n\r\n");
        assert_eq!(
            (lobby.status, lobby.content_type),
            (200, "text/html; charset=utf-8")
        );
        let room = page("GET /Design%20review?name=Ann HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            room.body, lobby.body,
            "one page for the lobby and every room"
        );
        let js = page("GET /_/app.js HTTP/1.1\r\n\r\n");
        assert_eq!(js.content_type, "text/javascript; charset=utf-8");
        assert!(!js.body.is_empty());
        assert_eq!(page("GET /_/nope.js HTTP/1.1\r\n\r\n").status, 404);
        assert_eq!(page("GET /a/b HTTP/1.1\r\n\r\n").status, 404);
        let post = page("POST / HTTP/1.1\r\n\r\n");
        assert_eq!(post.status, 405);
        assert!(
            String::from_utf8(post.encode())
                .unwrap()
                .contains("Allow: GET, HEAD\r\n")
        );
        assert_eq!(page("garbage\r\n\r\n").status, 400);
        let head = page("HEAD /_/huddle.css HTTP/1.1\r\n\r\n");
        let wire = String::from_utf8(head.encode()).unwrap();
        assert!(wire.ends_with("\r\n\r\n"), "HEAD sends no body");
        assert!(wire.contains(&format!("Content-Length: {}", head.body.len())));
        let upgrade =
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(matches!(route(upgrade.as_bytes()), Request::Upgrade));
    }

    #[test]
    fn own_origin_only_where_the_host_can_be_trusted() {
        assert!(is_own_origin(
            "http://127.0.0.1:8787",
            Some("127.0.0.1:8787"),
            false
        ));
        assert!(is_own_origin(
            "http://localhost:8787/",
            Some("LOCALHOST:8787"),
            false
        ));
        assert!(is_own_origin(
            "http://[::1]:8787",
            Some("[::1]:8787"),
            false
        ));
        assert!(is_own_origin(
            "http://192.168.1.5",
            Some("192.168.1.5"),
            false
        ));
        assert!(is_own_origin(
            "https://chat.example.org",
            Some("chat.example.org"),
            true
        ));
        // A plain-HTTP DNS name could be rebound to this server by another site.
        assert!(!is_own_origin(
            "http://evil.example:8787",
            Some("evil.example:8787"),
            false
        ));
        // Another page, another port, another scheme, no Host.
        assert!(!is_own_origin(
            "http://127.0.0.1:9999",
            Some("127.0.0.1:8787"),
            false
        ));
        assert!(!is_own_origin(
            "http://chat.example.org",
            Some("chat.example.org"),
            true
        ));
        assert!(!is_own_origin(
            "https://127.0.0.1:8787",
            Some("127.0.0.1:8787"),
            false
        ));
        assert!(!is_own_origin("http://127.0.0.1:8787", None, false));
        assert!(!is_own_origin("null", Some("127.0.0.1:8787"), false));
    }

    #[tokio::test]
    async fn a_rewound_stream_replays_what_was_read() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\nafter")
            .await
            .unwrap();
        drop(client);
        let head = read_head(&mut server, Duration::from_secs(1))
            .await
            .unwrap();
        let mut again = Rewound::new(head.freeze(), server);
        let mut all = String::new();
        again.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET / HTTP/1.1\r\n\r\nafter");
    }

    #[tokio::test]
    async fn a_head_that_never_ends_is_an_error() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        drop(client);
        assert!(matches!(
            read_head(&mut server, Duration::from_secs(1)).await,
            Err(WebError::Truncated)
        ));
    }
}

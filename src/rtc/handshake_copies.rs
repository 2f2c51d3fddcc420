//! The runtime Huddle's peer connections run on: webrtc's Tokio runtime, except that every
//! DTLS handshake datagram is sent twice, and sockets get a larger receive buffer. Owns nothing
//! but that socket wrapper; imports only webrtc's runtime traits (and libc for the buffer).
//!
//! The buffer: a screen share's keyframe is a few hundred kilobytes sent in one burst; the
//! default 208 KiB receive buffer overflowed with it even on loopback (115 of ~300 packets lost
//! in one run), and its retransmissions then waited on the bandwidth estimate.
//!
//! Why: a DTLS handshake takes about eight datagrams, and rtc-dtls 0.21 re-sends a lost flight
//! only after a fixed 1 s, with no setting to shorten it. At 5 % random loss about a third of
//! handshakes lost a datagram, so a third of calls showed their first picture a second late.
//! Sent twice, a handshake datagram is lost only if both copies are (0.25 % at 5 % loss). The
//! copy costs nothing at the far end: both copies carry the same record sequence number, so the
//! receiver's DTLS replay window drops whichever arrives second before the handshake sees it.
//! Only handshake and change-cipher-spec records are copied (the first record's content type,
//! RFC 7983 demultiplexing); media, SCTP data, STUN and TURN-wrapped datagrams go out once.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Receive buffer asked for; the kernel caps it at `net.core.rmem_max`.
const RECEIVE_BUFFER_BYTES: libc::c_int = 4 << 20;

/// Best effort: a socket whose buffer cannot grow still works.
fn enlarge_receive_buffer(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let size = RECEIVE_BUFFER_BYTES;
    // SAFETY: setsockopt on a socket we borrow, with a pointer to a live c_int of the size given.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "cannot enlarge the UDP receive buffer");
    }
}

/// DTLS content types (RFC 6347): change_cipher_spec and handshake.
const CHANGE_CIPHER_SPEC: u8 = 20;
const HANDSHAKE: u8 = 22;
/// A DTLS record header: type, version (2), epoch (2), sequence number (6), length (2).
const RECORD_HEADER_BYTES: usize = 13;

/// Whether a datagram carries a DTLS handshake flight (its first record is a handshake or
/// change-cipher-spec record of a DTLS 1.x version).
pub fn is_dtls_handshake(datagram: &[u8]) -> bool {
    datagram.len() >= RECORD_HEADER_BYTES
        && matches!(datagram[0], HANDSHAKE | CHANGE_CIPHER_SPEC)
        && datagram[1] == 0xfe
}

/// Tokio's runtime with handshake-copying UDP sockets. `copies_sent` counts the extra copies.
#[derive(Debug)]
pub struct HandshakeCopyRuntime {
    inner: TokioRuntime,
    copies_sent: Arc<AtomicU64>,
}

impl HandshakeCopyRuntime {
    pub fn new() -> Self {
        HandshakeCopyRuntime {
            inner: TokioRuntime,
            copies_sent: Arc::default(),
        }
    }

    /// Extra handshake datagrams sent so far through this runtime's sockets.
    pub fn copies_sent(&self) -> u64 {
        self.copies_sent.load(Ordering::Relaxed)
    }
}

impl Default for HandshakeCopyRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl Runtime for HandshakeCopyRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        enlarge_receive_buffer(&socket);
        Ok(Arc::new(HandshakeCopySocket {
            inner: self.inner.wrap_udp_socket(socket)?,
            copies_sent: Arc::clone(&self.copies_sent),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio, handshake datagrams sent twice"
    }
}

struct HandshakeCopySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    copies_sent: Arc<AtomicU64>,
}

impl fmt::Debug for HandshakeCopySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeCopySocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncUdpSocket for HandshakeCopySocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        let sent = self.inner.poll_send(cx, transmit);
        if matches!(sent, Poll::Ready(Ok(_)))
            && transmit.segment_size.is_none()
            && is_dtls_handshake(transmit.contents)
        {
            // The copy is best effort: a full socket buffer skips it, and polling with a no-op
            // waker keeps a skipped copy from waking the driver later for nothing.
            let mut no_wake = Context::from_waker(Waker::noop());
            if let Poll::Ready(Ok(_)) = self.inner.poll_send(&mut no_wake, transmit) {
                self.copies_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(content_type: u8) -> Vec<u8> {
        let mut r = vec![content_type, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 1, 0, 4];
        r.extend_from_slice(&[1, 2, 3, 4]);
        r
    }

    #[test]
    fn only_handshake_and_change_cipher_spec_records_count_as_handshake() {
        assert!(is_dtls_handshake(&record(HANDSHAKE)));
        assert!(is_dtls_handshake(&record(CHANGE_CIPHER_SPEC)));
        // Application data (SCTP), alerts, RTP/RTCP (first byte 128-191), STUN (0-3), TURN
        // channel data (64-79), and anything too short to be a record.
        for other in [23u8, 21, 0x80, 0x90, 0x00, 0x01, 0x40] {
            assert!(!is_dtls_handshake(&record(other)), "{other}");
        }
        assert!(!is_dtls_handshake(&record(HANDSHAKE)[..12]));
        let mut not_dtls_version = record(HANDSHAKE);
        not_dtls_version[1] = 0x03;
        assert!(!is_dtls_handshake(&not_dtls_version));
    }

    #[tokio::test]
    async fn handshake_datagrams_arrive_twice_and_everything_else_once() {
        let runtime = HandshakeCopyRuntime::new();
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        bound.set_nonblocking(true).unwrap();
        let sender = runtime.wrap_udp_socket(bound).unwrap();
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = receiver.local_addr().unwrap();
        let handshake = record(HANDSHAKE);
        let data = record(23);
        let rtp = [0x80u8, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        for datagram in [&handshake[..], &data, &rtp] {
            sender.send_to(datagram, to).await.unwrap();
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            let (n, _) = tokio::time::timeout(Duration::from_secs(5), receiver.recv_from(&mut buf))
                .await
                .expect("a datagram within 5 s")
                .unwrap();
            got.push(buf[..n].to_vec());
        }
        assert_eq!(
            got,
            vec![handshake.clone(), handshake, data, rtp.to_vec()],
            "the handshake copy follows its original at once"
        );
        assert_eq!(runtime.copies_sent(), 1);
        // Nothing more is on its way: a fifth datagram sent now is the next one received.
        sender.send_to(&rtp, to).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), receiver.recv_from(&mut buf))
            .await
            .expect("a datagram within 5 s")
            .unwrap();
        assert_eq!(&buf[..n], &rtp);
    }
}

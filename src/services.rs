//! What the desktop app needs besides the call engine, in one place: the signaling server it
//! hosts (on loopback, or offered to the local network and announced there), rooms found on the
//! local network, the device choices the settings offer, and the media types that appear in the
//! engine's commands and events. `ui` imports `engine` and this module, never `media`,
//! `signaling` or `lan` directly. May import `signaling`, `lan`, `media`, `notify`, `procstat`
//! and `settings`.

use crate::settings::{self, Settings};
use tokio::sync::mpsc;

pub use crate::lan::LanRoom;
pub use crate::media::apm::ProcessingSettings;
pub use crate::media::audio::{AudioSink, NullSink, ToneSource};
pub use crate::media::camera::CameraState;
pub use crate::media::devices::{self, MicChoice, SpeakerChoice};
pub use crate::media::frame::RgbaFrame;
pub use crate::media::now_us;
pub use crate::media::video::RemoteVideo;
pub use crate::notify::{Notification, Notifier};
pub use crate::procstat::process_age;
/// The server's rules for nicknames, so the lobby can say what is wrong before asking it.
pub use crate::signaling::protocol::validate_nickname;

/// The signaling server built into the app; it stops when this is dropped.
pub struct EmbeddedServer {
    server: crate::signaling::ServerHandle,
}

impl EmbeddedServer {
    /// Where it listens (`ws://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Stops it and waits until it has.
    pub async fn shutdown(self) {
        self.server.shutdown().await
    }
}

/// With no server configured, starts the signaling server built into the app on loopback
/// (`port`, normally 8787). If that port is taken (another Huddle already serves there), that
/// server is used. Returns the server (if we started one) and the URL to use, or nothing when
/// a server is configured.
pub fn start_embedded_server(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    port: u16,
) -> (Option<EmbeddedServer>, Option<String>) {
    if settings.server != settings::EMBEDDED_SERVER {
        return (None, None);
    }
    let config = crate::signaling::ServerConfig {
        bind: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        ..Default::default()
    };
    match runtime.block_on(crate::signaling::server::start(config)) {
        Ok(server) => {
            let url = server.url();
            (Some(EmbeddedServer { server }), Some(url))
        }
        Err(e) => {
            tracing::info!(error = %e, "port {port} busy; using the server already there");
            (None, Some(format!("ws://127.0.0.1:{port}")))
        }
    }
}

/// The server built into the app, offered to the local network and announced there; both stop
/// when this is dropped.
pub struct Hosting {
    /// The invite base others can use (`ws://192.168.1.20:8787`).
    pub lan_url: String,
    /// The same server as this machine reaches it.
    pub local_url: String,
    _server: crate::signaling::ServerHandle,
    _announcer: crate::lan::Announcing,
}

/// The machine's address on the network its default route uses (no packet is sent).
pub fn lan_address() -> Option<std::net::IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// Starts a second built-in server on all interfaces (port 8787, else any) and announces it.
pub async fn start_lan_hosting(name: &str) -> Result<Hosting, String> {
    let ip = lan_address().ok_or("this machine has no network address")?;
    let mut config = crate::signaling::ServerConfig {
        bind: std::net::SocketAddr::from(([0, 0, 0, 0], 8787)),
        ..Default::default()
    };
    let server = match crate::signaling::server::start(config.clone()).await {
        Ok(s) => s,
        Err(_) => {
            config.bind = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
            crate::signaling::server::start(config)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let port = server.local_addr().port();
    let announcer = crate::lan::announce_server(name, &format!("ws://127.0.0.1:{port}"), port)
        .map_err(|e| e.to_string())?;
    Ok(Hosting {
        lan_url: format!("ws://{ip}:{port}"),
        local_url: format!("ws://127.0.0.1:{port}"),
        _server: server,
        _announcer: announcer,
    })
}

/// Rooms announced on the local network, as a stream of whole lists (call inside the runtime).
pub fn browse_lan() -> Result<mpsc::Receiver<Vec<LanRoom>>, crate::lan::LanError> {
    crate::lan::browse()
}

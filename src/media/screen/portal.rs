//! Screen capture through the desktop portal (`org.freedesktop.portal.ScreenCast`) and PipeWire:
//! how a Wayland session shares its screen. The compositor's own dialog chooses what is shared;
//! the portal hands back a PipeWire node, whose pictures PipeWire's thread copies into a
//! latest-picture slot and the share's capture thread converts. The portal's restore token is
//! kept for the life of the process, so a second share does not ask again. Depends on the rest of
//! `media::screen`.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use ashpd::desktop::PersistMode;
use ashpd::desktop::screencast::{CursorMode, Screencast, SelectSourcesOptions, SourceType};
use pipewire as pw;
use pw::spa;

use super::{Channels, I420Frame, I420Scaler, MediaError, ScreenCapturer, fit, packed_to_i420};
use crate::media::slot::LatestSlot;

/// How long PipeWire may take to deliver the first picture once the portal said yes.
const FIRST_PICTURE_TIMEOUT: Duration = Duration::from_secs(10);

/// The restore token of this process's last share: the portal uses it to share the same source
/// again without asking (for as long as this process's connection to it lasts).
static RESTORE_TOKEN: Mutex<Option<String>> = Mutex::new(None);

/// Where red, green and blue sit in a PipeWire format we read.
fn channels_of(format: spa::param::video::VideoFormat) -> Option<Channels> {
    use spa::param::video::VideoFormat as F;
    match format {
        F::BGRx | F::BGRA => Some(Channels::BGRX),
        F::RGBx | F::RGBA => Some(Channels::RGBX),
        F::xRGB | F::ARGB => Some(Channels {
            red: 1,
            green: 2,
            blue: 3,
        }),
        F::xBGR | F::ABGR => Some(Channels {
            red: 3,
            green: 2,
            blue: 1,
        }),
        _ => None,
    }
}

/// One picture as PipeWire delivered it.
struct RawPicture {
    bytes: Vec<u8>,
    width: usize,
    height: usize,
    stride: usize,
    channels: Channels,
}

/// What the PipeWire thread and the capture thread share.
#[derive(Default)]
struct Shared {
    pictures: LatestSlot<RawPicture>,
    /// Why the stream stopped delivering, once it has.
    ended: Mutex<Option<String>>,
}

impl Shared {
    fn end(&self, why: String) {
        if let Ok(mut ended) = self.ended.lock() {
            ended.get_or_insert(why);
        }
    }

    fn ended(&self) -> Option<String> {
        self.ended.lock().ok().and_then(|e| e.clone())
    }
}

/// A screen or window shared through the desktop portal.
pub(super) struct PortalCapturer {
    shared: Arc<Shared>,
    last: Option<I420Frame>,
    scaler: I420Scaler,
    /// Declared before `session`: the stream stops before the portal session closes.
    pipewire: PipeWireThread,
    _session: PortalSession,
}

impl PortalCapturer {
    /// Asks the portal on `bus` (`None`: the session bus) for a screen or window, shows the
    /// system's dialog unless a restore token from an earlier share answers it, and waits for the
    /// first picture. Blocking, for as long as the user takes in the dialog.
    pub fn open(bus: Option<&str>) -> Result<PortalCapturer, MediaError> {
        let shared = Arc::new(Shared::default());
        let (session, fd) = PortalSession::start(bus, shared.clone())?;
        let pipewire = PipeWireThread::start(fd, session.node, shared.clone())?;
        let Some(first) = shared.pictures.take_timeout(FIRST_PICTURE_TIMEOUT) else {
            let why = shared.ended().unwrap_or_else(|| {
                format!(
                    "no picture from the portal's PipeWire stream (node {}) in {} s",
                    session.node,
                    FIRST_PICTURE_TIMEOUT.as_secs()
                )
            });
            return Err(source_error(&why));
        };
        tracing::info!(
            node = session.node,
            width = first.width,
            height = first.height,
            "desktop portal screen capture opened"
        );
        let mut capturer = PortalCapturer {
            shared,
            last: None,
            scaler: I420Scaler::default(),
            pipewire,
            _session: session,
        };
        capturer.last = Some(capturer.convert(&first)?);
        Ok(capturer)
    }

    fn convert(&mut self, picture: &RawPicture) -> Result<I420Frame, MediaError> {
        let frame = packed_to_i420(
            &picture.bytes,
            picture.width & !1,
            picture.height & !1,
            picture.stride,
            picture.channels,
        );
        fit(frame, &mut self.scaler)
    }
}

impl ScreenCapturer for PortalCapturer {
    fn capture(&mut self, capture_us: u64) -> Result<I420Frame, MediaError> {
        if let Some(why) = self.shared.ended() {
            return Err(source_error(&why));
        }
        // A compositor sends a picture only when something changed: no new picture means the
        // screen still shows the last one.
        if let Some(picture) = self.shared.pictures.take() {
            self.last = Some(self.convert(&picture)?);
        }
        let mut frame = self
            .last
            .clone()
            .ok_or_else(|| source_error("no picture yet"))?;
        frame.capture_us = capture_us;
        Ok(frame)
    }
}

impl Drop for PortalCapturer {
    fn drop(&mut self) {
        self.pipewire.stop();
    }
}

fn source_error(why: &str) -> MediaError {
    MediaError::Source(format!("screen capture (desktop portal): {why}"))
}

/// What went wrong talking to the portal, in words that say what to do.
fn portal_error(stage: &str, error: ashpd::Error) -> MediaError {
    use ashpd::desktop::ResponseError;
    let text = error.to_string();
    let missing = matches!(error, ashpd::Error::PortalNotFound(_))
        || [
            "ServiceUnknown",
            "UnknownMethod",
            "UnknownInterface",
            "UnknownObject",
            // How the bus words ServiceUnknown when nothing can be started for the name.
            "not provided by any .service files",
        ]
        .iter()
        .any(|name| text.contains(name));
    let why = match error {
        _ if missing => format!(
            "no ScreenCast desktop portal is running ({stage}: {text}). On Wayland, screen \
             sharing needs xdg-desktop-portal and the backend for your desktop \
             (xdg-desktop-portal-gnome, -kde or -wlr)"
        ),
        ashpd::Error::Response(ResponseError::Cancelled) => {
            "the share was cancelled in the system's dialog".to_owned()
        }
        ashpd::Error::Response(ResponseError::Other) => format!(
            "the desktop portal could not {stage} (its backend for this desktop failed; its log \
             says why)"
        ),
        _ => format!("{stage}: {text}"),
    };
    source_error(&why)
}

/// What the portal answered: the PipeWire node to read and a connection that may read it.
struct Granted {
    node: u32,
    fd: OwnedFd,
}

/// The portal session, kept open on its own thread for as long as the share lasts: closing it
/// ends the compositor's cast.
struct PortalSession {
    node: u32,
    close: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PortalSession {
    /// Asks the portal on `bus`; returns the session and the PipeWire connection it granted.
    /// When the system later ends the share, says so in `shared`.
    fn start(
        bus: Option<&str>,
        shared: Arc<Shared>,
    ) -> Result<(PortalSession, OwnedFd), MediaError> {
        let bus = bus.map(str::to_owned);
        let (granted_tx, granted_rx) = mpsc::sync_channel(1);
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("screen-portal".into())
            .spawn(move || run_session(bus, granted_tx, close_rx, shared))
            .map_err(|e| MediaError::Thread(e.to_string()))?;
        let granted = granted_rx
            .recv()
            .map_err(|_| source_error("the portal thread stopped"))
            .and_then(|granted| granted);
        let granted = match granted {
            Ok(granted) => granted,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        let session = PortalSession {
            node: granted.node,
            close: Some(close_tx),
            thread: Some(thread),
        };
        Ok((session, granted.fd))
    }
}

impl Drop for PortalSession {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread, which closes the session.
        self.close.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The portal thread: asks for a source, hands back what was granted, then holds the session
/// until `close` is dropped, or the system closes it (the user stopped the share from the
/// desktop's own indicator).
fn run_session(
    bus: Option<String>,
    granted: mpsc::SyncSender<Result<Granted, MediaError>>,
    close: tokio::sync::oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = granted.send(Err(MediaError::Thread(e.to_string())));
            return;
        }
    };
    // The proxy is kept beside the session for as long as the share lasts.
    let (_proxy, session, answer) = match runtime.block_on(ask(bus.as_deref())) {
        Ok(opened) => opened,
        Err(e) => {
            let _ = granted.send(Err(e));
            return;
        }
    };
    if granted.send(Ok(answer)).is_err() {
        return;
    }
    runtime.block_on(async {
        use futures_util::StreamExt;
        match session.receive_closed().await {
            Ok(mut closed) => {
                tokio::select! {
                    // The capturer was dropped (its sender went away).
                    _ = close => {
                        if let Err(e) = session.close().await {
                            tracing::debug!(error = %e, "closing the portal session");
                        }
                    }
                    Some(_) = closed.next() => {
                        shared.end("the share was ended by the system".to_owned());
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch the portal session");
                let _ = close.await;
                let _ = session.close().await;
            }
        }
    });
}

type OpenSession = (Screencast, ashpd::desktop::Session<Screencast>, Granted);

/// The D-Bus connection for `bus`, opened once per process: the portal keeps an application's
/// restore data for as long as its connection lasts, so each share needs the same one.
async fn connection(bus: Option<&str>) -> Result<ashpd::zbus::Connection, MediaError> {
    static OPEN: Mutex<Vec<(Option<String>, ashpd::zbus::Connection)>> = Mutex::new(Vec::new());
    let key = bus.map(str::to_owned);
    if let Some((_, open)) = OPEN
        .lock()
        .ok()
        .and_then(|open| open.iter().find(|(k, _)| *k == key).cloned())
    {
        return Ok(open);
    }
    let connection = match bus {
        Some(address) => {
            ashpd::zbus::connection::Builder::address(address)
                .map_err(|e| source_error(&format!("D-Bus address {address:?}: {e}")))?
                .build()
                .await
        }
        None => ashpd::zbus::Connection::session().await,
    }
    .map_err(|e| {
        source_error(&format!(
            "no D-Bus session bus ({e}); on Wayland, screen sharing needs the desktop portal on \
             the session bus"
        ))
    })?;
    if let Ok(mut open) = OPEN.lock() {
        open.push((key, connection.clone()));
    }
    Ok(connection)
}

/// The portal's question and answer: create a session, choose what to share (the dialog), start
/// it and open the PipeWire connection.
async fn ask(bus: Option<&str>) -> Result<OpenSession, MediaError> {
    let connection = connection(bus).await?;
    let proxy = Screencast::with_connection(connection)
        .await
        .map_err(|e| portal_error("open the ScreenCast portal", e))?;
    let session = proxy
        .create_session(Default::default())
        .await
        .map_err(|e| portal_error("create a session", e))?;
    let offered = proxy
        .available_source_types()
        .await
        .map_err(|e| portal_error("read the source types", e))?;
    let wanted = offered & (SourceType::Monitor | SourceType::Window);
    let cursor = match proxy.available_cursor_modes().await {
        Ok(modes) if modes.contains(CursorMode::Embedded) => CursorMode::Embedded,
        _ => CursorMode::Hidden,
    };
    let token = RESTORE_TOKEN.lock().ok().and_then(|t| t.clone());
    proxy
        .select_sources(
            &session,
            SelectSourcesOptions::default()
                .set_cursor_mode(cursor)
                .set_sources(if wanted.is_empty() { offered } else { wanted })
                .set_multiple(false)
                .set_restore_token(token.as_deref())
                .set_persist_mode(PersistMode::Application),
        )
        .await
        .map_err(|e| portal_error("choose what to share", e))?
        .response()
        .map_err(|e| portal_error("choose what to share", e))?;
    let streams = proxy
        .start(&session, None, Default::default())
        .await
        .map_err(|e| portal_error("start the share", e))?
        .response()
        .map_err(|e| portal_error("start the share", e))?;
    if let Ok(mut kept) = RESTORE_TOKEN.lock() {
        *kept = streams.restore_token().map(str::to_owned);
    }
    let Some(stream) = streams.streams().first() else {
        return Err(source_error("the portal started a share with no stream"));
    };
    let node = stream.pipe_wire_node_id();
    let fd = proxy
        .open_pipe_wire_remote(&session, Default::default())
        .await
        .map_err(|e| portal_error("open the PipeWire connection", e))?;
    tracing::info!(node, size = ?stream.size(), "desktop portal granted a screen share");
    Ok((proxy, session, Granted { node, fd }))
}

/// PipeWire's main loop on its own thread, reading one node into the shared slot.
struct PipeWireThread {
    quit: Option<pw::channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl PipeWireThread {
    fn start(fd: OwnedFd, node: u32, shared: Arc<Shared>) -> Result<PipeWireThread, MediaError> {
        let (quit_tx, quit_rx) = pw::channel::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("screen-pipewire".into())
            .spawn(move || {
                if let Err(e) = read_node(fd, node, &shared, quit_rx) {
                    shared.end(e);
                }
            })
            .map_err(|e| MediaError::Thread(e.to_string()))?;
        Ok(PipeWireThread {
            quit: Some(quit_tx),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(quit) = self.quit.take() {
            // Fails only when the loop has already ended.
            let _ = quit.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects to PipeWire through `fd`, reads `node` until told to quit, and puts each picture in
/// `shared`. Returns why it could not, when it could not.
fn read_node(
    fd: OwnedFd,
    node: u32,
    shared: &Arc<Shared>,
    quit: pw::channel::Receiver<()>,
) -> Result<(), String> {
    let fail = |what: &str, e: pw::Error| format!("PipeWire: {what}: {e}");
    pw::init();
    let main_loop = pw::main_loop::MainLoopRc::new(None).map_err(|e| fail("main loop", e))?;
    let context = pw::context::ContextRc::new(&main_loop, None).map_err(|e| fail("context", e))?;
    let core = context
        .connect_fd_rc(fd, None)
        .map_err(|e| fail("connect", e))?;
    let stream = pw::stream::StreamRc::new(
        core,
        "huddle-screen-share",
        pw::properties::properties! {
            *pw::keys::MEDIA_TYPE => "Video",
            *pw::keys::MEDIA_CATEGORY => "Capture",
            *pw::keys::MEDIA_ROLE => "Screen",
        },
    )
    .map_err(|e| fail("stream", e))?;

    let on_state = shared.clone();
    let on_picture = shared.clone();
    let _listener = stream
        .add_local_listener_with_user_data(None::<spa::param::video::VideoInfoRaw>)
        .state_changed(move |_, _, old, state| {
            tracing::debug!(?old, ?state, "PipeWire screen stream");
            match state {
                pw::stream::StreamState::Error(e) => on_state.end(format!("PipeWire stream: {e}")),
                pw::stream::StreamState::Unconnected => {
                    on_state.end("the share was ended by the system".to_owned())
                }
                _ => {}
            }
        })
        .param_changed(|_, format, id, param| {
            let Some(param) = param else { return };
            if id != spa::param::ParamType::Format.as_raw() {
                return;
            }
            let mut info = spa::param::video::VideoInfoRaw::new();
            match info.parse(param) {
                Ok(_) => {
                    tracing::debug!(
                        format = ?info.format(),
                        width = info.size().width,
                        height = info.size().height,
                        "PipeWire screen format"
                    );
                    *format = Some(info);
                }
                Err(e) => tracing::warn!(error = %e, "PipeWire screen format not understood"),
            }
        })
        .process(move |stream, format| {
            let Some(info) = format else { return };
            let Some(mut buffer) = stream.dequeue_buffer() else {
                return;
            };
            if let Some(picture) = copy_picture(buffer.datas_mut(), info) {
                on_picture.pictures.put(picture);
            }
        })
        .register()
        .map_err(|e| fail("listener", e))?;

    let format = enum_format().map_err(|e| format!("PipeWire: format: {e}"))?;
    let pod = spa::pod::Pod::from_bytes(&format)
        .ok_or_else(|| "PipeWire: format: not a pod".to_owned())?;
    stream
        .connect(
            spa::utils::Direction::Input,
            Some(node),
            // Not reconnected elsewhere when the shared node goes away: that ends the share.
            pw::stream::StreamFlags::AUTOCONNECT
                | pw::stream::StreamFlags::MAP_BUFFERS
                | pw::stream::StreamFlags::DONT_RECONNECT,
            &mut [pod],
        )
        .map_err(|e| fail("connect the stream", e))?;

    let weak_loop = main_loop.downgrade();
    let _quit = quit.attach(main_loop.loop_(), move |()| {
        if let Some(main_loop) = weak_loop.upgrade() {
            main_loop.quit();
        }
    });
    main_loop.run();
    let _ = stream.disconnect();
    Ok(())
}

/// The picture in a dequeued buffer, copied out, when it holds one in a format we read.
fn copy_picture(
    datas: &mut [spa::buffer::Data],
    info: &spa::param::video::VideoInfoRaw,
) -> Option<RawPicture> {
    let channels = channels_of(info.format())?;
    let (width, height) = (info.size().width as usize, info.size().height as usize);
    let data = datas.first_mut()?;
    let chunk = data.chunk();
    let (offset, size) = (chunk.offset() as usize, chunk.size() as usize);
    let stride = match chunk.stride() {
        s if s > 0 => s as usize,
        _ => width * 4,
    };
    // A chunk with no bytes carries only metadata (a pointer move): the picture is unchanged.
    if size == 0 || width < 2 || height < 2 || stride < width * 4 {
        return None;
    }
    // The last row need not be padded out to the stride.
    let needed = stride * (height - 1) + width * 4;
    let bytes = data.data()?.get(offset..offset.checked_add(needed)?)?;
    Some(RawPicture {
        bytes: bytes.to_vec(),
        width,
        height,
        stride,
        channels,
    })
}

/// The formats we accept: packed 32-bit RGB in any order, any size, any rate (no DMA-BUF
/// modifiers, so buffers arrive in memory we can map).
fn enum_format() -> Result<Vec<u8>, String> {
    use spa::param::format::{FormatProperties, MediaSubtype, MediaType};
    use spa::param::video::VideoFormat;
    let object = spa::pod::object!(
        spa::utils::SpaTypes::ObjectParamFormat,
        spa::param::ParamType::EnumFormat,
        spa::pod::property!(FormatProperties::MediaType, Id, MediaType::Video),
        spa::pod::property!(FormatProperties::MediaSubtype, Id, MediaSubtype::Raw),
        spa::pod::property!(
            FormatProperties::VideoFormat,
            Choice,
            Enum,
            Id,
            VideoFormat::BGRx,
            VideoFormat::BGRx,
            VideoFormat::BGRA,
            VideoFormat::RGBx,
            VideoFormat::RGBA,
            VideoFormat::xRGB,
            VideoFormat::ARGB,
            VideoFormat::xBGR,
            VideoFormat::ABGR
        ),
        spa::pod::property!(
            FormatProperties::VideoSize,
            Choice,
            Range,
            Rectangle,
            spa::utils::Rectangle {
                width: 1920,
                height: 1080
            },
            spa::utils::Rectangle {
                width: 2,
                height: 2
            },
            spa::utils::Rectangle {
                width: 8192,
                height: 8192
            }
        ),
        spa::pod::property!(
            FormatProperties::VideoFramerate,
            Choice,
            Range,
            Fraction,
            spa::utils::Fraction { num: 30, denom: 1 },
            spa::utils::Fraction { num: 0, denom: 1 },
            spa::utils::Fraction { num: 240, denom: 1 }
        ),
    );
    spa::pod::serialize::PodSerializer::serialize(
        std::io::Cursor::new(Vec::new()),
        &spa::pod::Value::Object(object),
    )
    .map(|(cursor, _)| cursor.into_inner())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_formats_we_accept_serialize_to_a_pod() {
        let bytes = enum_format().expect("serialize");
        assert!(spa::pod::Pod::from_bytes(&bytes).is_some());
    }

    #[test]
    fn every_accepted_format_has_a_channel_order() {
        use spa::param::video::VideoFormat as F;
        for format in [
            F::BGRx,
            F::BGRA,
            F::RGBx,
            F::RGBA,
            F::xRGB,
            F::ARGB,
            F::xBGR,
            F::ABGR,
        ] {
            assert!(channels_of(format).is_some(), "{format:?}");
        }
        assert_eq!(channels_of(F::I420), None);
    }

    #[test]
    fn a_missing_portal_says_what_to_install() {
        let error = portal_error(
            "open the ScreenCast portal",
            ashpd::Error::PortalNotFound(
                ashpd::zbus::names::OwnedInterfaceName::try_from(
                    "org.freedesktop.portal.ScreenCast",
                )
                .expect("name"),
            ),
        )
        .to_string();
        assert!(error.contains("xdg-desktop-portal"), "{error}");
        let cancelled = portal_error(
            "choose what to share",
            ashpd::Error::Response(ashpd::desktop::ResponseError::Cancelled),
        )
        .to_string();
        assert!(cancelled.contains("cancelled"), "{cancelled}");
    }
}

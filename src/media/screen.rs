//! Screen capture: what a screen share shows. An X11 screen or window (MIT-SHM where the server
//! offers it, `GetImage` otherwise, the pointer drawn in through XFixes), whatever the desktop
//! portal's dialog chose on Wayland (`portal`, through PipeWire), and a synthetic high-detail
//! picture (text and lines) for tests and the benchmark. Captured pictures larger than 1920x1080
//! are scaled down to fit. Depends only on the rest of `media`.

mod portal;

use super::MediaError;
use super::convert::I420Scaler;
use super::frame::{I420Frame, RgbaFrame};
use super::stamp::{FrameStamp, TIME_MODULUS, write_stamp};

/// The largest picture a share sends; larger screens are scaled down to fit, keeping the aspect.
pub const MAX_SHARE_SIZE: (usize, usize) = (1920, 1080);
/// Frames per second a share captures by default: text stays sharp, motion is a slide show.
pub const DEFAULT_SHARE_FPS: u32 = 15;
/// The "smooth motion" choice: video or animation, at the cost of sharpness on a slow link.
pub const SMOOTH_SHARE_FPS: u32 = 30;

/// What to share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScreenSource {
    /// The synthetic picture (`ScreenPicture`) at this size; `source_id` goes into its stamps.
    Test {
        width: usize,
        height: usize,
        source_id: u8,
    },
    /// An X11 display (`None`: `DISPLAY`), its whole screen or one window.
    X11 {
        display: Option<String>,
        window: Option<u32>,
    },
    /// One monitor of an X11 display (a RandR monitor, e.g. `DP-1`): its part of the screen.
    X11Monitor {
        display: Option<String>,
        monitor: String,
    },
    /// What the user picks in the desktop portal's dialog (`org.freedesktop.portal.ScreenCast`),
    /// read through PipeWire: how a Wayland session shares. `bus`: a D-Bus address (`None`: the
    /// session bus).
    Portal { bus: Option<String> },
}

impl ScreenSource {
    pub fn describe(&self) -> String {
        match self {
            ScreenSource::Test { width, height, .. } => format!("test screen ({width}x{height})"),
            ScreenSource::X11 { display, window } => {
                let display = display_name(display.as_deref());
                match window {
                    Some(w) => format!("X11 window 0x{w:x} on {display}"),
                    None => format!("X11 screen {display}"),
                }
            }
            ScreenSource::X11Monitor { display, monitor } => {
                format!(
                    "X11 monitor {monitor} on {}",
                    display_name(display.as_deref())
                )
            }
            ScreenSource::Portal { .. } => {
                "the screen or window chosen in the desktop portal".into()
            }
        }
    }

    /// The whole screen as this desktop shares it: the portal's dialog on a Wayland session (X11
    /// capture there sees only XWayland windows), the X screen otherwise.
    pub fn for_this_desktop() -> ScreenSource {
        if is_wayland_session() {
            ScreenSource::Portal { bus: None }
        } else {
            ScreenSource::X11 {
                display: None,
                window: None,
            }
        }
    }

    /// Whether the desktop's own dialog chooses what is shared (so Huddle lists no windows).
    pub fn is_chosen_by_the_desktop(&self) -> bool {
        matches!(self, ScreenSource::Portal { .. })
    }
}

/// `display`, or the one `DISPLAY` names.
fn display_name(display: Option<&str>) -> String {
    display
        .map(str::to_owned)
        .or_else(|| std::env::var("DISPLAY").ok())
        .unwrap_or_else(|| "?".into())
}

/// The size a picture of `width` x `height` is sent at: itself when it fits in
/// [`MAX_SHARE_SIZE`], else scaled down with the same aspect; even sides either way.
pub fn share_size(width: usize, height: usize) -> (usize, usize) {
    let (max_w, max_h) = MAX_SHARE_SIZE;
    let scale = (max_w as f64 / width.max(1) as f64)
        .min(max_h as f64 / height.max(1) as f64)
        .min(1.0);
    let even = |v: usize| ((v as f64 * scale).round() as usize & !1).max(16);
    (even(width), even(height))
}

/// A source of screen pictures, run on the share's capture thread.
pub trait ScreenCapturer: Send {
    /// The next picture, at most [`MAX_SHARE_SIZE`], stamped with `capture_us`.
    fn capture(&mut self, capture_us: u64) -> Result<I420Frame, MediaError>;
}

/// Something the user can pick to share, with a small picture of it.
#[derive(Clone, Debug)]
pub struct ScreenChoice {
    pub source: ScreenSource,
    pub title: String,
    /// At most [`THUMBNAIL_WIDTH`] wide; `None` when it could not be captured.
    pub thumbnail: Option<std::sync::Arc<super::frame::RgbaFrame>>,
}

pub const THUMBNAIL_WIDTH: usize = 200;

/// What the Share menu offers: on a Wayland session nothing (the portal's dialog chooses), else
/// the X screen and its windows ([`list_x11`]). Blocking: call it off the UI.
pub fn list_choices(display: Option<&str>) -> Result<Vec<ScreenChoice>, MediaError> {
    if display.is_none() && is_wayland_session() {
        return Ok(Vec::new());
    }
    list_x11(display)
}

/// The screen and the windows of the X display `display` (`None`: `DISPLAY`), with thumbnails.
/// Windows come from the window manager's `_NET_CLIENT_LIST`. Blocking: call it off the UI.
pub fn list_x11(display: Option<&str>) -> Result<Vec<ScreenChoice>, MediaError> {
    x11::list(display)
}

/// Draws `rgba` (`width` x `height`) over the root window of the X display `display` and puts
/// the pointer in the far corner: a known picture to share, for tests and the benchmark.
pub fn show_on_x11_root(
    display: &str,
    rgba: &[u8],
    width: usize,
    height: usize,
) -> Result<(), MediaError> {
    x11::show_on_root(display, rgba, width, height)
}

/// Why a display could not be opened, in words that say what to do: on a Wayland session without
/// X11 the answer is the desktop portal.
fn no_display(display: Option<&str>, wayland: bool, error: impl std::fmt::Display) -> MediaError {
    let named = display
        .map(str::to_owned)
        .or_else(|| std::env::var("DISPLAY").ok());
    if named.is_none() && wayland {
        return MediaError::Source(
            "screen capture: this is a Wayland session without X11; share through the desktop \
             portal instead (org.freedesktop.portal.ScreenCast: `--screen portal`, or the Share \
             menu's system dialog)"
                .into(),
        );
    }
    MediaError::Source(format!(
        "screen capture: cannot open display {}: {error}",
        named.as_deref().unwrap_or("(DISPLAY is not set)")
    ))
}

fn is_wayland_session() -> bool {
    std::env::var_os("WAYLAND_DISPLAY").is_some()
}

/// Opens the capturer for `source`.
pub fn open(source: &ScreenSource) -> Result<Box<dyn ScreenCapturer>, MediaError> {
    match source {
        ScreenSource::Test {
            width,
            height,
            source_id,
        } => Ok(Box::new(SyntheticScreen::new(*width, *height, *source_id))),
        ScreenSource::X11 { display, window } => Ok(Box::new(x11::X11Capturer::open(
            display.as_deref(),
            x11::Area::from_window(*window),
        )?)),
        ScreenSource::X11Monitor { display, monitor } => Ok(Box::new(x11::X11Capturer::open(
            display.as_deref(),
            x11::Area::Monitor(monitor),
        )?)),
        ScreenSource::Portal { bus } => Ok(Box::new(portal::PortalCapturer::open(bus.as_deref())?)),
    }
}

/// A text-heavy picture like a document or a terminal: dark glyphs on white in many lines, thin
/// ruled lines, a coloured title bar. Deterministic for a size, so a test can draw the same
/// picture on a real X screen and compare what arrives with it.
pub struct ScreenPicture;

impl ScreenPicture {
    /// The picture as RGBA rows.
    pub fn rgba(width: usize, height: usize) -> Vec<u8> {
        let mut px = vec![255u8; width * height * 4];
        let mut put = |x: usize, y: usize, rgb: [u8; 3]| {
            if x < width && y < height {
                let i = (y * width + x) * 4;
                px[i..i + 3].copy_from_slice(&rgb);
            }
        };
        // Title bar.
        for y in 0..28.min(height) {
            for x in 0..width {
                put(x, y, [38, 70, 140]);
            }
        }
        // Lines of "text": glyphs of a small stroke font (like a 14-segment display: bars and
        // stems, as real letters are mostly made of), 5x7 in 7x12 cells, words of 2-10 letters,
        // ragged line ends, a blank line between paragraphs, a margin on the left.
        let (cell_w, cell_h) = (7, 12);
        let mut line = 0usize;
        let mut y0 = 40;
        while y0 + cell_h <= height {
            let line_seed = hash(line * 7919);
            let paragraph_end = line_seed % 7 == 6;
            let line_end = width.saturating_sub(24 + (line_seed % 200) as usize);
            let mut x0 = 24;
            let mut word = 0usize;
            while !paragraph_end && x0 + cell_w <= line_end {
                let seed = hash(line * 7919 + word + 1);
                let word_len = 2 + (seed % 9) as usize;
                for letter in 0..word_len {
                    let glyph =
                        GLYPHS[(hash(seed as usize + letter * 31) % GLYPHS.len() as u64) as usize];
                    for (gy, row) in glyph.iter().enumerate() {
                        for gx in 0..5 {
                            if row >> (4 - gx) & 1 == 1 {
                                put(x0 + gx, y0 + 2 + gy, [20, 20, 28]);
                            }
                        }
                    }
                    x0 += cell_w;
                }
                x0 += cell_w;
                word += 1;
            }
            // A ruled line under every fifth line, in colour.
            if line % 5 == 4 {
                for x in 24..width.saturating_sub(24) {
                    put(x, y0 + cell_h - 1, [200, 60, 40]);
                }
            }
            line += 1;
            y0 += cell_h;
        }
        px
    }
}

/// A 5x7 stroke alphabet, one row per byte (bit 4 is the left column).
const GLYPHS: [[u8; 7]; 16] = [
    [
        0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
    ],
    [
        0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110,
    ],
    [
        0b01111, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b01111,
    ],
    [
        0b11110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11110,
    ],
    [
        0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111,
    ],
    [
        0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001,
    ],
    [
        0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
    ],
    [
        0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111,
    ],
    [
        0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001,
    ],
    [
        0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b10001,
    ],
    [
        0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
    ],
    [
        0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000,
    ],
    [
        0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110,
    ],
    [
        0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100,
    ],
    [
        0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110,
    ],
    [
        0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111,
    ],
];

fn hash(v: usize) -> u64 {
    // SplitMix64: a cheap, well-mixed deterministic function.
    let mut z = (v as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How close a received picture of the synthetic share ([`SyntheticScreen`], 1920x1080) is to
/// what was shared: luma PSNR against the page as the sharer encodes it (after its RGB to I420
/// conversion, and scaled as its encoder would for a smaller picture), over the rows between
/// the stamp at the top and the moving block at the bottom. `reference` keeps the page at the
/// size last asked for.
pub fn synthetic_share_psnr(
    received: &RgbaFrame,
    reference: &mut Option<RgbaFrame>,
) -> Option<f64> {
    let (w, h) = (received.width, received.height);
    if reference
        .as_ref()
        .is_none_or(|r| (r.width, r.height) != (w, h))
    {
        if w < 64 || h < 64 || !w.is_multiple_of(2) || !h.is_multiple_of(2) {
            return None;
        }
        let (pw, ph) = (w.max(1920), h.max(1080));
        let mut page = I420Frame::from_rgba(&ScreenPicture::rgba(pw, ph), pw, ph);
        if (pw, ph) != (w, h) {
            page = I420Scaler::default().scale(&page, w, h).ok()?;
        }
        let mut rgba = RgbaFrame::default();
        page.to_rgba(&mut rgba);
        *reference = Some(rgba);
    }
    let top = super::stamp::stamp_rows() * super::stamp::cell_size(w);
    received.luma_psnr_rows(reference.as_ref()?, top..h.saturating_sub(24))
}

/// The synthetic share: [`ScreenPicture`] with a stamp (for latency) and a small block that moves
/// every frame (so the stream is never entirely static).
pub struct SyntheticScreen {
    base: I420Frame,
    source: u8,
    number: u32,
}

impl SyntheticScreen {
    pub fn new(width: usize, height: usize, source: u8) -> Self {
        let (width, height) = share_size(width.max(64), height.max(64));
        SyntheticScreen {
            base: I420Frame::from_rgba(&ScreenPicture::rgba(width, height), width, height),
            source,
            number: 0,
        }
    }
}

impl ScreenCapturer for SyntheticScreen {
    fn capture(&mut self, capture_us: u64) -> Result<I420Frame, MediaError> {
        let mut frame = self.base.clone();
        frame.capture_us = capture_us;
        let (width, height) = (frame.width, frame.height);
        let (y_plane, _, _) = frame.planes_mut();
        // A 16x16 block walking along the bottom edge, like a blinking caret moving.
        let row0 = height - 20;
        let x = (self.number as usize * 8) % (width - 16);
        for row in row0..row0 + 16 {
            y_plane[row * width + x..row * width + x + 16].fill(16);
        }
        write_stamp(
            &mut frame,
            FrameStamp {
                source: self.source,
                number: self.number,
                capture_us: capture_us % TIME_MODULUS,
            },
        );
        self.number = self.number.wrapping_add(1);
        Ok(frame)
    }
}

/// BGRX rows (X11's 32-bit ZPixmap, least significant byte first) to I420.
pub fn bgrx_to_i420(bgrx: &[u8], width: usize, height: usize, stride: usize) -> I420Frame {
    packed_to_i420(bgrx, width, height, stride, Channels::BGRX)
}

/// The channel order of a packed 32-bit picture, as byte offsets of red, green and blue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Channels {
    red: usize,
    green: usize,
    blue: usize,
}

impl Channels {
    const BGRX: Channels = Channels {
        red: 2,
        green: 1,
        blue: 0,
    };
    const RGBX: Channels = Channels {
        red: 0,
        green: 1,
        blue: 2,
    };
}

/// Packed 32-bit RGB rows, channels where `channels` says, to I420.
fn packed_to_i420(
    bytes: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    channels: Channels,
) -> I420Frame {
    let mut frame = I420Frame::new(width, height);
    let (cw, _) = frame.chroma_size();
    let (y_plane, u_plane, v_plane) = frame.planes_mut();
    let px = |x: usize, y: usize| {
        let i = y * stride + x * 4;
        (
            bytes[i + channels.red] as i32,
            bytes[i + channels.green] as i32,
            bytes[i + channels.blue] as i32,
        )
    };
    for y in 0..height {
        for x in 0..width {
            let (r, g, b) = px(x, y);
            y_plane[y * width + x] = (((66 * r + 129 * g + 25 * b + 128) >> 8) + 16) as u8;
        }
    }
    for cy in 0..height.div_ceil(2) {
        for cx in 0..width.div_ceil(2) {
            let (mut r, mut g, mut b) = (0, 0, 0);
            for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                let (pr, pg, pb) = px((cx * 2 + dx).min(width - 1), (cy * 2 + dy).min(height - 1));
                (r, g, b) = (r + pr, g + pg, b + pb);
            }
            let (r, g, b) = (r / 4, g / 4, b / 4);
            u_plane[cy * cw + cx] =
                (((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
            v_plane[cy * cw + cx] =
                (((112 * r - 94 * g - 18 * b + 128) >> 8) + 128).clamp(0, 255) as u8;
        }
    }
    frame
}

/// Fits `frame` into [`MAX_SHARE_SIZE`] (and even sides), scaling when it is larger.
fn fit(frame: I420Frame, scaler: &mut I420Scaler) -> Result<I420Frame, MediaError> {
    let size = share_size(frame.width, frame.height);
    if size == (frame.width, frame.height) {
        return Ok(frame);
    }
    scaler.scale(&frame, size.0, size.1)
}

mod x11 {
    //! X11 capture through x11rb.
    use super::{I420Scaler, MediaError, ScreenCapturer, bgrx_to_i420, fit};
    use crate::media::frame::I420Frame;
    use x11rb::connection::Connection;
    use x11rb::protocol::shm::ConnectionExt as _;
    use x11rb::protocol::xfixes::ConnectionExt as _;
    use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, ImageOrder};
    use x11rb::rust_connection::RustConnection;

    fn fail(what: &str, e: impl std::fmt::Display) -> MediaError {
        MediaError::Source(format!("screen capture: {what}: {e}"))
    }

    /// What part of the display a capturer reads.
    #[derive(Clone, Copy, Debug)]
    pub enum Area<'a> {
        /// The whole screen (every monitor).
        Screen,
        Window(u32),
        /// One RandR monitor, by name.
        Monitor(&'a str),
    }

    impl Area<'_> {
        pub fn from_window(window: Option<u32>) -> Area<'static> {
            window.map_or(Area::Screen, Area::Window)
        }
    }

    /// A RandR monitor: its name and where it sits on the screen.
    struct Monitor {
        name: String,
        x: i16,
        y: i16,
        width: u16,
        height: u16,
    }

    /// The display's active monitors (RandR 1.5); none when the server has no RandR.
    fn monitors(conn: &RustConnection, root: u32) -> Vec<Monitor> {
        use x11rb::protocol::randr::ConnectionExt as _;
        let supported = conn
            .randr_query_version(1, 5)
            .ok()
            .and_then(|c| c.reply().ok())
            .is_some_and(|v| (v.major_version, v.minor_version) >= (1, 5));
        let Some(reply) = supported
            .then(|| conn.randr_get_monitors(root, true).ok()?.reply().ok())
            .flatten()
        else {
            return Vec::new();
        };
        reply
            .monitors
            .iter()
            .enumerate()
            .map(|(i, m)| Monitor {
                name: conn
                    .get_atom_name(m.name)
                    .ok()
                    .and_then(|c| c.reply().ok())
                    .map(|r| String::from_utf8_lossy(&r.name).into_owned())
                    .unwrap_or_else(|| format!("monitor-{}", i + 1)),
                x: m.x,
                y: m.y,
                width: m.width,
                height: m.height,
            })
            .collect()
    }

    /// A System V shared-memory segment the X server writes pictures into.
    struct ShmSegment {
        seg: u32,
        addr: *mut u8,
        len: usize,
    }

    // The segment is only touched from the capture thread that owns the capturer.
    unsafe impl Send for ShmSegment {}

    impl ShmSegment {
        /// A segment of `len` bytes attached to the server, or `None` if the server cannot use
        /// shared memory with us (a remote display, no MIT-SHM).
        fn attach(conn: &RustConnection, len: usize) -> Option<ShmSegment> {
            conn.shm_query_version().ok()?.reply().ok()?;
            // SAFETY: plain System V calls; the address is checked before use and detached in
            // Drop. The id is marked for removal once attached on both sides, so the segment
            // goes away with the last detach even if this process dies.
            unsafe {
                let id = libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600);
                if id < 0 {
                    return None;
                }
                let addr = libc::shmat(id, std::ptr::null(), 0);
                if addr as isize == -1 {
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    return None;
                }
                let attached = conn.generate_id().ok().and_then(|seg| {
                    conn.shm_attach(seg, id as u32, false)
                        .ok()?
                        .check()
                        .ok()
                        .map(|_| seg)
                });
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                match attached {
                    Some(seg) => Some(ShmSegment {
                        seg,
                        addr: addr as *mut u8,
                        len,
                    }),
                    None => {
                        libc::shmdt(addr);
                        None
                    }
                }
            }
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: `addr` is a live attachment of `len` bytes until Drop.
            unsafe { std::slice::from_raw_parts(self.addr, self.len) }
        }
    }

    impl Drop for ShmSegment {
        fn drop(&mut self) {
            // SAFETY: detaching our own attachment once.
            unsafe {
                libc::shmdt(self.addr as *const libc::c_void);
            }
        }
    }

    /// `show_on_x11_root`.
    pub fn show_on_root(
        display: &str,
        rgba: &[u8],
        width: usize,
        height: usize,
    ) -> Result<(), MediaError> {
        use x11rb::protocol::xproto::CreateGCAux;
        let failed =
            |e: &dyn std::fmt::Display| MediaError::Source(format!("drawing on {display}: {e}"));
        let (conn, screen) = x11rb::connect(Some(display)).map_err(|e| failed(&e))?;
        let root = conn.setup().roots[screen].root;
        let depth = conn.setup().roots[screen].root_depth;
        let gc = conn.generate_id().map_err(|e| failed(&e))?;
        conn.create_gc(gc, root, &CreateGCAux::new())
            .map_err(|e| failed(&e))?;
        // In bands that stay under the core protocol's request size.
        let band = 32;
        for y0 in (0..height).step_by(band) {
            let rows = band.min(height - y0);
            let bgrx: Vec<u8> = rgba[y0 * width * 4..(y0 + rows) * width * 4]
                .chunks(4)
                .flat_map(|p| [p[2], p[1], p[0], 0])
                .collect();
            conn.put_image(
                ImageFormat::Z_PIXMAP,
                root,
                gc,
                width as u16,
                rows as u16,
                0,
                y0 as i16,
                0,
                depth,
                &bgrx,
            )
            .map_err(|e| failed(&e))?
            .check()
            .map_err(|e| failed(&e))?;
        }
        let corner = (width as i16 - 1, height as i16 - 1);
        conn.warp_pointer(x11rb::NONE, root, 0, 0, 0, 0, corner.0, corner.1)
            .map_err(|e| failed(&e))?;
        // A round trip: everything above has been applied.
        conn.get_input_focus()
            .map_err(|e| failed(&e))?
            .reply()
            .map_err(|e| failed(&e))?;
        Ok(())
    }

    /// `list_x11`: the whole screen first, then each managed window.
    pub fn list(display: Option<&str>) -> Result<Vec<super::ScreenChoice>, MediaError> {
        use super::{ScreenChoice, ScreenSource};
        use x11rb::protocol::xproto::{AtomEnum, ConnectionExt as _};
        let (conn, screen_num) = x11rb::connect(display)
            .map_err(|e| super::no_display(display, super::is_wayland_session(), e))?;
        // One connection for the list and every thumbnail.
        let conn = std::sync::Arc::new(conn);
        let root = conn
            .setup()
            .roots
            .get(screen_num)
            .ok_or_else(|| fail("display", "no such screen"))?
            .root;
        let atom = |name: &str| -> Option<u32> {
            Some(
                conn.intern_atom(false, name.as_bytes())
                    .ok()?
                    .reply()
                    .ok()?
                    .atom,
            )
        };
        let windows: Vec<u32> = atom("_NET_CLIENT_LIST")
            .and_then(|list| {
                conn.get_property(false, root, list, AtomEnum::WINDOW, 0, 1024)
                    .ok()?
                    .reply()
                    .ok()
            })
            .and_then(|reply| reply.value32().map(|v| v.collect()))
            .unwrap_or_default();
        let utf8 = atom("UTF8_STRING");
        let net_name = atom("_NET_WM_NAME");
        let title = |window: u32| -> Option<String> {
            let named = |property: u32, kind: u32| -> Option<String> {
                let reply = conn
                    .get_property(false, window, property, kind, 0, 256)
                    .ok()?
                    .reply()
                    .ok()?;
                let text = String::from_utf8_lossy(&reply.value).trim().to_owned();
                (!text.is_empty()).then_some(text)
            };
            net_name
                .zip(utf8)
                .and_then(|(name, utf8)| named(name, utf8))
                .or_else(|| named(AtomEnum::WM_NAME.into(), AtomEnum::STRING.into()))
        };
        let display_name = display.map(str::to_owned);
        let thumbnail = |area: Area| {
            X11Capturer::on(conn.clone(), screen_num, area)
                .ok()
                .and_then(|mut c| c.thumbnail().ok())
                .map(std::sync::Arc::new)
        };
        let mut choices = vec![ScreenChoice {
            source: ScreenSource::X11 {
                display: display_name.clone(),
                window: None,
            },
            title: "Entire screen".into(),
            thumbnail: thumbnail(Area::Screen),
        }];
        // With more than one monitor each is a choice of its own.
        let monitors = monitors(&conn, root);
        if monitors.len() > 1 {
            for (i, m) in monitors.iter().enumerate() {
                choices.push(ScreenChoice {
                    source: ScreenSource::X11Monitor {
                        display: display_name.clone(),
                        monitor: m.name.clone(),
                    },
                    title: format!("Screen {}: {} ({}x{})", i + 1, m.name, m.width, m.height),
                    thumbnail: thumbnail(Area::Monitor(&m.name)),
                });
            }
        }
        for window in windows {
            choices.push(ScreenChoice {
                source: ScreenSource::X11 {
                    display: display_name.clone(),
                    window: Some(window),
                },
                title: title(window).unwrap_or_else(|| format!("Window 0x{window:x}")),
                thumbnail: thumbnail(Area::Window(window)),
            });
        }
        Ok(choices)
    }

    pub struct X11Capturer {
        /// Shared when the picker grabs thumbnails of every window through one connection.
        conn: std::sync::Arc<RustConnection>,
        root: u32,
        drawable: u32,
        /// The shared window, whose pointer position needs translating from the root's.
        window: Option<u32>,
        /// Where the captured part starts in `drawable` (a monitor's corner on the root).
        origin: (i16, i16),
        width: u16,
        height: u16,
        shm: Option<ShmSegment>,
        cursor: bool,
        scaler: I420Scaler,
    }

    impl X11Capturer {
        pub fn open(display: Option<&str>, area: Area) -> Result<Self, MediaError> {
            let (conn, screen_num) = x11rb::connect(display)
                .map_err(|e| super::no_display(display, super::is_wayland_session(), e))?;
            X11Capturer::on(std::sync::Arc::new(conn), screen_num, area)
        }

        /// A capturer of `area` on screen `screen_num` of an open connection.
        fn on(
            conn: std::sync::Arc<RustConnection>,
            screen_num: usize,
            area: Area,
        ) -> Result<Self, MediaError> {
            let setup = conn.setup();
            let screen = setup
                .roots
                .get(screen_num)
                .ok_or_else(|| fail("display", "no such screen"))?;
            let depth = screen.root_depth;
            let bpp = setup
                .pixmap_formats
                .iter()
                .find(|f| f.depth == depth)
                .map(|f| f.bits_per_pixel);
            if !matches!(depth, 24 | 32)
                || bpp != Some(32)
                || setup.image_byte_order != ImageOrder::LSB_FIRST
            {
                return Err(fail(
                    "display",
                    format!("unsupported pixel format (depth {depth}, {bpp:?} bits per pixel)"),
                ));
            }
            let root = screen.root;
            let (drawable, window, origin, width, height) = match area {
                Area::Screen | Area::Window(_) => {
                    let window = match area {
                        Area::Window(window) => Some(window),
                        _ => None,
                    };
                    let drawable = window.unwrap_or(root);
                    let geometry = conn
                        .get_geometry(drawable)
                        .map_err(|e| fail("window", e))?
                        .reply()
                        .map_err(|e| fail("window", e))?;
                    (drawable, window, (0, 0), geometry.width, geometry.height)
                }
                Area::Monitor(name) => {
                    let all = monitors(&conn, root);
                    let Some(m) = all.iter().find(|m| m.name == name) else {
                        let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
                        return Err(fail(
                            "monitor",
                            format!(
                                "no monitor named {name} (this display has: {})",
                                names.join(", ")
                            ),
                        ));
                    };
                    (root, None, (m.x, m.y), m.width, m.height)
                }
            };
            let shm = ShmSegment::attach(&conn, width as usize * height as usize * 4);
            let cursor = conn
                .xfixes_query_version(4, 0)
                .ok()
                .and_then(|c| c.reply().ok())
                .is_some();
            tracing::info!(
                width,
                height,
                shared_memory = shm.is_some(),
                cursor,
                "X11 screen capture opened"
            );
            Ok(X11Capturer {
                conn,
                root,
                drawable,
                window,
                origin,
                width,
                height,
                shm,
                cursor,
                scaler: I420Scaler::default(),
            })
        }

        /// The picture's BGRX bytes: through shared memory when attached, else in the reply.
        fn grab(&mut self) -> Result<Vec<u8>, MediaError> {
            let (w, h) = (self.width, self.height);
            if let Some(shm) = &self.shm {
                let reply = self
                    .conn
                    .shm_get_image(
                        self.drawable,
                        self.origin.0,
                        self.origin.1,
                        w,
                        h,
                        !0,
                        ImageFormat::Z_PIXMAP.into(),
                        shm.seg,
                        0,
                    )
                    .map_err(|e| fail("get image", e))?
                    .reply();
                match reply {
                    Ok(_) => return Ok(shm.bytes().to_vec()),
                    Err(e) => {
                        tracing::warn!(error = %e, "shared-memory capture failed; using GetImage");
                        self.shm = None;
                    }
                }
            }
            let reply = self
                .conn
                .get_image(
                    ImageFormat::Z_PIXMAP,
                    self.drawable,
                    self.origin.0,
                    self.origin.1,
                    w,
                    h,
                    !0,
                )
                .map_err(|e| fail("get image", e))?
                .reply()
                .map_err(|e| fail("get image", e))?;
            Ok(reply.data)
        }

        /// Blends the pointer's picture into `bgrx` (XFixes gives premultiplied ARGB).
        fn draw_cursor(&self, bgrx: &mut [u8]) {
            let Some(cursor) = self
                .conn
                .xfixes_get_cursor_image()
                .ok()
                .and_then(|c| c.reply().ok())
            else {
                return;
            };
            let (w, h) = (self.width as i32, self.height as i32);
            // The pointer in the captured picture's coordinates.
            let at = match self.window {
                Some(window) => self
                    .conn
                    .translate_coordinates(self.root, window, cursor.x, cursor.y)
                    .ok()
                    .and_then(|c| c.reply().ok())
                    .map(|t| (t.dst_x as i32, t.dst_y as i32)),
                None => Some((
                    cursor.x as i32 - self.origin.0 as i32,
                    cursor.y as i32 - self.origin.1 as i32,
                )),
            };
            let Some((x, y)) = at else { return };
            let (left, top) = (x - cursor.xhot as i32, y - cursor.yhot as i32);
            for cy in 0..cursor.height as i32 {
                for cx in 0..cursor.width as i32 {
                    let (x, y) = (left + cx, top + cy);
                    if x < 0 || y < 0 || x >= w || y >= h {
                        continue;
                    }
                    let Some(&argb) = cursor
                        .cursor_image
                        .get((cy * cursor.width as i32 + cx) as usize)
                    else {
                        continue;
                    };
                    let alpha = argb >> 24;
                    if alpha == 0 {
                        continue;
                    }
                    let i = (y * w + x) as usize * 4;
                    for (c, shift) in [(0, 0), (1, 8), (2, 16)] {
                        let src = (argb >> shift) & 0xff;
                        let dst = bgrx[i + c] as u32;
                        bgrx[i + c] = (src + dst * (255 - alpha) / 255).min(255) as u8;
                    }
                }
            }
        }
    }

    impl X11Capturer {
        /// A small picture of what this capturer shows, for the picker.
        fn thumbnail(&mut self) -> Result<crate::media::frame::RgbaFrame, MediaError> {
            let frame = self.capture(0)?;
            let width = super::THUMBNAIL_WIDTH.min(frame.width) & !1;
            let height = ((frame.height * width / frame.width.max(1)) & !1).max(2);
            let small = self.scaler.scale(&frame, width.max(2), height)?;
            let mut rgba = crate::media::frame::RgbaFrame::default();
            small.to_rgba(&mut rgba);
            Ok(rgba)
        }
    }

    impl Drop for X11Capturer {
        fn drop(&mut self) {
            // The server's side of the segment; it would otherwise stay until the connection
            // closes, which a shared connection does only after every thumbnail.
            if let Some(shm) = &self.shm {
                let _ = self.conn.shm_detach(shm.seg);
                let _ = self.conn.flush();
            }
        }
    }

    impl ScreenCapturer for X11Capturer {
        fn capture(&mut self, capture_us: u64) -> Result<I420Frame, MediaError> {
            let mut bgrx = self.grab()?;
            let (w, h) = (self.width as usize, self.height as usize);
            if bgrx.len() < w * h * 4 {
                return Err(fail("get image", "short picture"));
            }
            if self.cursor {
                self.draw_cursor(&mut bgrx);
            }
            let mut frame = bgrx_to_i420(&bgrx, w & !1, h & !1, w * 4);
            frame.capture_us = capture_us;
            fit(frame, &mut self.scaler)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::frame::RgbaFrame;
    use crate::media::stamp::read_stamp;

    #[test]
    fn large_screens_are_scaled_to_fit_and_small_ones_kept() {
        assert_eq!(share_size(1920, 1080), (1920, 1080));
        assert_eq!(share_size(1280, 800), (1280, 800));
        assert_eq!(share_size(3840, 2160), (1920, 1080));
        assert_eq!(share_size(2560, 1600), (1728, 1080));
        assert_eq!(share_size(1921, 1081), (1918, 1080));
        assert_eq!(share_size(1366, 768), (1366, 768));
        assert_eq!(share_size(0, 0), (16, 16));
    }

    #[test]
    fn the_test_picture_is_text_on_white_and_the_same_every_time() {
        let a = ScreenPicture::rgba(640, 360);
        assert_eq!(a, ScreenPicture::rgba(640, 360));
        let dark = a.chunks(4).filter(|p| p[0] < 60).count();
        let white = a.chunks(4).filter(|p| p[0] == 255).count();
        let pixels = 640 * 360;
        // Mostly page, with a good share of glyph pixels: text, not a blank page.
        assert!(white > pixels / 2, "{white} white of {pixels}");
        assert!(dark > pixels / 20, "{dark} dark of {pixels}");
    }

    #[test]
    fn the_synthetic_share_is_stamped_and_numbered() {
        let mut screen = SyntheticScreen::new(1280, 720, 7);
        for n in 0..3 {
            let frame = screen.capture(1_000 + n).expect("synthetic capture");
            assert_eq!((frame.width, frame.height), (1280, 720));
            let mut rgba = RgbaFrame::default();
            frame.to_rgba(&mut rgba);
            let stamp = read_stamp(&rgba).expect("a stamp");
            assert_eq!((stamp.source, stamp.number), (7, n as u32));
        }
    }

    #[test]
    fn bgrx_converts_like_rgba() {
        let rgba = ScreenPicture::rgba(64, 48);
        let bgrx: Vec<u8> = rgba.chunks(4).flat_map(|p| [p[2], p[1], p[0], 0]).collect();
        let a = I420Frame::from_rgba(&rgba, 64, 48);
        let b = bgrx_to_i420(&bgrx, 64, 48, 64 * 4);
        assert_eq!((a.y(), a.u(), a.v()), (b.y(), b.u(), b.v()));
    }

    #[test]
    fn a_wayland_session_without_x11_is_told_about_the_portal() {
        let named = no_display(Some(":5"), true, "refused").to_string();
        assert!(named.contains("cannot open display :5: refused"), "{named}");
        // Without any display named (DISPLAY unset, as on CI): the portal, or "not set".
        if std::env::var_os("DISPLAY").is_none() {
            let wayland = no_display(None, true, "refused").to_string();
            assert!(
                wayland.contains("Wayland") && wayland.contains("portal"),
                "{wayland}"
            );
            let neither = no_display(None, false, "refused").to_string();
            assert!(neither.contains("DISPLAY is not set"), "{neither}");
        }
    }

    #[test]
    fn no_x_display_is_a_clear_error() {
        let source = ScreenSource::X11 {
            display: Some(":9999".into()),
            window: None,
        };
        let err = open(&source).err().expect("no display :9999");
        assert!(
            err.to_string().contains("cannot open display :9999"),
            "{err}"
        );
    }

    #[test]
    fn the_synthetic_share_is_compared_with_the_page_whatever_its_stamp_and_size() {
        let mut reference = None;
        let mut share = SyntheticScreen::new(1920, 1080, 3);
        let mut rgba = RgbaFrame::default();
        share.capture(123_456).expect("picture").to_rgba(&mut rgba);
        // The stamp and the moving block are left out: the rest is the page itself.
        let same = synthetic_share_psnr(&rgba, &mut reference).expect("comparable");

        assert!(same > 90.0, "{same}");
        // A blank picture is far from it.
        let blank = RgbaFrame {
            pixels: vec![255; rgba.pixels.len()],
            ..rgba.clone()
        };
        let far = synthetic_share_psnr(&blank, &mut reference).expect("comparable");
        assert!(far < 15.0, "{far}");
        // A half-size picture is compared with the page scaled as the encoder scales it.
        let picture = share.capture(0).expect("picture");
        let half = I420Scaler::default()
            .scale(&picture, 960, 540)
            .expect("scaled");
        half.to_rgba(&mut rgba);
        let scaled = synthetic_share_psnr(&rgba, &mut reference).expect("comparable");
        // The scaler's filter spreads the stamp's edge a row into the compared area: close to
        // the page, not identical.
        assert!(scaled > 45.0, "{scaled}");
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;
    use crate::media::codec::{H264Decoder, H264Encoder};
    use crate::media::frame::RgbaFrame;

    /// The screen encoder on the synthetic share at the top rung's budget: the first keyframe
    /// is large (dense one-pixel text), rate control skips frames to pay for it, then every
    /// frame codes and the static text sharpens. Sizes and PSNR are printed.
    #[test]
    fn the_screen_encoder_keeps_a_text_page_sharp_at_the_top_rungs_budget() {
        let mut screen = SyntheticScreen::new(1920, 1080, 1);
        let mut enc = H264Encoder::for_screen(1920, 1080, 2_500_000, 15.0).unwrap();
        let mut dec = H264Decoder::new().unwrap();
        let (mut out, mut src) = (RgbaFrame::default(), RgbaFrame::default());
        let (mut coded, mut last_psnr) = (0, 0.0);
        for n in 0..45u64 {
            let frame = screen.capture(n * 66_667).unwrap();
            let Some(unit) = enc.encode(&frame, false).unwrap() else {
                continue;
            };
            coded += 1;
            assert!(dec.decode(&unit.data, &mut out).unwrap());
            frame.to_rgba(&mut src);
            last_psnr = out.luma_psnr(&src).expect("same size");
            eprintln!(
                "frame {n}: {} bytes, keyframe {}, luma PSNR {last_psnr:.1} dB",
                unit.data.len(),
                unit.keyframe
            );
        }
        assert!(coded >= 15, "{coded} of 45 frames coded");
        assert!(last_psnr >= 35.0, "{last_psnr:.1} dB");
    }
}

//! An Xvfb X server on a display number it picks itself, for the benchmark and the tests that
//! need a real display (screen capture, the desktop app). Imports nothing of Huddle's.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum XvfbError {
    #[error("cannot start Xvfb (install the xvfb package): {0}")]
    Spawn(std::io::Error),
    #[error("Xvfb did not start (it said {0:?})")]
    NoDisplay(String),
}

/// A running Xvfb, stopped when dropped.
pub struct Xvfb {
    child: Child,
    /// `:N`, for `DISPLAY`.
    pub display: String,
}

impl Xvfb {
    /// The X server's process (for its CPU time in benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts one with a `width`x`height` 24-bit screen and returns once it accepts
    /// connections. Blocking (until Xvfb reports its display, or exits).
    pub fn start(width: usize, height: usize) -> Result<Xvfb, XvfbError> {
        let mut child = Command::new("Xvfb")
            .args([
                // Xvfb picks a free display and writes its number here once it is ready, so
                // servers started at once never race for a number, and nobody polls for a socket.
                "-displayfd",
                "1",
                "-screen",
                "0",
                &format!("{width}x{height}x24"),
                // A picture drawn before a share must stay when its client leaves: without this
                // the server resets when its last client disconnects.
                "-noreset",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(XvfbError::Spawn)?;
        let mut line = String::new();
        let read = match child.stdout.take() {
            // Xvfb exiting closes the pipe: an empty line, reported below.
            Some(stdout) => BufReader::new(stdout).read_line(&mut line).is_ok(),
            None => false,
        };
        match line.trim().parse::<u32>() {
            Ok(number) if read => Ok(Xvfb {
                child,
                display: format!(":{number}"),
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(XvfbError::NoDisplay(line))
            }
        }
    }
}

/// How long a stopped Xvfb gets to remove its socket and lock file before it is killed.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for Xvfb {
    /// SIGTERM, so Xvfb removes its socket and lock file (killed, it leaves both behind);
    /// killed if it has not gone within `STOP_GRACE`.
    fn drop(&mut self) {
        // SAFETY: sending a signal to our own child process, which has not been reaped.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
                _ => return,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_servers_started_together_get_their_own_displays() {
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| Xvfb::start(320, 240));
            let b = s.spawn(|| Xvfb::start(320, 240));
            (a.join().unwrap(), b.join().unwrap())
        });
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.display.starts_with(':') && b.display.starts_with(':'));
        assert_ne!(a.display, b.display);
        for x in [&a, &b] {
            let number = &x.display[1..];
            assert!(
                std::path::Path::new(&format!("/tmp/.X11-unix/X{number}")).exists(),
                "{} has its socket",
                x.display
            );
        }
        let gone = a.display.clone();
        drop(a);
        assert!(!std::path::Path::new(&format!("/tmp/.X11-unix/X{}", &gone[1..])).exists());
    }
}

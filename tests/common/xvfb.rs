//! An Xvfb X server for tests that need a real display (screen capture, the app's share).

use std::io::BufRead;
use std::process::{Child, Command as Process, Stdio};

/// An Xvfb server on a display it picked itself, stopped on drop.
pub struct Xvfb {
    child: Child,
    pub display: String,
}

impl Xvfb {
    /// Starts one and returns once it accepts connections.
    pub fn start(width: usize, height: usize) -> Xvfb {
        let mut child = Process::new("Xvfb")
            .args([
                // Xvfb picks a free display and writes its number here once it is ready, so
                // tests running at once never race for a number.
                "-displayfd",
                "1",
                "-screen",
                "0",
                &format!("{width}x{height}x24"),
                // The test's drawing client disconnects before capture starts; without this the
                // server resets, and the picture with it, when its last client leaves.
                "-noreset",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("Xvfb runs (scripts/setup --test installs it)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("Xvfb reports its display");
        let number: u32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("Xvfb did not start (it said {line:?})"));
        Xvfb {
            child,
            display: format!(":{number}"),
        }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

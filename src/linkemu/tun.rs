//! The I/O half of the link emulator: creates the two namespaces and their TUN devices with `ip`,
//! and runs one forwarding thread per direction that reads packets from one TUN device, asks the
//! direction's model when each leaves, and writes it into the other device at that time.

use super::model::{Direction, DirectionStats, LinkProfile, Verdict};
use super::{ADDR_A, ADDR_B, LinkError, Side};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Name of the TUN device inside each namespace.
const DEVICE: &str = "hud0";
/// Most packets one direction holds in flight; past it packets are dropped and counted.
const MAX_IN_FLIGHT: usize = 50_000;
/// Longest a forwarding thread sleeps before it looks at the stop flag again.
const POLL_MS: i32 = 5;
/// `_IOW('T', 202, int)`
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A running emulated link. Dropping it stops the forwarders and deletes both namespaces (the
/// processes still inside them lose their network).
pub struct LinkEmulator {
    namespaces: [String; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    directions: [Arc<Mutex<Direction>>; 2],
    epoch: Instant,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn ip(args: &[&str]) -> Result<(), LinkError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| LinkError::Unavailable(format!("cannot run `ip`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LinkError::Setup(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The process that made an emulator namespace, from its name (`hudemu-PID-N-a`).
fn owner_pid(namespace: &str) -> Option<u32> {
    namespace
        .strip_prefix("hudemu-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Deletes namespaces an earlier, killed run left behind (its process id is gone).
fn remove_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

/// Opens a new TUN device named `DEVICE` inside namespace `ns`. The descriptor stays tied to
/// that namespace's device whichever namespace later uses it, so a short-lived thread enters
/// the namespace, opens it and hands it back.
fn open_tun_in(ns: &str) -> Result<OwnedFd, LinkError> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::Builder::new()
        .name("linkemu-open".into())
        .spawn(move || -> Result<OwnedFd, LinkError> {
            let ns_file = File::open(&path)
                .map_err(|e| LinkError::Setup(format!("cannot open {path}: {e}")))?;
            // SAFETY: setns on a valid namespace descriptor changes only this thread's namespace.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(LinkError::Unavailable(format!(
                    "setns: {}",
                    std::io::Error::last_os_error()
                )));
            }
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .map_err(|e| LinkError::Unavailable(format!("/dev/net/tun: {e}")))?;
            let mut req = IfReq {
                name: [0; libc::IFNAMSIZ],
                flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
                _pad: [0; 22],
            };
            req.name[..DEVICE.len()].copy_from_slice(DEVICE.as_bytes());
            // SAFETY: TUNSETIFF reads an ifreq-sized struct from a pointer that outlives the call.
            if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } != 0 {
                return Err(LinkError::Setup(format!(
                    "TUNSETIFF: {}",
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: the descriptor is valid; O_NONBLOCK only changes how reads behave.
            unsafe {
                let flags = libc::fcntl(tun.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(tun.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
            Ok(OwnedFd::from(tun))
        })
        .map_err(|e| LinkError::Setup(format!("thread: {e}")))?
        .join()
        .map_err(|_| LinkError::Setup("TUN opener panicked".into()))?
}

impl LinkEmulator {
    /// Creates the namespaces and devices and starts forwarding with `profile`. The schedule
    /// (rate steps, outages) counts from now until `arm` is called again.
    pub fn start(profile: &LinkProfile, seed: u64) -> Result<LinkEmulator, LinkError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(LinkError::Unavailable(
                "needs root (network namespaces and TUN devices)".into(),
            ));
        }
        remove_stale_namespaces();
        let id = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let namespaces = [
            format!("hudemu-{pid}-{id}-a"),
            format!("hudemu-{pid}-{id}-b"),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let directions = [
            Arc::new(Mutex::new(Direction::new(profile.a_to_b.clone(), seed))),
            Arc::new(Mutex::new(Direction::new(
                profile.b_to_a.clone(),
                seed.wrapping_add(0x9e37_79b9),
            ))),
        ];
        let mut emulator = LinkEmulator {
            namespaces,
            stop,
            threads: Vec::new(),
            directions,
            epoch,
        };
        // From here on, dropping `emulator` on an error deletes what was created.
        for ns in &emulator.namespaces {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let tun_a = open_tun_in(&emulator.namespaces[0])?;
        let tun_b = open_tun_in(&emulator.namespaces[1])?;
        for (ns, addr) in emulator.namespaces.iter().zip([ADDR_A, ADDR_B]) {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                DEVICE,
            ])?;
            ip(&["-n", ns, "link", "set", DEVICE, "up"])?;
        }
        let a: Arc<File> = Arc::new(File::from(tun_a));
        let b: Arc<File> = Arc::new(File::from(tun_b));
        for (name, from, to, dir) in [
            ("linkemu-a-to-b", a.clone(), b.clone(), 0),
            ("linkemu-b-to-a", b, a, 1),
        ] {
            let stop = emulator.stop.clone();
            let direction = emulator.directions[dir].clone();
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || forward(from, to, direction, stop, epoch))
                .map_err(|e| LinkError::Setup(format!("thread: {e}")))?;
            emulator.threads.push(handle);
        }
        Ok(emulator)
    }

    /// Restarts the schedule's clock: rate steps and outages count from now.
    pub fn arm(&self) {
        let now = self.epoch.elapsed();
        for d in &self.directions {
            if let Ok(mut d) = d.lock() {
                d.arm(now);
            }
        }
    }

    /// Time since the schedule was armed.
    pub fn schedule_time(&self) -> Duration {
        let now = self.epoch.elapsed();
        self.directions[0]
            .lock()
            .map(|d| d.schedule_time(now))
            .unwrap_or_default()
    }

    /// Counters of the A → B (`Side::A`) or B → A (`Side::B`) direction.
    pub fn stats(&self, from: Side) -> DirectionStats {
        let i = match from {
            Side::A => 0,
            Side::B => 1,
        };
        self.directions[i]
            .lock()
            .map(|d| d.stats.clone())
            .unwrap_or_default()
    }

    /// The bottleneck rate from `from` in force now (`None`: unlimited).
    pub fn rate_now(&self, from: Side) -> Option<u64> {
        let now = self.epoch.elapsed();
        let i = match from {
            Side::A => 0,
            Side::B => 1,
        };
        self.directions[i]
            .lock()
            .ok()
            .and_then(|d| d.spec().rate_at(d.schedule_time(now)))
    }

    pub fn namespace(&self, side: Side) -> &str {
        match side {
            Side::A => &self.namespaces[0],
            Side::B => &self.namespaces[1],
        }
    }

    /// A command that runs `program` inside `side`'s namespace.
    pub fn command(&self, side: Side, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.namespace(side)])
            .arg(program);
        cmd
    }

    /// The same, for tokio.
    pub fn tokio_command(
        &self,
        side: Side,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> tokio::process::Command {
        tokio::process::Command::from(self.command(side, program))
    }
}

impl Drop for LinkEmulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

struct InFlight {
    due: Duration,
    seq: u64,
    packet: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// One direction: read what arrives on `from`, hold each packet until the model says it leaves,
/// write it to `to`. Polls at most `POLL_MS` at a time so it notices `stop`.
fn forward(
    from: Arc<File>,
    to: Arc<File>,
    direction: Arc<Mutex<Direction>>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) {
    let mut queue: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = epoch.elapsed();
        let wait_ms = queue
            .peek()
            .map(|Reverse(p)| p.due.saturating_sub(now).as_micros().div_ceil(1000) as i32)
            .unwrap_or(POLL_MS)
            .clamp(0, POLL_MS);
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        // Read everything waiting.
        loop {
            let n = match (&*from).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => break,
            };
            let now = epoch.elapsed();
            let Ok(mut d) = direction.lock() else { return };
            if let Verdict::Deliver(due) = d.offer_packet(now, &buf[..n]) {
                if queue.len() >= MAX_IN_FLIGHT {
                    d.overflowed(n);
                } else {
                    seq += 1;
                    queue.push(Reverse(InFlight {
                        due,
                        seq,
                        packet: buf[..n].to_vec(),
                    }));
                }
            }
        }
        let now = epoch.elapsed();
        while queue.peek().is_some_and(|Reverse(p)| p.due <= now) {
            if let Some(Reverse(p)) = queue.pop() {
                // A packet the receiving stack refuses is lost, as on a real link.
                let _ = (&*to).write(&p.packet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_the_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn stale_namespaces_are_recognised_by_their_owner() {
        assert_eq!(owner_pid("hudemu-4242-3-a"), Some(4242));
        assert_eq!(owner_pid("hudemu-x-3-a"), None);
        assert_eq!(owner_pid("other-4242-3-a"), None);
    }
}

//! A process's own accounting from /proc (Linux): CPU seconds used, resident memory now and at
//! its peak, split into anonymous and file-backed pages. Used by the headless peer to report
//! itself and by the benchmark for the server and the app.

use std::time::Duration;

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Usage {
    /// User + system CPU time.
    pub cpu_seconds: f64,
    pub rss_mb: f64,
    pub peak_rss_mb: f64,
    /// The process's own heap, stacks and other private memory (`RssAnon`).
    pub rss_anon_mb: f64,
    /// Pages of mapped files: the executable's and shared libraries' code and data, clean and
    /// shared with every other process mapping them (`RssFile`).
    pub rss_file_mb: f64,
    /// Shared memory, e.g. MIT-SHM images shared with the X server (`RssShmem`).
    pub rss_shmem_mb: f64,
}

/// Usage of process `pid`, or of this process when `None`. `None` when /proc is unreadable.
pub fn usage(pid: Option<u32>) -> Option<Usage> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some(Usage {
        cpu_seconds: ticks / clock_ticks_per_second(),
        rss_mb: kb("VmRSS:") / 1024.0,
        peak_rss_mb: kb("VmHWM:") / 1024.0,
        rss_anon_mb: kb("RssAnon:") / 1024.0,
        rss_file_mb: kb("RssFile:") / 1024.0,
        rss_shmem_mb: kb("RssShmem:") / 1024.0,
    })
}

/// The mapped files of process `pid` holding the most resident memory, largest first, at most
/// `count` of them, as (path, MB). `None` when /proc/PID/smaps is unreadable.
pub fn largest_resident_files(pid: u32, count: usize) -> Option<Vec<(String, f64)>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(largest_files_in_smaps(&smaps, count))
}

fn largest_files_in_smaps(smaps: &str, count: usize) -> Vec<(String, f64)> {
    let mut by_file: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    let mut current: Option<&str> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        // A mapping's header is "START-END PERMS OFFSET DEV INODE [PATH]"; its fields follow as
        // "Key: value kB". Only mappings with an absolute path are files; no field before the
        // path holds a '/', and the path may hold spaces.
        if first.contains('-') && !first.ends_with(':') {
            current = line.find('/').map(|start| line[start..].trim_end());
        } else if first == "Rss:"
            && let (Some(file), Some(kb)) =
                (current, words.next().and_then(|v| v.parse::<f64>().ok()))
        {
            *by_file.entry(file).or_default() += kb / 1024.0;
        }
    }
    let mut files: Vec<(String, f64)> = by_file
        .into_iter()
        .map(|(f, mb)| (f.to_owned(), mb))
        .collect();
    files.sort_by(|a, b| b.1.total_cmp(&a.1));
    files.truncate(count);
    files
}

/// How long this process has existed: from the kernel's record of its start (`starttime` in
/// /proc/self/stat, in clock ticks since boot) to now (/proc/uptime). Both are in hundredths of
/// a second here, so the figure is good to about 20 ms. It covers what an `Instant` taken in
/// `main` would miss: exec, dynamic linking and everything before `main`.
pub fn process_age() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // starttime is field 22 of the full line: 19 after the name.
    let start_ticks: f64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let up_secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let age = up_secs - start_ticks / clock_ticks_per_second();
    (age >= 0.0).then(|| Duration::from_secs_f64(age))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds per wall second between two readings.
pub fn cpu_share(before: &Usage, after: &Usage, wall: Duration) -> f64 {
    (after.cpu_seconds - before.cpu_seconds) / wall.as_secs_f64().max(1e-9)
}

/// Raises this process's open-file limit to its hard maximum (many sockets in load tests).
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_age_covers_time_spent_in_the_process() {
        let age_then = process_age().expect("/proc is readable");
        let t0 = std::time::Instant::now();
        // Spend a measured 100 ms in this process (no sleep: the figure is wall time either way).
        while t0.elapsed() < Duration::from_millis(100) {
            std::hint::spin_loop();
        }
        let age_now = process_age().expect("/proc is readable");
        let grew = age_now.saturating_sub(age_then).as_secs_f64();
        // Both readings are in hundredths of a second.
        assert!(
            (0.07..0.2).contains(&grew),
            "the age grew by {grew} s over 100 ms"
        );
    }

    #[test]
    fn reads_its_own_usage() {
        let a = usage(None).expect("/proc/self readable");
        // Burn a little CPU so the counter moves.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = usage(None).unwrap();
        assert!(b.cpu_seconds >= a.cpu_seconds);
        assert!(b.rss_mb > 1.0 && b.peak_rss_mb >= b.rss_mb);
        assert!(usage(Some(u32::MAX)).is_none());
        // The split adds up to the whole (all three are read from one snapshot of status).
        let parts = b.rss_anon_mb + b.rss_file_mb + b.rss_shmem_mb;
        assert!(
            (parts - b.rss_mb).abs() < 0.01,
            "{parts} MB of parts, {} MB resident",
            b.rss_mb
        );
        assert!(b.rss_anon_mb > 0.0 && b.rss_file_mb > 0.0);
    }

    #[test]
    fn resident_memory_is_summed_per_mapped_file() {
        let smaps = "\
55d7a000-55d7b000 r--p 00000000 fe:01 123   /usr/bin/app
Rss:                 100 kB
55d7b000-55d7c000 r-xp 00001000 fe:01 123   /usr/bin/app
Rss:                 412 kB
7f00000-7f10000 rw-p 00000000 00:00 0
Rss:                9000 kB
7f20000-7f30000 r-xp 00000000 fe:01 9   /usr/lib/lib with space.so
Rss:                2048 kB
7f40000-7f50000 rw-p 00000000 00:00 0   [heap]
Rss:                5000 kB
";
        let files = largest_files_in_smaps(smaps, 5);
        assert_eq!(
            files,
            vec![
                ("/usr/lib/lib with space.so".to_owned(), 2.0),
                ("/usr/bin/app".to_owned(), 0.5)
            ]
        );
        assert_eq!(largest_files_in_smaps(smaps, 1).len(), 1);
        let mine = largest_resident_files(std::process::id(), 3).expect("own smaps readable");
        assert!(!mine.is_empty() && mine.windows(2).all(|w| w[0].1 >= w[1].1));
    }
}

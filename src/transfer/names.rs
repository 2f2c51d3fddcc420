//! Safe names for received files: whatever name a peer offers becomes one plain file name inside
//! the download folder (no path components, no `..`, no control characters, no reserved device
//! names, bounded length), and a new file never replaces an existing one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Longest file name we create, in bytes (most file systems allow 255; ".part" and " (99)" fit).
pub const MAX_NAME_BYTES: usize = 200;
const FALLBACK: &str = "received file";

/// Windows device names, unsafe as file names there and confusing everywhere.
const RESERVED: &[&str] = &[
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

/// Turns an offered name into a safe single file name.
pub fn sanitize(offered: &str) -> String {
    // Only the last path component counts, whichever separator the sender's system uses.
    let last = offered.rsplit(['/', '\\']).next().unwrap_or("");
    let mut name: String = last
        .chars()
        .map(|c| match c {
            c if c.is_control() => '_',
            ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect();
    // Leading dots would hide the file (or make "." / ".."); trailing dots and spaces are
    // dropped by Windows.
    name = name.trim_start_matches(['.', ' ']).to_owned();
    name = name.trim_end_matches(['.', ' ']).to_owned();
    if name.is_empty() {
        name = FALLBACK.to_owned();
    }
    let stem = name.split('.').next().unwrap_or("").to_ascii_lowercase();
    if RESERVED.contains(&stem.trim()) {
        name = format!("_{name}");
    }
    truncate_keeping_extension(&name, MAX_NAME_BYTES)
}

/// Shortens `name` to at most `max` bytes on a character boundary, keeping a short extension.
fn truncate_keeping_extension(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_owned();
    }
    let (stem, ext) = match name.rfind('.') {
        Some(i) if name.len() - i <= 16 && i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let mut cut = max - ext.len();
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &stem[..cut], ext)
}

/// `name`, `name (1)`, `name (2)`, ... with the number before the extension.
fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rfind('.') {
        Some(i) if i > 0 => format!("{} ({n}){}", &name[..i], &name[i..]),
        _ => format!("{name} ({n})"),
    }
}

/// A place to receive into: the `.part` file (created and open) and the final path it will be
/// renamed to. Both names are free when chosen; the `.part` is created exclusively.
pub struct Reserved {
    pub part_path: PathBuf,
    pub final_path: PathBuf,
    pub file: File,
}

/// Picks the first free `name (n)` in `dir` and creates its `.part` file exclusively.
pub fn reserve(dir: &Path, safe_name: &str) -> io::Result<Reserved> {
    std::fs::create_dir_all(dir)?;
    for n in 0..10_000 {
        let final_name = numbered(safe_name, n);
        let final_path = dir.join(&final_name);
        let part_path = dir.join(format!("{final_name}.part"));
        if final_path.exists() {
            continue;
        }
        match OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&part_path)
        {
            Ok(file) => {
                return Ok(Reserved {
                    part_path,
                    final_path,
                    file,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free file name"))
}

/// Moves a finished `.part` to its final name without ever replacing an existing file: if the
/// name was taken meanwhile, the next free number is used. Returns the path used.
pub fn finish(part_path: &Path, final_path: &Path) -> io::Result<PathBuf> {
    let dir = final_path.parent().unwrap_or(Path::new("."));
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| FALLBACK.to_owned());
    let base = strip_number(&name);
    for n in 0..10_000 {
        let candidate = if n == 0 {
            final_path.to_path_buf()
        } else {
            dir.join(numbered(&base, n))
        };
        // Another transfer has reserved this name with its own `.part`.
        let reserved = PathBuf::from(format!("{}.part", candidate.display()));
        if reserved != part_path && reserved.exists() {
            continue;
        }
        // A hard link fails if the target exists: an atomic "rename unless taken".
        match std::fs::hard_link(part_path, &candidate) {
            Ok(()) => {
                std::fs::remove_file(part_path)?;
                return Ok(candidate);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free file name"))
}

/// "a (3).txt" → "a.txt", so renumbering starts from the plain name.
fn strip_number(name: &str) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    if let Some(open) = stem.rfind(" (")
        && stem.ends_with(')')
        && stem[open + 2..stem.len() - 1]
            .chars()
            .all(|c| c.is_ascii_digit())
        && stem.len() > open + 3
    {
        return format!("{}{}", &stem[..open], ext);
    }
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_become_plain_names() {
        let cases = [
            ("../../etc/passwd", "passwd"),
            ("/etc/shadow", "shadow"),
            ("C:\\Windows\\x", "x"),
            ("con", "_con"),
            ("CON.txt", "_CON.txt"),
            ("a\u{0}b", "a_b"),
            ("", "received file"),
            (".", "received file"),
            ("..", "received file"),
            (".bashrc", "bashrc"),
            ("report?.pdf", "report_.pdf"),
            ("dir/", "received file"),
            ("trailing. . ", "trailing"),
        ];
        for (offered, expected) in cases {
            assert_eq!(sanitize(offered), expected, "{offered:?}");
        }
        let long = format!("{}.tar.gz", "é".repeat(150));
        let s = sanitize(&long);
        assert!(s.len() <= MAX_NAME_BYTES && s.ends_with(".gz"), "{s}");
        let s = sanitize(&"x".repeat(300));
        assert_eq!(s.len(), MAX_NAME_BYTES);
    }

    #[test]
    fn never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "mine").unwrap();
        let r1 = reserve(dir.path(), "a.txt").unwrap();
        assert_eq!(r1.final_path, dir.path().join("a (1).txt"));
        assert_eq!(r1.part_path, dir.path().join("a (1).txt.part"));
        let r2 = reserve(dir.path(), "a.txt").unwrap();
        assert_eq!(r2.final_path, dir.path().join("a (2).txt"));
        // Someone takes "a (1).txt" before r1 finishes: r1 moves on to the next free name.
        std::fs::write(dir.path().join("a (1).txt"), "taken").unwrap();
        std::fs::write(&r1.part_path, "data").unwrap();
        let done = finish(&r1.part_path, &r1.final_path).unwrap();
        assert_eq!(done, dir.path().join("a (3).txt"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.txt")).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a (1).txt")).unwrap(),
            "taken"
        );
        assert!(!r1.part_path.exists());
        assert_eq!(strip_number("x (12).bin"), "x.bin");
        assert_eq!(strip_number("x (a).bin"), "x (a).bin");
    }
}

//! The `huddle` binary's command line: invalid input gets a clear message and a failure
//! status, never a crash.

use std::process::Command;

fn huddle(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_huddle"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{text}");
    (out.status.success(), text)
}

#[test]
fn malformed_invite_links_are_clear_errors() {
    for (link, words) in [
        ("huddle://", "no server address"),
        ("huddle://host:99999/room", "port"),
        ("huddle://host", "does not name a room"),
        ("huddle://host/%zz", "escape"),
        ("huddle://host/..%2Fetc", "room name"),
    ] {
        let (ok, text) = huddle(&[link]);
        assert!(!ok, "{link} should fail");
        assert!(
            text.contains("cannot open") && text.contains(words),
            "{link}: {text}"
        );
    }
}

#[test]
fn bad_options_are_clear_errors() {
    let (ok, text) = huddle(&["serve", "--ice-server", "turn:no-credentials.example"]);
    assert!(!ok && text.contains("needs USER:PASS"), "{text}");
    let (ok, text) = huddle(&["join", "--room", "r", "--name", "n"]);
    assert!(!ok && text.contains("--headless"), "{text}");
    let (ok, text) = huddle(&[
        "join",
        "--headless",
        "--room",
        "r",
        "--name",
        "n",
        "--video",
        "test:9x9",
    ]);
    assert!(!ok && text.contains("bad video size"), "{text}");
    let (ok, text) = huddle(&["bench", "--only", "everything"]);
    assert!(!ok && text.contains("unknown section"), "{text}");
}

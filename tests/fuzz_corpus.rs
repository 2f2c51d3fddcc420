//! Replays the decoder fuzzer's corpus (`fuzz/corpus/decode`) on stable Rust: every input that
//! the fuzzer found interesting still decodes or fails cleanly, and round-trips when it decodes.

use huddle::signaling::protocol;

#[test]
fn the_decode_corpus_round_trips_or_fails_cleanly() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut inputs = 0;
    let mut decoded = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus is in the repository") {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        inputs += 1;
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(msg) = protocol::decode_client(text) {
            decoded += 1;
            let again = protocol::decode_client(&protocol::encode(&msg)).unwrap();
            assert_eq!(again, msg, "{text}");
        }
        if let Ok(msg) = protocol::decode_server(text) {
            decoded += 1;
            let again = protocol::decode_server(&protocol::encode(&msg)).unwrap();
            assert_eq!(again, msg, "{text}");
        }
    }
    // The seeds alone are 29 documented messages.
    assert!(inputs >= 29, "only {inputs} corpus files");
    assert!(decoded >= 29, "only {decoded} inputs decode");
}

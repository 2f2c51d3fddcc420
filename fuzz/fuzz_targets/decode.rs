//! Any bytes as a client's or a server's text frame: decoding never panics, and whatever
//! decodes encodes back to JSON that decodes to the same message.
#![no_main]

use huddle_fuzz::protocol::{self, ClientMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = protocol::decode_client(text) {
        let again = protocol::decode_client(&protocol::encode(&msg)).expect("re-decodes");
        assert_eq!(again, msg);
        if let ClientMessage::Join { access, .. } = &msg {
            // Secrets never reach logs through Debug: it reads the same whatever they are.
            let blank = |s: &Option<String>| s.as_ref().map(|_| String::from("x"));
            let blanked = protocol::JoinAccess {
                password: blank(&access.password),
                token: blank(&access.token),
                rejoin_token: blank(&access.rejoin_token),
                private: access.private,
            };
            assert_eq!(format!("{access:?}"), format!("{blanked:?}"));
        }
    }
    if let Ok(msg) = protocol::decode_server(text) {
        let again = protocol::decode_server(&protocol::encode(&msg)).expect("re-decodes");
        assert_eq!(again, msg);
    }
});

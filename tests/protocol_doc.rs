//! Keeps `docs/protocol.md` and `src/signaling/protocol.rs` in step: every example decodes into the
//! types and encodes back to the same JSON, every message type has an example, and every error
//! code is in the table.

use huddle::signaling::protocol::{
    self, CLIENT_MESSAGE_TYPES, ClientMessage, ErrorCode, ServerMessage,
};
use std::collections::BTreeSet;

/// (kind, body) for each fenced block tagged `json KIND` (client, server, payload, transfer,
/// webhook).
fn examples(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(kind) = line.strip_prefix("```json ") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            out.push((kind.trim().to_owned(), body.join("\n")));
        }
    }
    out
}

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md"))
        .expect("docs/protocol.md exists")
}

#[test]
fn every_documented_example_round_trips() {
    let doc = doc();
    let examples = examples(&doc);
    assert!(
        examples.len() > 20,
        "found only {} examples",
        examples.len()
    );
    let mut client_types = BTreeSet::new();
    let mut server_types = BTreeSet::new();
    let mut payload_kinds = BTreeSet::new();
    let mut transfer_types = BTreeSet::new();
    let mut webhook_events = BTreeSet::new();
    for (kind, body) in examples {
        let original: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
        let reencoded = match kind.as_str() {
            "client" => {
                let msg: ClientMessage =
                    protocol::decode_client(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
                protocol::encode(&msg)
            }
            "server" => {
                let msg: ServerMessage =
                    protocol::decode_server(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
                protocol::encode(&msg)
            }
            "payload" => {
                let env: huddle::rtc::Envelope =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
                serde_json::to_string(&env).unwrap()
            }
            "transfer" => {
                let msg = huddle::transfer::protocol::decode_control(body.as_bytes())
                    .unwrap_or_else(|e| panic!("{body}: {e}"));
                huddle::transfer::protocol::encode_control(&msg)
            }
            "webhook" => {
                let body: huddle::signaling::webhook::WebhookBody =
                    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
                serde_json::to_string(&body).unwrap()
            }
            other => panic!("unknown example kind {other}"),
        };
        let back: serde_json::Value = serde_json::from_str(&reencoded).unwrap();
        assert_eq!(back, original, "example does not round-trip exactly");
        match kind.as_str() {
            "client" => {
                client_types.insert(original["type"].as_str().unwrap().to_owned());
            }
            "server" => {
                server_types.insert(original["type"].as_str().unwrap().to_owned());
            }
            "payload" => {
                payload_kinds.insert(original["kind"].as_str().unwrap().to_owned());
            }
            "webhook" => {
                webhook_events.insert(original["event"].as_str().unwrap().to_owned());
            }
            _ => {
                transfer_types.insert(original["type"].as_str().unwrap().to_owned());
            }
        }
    }
    let expected: BTreeSet<String> = CLIENT_MESSAGE_TYPES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        client_types, expected,
        "every client message has an example"
    );
    let server_expected: BTreeSet<String> = [
        "welcome",
        "room_list",
        "room_updated",
        "room_closed",
        "joined",
        "rejoin_token",
        "peer_joined",
        "peer_left",
        "left",
        "chat",
        "relay",
        "nickname_changed",
        "hand_changed",
        "reaction",
        "pong",
        "error",
        "room_mode",
        "sfu_moved",
        "sfu_published",
        "sfu_offer",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        server_types, server_expected,
        "every server message has an example"
    );
    let webhook_expected: BTreeSet<String> = [
        "room_started",
        "participant_joined",
        "participant_left",
        "room_finished",
        "sfu_switch",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        webhook_events, webhook_expected,
        "every webhook event has an example"
    );
}

#[test]
fn every_error_code_is_documented() {
    let doc = doc();
    for &code in ErrorCode::ALL {
        // The serde name and `as_str` agree, and the table has a row for it.
        let json = serde_json::to_string(&code).unwrap();
        assert_eq!(json, format!("\"{}\"", code.as_str()));
        assert!(
            doc.contains(&format!("| `{}` |", code.as_str())),
            "{code} missing from the error table"
        );
    }
}

//! The file-transfer protocol on the data channel: JSON text messages for control, binary frames
//! for data (`0x01`, transfer id u64, offset u64, bytes; big-endian). Documented in
//! `docs/protocol.md`, "File transfer".

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest data-channel message either side sends (the SCTP default both peers negotiate).
pub const MAX_MESSAGE: usize = 64 * 1024;
const CHUNK_TAG: u8 = 0x01;
pub const CHUNK_HEADER: usize = 1 + 8 + 8;
/// Data bytes per chunk, so a whole chunk frame fits in one message.
pub const CHUNK_DATA: usize = MAX_MESSAGE - CHUNK_HEADER;
/// Longest control message accepted (an offer with a 255-byte name is far below this).
pub const MAX_CONTROL: usize = 4096;

/// Identifies a transfer on both sides; chosen by the sender at random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub u64);

impl fmt::Display for TransferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl Serialize for TransferId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for TransferId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 16 {
            return Err(serde::de::Error::custom(
                "transfer id must be 16 hex digits",
            ));
        }
        u64::from_str_radix(&s, 16)
            .map(TransferId)
            .map_err(|_| serde::de::Error::custom("transfer id must be 16 hex digits"))
    }
}

/// Control messages, both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// Sender → receiver: a file is on offer. Re-sent after a reconnect until answered.
    Offer {
        id: TransferId,
        name: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        media_type: Option<String>,
        /// SHA-256 of the whole file, hex, when the sender knows it up front.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// Receiver → sender: send from `offset` (0 for a fresh transfer).
    Accept { id: TransferId, offset: u64 },
    /// Receiver → sender: no.
    Decline { id: TransferId, reason: String },
    /// Receiver → sender: bytes written to disk so far (flow control and progress).
    Progress { id: TransferId, received: u64 },
    /// Sender → receiver: every byte has been sent; this is the whole file's SHA-256.
    Done { id: TransferId, sha256: String },
    /// Receiver → sender: the file arrived, its hash matched, and it was saved.
    Complete { id: TransferId },
    /// Either side: this transfer is over and will not resume.
    Cancel { id: TransferId, reason: String },
    /// Receiver → sender: stop sending for now (e.g. disk full); the receiver may `resume`.
    Pause { id: TransferId, reason: String },
    /// Receiver → sender, after a reconnect or a pause: I hold `offset` verified bytes, go on.
    Resume { id: TransferId, offset: u64 },
}

/// One data frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub id: TransferId,
    pub offset: u64,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("control message is {0} bytes; the limit is {MAX_CONTROL}")]
    ControlTooLarge(usize),
    #[error("unreadable control message: {0}")]
    BadControl(String),
    #[error("binary frame is not a chunk (tag {0:#04x})")]
    UnknownFrame(u8),
    #[error("chunk frame too short ({0} bytes)")]
    ShortChunk(usize),
    #[error("chunk frame is {0} bytes; the limit is {MAX_MESSAGE}")]
    ChunkTooLarge(usize),
}

pub fn encode_control(msg: &Control) -> String {
    // Only strings and integers: serialization cannot fail.
    serde_json::to_string(msg).unwrap_or_default()
}

pub fn decode_control(text: &[u8]) -> Result<Control, WireError> {
    if text.len() > MAX_CONTROL {
        return Err(WireError::ControlTooLarge(text.len()));
    }
    serde_json::from_slice(text).map_err(|e| WireError::BadControl(e.to_string()))
}

pub fn encode_chunk(id: TransferId, offset: u64, data: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(CHUNK_HEADER + data.len());
    buf.put_u8(CHUNK_TAG);
    buf.put_u64(id.0);
    buf.put_u64(offset);
    buf.put_slice(data);
    buf
}

pub fn decode_chunk(frame: Bytes) -> Result<Chunk, WireError> {
    if frame.len() > MAX_MESSAGE {
        return Err(WireError::ChunkTooLarge(frame.len()));
    }
    if frame.len() < CHUNK_HEADER {
        return Err(WireError::ShortChunk(frame.len()));
    }
    if frame[0] != CHUNK_TAG {
        return Err(WireError::UnknownFrame(frame[0]));
    }
    let id = u64::from_be_bytes(frame[1..9].try_into().unwrap_or_default());
    let offset = u64::from_be_bytes(frame[9..17].try_into().unwrap_or_default());
    Ok(Chunk {
        id: TransferId(id),
        offset,
        data: frame.slice(CHUNK_HEADER..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip() {
        let frame = encode_chunk(TransferId(0xABCD), 1 << 40, b"hello");
        let c = decode_chunk(frame.freeze()).unwrap();
        assert_eq!(
            (c.id, c.offset, &c.data[..]),
            (TransferId(0xABCD), 1 << 40, &b"hello"[..])
        );
        assert_eq!(
            encode_chunk(TransferId(1), 0, &vec![0; CHUNK_DATA]).len(),
            MAX_MESSAGE
        );
    }

    #[test]
    fn bad_frames_are_errors() {
        assert_eq!(
            decode_chunk(Bytes::from_static(&[1, 2, 3])),
            Err(WireError::ShortChunk(3))
        );
        assert_eq!(
            decode_chunk(Bytes::from(vec![9u8; 20])),
            Err(WireError::UnknownFrame(9))
        );
        assert!(matches!(
            decode_chunk(Bytes::from(vec![1u8; MAX_MESSAGE + 1])),
            Err(WireError::ChunkTooLarge(_))
        ));
        assert!(decode_control(b"{\"type\":\"offer\"}").is_err());
        assert!(decode_control(&vec![b' '; MAX_CONTROL + 1]).is_err());
        assert!(decode_control(br#"{"type":"accept","id":"xyz","offset":0}"#).is_err());
    }

    #[test]
    fn control_json_form() {
        let m = Control::Accept {
            id: TransferId(255),
            offset: 7,
        };
        let text = encode_control(&m);
        assert_eq!(
            text,
            r#"{"type":"accept","id":"00000000000000ff","offset":7}"#
        );
        assert_eq!(decode_control(text.as_bytes()).unwrap(), m);
    }
}

//! Peer-to-peer file transfer over the data channel: the wire protocol (`protocol`), safe file
//! naming (`names`), the transfer state machine without I/O (`machine`) and the actor that does
//! the channel and disk I/O (`manager`). Depends on `ids` for peer ids only.

pub mod machine;
pub mod manager;
pub mod names;
pub mod protocol;

pub use machine::{Direction, TransferState, TransferUpdate};
pub use manager::{TransferCommand, TransferConfig, TransferEvent, TransferManager};
pub use protocol::TransferId;

//! The room chat as the app shows it: messages with sender, time and whether they are ours,
//! join/leave notices, history on join, and an unread count while the panel is collapsed.
//! Plain data; depends on `signaling::protocol` for the message type only.

use crate::ids::PeerId;
use crate::signaling::protocol::ChatMessage;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatEntry {
    Message {
        message: ChatMessage,
        own: bool,
    },
    /// "Bob joined", "Bob left", shown between messages.
    Notice {
        text: String,
        time_ms: u64,
    },
}

/// Longest chat log kept in memory (the server keeps 100; a long call can see more).
const MAX_ENTRIES: usize = 1000;

#[derive(Debug, Default)]
pub struct ChatLog {
    entries: Vec<ChatEntry>,
    unread: usize,
    panel_open: bool,
    /// Ids already shown, so history and live messages never appear twice.
    last_id: u64,
}

impl ChatLog {
    pub fn new(panel_open: bool) -> Self {
        ChatLog {
            panel_open,
            ..Default::default()
        }
    }

    pub fn entries(&self) -> &[ChatEntry] {
        &self.entries
    }

    pub fn unread(&self) -> usize {
        self.unread
    }

    pub fn is_open(&self) -> bool {
        self.panel_open
    }

    /// Opening the panel marks everything read.
    pub fn set_open(&mut self, open: bool) {
        self.panel_open = open;
        if open {
            self.unread = 0;
        }
    }

    /// Replaces the log with a room's history (on join).
    pub fn load_history(&mut self, history: &[ChatMessage], me: &PeerId) {
        self.entries.clear();
        self.unread = 0;
        self.last_id = 0;
        for m in history {
            self.push(m.clone(), me);
        }
        // History is not news.
        self.unread = 0;
    }

    /// Adds a live message; returns false for a duplicate.
    pub fn push(&mut self, message: ChatMessage, me: &PeerId) -> bool {
        if message.id != 0 && message.id <= self.last_id {
            return false;
        }
        self.last_id = self.last_id.max(message.id);
        let own = &message.from == me;
        if !own && !self.panel_open {
            self.unread += 1;
        }
        self.entries.push(ChatEntry::Message { message, own });
        self.trim();
        true
    }

    pub fn notice(&mut self, text: String, time_ms: u64) {
        self.entries.push(ChatEntry::Notice { text, time_ms });
        self.trim();
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.unread = 0;
        self.last_id = 0;
    }

    fn trim(&mut self) {
        if self.entries.len() > MAX_ENTRIES {
            let extra = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..extra);
        }
    }
}

/// "14:05" in UTC from a server time; the app shows local time when it can.
pub fn clock_time(time_ms: u64, utc_offset_secs: i64) -> String {
    let secs = (time_ms / 1000) as i64 + utc_offset_secs;
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}", day / 3600, (day % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64, from: &str, text: &str) -> ChatMessage {
        ChatMessage {
            id,
            from: from.into(),
            nickname: from.to_uppercase(),
            text: text.into(),
            time_ms: 1_000 * id,
        }
    }

    #[test]
    fn unread_counts_only_others_while_collapsed() {
        let me: PeerId = "me".into();
        let mut log = ChatLog::new(false);
        log.push(msg(1, "bob", "hi"), &me);
        log.push(msg(2, "me", "hello"), &me);
        log.push(msg(3, "bob", "how are you"), &me);
        assert_eq!(log.unread(), 2);
        log.set_open(true);
        assert_eq!(log.unread(), 0);
        log.push(msg(4, "bob", "?"), &me);
        assert_eq!(log.unread(), 0);
        assert!(matches!(
            &log.entries()[1],
            ChatEntry::Message { own: true, .. }
        ));
    }

    #[test]
    fn history_then_live_without_duplicates() {
        let me: PeerId = "me".into();
        let mut log = ChatLog::new(false);
        log.load_history(&[msg(5, "bob", "a"), msg(6, "me", "b")], &me);
        assert_eq!(log.unread(), 0);
        assert!(!log.push(msg(6, "me", "b"), &me), "already shown");
        log.notice("Cat joined".into(), 7_000);
        assert!(log.push(msg(7, "cat", "c"), &me));
        assert_eq!(log.entries().len(), 4);
        assert_eq!(log.unread(), 1);
    }

    #[test]
    fn clock_times() {
        assert_eq!(clock_time(0, 0), "00:00");
        assert_eq!(clock_time((13 * 3600 + 7 * 60) * 1000 + 999, 0), "13:07");
        assert_eq!(clock_time(0, -3600), "23:00");
    }
}

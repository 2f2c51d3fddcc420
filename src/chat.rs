//! The room chat as the app shows it: messages with sender, time and whether they are ours,
//! join/leave notices, history on join, an unread count while the panel is collapsed, which
//! messages share a sender's header, and the web links in a message's text. Plain data;
//! depends on `signaling::protocol` for the message type only.

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
/// Messages from one sender at most this far apart share one name-and-time header.
const GROUP_GAP_MS: u64 = 5 * 60 * 1000;

#[derive(Debug, Default)]
pub struct ChatLog {
    entries: Vec<ChatEntry>,
    unread: usize,
    panel_open: bool,
    /// Ids already shown, so history and live messages never appear twice.
    last_id: u64,
    /// Live messages from others since the call began, history excluded; never decreases, so
    /// a view can tell how many arrived since it last showed the newest.
    arrived_from_others: u64,
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
        self.arrived_from_others = 0;
    }

    /// Messages from others so far (see the field); history does not count.
    pub fn arrived_from_others(&self) -> u64 {
        self.arrived_from_others
    }

    /// Whether entry `index` is a message that continues the one before it: same sender, at
    /// most five minutes later. It is drawn under that one without its own name and time.
    pub fn continues_group(&self, index: usize) -> bool {
        let (Some(prev), Some(this)) = (
            index.checked_sub(1).and_then(|i| self.entries.get(i)),
            self.entries.get(index),
        ) else {
            return false;
        };
        match (prev, this) {
            (ChatEntry::Message { message: a, .. }, ChatEntry::Message { message: b, .. }) => {
                a.from == b.from && b.time_ms.saturating_sub(a.time_ms) <= GROUP_GAP_MS
            }
            _ => false,
        }
    }

    /// Adds a live message; returns false for a duplicate.
    pub fn push(&mut self, message: ChatMessage, me: &PeerId) -> bool {
        if message.id != 0 && message.id <= self.last_id {
            return false;
        }
        self.last_id = self.last_id.max(message.id);
        let own = &message.from == me;
        if !own {
            self.arrived_from_others += 1;
            if !self.panel_open {
                self.unread += 1;
            }
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

/// A piece of a message's text: plain text, or a web link to show clickable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextPiece<'a> {
    Text(&'a str),
    Link(&'a str),
}

/// Splits a message into text and `http`/`https` links, in order. Other schemes (`file:`,
/// `javascript:`, custom handlers) stay plain text: a chat line from a stranger should not be
/// one click away from running a local handler.
pub fn split_links(text: &str) -> Vec<TextPiece<'_>> {
    let mut finder = linkify::LinkFinder::new();
    finder.kinds(&[linkify::LinkKind::Url]);
    let mut pieces: Vec<TextPiece<'_>> = Vec::new();
    for span in finder.spans(text) {
        let s = span.as_str();
        let web = span.kind().is_some() && {
            let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
            lower.starts_with("http://") || lower.starts_with("https://")
        };
        match (web, pieces.last_mut()) {
            (true, _) => pieces.push(TextPiece::Link(s)),
            // A non-web link stays text, joined with the text around it.
            (false, Some(TextPiece::Text(prev))) => {
                let start = prev.as_ptr() as usize - text.as_ptr() as usize;
                *prev = &text[start..span.end()];
            }
            (false, _) => pieces.push(TextPiece::Text(s)),
        }
    }
    pieces
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
    fn messages_from_one_sender_close_together_share_a_header() {
        let me: PeerId = "me".into();
        let mut log = ChatLog::new(true);
        let at = |id, from: &str, time_ms| ChatMessage {
            time_ms,
            ..msg(id, from, "x")
        };
        log.push(at(1, "bob", 0), &me);
        log.push(at(2, "bob", 60_000), &me);
        log.push(at(3, "bob", 60_000 + GROUP_GAP_MS + 1), &me);
        log.push(at(4, "cat", 60_000 + GROUP_GAP_MS + 2), &me);
        log.notice("Dan joined".into(), 0);
        log.push(at(5, "cat", 60_000 + GROUP_GAP_MS + 3), &me);
        let grouped: Vec<bool> = (0..log.entries().len())
            .map(|i| log.continues_group(i))
            .collect();
        assert_eq!(grouped, [false, true, false, false, false, false]);
        assert!(!log.continues_group(99));
    }

    #[test]
    fn arrivals_from_others_count_live_messages_only() {
        let me: PeerId = "me".into();
        let mut log = ChatLog::new(true);
        log.load_history(&[msg(1, "bob", "old")], &me);
        assert_eq!(log.arrived_from_others(), 0);
        log.push(msg(2, "bob", "new"), &me);
        log.push(msg(3, "me", "mine"), &me);
        log.push(msg(2, "bob", "new"), &me);
        assert_eq!(log.arrived_from_others(), 1);
    }

    #[test]
    fn only_web_links_are_links() {
        use TextPiece::{Link, Text};
        assert_eq!(
            split_links("see https://example.org/a?b=1. or HTTP://x.test"),
            [
                Text("see "),
                Link("https://example.org/a?b=1"),
                Text(". or "),
                Link("HTTP://x.test"),
            ]
        );
        assert_eq!(
            split_links("run javascript:alert(1) or file:///etc/passwd now"),
            [Text("run javascript:alert(1) or file:///etc/passwd now")]
        );
        assert_eq!(
            split_links("ftp://a.test then http://b.test"),
            [Text("ftp://a.test then "), Link("http://b.test")]
        );
        assert_eq!(split_links("plain"), [Text("plain")]);
        assert!(split_links("").is_empty());
    }

    #[test]
    fn clock_times() {
        assert_eq!(clock_time(0, 0), "00:00");
        assert_eq!(clock_time((13 * 3600 + 7 * 60) * 1000 + 999, 0), "13:07");
        assert_eq!(clock_time(0, -3600), "23:00");
    }
}

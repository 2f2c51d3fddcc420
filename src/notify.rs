//! Desktop notifications (the freedesktop Notifications service on the session bus, through
//! `notify-rust`), shown from a thread of their own so a slow or missing notification daemon
//! never holds up the UI. Bursts coalesce into one notification. Imports nothing of Huddle.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};

/// One thing to tell the person while the window is in the background.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub summary: String,
    pub body: String,
}

/// Notifications waiting for the thread; more than this while one is being shown are dropped
/// (the coalesced one that follows says how many came).
const QUEUE: usize = 16;
/// Longest body shown; a long chat message is cut with an ellipsis.
const MAX_BODY_CHARS: usize = 200;

/// Sends notifications to the desktop, or to a test's channel. Dropping it closes the queue;
/// the thread then ends after the notification it is showing. It is not joined: a daemon that
/// never answers must not hold up quitting the app.
pub struct Notifier {
    queue: Option<SyncSender<Notification>>,
}

impl Notifier {
    /// Shows notifications on the desktop (the session bus named by
    /// `DBUS_SESSION_BUS_ADDRESS`). Without a bus or daemon, each attempt logs at debug level
    /// and nothing else happens.
    pub fn desktop() -> Notifier {
        let (queue, waiting) = mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("huddle-notify".into())
            .spawn(move || show_until_closed(waiting));
        match spawned {
            Ok(_) => Notifier { queue: Some(queue) },
            Err(e) => {
                tracing::warn!("no desktop notifications: could not start their thread: {e}");
                Notifier::none()
            }
        }
    }

    /// Hands every notification to `to` instead (tests).
    pub fn channel(to: SyncSender<Notification>) -> Notifier {
        Notifier { queue: Some(to) }
    }

    /// Shows nothing.
    pub fn none() -> Notifier {
        Notifier { queue: None }
    }

    /// Queues a notification; never blocks. The body is cut to a readable length.
    pub fn notify(&self, summary: impl Into<String>, body: &str) {
        let Some(queue) = &self.queue else {
            return;
        };
        let notification = Notification {
            summary: summary.into(),
            body: shorten(body, MAX_BODY_CHARS),
        };
        match queue.try_send(notification) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => tracing::debug!("notification queue full; dropped one"),
            Err(TrySendError::Disconnected(_)) => {
                tracing::debug!("notification thread gone; dropped one")
            }
        }
    }
}

/// The notification thread: one at a time, and whatever queued while one was shown becomes a
/// single "N new" notification rather than a stack of them.
fn show_until_closed(waiting: Receiver<Notification>) {
    while let Ok(first) = waiting.recv() {
        let mut latest = first;
        let mut count = 1usize;
        loop {
            match waiting.try_recv() {
                Ok(next) => {
                    latest = next;
                    count += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let shown = coalesce(latest, count);
        let result = notify_rust::Notification::new()
            .appname("Huddle")
            .summary(&shown.summary)
            .body(&shown.body)
            .icon("huddle")
            .show();
        if let Err(e) = result {
            tracing::debug!("desktop notification not shown: {e}");
        }
    }
}

/// What to show for `count` notifications of which `latest` is the newest.
fn coalesce(latest: Notification, count: usize) -> Notification {
    if count == 1 {
        return latest;
    }
    Notification {
        summary: format!("{count} new in Huddle"),
        body: format!("{}: {}", latest.summary, latest.body),
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_are_cut_on_a_character_boundary() {
        assert_eq!(shorten("héllo", 3), "hél…");
        assert_eq!(shorten("héllo", 5), "héllo");
        assert_eq!(shorten("", 5), "");
    }

    #[test]
    fn a_burst_becomes_one_notification_naming_the_latest() {
        let n = |s: &str, b: &str| Notification {
            summary: s.into(),
            body: b.into(),
        };
        assert_eq!(coalesce(n("bob", "hi"), 1), n("bob", "hi"));
        assert_eq!(coalesce(n("bob", "hi"), 3), n("3 new in Huddle", "bob: hi"));
    }

    #[test]
    fn a_full_queue_drops_instead_of_blocking() {
        let (tx, rx) = mpsc::sync_channel(1);
        let notifier = Notifier::channel(tx);
        notifier.notify("a", "1");
        notifier.notify("b", "2");
        assert_eq!(rx.try_recv().map(|n| n.summary), Ok("a".into()));
        assert!(rx.try_recv().is_err());
        Notifier::none().notify("nobody", "listens");
    }
}

//! A latest-value-wins slot between one producer thread and one consumer: putting a new value
//! replaces an unconsumed old one (counted as dropped), so a slow consumer never builds a backlog.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

pub struct LatestSlot<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
    dropped: AtomicU64,
    put: AtomicU64,
}

impl<T> Default for LatestSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> LatestSlot<T> {
    pub fn new() -> Self {
        LatestSlot {
            value: Mutex::new(None),
            ready: Condvar::new(),
            dropped: AtomicU64::new(0),
            put: AtomicU64::new(0),
        }
    }

    /// Stores `value`, replacing (and dropping) any value not yet taken.
    pub fn put(&self, value: T) {
        self.put.fetch_add(1, Ordering::Relaxed);
        let replaced = match self.value.lock() {
            Ok(mut slot) => slot.replace(value).is_some(),
            Err(poisoned) => poisoned.into_inner().replace(value).is_some(),
        };
        if replaced {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.ready.notify_one();
    }

    /// Takes the value if there is one.
    pub fn take(&self) -> Option<T> {
        match self.value.lock() {
            Ok(mut slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    /// Waits up to `timeout` for a value and takes it.
    pub fn take_timeout(&self, timeout: Duration) -> Option<T> {
        let guard = match self.value.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut guard = match self
            .ready
            .wait_timeout_while(guard, timeout, |v| v.is_none())
        {
            Ok((g, _)) => g,
            Err(poisoned) => poisoned.into_inner().0,
        };
        guard.take()
    }

    /// Values replaced before anyone took them.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Values ever put.
    pub fn put_count(&self) -> u64 {
        self.put.load(Ordering::Relaxed)
    }
}

impl<T: Clone> LatestSlot<T> {
    /// A copy of the current value without taking it (for displays that redraw).
    pub fn peek(&self) -> Option<T> {
        match self.value.lock() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn newest_wins_and_drops_are_counted() {
        let slot = LatestSlot::new();
        slot.put(1);
        slot.put(2);
        slot.put(3);
        assert_eq!(slot.take(), Some(3));
        assert_eq!(slot.take(), None);
        assert_eq!(slot.dropped(), 2);
        assert_eq!(slot.put_count(), 3);
    }

    #[test]
    fn a_waiting_consumer_wakes_on_put() {
        let slot = Arc::new(LatestSlot::new());
        let producer = {
            let slot = slot.clone();
            std::thread::Builder::new()
                .name("producer".into())
                .spawn(move || slot.put("frame"))
                .unwrap()
        };
        assert_eq!(slot.take_timeout(Duration::from_secs(5)), Some("frame"));
        producer.join().unwrap();
        assert_eq!(slot.take_timeout(Duration::from_millis(10)), None);
    }
}

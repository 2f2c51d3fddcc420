//! A bounded record of one measurement's recent values (latencies, encode times), for
//! percentiles. Plain data; imports nothing from the crate.

use std::collections::VecDeque;

/// Keeps the last `N` samples of a measurement for percentiles.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    values: VecDeque<i64>,
    capacity: usize,
    /// Every value ever pushed, kept or not.
    pushed: u64,
}

impl Samples {
    pub fn with_capacity(capacity: usize) -> Self {
        Samples {
            values: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            pushed: 0,
        }
    }
    pub fn push(&mut self, v: i64) {
        self.pushed += 1;
        if self.values.len() == self.capacity.max(1) {
            self.values.pop_front();
        }
        self.values.push_back(v);
    }
    pub fn len(&self) -> usize {
        self.values.len()
    }
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
    pub fn values(&self) -> Vec<i64> {
        self.values.iter().copied().collect()
    }
    /// How many values were ever pushed.
    pub fn pushed(&self) -> u64 {
        self.pushed
    }
    /// The values pushed after the first `since` (as far as they are still kept).
    pub fn since(&self, since: u64) -> Vec<i64> {
        let new = self
            .pushed
            .saturating_sub(since)
            .min(self.values.len() as u64) as usize;
        self.values
            .iter()
            .skip(self.values.len() - new)
            .copied()
            .collect()
    }
    pub fn clear(&mut self) {
        self.values.clear();
    }
}

//! The video quality ladder: which resolution and frame rate to send at a given bitrate budget,
//! as a state machine without I/O. Steps down quickly when the budget falls below what a rung
//! needs, steps up only after the budget has comfortably covered the next rung for a while
//! (hysteresis), so an estimate wobbling around a threshold does not flip the picture back and
//! forth. Rungs are fractions of the source size, so a 1280x720 camera gets 720p → 540p → 360p →
//! 270p → 180p and a 640x480 one 480p → 360p → 240p → 180p → 120p.

use std::time::{Duration, Instant};

/// One rung: a scale of the source, a frame rate, and the budget range it is used in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rung {
    /// Scale of the source's width and height.
    pub scale: f32,
    pub fps: u32,
    /// Below this budget (sustained) the ladder steps down from this rung.
    pub min_bps: u32,
    /// Budget needed (sustained) to step up onto this rung.
    pub enter_bps: u32,
    /// The encoder's bitrate is capped here on this rung.
    pub max_bps: u32,
}

/// Rungs for a 640x480 source; budgets scale with the source's pixel count.
const VGA_RUNGS: [Rung; 5] = [
    Rung {
        scale: 1.0,
        fps: 30,
        min_bps: 500_000,
        enter_bps: 650_000,
        max_bps: 1_500_000,
    },
    Rung {
        scale: 0.75,
        fps: 30,
        min_bps: 240_000,
        enter_bps: 320_000,
        max_bps: 900_000,
    },
    Rung {
        scale: 0.5,
        fps: 30,
        min_bps: 90_000,
        enter_bps: 130_000,
        max_bps: 450_000,
    },
    Rung {
        scale: 0.375,
        fps: 30,
        min_bps: 55_000,
        enter_bps: 75_000,
        max_bps: 200_000,
    },
    Rung {
        scale: 0.25,
        fps: 15,
        min_bps: 0,
        enter_bps: 0,
        max_bps: 100_000,
    },
];

/// How long the budget must stay below a rung's minimum before stepping down (unless it is far
/// below), and above the next rung's entry before stepping up.
const DOWN_AFTER: Duration = Duration::from_millis(400);
const UP_AFTER: Duration = Duration::from_millis(1000);
/// Below this share of the minimum, step down at once.
const FAR_BELOW: f32 = 0.7;

/// What the encoder for one peer should produce now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoTarget {
    pub rung: u8,
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub bitrate_bps: u32,
}

pub struct Ladder {
    source: (usize, usize),
    rungs: Vec<Rung>,
    current: usize,
    below_since: Option<Instant>,
    above_since: Option<Instant>,
}

/// Even dimensions of `source` scaled by `scale`, at least 16x16.
pub fn scaled_size(source: (usize, usize), scale: f32) -> (usize, usize) {
    let even = |v: usize| ((v as f32 * scale).round() as usize & !1).max(16);
    (even(source.0), even(source.1))
}

impl Ladder {
    /// A ladder for a source of this size, starting on the highest rung `initial_bps` covers.
    pub fn new(source: (usize, usize), initial_bps: u32) -> Self {
        let pixels = (source.0 * source.1).max(1) as f32;
        let factor = (pixels / (640.0 * 480.0)).powf(0.75);
        let rungs: Vec<Rung> = VGA_RUNGS
            .iter()
            .map(|r| Rung {
                min_bps: (r.min_bps as f32 * factor) as u32,
                enter_bps: (r.enter_bps as f32 * factor) as u32,
                max_bps: (r.max_bps as f32 * factor) as u32,
                ..*r
            })
            .collect();
        let current = rungs
            .iter()
            .position(|r| initial_bps >= r.enter_bps)
            .unwrap_or(rungs.len() - 1);
        Ladder {
            source,
            rungs,
            current,
            below_since: None,
            above_since: None,
        }
    }

    pub fn source(&self) -> (usize, usize) {
        self.source
    }

    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// Follows a new budget for video (bits per second) at `now`.
    pub fn update(&mut self, now: Instant, budget_bps: u32) -> VideoTarget {
        let rung = self.rungs[self.current];
        let budget = budget_bps as f32;
        if self.current + 1 < self.rungs.len() && budget < rung.min_bps as f32 {
            self.above_since = None;
            let since = *self.below_since.get_or_insert(now);
            if budget < rung.min_bps as f32 * FAR_BELOW || now.duration_since(since) >= DOWN_AFTER {
                // Step down as far as the budget says, not one rung at a time.
                while self.current + 1 < self.rungs.len()
                    && budget < self.rungs[self.current].min_bps as f32
                {
                    self.current += 1;
                }
                self.below_since = None;
            }
        } else if self.current > 0 && budget >= self.rungs[self.current - 1].enter_bps as f32 {
            self.below_since = None;
            let since = *self.above_since.get_or_insert(now);
            if now.duration_since(since) >= UP_AFTER {
                self.current -= 1;
                self.above_since = None;
            }
        } else {
            self.below_since = None;
            self.above_since = None;
        }
        self.target(budget_bps)
    }

    fn target(&self, budget_bps: u32) -> VideoTarget {
        let rung = self.rungs[self.current];
        let (width, height) = scaled_size(self.source, rung.scale);
        VideoTarget {
            rung: self.current as u8,
            width,
            height,
            fps: rung.fps,
            bitrate_bps: budget_bps.clamp(20_000, rung.max_bps.max(20_000)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn starts_on_the_rung_the_budget_covers() {
        assert_eq!(Ladder::new((640, 480), 2_000_000).current, 0);
        assert_eq!(Ladder::new((640, 480), 500_000).current, 1);
        assert_eq!(Ladder::new((640, 480), 10_000).current, 4);
        let t = Ladder::new((640, 480), 500_000).update(Instant::now(), 500_000);
        assert_eq!(
            (t.width, t.height, t.fps, t.bitrate_bps),
            (480, 360, 30, 500_000)
        );
    }

    #[test]
    fn steps_down_at_once_when_far_below_and_after_a_while_when_slightly_below() {
        let start = Instant::now();
        let mut l = Ladder::new((640, 480), 1_000_000);
        // 450k is just under the top rung's 500k: wait before stepping down.
        assert_eq!(l.update(at(start, 0), 450_000).rung, 0);
        assert_eq!(l.update(at(start, 200), 450_000).rung, 0);
        assert_eq!(l.update(at(start, 400), 450_000).rung, 1);
        // A collapse to 100k goes straight down past every rung it cannot afford.
        let t = l.update(at(start, 500), 100_000);
        assert_eq!((t.rung, t.width, t.height), (2, 320, 240));
        assert_eq!(t.bitrate_bps, 100_000);
    }

    #[test]
    fn steps_up_one_rung_after_a_sustained_surplus() {
        let start = Instant::now();
        let mut l = Ladder::new((640, 480), 130_000);
        assert_eq!(l.update(at(start, 0), 100_000).rung, 2);
        // Enough for rung 1, but not for long enough.
        assert_eq!(l.update(at(start, 100), 400_000).rung, 2);
        assert_eq!(l.update(at(start, 1_000), 400_000).rung, 2);
        // A dip resets the wait.
        assert_eq!(l.update(at(start, 1_200), 200_000).rung, 2);
        assert_eq!(l.update(at(start, 1_300), 2_000_000).rung, 2);
        assert_eq!(l.update(at(start, 2_800), 2_000_000).rung, 1);
        assert_eq!(l.update(at(start, 2_900), 2_000_000).rung, 1);
        assert_eq!(l.update(at(start, 4_400), 2_000_000).rung, 0);
        // On the top rung the bitrate is capped at what the rung can use.
        assert_eq!(l.update(at(start, 4_500), 2_000_000).bitrate_bps, 1_500_000);
    }

    #[test]
    fn budgets_scale_with_the_source() {
        let hd = Ladder::new((1280, 720), 0);
        assert!(hd.rungs()[0].min_bps > 900_000);
        assert_eq!(scaled_size((1280, 720), 0.75), (960, 540));
        assert_eq!(scaled_size((1280, 720), 0.375), (480, 270));
        assert_eq!(scaled_size((640, 480), 0.25), (160, 120));
    }
}

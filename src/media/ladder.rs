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

/// Rungs for a 1920x1080 screen share at 15 fps: frames go before pixels, so text stays sharp on
/// a slow link (issue 13), and a share never changes size, which would cost a new keyframe and
/// start its reveal (`reveal`) over. Budgets scale with the source's pixel count like the
/// camera's. The floor is 4 fps rather than fewer: what a frame carries is the budget over the
/// frame rate, and on a 200 kbit/s uplink a 2 fps frame (9 KB) filled the bottleneck's queue in
/// one burst, with the audio behind it.
const SCREEN_RUNGS: [Rung; 3] = [
    Rung {
        scale: 1.0,
        fps: 15,
        min_bps: 700_000,
        enter_bps: 950_000,
        max_bps: 2_500_000,
    },
    Rung {
        scale: 1.0,
        fps: 8,
        min_bps: 350_000,
        enter_bps: 480_000,
        max_bps: 1_400_000,
    },
    Rung {
        scale: 1.0,
        fps: 4,
        min_bps: 0,
        enter_bps: 0,
        max_bps: 700_000,
    },
];

/// How long the budget must stay below a rung's minimum before stepping down (unless it is far
/// below), and above the next rung's entry before stepping up.
const DOWN_AFTER: Duration = Duration::from_millis(400);
const UP_AFTER: Duration = Duration::from_millis(1000);
/// A step up that has to be undone within this long failed: the wait before trying that rung
/// again doubles, up to `MAX_UP_WAIT`, and comes back to `UP_AFTER` once the rung holds this
/// long. Each step is a keyframe, which on a 200 kbit/s link holds the bottleneck (and the
/// audio behind it) for a third of a second: a ladder that retried every few seconds on a link
/// just short of the next rung concealed 2 % of the audio.
const FAILED_UP_WITHIN: Duration = Duration::from_secs(10);
const MAX_UP_WAIT: Duration = Duration::from_secs(16);
/// A budget this far above the next rung's entry is not a marginal link: step up after
/// `UP_AFTER` whatever failed before (capacity came back).
const CLEARLY_ABOVE: f32 = 1.5;
/// Below this share of the minimum, step down at once.
const FAR_BELOW: f32 = 0.7;

/// What the encoder for one peer should produce now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoTarget {
    pub rung: u8,
    /// Rungs of the same size share one encoding, which drops frames for the slower ones (a
    /// screen share's rungs differ in frame rate first): the lowest such rung's index.
    pub encoding: u8,
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
    /// Per rung, how long the budget must cover it before stepping up onto it.
    up_waits: Vec<Duration>,
    /// The rung last stepped up onto, and when.
    stepped_up: Option<(usize, Instant)>,
}

/// Even dimensions of `source` scaled by `scale`, at least 16x16.
pub fn scaled_size(source: (usize, usize), scale: f32) -> (usize, usize) {
    let even = |v: usize| ((v as f32 * scale).round() as usize & !1).max(16);
    (even(source.0), even(source.1))
}

impl Ladder {
    /// A ladder for a source of this size, starting on the highest rung `initial_bps` covers.
    pub fn new(source: (usize, usize), initial_bps: u32) -> Self {
        Self::from_rungs(source, initial_bps, &VGA_RUNGS, (640, 480))
    }

    /// A ladder for a screen share of this size whose top rung runs at `max_fps` (15 by
    /// default, 30 for "smooth motion", which costs proportionally more bits to enter).
    pub fn for_screen(source: (usize, usize), initial_bps: u32, max_fps: u32) -> Self {
        let mut rungs = SCREEN_RUNGS;
        let floor = rungs[1].fps + 1;
        let top = &mut rungs[0];
        let speed = (max_fps.clamp(1, 60) as f32 / top.fps as f32).max(1.0);
        top.fps = max_fps.clamp(floor, 60);
        top.min_bps = (top.min_bps as f32 * speed.sqrt()) as u32;
        top.enter_bps = (top.enter_bps as f32 * speed.sqrt()) as u32;
        top.max_bps = (top.max_bps as f32 * speed.sqrt()) as u32;
        Self::from_rungs(source, initial_bps, &rungs, (1920, 1080))
    }

    /// A ladder over any table of rungs made for a `table_size` source (budgets scale with the
    /// source's pixel count).
    pub(crate) fn from_rungs(
        source: (usize, usize),
        initial_bps: u32,
        table: &[Rung],
        table_size: (usize, usize),
    ) -> Self {
        let pixels = (source.0 * source.1).max(1) as f32;
        let factor = (pixels / (table_size.0 * table_size.1) as f32).powf(0.75);
        let rungs: Vec<Rung> = table
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
            up_waits: vec![UP_AFTER; rungs.len()],
            rungs,
            current,
            below_since: None,
            above_since: None,
            stepped_up: None,
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
        if let Some((onto, at)) = self.stepped_up
            && onto == self.current
            && now.duration_since(at) >= FAILED_UP_WITHIN
        {
            // The step up held: trying it again later needs no longer wait.
            self.up_waits[onto] = UP_AFTER;
            self.stepped_up = None;
        }
        if self.current + 1 < self.rungs.len() && budget < rung.min_bps as f32 {
            self.above_since = None;
            let since = *self.below_since.get_or_insert(now);
            if budget < rung.min_bps as f32 * FAR_BELOW || now.duration_since(since) >= DOWN_AFTER {
                if let Some((onto, at)) = self.stepped_up.take()
                    && onto == self.current
                    && now.duration_since(at) < FAILED_UP_WITHIN
                {
                    self.up_waits[onto] = (self.up_waits[onto] * 2).min(MAX_UP_WAIT);
                }
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
            let next = self.current - 1;
            let wait = if budget >= self.rungs[next].enter_bps as f32 * CLEARLY_ABOVE {
                UP_AFTER
            } else {
                self.up_waits[next]
            };
            if now.duration_since(since) >= wait {
                self.current = next;
                self.above_since = None;
                self.stepped_up = Some((next, now));
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
        let encoding = self
            .rungs
            .iter()
            .position(|r| r.scale == rung.scale)
            .unwrap_or(self.current);
        VideoTarget {
            rung: self.current as u8,
            encoding: encoding as u8,
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

    /// A link just short of 320x240: every step up onto it overloads the link, and the budget
    /// falls below the rung's minimum 1.5 s later. Returns the times of the steps up.
    fn marginal_link(l: &mut Ladder, start: Instant, seconds: u64) -> Vec<u64> {
        let mut ups = Vec::new();
        let mut on_since = None;
        for ms in (0..seconds * 1000).step_by(100) {
            let budget = match on_since {
                Some(t) if ms - t >= 1500 => 60_000,
                _ => 140_000,
            };
            let before = l.current;
            let t = l.update(at(start, ms), budget);
            if (t.rung as usize) < before {
                ups.push(ms);
                on_since = Some(ms);
            } else if (t.rung as usize) > before {
                on_since = None;
            }
        }
        ups
    }

    #[test]
    fn a_step_up_that_fails_is_retried_less_and_less_often() {
        let start = Instant::now();
        let mut l = Ladder::new((640, 480), 100_000);
        assert_eq!(l.current, 3);
        let ups = marginal_link(&mut l, start, 40);
        // Without the growing wait: an attempt about every 3 s (13 in 40 s). With it the gaps
        // grow 1 s, 2 s, 4 s, 8 s, 16 s after each failure.
        let gaps: Vec<u64> = ups.windows(2).map(|w| w[1] - w[0]).collect();
        eprintln!("steps up at {ups:?} ms");
        assert!(ups.len() <= 6, "{ups:?}");
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        // Capacity coming back for real is not held up by those failures.
        let back = at(start, 40_000);
        let mut rung = l.current;
        for ms in (0..4000).step_by(100) {
            rung = l.update(back + Duration::from_millis(ms), 2_000_000).rung as usize;
        }
        assert_eq!(rung, 0, "not on the top rung 4 s after the budget jumped");
    }

    #[test]
    fn a_step_up_that_holds_resets_the_wait() {
        let start = Instant::now();
        let mut l = Ladder::new((640, 480), 100_000);
        marginal_link(&mut l, start, 12);
        let rung = l.rungs()[2];
        assert!(l.up_waits[2] > UP_AFTER, "{:?}", l.up_waits);
        // Then the link improves a little: the next step up holds for 10 s.
        let mut ms = 12_000;
        while l.current != 2 {
            l.update(at(start, ms), rung.enter_bps + 1000);
            ms += 100;
        }
        for _ in 0..110 {
            l.update(at(start, ms), rung.enter_bps + 1000);
            ms += 100;
        }
        assert_eq!(l.up_waits[2], UP_AFTER);
    }

    #[test]
    fn a_screen_share_drops_frames_before_pixels() {
        let start = Instant::now();
        let mut l = Ladder::for_screen((1920, 1080), 3_000_000, 15);
        let full = l.update(at(start, 0), 3_000_000);
        assert_eq!((full.width, full.height, full.fps), (1920, 1080, 15));
        // A budget that would cost a camera most of its pixels keeps the whole screen at fewer
        // frames a second.
        let mut t = full;
        for ms in (100..2000).step_by(100) {
            t = l.update(at(start, ms), 200_000);
        }
        assert_eq!((t.width, t.height, t.fps), (1920, 1080, 4));
        // Nor does a very slow link cost pixels: the page comes in over more frames instead.
        for ms in (2000..4000).step_by(100) {
            t = l.update(at(start, ms), 40_000);
        }
        assert_eq!((t.width, t.height, t.fps), (1920, 1080, 4));
        assert!(l.rungs().iter().all(|r| r.scale == 1.0));
        // A share starts at full size on a new connection's first budget (the 300 kbit/s start
        // estimate leaves the share about 190 kbit/s), and on much less.
        for budget in [190_000, 100_000] {
            let mut fresh = Ladder::for_screen((1920, 1080), budget, 15);
            let first = fresh.update(start, budget);
            assert_eq!(
                (first.width, first.height),
                (1920, 1080),
                "at {budget} bit/s"
            );
        }
        // Smooth motion runs its top rung at 30 fps and needs more to get there.
        let smooth = Ladder::for_screen((1920, 1080), 0, 30);
        assert_eq!(smooth.rungs()[0].fps, 30);
        assert!(smooth.rungs()[0].enter_bps > l.rungs()[0].enter_bps);
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

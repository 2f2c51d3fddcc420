//! Simulcast for rooms on the SFU, as state machines without I/O. A publisher sends its camera
//! as up to three layers, each from its own encoder at a fixed fraction of the picture
//! ([`LAYERS`]); [`PublishLayers`] splits the uplink's budget among them and pauses the upper
//! ones when it cannot carry them. A receiver asks the SFU for one layer of each peer;
//! [`LayerChooser`] picks it from the peer's tile size and from what the downlink has shown it
//! can carry. Depends only on `media::ladder`.

use super::ladder::{Ladder, Rung, scaled_size};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One simulcast layer, for a 640x480 camera (budgets scale with the picture like the ladder's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    /// Its RTP stream id (`a=rid`).
    pub rid: &'static str,
    /// Scale of the camera's width and height.
    pub scale: f32,
    pub fps: u32,
    /// The encoder's bitrate is capped here.
    pub max_bps: u32,
}

/// The layers, lowest first: the index is the layer number of `sfu_layer` and Janus's
/// `substream` (0 the smallest). The offer lists their rids highest first, the order Janus
/// reads by default.
pub const LAYERS: [LayerSpec; 3] = [
    LayerSpec {
        rid: "l",
        scale: 0.25,
        fps: 15,
        max_bps: 60_000,
    },
    LayerSpec {
        rid: "m",
        scale: 0.5,
        fps: 30,
        max_bps: 300_000,
    },
    LayerSpec {
        rid: "h",
        scale: 1.0,
        fps: 30,
        max_bps: 900_000,
    },
];

/// The highest layer number.
pub const TOP_LAYER: u8 = LAYERS.len() as u8 - 1;

/// The picture size of `layer` for a camera of `source` size.
pub fn layer_size(source: (usize, usize), layer: usize) -> (usize, usize) {
    scaled_size(source, LAYERS[layer.min(LAYERS.len() - 1)].scale)
}

/// What budgets are worth in pixels: the ladder's rule (a 640x480 table, scaled by the pixel
/// count to the power 0.75).
fn budget_factor(source: (usize, usize)) -> f32 {
    ((source.0 * source.1).max(1) as f32 / (640.0 * 480.0)).powf(0.75)
}

/// How many layers run, as rungs of a ladder over the uplink's video budget (the ladder's
/// hysteresis and backoff for failed steps up apply): all three, the lower two, or the lowest.
/// `scale` and `fps` are unused here; budgets are for a 640x480 camera. A layer starts on
/// little more than the lower ones leave it: the estimate only grows with what is sent, and
/// the lower layers alone (360 kbit/s with audio about 420) hold it near 700 kbit/s, which
/// leaves a video budget of about 550. Entering only at 750 never happened.
const LAYER_SETS: [Rung; 3] = [
    Rung {
        scale: 1.0,
        fps: 30,
        min_bps: 350_000,
        enter_bps: 450_000,
        max_bps: 1_260_000,
    },
    Rung {
        scale: 1.0,
        fps: 30,
        min_bps: 90_000,
        enter_bps: 120_000,
        max_bps: 360_000,
    },
    Rung {
        scale: 1.0,
        fps: 30,
        min_bps: 0,
        enter_bps: 0,
        max_bps: 60_000,
    },
];

/// The least a running layer's encoder is given.
const LAYER_FLOOR_BPS: u32 = 20_000;

/// The publisher's side: which layers run on the uplink's video budget, and each one's bitrate.
pub struct PublishLayers {
    sets: Ladder,
}

impl PublishLayers {
    pub fn new(source: (usize, usize), initial_budget_bps: u32) -> Self {
        PublishLayers {
            sets: Ladder::from_rungs(source, initial_budget_bps, &LAYER_SETS, (640, 480)),
        }
    }

    /// Follows the uplink's video budget at `now`: each layer's bitrate, lowest first, 0 for a
    /// paused layer. Lower layers are filled first (every receiver can take the lowest), the
    /// top running layer gets what is left, up to its cap.
    pub fn update(&mut self, now: Instant, source: (usize, usize), budget_bps: u32) -> [u32; 3] {
        if self.sets.source() != source {
            *self = PublishLayers::new(source, budget_bps);
        }
        let running = LAYERS.len() - self.sets.update(now, budget_bps).rung as usize;
        let factor = budget_factor(source);
        let mut left = budget_bps;
        let mut budgets = [0u32; 3];
        for (layer, spec) in LAYERS.iter().enumerate().take(running) {
            let cap = (spec.max_bps as f32 * factor) as u32;
            let give = left.min(cap).max(LAYER_FLOOR_BPS);
            budgets[layer] = give;
            left = left.saturating_sub(give);
        }
        budgets
    }
}

/// The layer a tile this many physical pixels wide needs: the smallest whose picture is at
/// least about as wide (for a 640x480 camera), the top one for a tile wider than that.
pub fn layer_for_tile(width_px: u32) -> u8 {
    LAYERS
        .iter()
        .position(|l| width_px as f32 <= 640.0 * l.scale * 1.25)
        .unwrap_or(LAYERS.len() - 1) as u8
}

/// What a receiver reckons each layer of a peer costs on its downlink, with the peer's audio
/// and packet headers: the layer's cap, a tenth more for headers, plus 60 kbit/s of audio.
fn layer_cost_bps(layer: u8) -> f64 {
    LAYERS[layer as usize].max_bps as f64 * 1.1 + 60_000.0
}

/// Receive loss above this share in a second is taken for congestion (a lossy radio link loses
/// a few percent whatever the rate; an overfull bottleneck loses far more).
const CONGESTION_LOSS: f64 = 0.10;
/// After a cut, how long the downlink must stay clean before a step up is tried; doubled each
/// time the step up has to be undone, up to the maximum, and stretched by how far beyond what
/// the link carried the step would go (`MAX_PROBE_STRETCH` times at most). A failed step costs
/// the picture: the overfull link loses the keyframe of the layer it goes back to. On a 200
/// kbit/s downlink where one step up needs three times what arrives, a try every 4-8 s kept the
/// picture frozen a third of the time.
const FIRST_PROBE_WAIT: Duration = Duration::from_secs(4);
const MAX_PROBE_WAIT: Duration = Duration::from_secs(64);
const MAX_PROBE_STRETCH: f64 = 8.0;
/// A step up that lasts this long without a cut succeeded.
const PROBE_HELD: Duration = Duration::from_secs(10);
/// A picture a step up raised that shows no new frame for this long has failed it: the new
/// layer does not get through. Undone then rather than at the next second's loss figures.
/// The SFU keeps relaying the old layer until the new one's keyframe, so a gap this long is
/// the new layer stalling, not the switch.
pub const PROBE_STALL: Duration = Duration::from_millis(500);
/// What the downlink is trusted with before it has shown anything: enough for several peers'
/// middle layers.
pub const INITIAL_DOWNLINK_BPS: f64 = 2_000_000.0;

#[derive(Clone, Copy, Debug)]
struct Feed {
    /// The layer its tile needs, and the tile's width (a wider tile is served first).
    wanted: u8,
    width_px: u32,
    /// The layer last asked for, and the one before it.
    asked: Option<u8>,
    previous: Option<u8>,
    /// The peer's camera is on (it has no layers to ask for while off).
    sending: bool,
}

/// A step up being tried.
struct Probe<K> {
    since: Instant,
    /// The ceiling before it, restored if it fails.
    ceiling_before: f64,
    /// The peers whose layer it raised.
    raised: Vec<K>,
}

/// The receiver's side: which layer of each peer to ask the SFU for. Each peer's tile sets
/// the layer it needs; the downlink sets a ceiling on the sum, learnt from loss (the SFU does
/// not estimate bandwidth towards us): congestion cuts the ceiling to what actually arrived,
/// and a clean stretch lets one peer try its next layer up.
pub struct LayerChooser<K: Ord + Clone> {
    feeds: BTreeMap<K, Feed>,
    ceiling_bps: f64,
    /// A step up being tried (it is judged before the next one).
    probe: Option<Probe<K>>,
    /// No step up before this (after a cut).
    next_probe_at: Option<Instant>,
    probe_wait: Duration,
}

impl<K: Ord + Clone> Default for LayerChooser<K> {
    fn default() -> Self {
        LayerChooser {
            feeds: BTreeMap::new(),
            ceiling_bps: INITIAL_DOWNLINK_BPS,
            probe: None,
            next_probe_at: None,
            probe_wait: FIRST_PROBE_WAIT,
        }
    }
}

impl<K: Ord + Clone> LayerChooser<K> {
    /// A peer whose video we receive, shown in a tile `width_px` physical pixels wide (`None`:
    /// no tile size known, as for a peer without a window: the top layer).
    pub fn set_tile(&mut self, peer: K, width_px: Option<u32>) {
        let (wanted, width_px) = match width_px {
            Some(w) => (layer_for_tile(w), w),
            None => (TOP_LAYER, u32::MAX),
        };
        let feed = self.feeds.entry(peer).or_insert(Feed {
            wanted,
            width_px,
            asked: None,
            previous: None,
            sending: true,
        });
        feed.wanted = wanted;
        feed.width_px = width_px;
    }

    /// Adds a peer with no tile size yet, if it is new.
    pub fn add(&mut self, peer: K) {
        if !self.feeds.contains_key(&peer) {
            self.set_tile(peer, None);
        }
    }

    pub fn remove(&mut self, peer: &K) {
        self.feeds.remove(peer);
    }

    /// Whether the peer's camera is on: one that is off costs nothing and is asked nothing.
    pub fn set_sending(&mut self, peer: K, sending: bool) {
        self.add(peer.clone());
        if let Some(feed) = self.feeds.get_mut(&peer) {
            feed.sending = sending;
        }
    }

    /// The layer asked for `peer` before the last change `changes` reported.
    pub fn asked_before(&self, peer: &K) -> Option<u8> {
        self.feeds.get(peer).and_then(|f| f.previous)
    }

    /// The ceiling on what the peers' layers may cost together, bits per second.
    pub fn ceiling_bps(&self) -> f64 {
        self.ceiling_bps
    }

    /// The downlink's last second: the share of packets lost (before retransmission) and what
    /// arrived.
    pub fn observe(&mut self, now: Instant, loss: f64, received_bps: f64) {
        if self
            .probe
            .as_ref()
            .is_some_and(|p| now.duration_since(p.since) >= PROBE_HELD)
        {
            // The last step up held: the next may follow at once.
            self.probe = None;
            self.probe_wait = FIRST_PROBE_WAIT;
        }
        if loss > CONGESTION_LOSS {
            let cut = received_bps * 0.85;
            if cut < self.ceiling_bps {
                self.ceiling_bps = cut.max(0.0);
                self.back_off(now);
            }
            return;
        }
        let may_probe = self.probe.is_none() && self.next_probe_at.is_none_or(|at| now >= at);
        if may_probe && let Some(next) = self.next_step_cost() {
            // Try the next step: raise the ceiling to exactly what it needs.
            let before = self.fit();
            let ceiling_before = std::mem::replace(&mut self.ceiling_bps, next);
            let raised = self
                .fit()
                .into_iter()
                .filter(|(k, layer)| before.get(k).is_some_and(|b| layer > b))
                .map(|(k, _)| k)
                .collect();
            self.probe = Some(Probe {
                since: now,
                ceiling_before,
                raised,
            });
        }
    }

    /// The step up being tried: since when, and whose layers it raised.
    pub fn probe(&self) -> Option<(Instant, &[K])> {
        self.probe.as_ref().map(|p| (p.since, p.raised.as_slice()))
    }

    /// The step up being tried failed before any loss was counted (a picture it raised
    /// stalled): the ceiling goes back to what it was and the next try waits longer.
    pub fn probe_failed(&mut self, now: Instant) {
        if let Some(probe) = &self.probe {
            self.ceiling_bps = self.ceiling_bps.min(probe.ceiling_before);
            self.back_off(now);
        }
    }

    /// After a cut: a step up that was being tried failed, so the next waits twice as long,
    /// and longer still the further beyond the ceiling it would go.
    fn back_off(&mut self, now: Instant) {
        if self.probe.take().is_some() {
            self.probe_wait = (self.probe_wait * 2).min(MAX_PROBE_WAIT);
        }
        let stretch = self.next_step_cost().map_or(1.0, |next| {
            (next / self.ceiling_bps.max(1.0)).clamp(1.0, MAX_PROBE_STRETCH)
        });
        let wait = self.probe_wait.mul_f64(stretch).min(MAX_PROBE_WAIT);
        self.next_probe_at = Some(now + wait);
    }

    /// What the layers would cost with one more step up (the widest tile below its need
    /// first), or `None` when every peer has the layer its tile needs.
    fn next_step_cost(&self) -> Option<f64> {
        let mut layers = self.fit();
        let total: f64 = layers.values().map(|l| layer_cost_bps(*l)).sum();
        let step = self
            .by_priority()
            .into_iter()
            .find(|k| layers.get(k).is_some_and(|l| *l < self.feeds[k].wanted))?;
        let layer = layers.get_mut(&step)?;
        let before = layer_cost_bps(*layer);
        *layer += 1;
        Some(total - before + layer_cost_bps(*layer))
    }

    /// Peers whose camera is on, widest tile first.
    fn by_priority(&self) -> Vec<K> {
        let mut keys: Vec<(&K, &Feed)> = self.feeds.iter().filter(|(_, f)| f.sending).collect();
        keys.sort_by_key(|(_, f)| std::cmp::Reverse(f.width_px));
        keys.into_iter().map(|(k, _)| k.clone()).collect()
    }

    /// Each peer's layer under the ceiling: what its tile needs, lowered from the narrowest
    /// tiles up, one layer at a time, until the sum fits (or everyone is on the lowest).
    fn fit(&self) -> BTreeMap<K, u8> {
        let mut layers: BTreeMap<K, u8> = self
            .feeds
            .iter()
            .filter(|(_, f)| f.sending)
            .map(|(k, f)| (k.clone(), f.wanted))
            .collect();
        let order = self.by_priority();
        loop {
            let total: f64 = layers.values().map(|l| layer_cost_bps(*l)).sum();
            if total <= self.ceiling_bps {
                break;
            }
            // The narrowest tile among those with the highest layer gives one up.
            let Some(top) = layers.values().copied().max().filter(|l| *l > 0) else {
                break;
            };
            let Some(k) = order.iter().rev().find(|k| layers.get(*k) == Some(&top)) else {
                break;
            };
            if let Some(l) = layers.get_mut(k) {
                *l -= 1;
            }
        }
        layers
    }

    /// The layers to ask for that differ from those last asked for.
    pub fn changes(&mut self) -> Vec<(K, u8)> {
        let layers = self.fit();
        let mut changes = Vec::new();
        for (k, layer) in layers {
            if let Some(feed) = self.feeds.get_mut(&k)
                && feed.asked != Some(layer)
            {
                feed.previous = feed.asked.replace(layer);
                changes.push((k, layer));
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn the_protocol_names_as_many_layers_as_are_sent() {
        assert_eq!(TOP_LAYER, crate::signaling::protocol::SFU_TOP_LAYER);
    }

    #[test]
    fn layers_are_a_quarter_a_half_and_the_whole_picture() {
        assert_eq!(layer_size((640, 480), 0), (160, 120));
        assert_eq!(layer_size((640, 480), 1), (320, 240));
        assert_eq!(layer_size((640, 480), 2), (640, 480));
        assert_eq!(layer_size((1280, 720), 0), (320, 180));
    }

    #[test]
    fn a_rich_uplink_runs_every_layer_and_a_poor_one_only_the_lowest() {
        let start = Instant::now();
        let mut p = PublishLayers::new((640, 480), 2_000_000);
        assert_eq!(
            p.update(start, (640, 480), 2_000_000),
            [60_000, 300_000, 900_000]
        );
        // 800k: all three, the top one gets what the lower ones leave.
        assert_eq!(
            p.update(at(start, 100), (640, 480), 800_000),
            [60_000, 300_000, 440_000]
        );
        // A collapse to 50 kbit/s: the upper layers pause at once (far below their minimum).
        let b = p.update(at(start, 200), (640, 480), 50_000);
        assert_eq!(b, [50_000, 0, 0]);
        // Coming back takes a sustained surplus, one set at a time.
        assert_eq!(p.update(at(start, 300), (640, 480), 2_000_000)[1], 0);
        assert!(p.update(at(start, 1_400), (640, 480), 2_000_000)[1] > 0);
        assert_eq!(p.update(at(start, 1_500), (640, 480), 2_000_000)[2], 0);
        assert!(p.update(at(start, 2_600), (640, 480), 2_000_000)[2] > 0);
    }

    #[test]
    fn a_bigger_camera_gets_proportionally_more_per_layer() {
        let mut p = PublishLayers::new((1280, 720), 5_000_000);
        let b = p.update(Instant::now(), (1280, 720), 5_000_000);
        assert!(b[0] > 60_000 && b[2] > 900_000, "{b:?}");
    }

    #[test]
    fn tiles_ask_for_the_layer_their_size_needs() {
        assert_eq!(layer_for_tile(120), 0);
        assert_eq!(layer_for_tile(200), 0);
        assert_eq!(layer_for_tile(320), 1);
        assert_eq!(layer_for_tile(400), 1);
        assert_eq!(layer_for_tile(640), 2);
        assert_eq!(layer_for_tile(1920), 2);
        let mut c = LayerChooser::default();
        c.set_tile("small", Some(150));
        c.set_tile("middle", Some(350));
        c.set_tile("big", Some(900));
        let mut changes = c.changes();
        changes.sort();
        assert_eq!(changes, vec![("big", 2), ("middle", 1), ("small", 0)]);
        // Nothing changed: nothing to ask again.
        assert!(c.changes().is_empty());
        // A peer without a window takes the top layer.
        let mut c = LayerChooser::default();
        c.add("headless");
        assert_eq!(c.changes(), vec![("headless", 2)]);
    }

    #[test]
    fn a_congested_downlink_drops_the_narrow_tiles_first_then_everyone_to_the_lowest() {
        let start = Instant::now();
        let mut c = LayerChooser::default();
        c.set_tile("speaker", Some(1200));
        c.set_tile("side", Some(700));
        // 2 x (990k + 60k) = 2.1 Mbit/s is over the initial ceiling: the side tile gives way.
        let changes: BTreeMap<_, _> = c.changes().into_iter().collect();
        assert_eq!(changes[&"speaker"], 2);
        assert_eq!(changes[&"side"], 1);
        // Heavy loss on a 200 kbit/s downlink: both go down to the lowest layer.
        c.observe(at(start, 1_000), 0.6, 200_000.0);
        let changes: BTreeMap<_, _> = c.changes().into_iter().collect();
        assert_eq!(changes.get(&"speaker"), Some(&0));
        assert_eq!(changes.get(&"side"), Some(&0));
        assert!(c.ceiling_bps() <= 170_000.0);
    }

    #[test]
    fn a_clean_downlink_tries_one_step_up_and_backs_off_when_it_fails() {
        let start = Instant::now();
        let mut c = LayerChooser::default();
        c.add("a");
        // 150 kbit/s arrive with heavy loss: the ceiling is cut to 127.5k, the lowest layer.
        c.observe(start, 0.5, 150_000.0);
        assert_eq!(c.changes(), vec![("a", 0)]);
        // The next step needs 390k, three times that: the first try waits 4 s x 3.06.
        c.observe(at(start, 12_000), 0.0, 120_000.0);
        assert!(c.changes().is_empty());
        c.observe(at(start, 13_000), 0.0, 120_000.0);
        assert_eq!(c.changes(), vec![("a", 1)]);
        // It overloads the link: back down, and the next try waits twice as long (8 s x 2.55).
        c.observe(at(start, 14_000), 0.3, 180_000.0);
        assert_eq!(c.changes(), vec![("a", 0)]);
        c.observe(at(start, 34_000), 0.0, 120_000.0);
        assert!(c.changes().is_empty(), "waits 20 s after the failed try");
        c.observe(at(start, 35_000), 0.0, 120_000.0);
        assert_eq!(c.changes(), vec![("a", 1)]);
        // This time it holds; once it has held for 10 s the next step follows.
        for s in 36..=44 {
            c.observe(at(start, s * 1_000), 0.01, 400_000.0);
            assert!(c.changes().is_empty());
        }
        c.observe(at(start, 45_000), 0.0, 400_000.0);
        assert_eq!(c.changes(), vec![("a", 2)]);
    }

    #[test]
    fn a_step_up_whose_picture_stalls_is_undone_before_any_loss_is_counted() {
        let start = Instant::now();
        let mut c = LayerChooser::default();
        c.set_tile("wide", Some(900));
        c.set_tile("narrow", Some(150));
        c.observe(start, 0.5, 150_000.0);
        let _ = c.changes();
        assert!(c.probe().is_none());
        // Both on the lowest layer (252k, over the 127.5k ceiling, but there is no lower).
        // The next step needs 516k, 4.05 times the ceiling: the first try waits 4 s x 4.05.
        c.observe(at(start, 16_000), 0.0, 120_000.0);
        assert!(c.probe().is_none());
        c.observe(at(start, 20_000), 0.0, 120_000.0);
        let (since, raised) = c.probe().expect("a step up after the wait");
        assert_eq!(since, at(start, 20_000));
        // The widest tile below its need is raised first.
        assert_eq!(raised, ["wide"]);
        assert_eq!(c.changes(), vec![("wide", 1)]);
        let ceiling_tried = c.ceiling_bps();
        // Its picture stalls: back to where it was, and no step up for twice as long.
        c.probe_failed(at(start, 21_000));
        assert!(c.probe().is_none());
        assert!(c.ceiling_bps() < ceiling_tried);
        assert_eq!(c.changes(), vec![("wide", 0)]);
        c.observe(at(start, 52_000), 0.0, 120_000.0);
        assert!(c.probe().is_none(), "waits 8 s x 4.05 after the failed try");
        // A failure reported with no step up on changes nothing.
        let ceiling = c.ceiling_bps();
        c.probe_failed(at(start, 52_500));
        assert_eq!(c.ceiling_bps(), ceiling);
        c.observe(at(start, 54_000), 0.0, 120_000.0);
        assert!(c.probe().is_some());
    }

    #[test]
    fn a_peer_with_its_camera_off_costs_nothing() {
        let mut c = LayerChooser::default();
        c.set_tile("a", Some(900));
        c.set_tile("b", Some(900));
        c.set_sending("b", false);
        // 1050k for a alone fits the initial ceiling; with b it would not.
        assert_eq!(c.changes(), vec![("a", 2)]);
        c.set_sending("b", true);
        assert_eq!(c.changes(), vec![("b", 1)]);
    }

    #[test]
    fn the_layer_before_a_change_is_known_to_check_the_change_arrived() {
        let mut c = LayerChooser::default();
        c.set_tile("a", Some(900));
        assert_eq!(c.changes(), vec![("a", 2)]);
        assert_eq!(c.asked_before(&"a"), None);
        c.set_tile("a", Some(150));
        assert_eq!(c.changes(), vec![("a", 0)]);
        assert_eq!(c.asked_before(&"a"), Some(2));
    }

    #[test]
    fn random_loss_below_congestion_levels_does_not_cut() {
        let start = Instant::now();
        let mut c = LayerChooser::default();
        c.add("a");
        assert_eq!(c.changes(), vec![("a", 2)]);
        for s in 0..20 {
            c.observe(at(start, s * 1_000), 0.05, 1_000_000.0);
        }
        assert!(c.changes().is_empty());
    }
}

//! Offer/answer negotiation between two peers as a state machine without I/O ("perfect
//! negotiation"): either side may start a (re)negotiation; when offers collide, the impolite peer
//! ignores the incoming offer and the polite peer rolls its own back, answers, then offers again.
//! Also the `Signal` payloads peers exchange through the server's `relay`.

use serde::{Deserialize, Serialize};

/// What Huddle peers put in a relay `payload`. Documented in `docs/protocol.md`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Signal {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate(CandidateInit),
    /// The sender's microphone, camera and screen-share state, so receivers show "muted" /
    /// "camera off" instead of guessing from silence, and lay a share out as a presentation.
    MediaState {
        audio: bool,
        video: bool,
        /// Absent from peers that cannot share: not sharing.
        #[serde(default)]
        screen: bool,
    },
    /// The sender closed this session (its connection is gone); close yours too.
    Bye,
}

/// A trickled ICE candidate (the browser's `RTCIceCandidateInit`, snake_case).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mline_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalingState {
    Stable,
    HaveLocalOffer,
}

/// What the session actor must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NegotiationAction {
    /// Create an offer, set it as the local description and send it.
    SendOffer { ice_restart: bool },
    /// Roll back our own unanswered offer (the polite side of a collision).
    RollbackLocalOffer,
    /// Set the remote offer, create an answer, set it locally and send it.
    AcceptOffer { sdp: String },
    /// Set the remote answer.
    AcceptAnswer { sdp: String },
    /// Add a remote candidate (queued by the actor until a remote description exists).
    AddCandidate(CandidateInit),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NegotiationStats {
    pub offers_sent: u32,
    pub offers_received: u32,
    pub collisions: u32,
    pub ignored_offers: u32,
    pub stale_answers: u32,
}

pub struct Negotiator {
    polite: bool,
    state: SignalingState,
    /// A negotiation we still owe (requested while not stable), and whether it restarts ICE.
    pending_offer: Option<bool>,
    stats: NegotiationStats,
}

impl Negotiator {
    /// The polite peer yields on collisions. Both sides must agree: Huddle makes the peer with
    /// the larger id polite (see [`is_polite`]).
    pub fn new(polite: bool) -> Self {
        Negotiator {
            polite,
            state: SignalingState::Stable,
            pending_offer: None,
            stats: NegotiationStats::default(),
        }
    }

    pub fn state(&self) -> SignalingState {
        self.state
    }

    pub fn is_polite(&self) -> bool {
        self.polite
    }

    pub fn stats(&self) -> &NegotiationStats {
        &self.stats
    }

    /// We want to (re)negotiate: the first offer, new media, or an ICE restart.
    pub fn negotiation_needed(&mut self, ice_restart: bool) -> Vec<NegotiationAction> {
        if self.state == SignalingState::Stable {
            self.state = SignalingState::HaveLocalOffer;
            self.stats.offers_sent += 1;
            vec![NegotiationAction::SendOffer { ice_restart }]
        } else {
            self.pending_offer = Some(self.pending_offer.unwrap_or(false) || ice_restart);
            Vec::new()
        }
    }

    /// A negotiation signal from the remote peer. `MediaState` and `Bye` are not negotiation
    /// and yield nothing here.
    pub fn on_signal(&mut self, signal: Signal) -> Vec<NegotiationAction> {
        match signal {
            Signal::Offer { sdp } => {
                self.stats.offers_received += 1;
                let collision = self.state == SignalingState::HaveLocalOffer;
                let mut actions = Vec::new();
                if collision {
                    self.stats.collisions += 1;
                    if !self.polite {
                        // The polite side will roll back and answer our offer instead.
                        self.stats.ignored_offers += 1;
                        return actions;
                    }
                    actions.push(NegotiationAction::RollbackLocalOffer);
                    // Our rolled-back offer is still owed once this exchange is done.
                    self.pending_offer = Some(self.pending_offer.unwrap_or(false));
                }
                actions.push(NegotiationAction::AcceptOffer { sdp });
                self.state = SignalingState::Stable;
                actions.extend(self.take_pending());
                actions
            }
            Signal::Answer { sdp } => {
                if self.state != SignalingState::HaveLocalOffer {
                    self.stats.stale_answers += 1;
                    return Vec::new();
                }
                self.state = SignalingState::Stable;
                let mut actions = vec![NegotiationAction::AcceptAnswer { sdp }];
                actions.extend(self.take_pending());
                actions
            }
            Signal::Candidate(c) => vec![NegotiationAction::AddCandidate(c)],
            Signal::MediaState { .. } | Signal::Bye => Vec::new(),
        }
    }

    /// An action failed (e.g. the remote SDP was rejected): return to stable so a later
    /// negotiation can run.
    pub fn action_failed(&mut self) {
        self.state = SignalingState::Stable;
    }

    fn take_pending(&mut self) -> Vec<NegotiationAction> {
        match self.pending_offer.take() {
            Some(ice_restart) => self.negotiation_needed(ice_restart),
            None => Vec::new(),
        }
    }
}

/// The shared rule for politeness: the peer whose id sorts later is polite.
pub fn is_polite(local: &str, remote: &str) -> bool {
    local > remote
}

#[cfg(test)]
mod tests {
    use super::*;
    use NegotiationAction::*;

    /// Two negotiators joined by an in-memory link; the SDP text just names its author.
    struct Pair {
        a: Negotiator,
        b: Negotiator,
        /// Signals in flight: (to_b, signal).
        wire: Vec<(bool, Signal)>,
    }

    impl Pair {
        fn new() -> Self {
            Pair {
                a: Negotiator::new(is_polite("a", "b")),
                b: Negotiator::new(is_polite("b", "a")),
                wire: Vec::new(),
            }
        }
        /// Executes actions as the session actor would, putting signals on the wire.
        fn run(&mut self, from_a: bool, actions: Vec<NegotiationAction>) {
            for action in actions {
                let who = if from_a { "a" } else { "b" };
                match action {
                    SendOffer { .. } => self.wire.push((
                        from_a,
                        Signal::Offer {
                            sdp: format!("offer from {who}"),
                        },
                    )),
                    AcceptOffer { .. } => self.wire.push((
                        from_a,
                        Signal::Answer {
                            sdp: format!("answer from {who}"),
                        },
                    )),
                    RollbackLocalOffer | AcceptAnswer { .. } | AddCandidate(_) => {}
                }
            }
        }
        /// Delivers everything in flight (in order) until quiet.
        fn settle(&mut self) {
            while !self.wire.is_empty() {
                let (to_b, signal) = self.wire.remove(0);
                let actions = if to_b {
                    self.b.on_signal(signal)
                } else {
                    self.a.on_signal(signal)
                };
                self.run(!to_b, actions);
            }
        }
    }

    #[test]
    fn politeness_is_asymmetric() {
        assert!(is_polite("b", "a"));
        assert!(!is_polite("a", "b"));
    }

    #[test]
    fn a_plain_offer_answer_reaches_stable() {
        let mut p = Pair::new();
        let actions = p.a.negotiation_needed(false);
        assert_eq!(actions, vec![SendOffer { ice_restart: false }]);
        p.run(true, actions);
        p.settle();
        assert_eq!(p.a.state(), SignalingState::Stable);
        assert_eq!(p.b.state(), SignalingState::Stable);
        assert_eq!(p.a.stats().offers_sent, 1);
        assert_eq!(p.b.stats().offers_received, 1);
    }

    #[test]
    fn glare_resolves_with_both_negotiations_done() {
        let mut p = Pair::new();
        // Both offer at once (e.g. both restart ICE); each offer crosses the other on the wire.
        let a_actions = p.a.negotiation_needed(true);
        let b_actions = p.b.negotiation_needed(true);
        p.run(true, a_actions);
        p.run(false, b_actions);
        p.settle();
        assert_eq!(p.a.state(), SignalingState::Stable);
        assert_eq!(p.b.state(), SignalingState::Stable);
        // The impolite side (a) ignored b's offer; b rolled back, answered, then offered again.
        assert_eq!(p.a.stats().ignored_offers, 1);
        assert_eq!(p.b.stats().collisions, 1);
        assert_eq!(p.b.stats().offers_sent, 2);
        assert_eq!(p.a.stats().offers_received, 2);
    }

    #[test]
    fn polite_side_rolls_back_before_answering() {
        let mut b = Negotiator::new(true);
        b.negotiation_needed(false);
        let actions = b.on_signal(Signal::Offer { sdp: "x".into() });
        assert_eq!(actions[0], RollbackLocalOffer);
        assert_eq!(actions[1], AcceptOffer { sdp: "x".into() });
        // Its own negotiation is re-issued straight after.
        assert_eq!(actions[2], SendOffer { ice_restart: false });
        assert_eq!(b.state(), SignalingState::HaveLocalOffer);
    }

    #[test]
    fn renegotiation_requested_mid_exchange_is_not_lost() {
        let mut a = Negotiator::new(false);
        a.negotiation_needed(false);
        assert!(
            a.negotiation_needed(true).is_empty(),
            "queued while waiting"
        );
        let actions = a.on_signal(Signal::Answer { sdp: "y".into() });
        assert_eq!(
            actions,
            vec![
                AcceptAnswer { sdp: "y".into() },
                SendOffer { ice_restart: true }
            ]
        );
    }

    #[test]
    fn stale_answers_and_failures() {
        let mut a = Negotiator::new(false);
        assert!(a.on_signal(Signal::Answer { sdp: "?".into() }).is_empty());
        assert_eq!(a.stats().stale_answers, 1);
        a.negotiation_needed(false);
        a.action_failed();
        assert_eq!(a.state(), SignalingState::Stable);
        assert_eq!(a.negotiation_needed(false).len(), 1);
    }

    #[test]
    fn signals_have_a_stable_json_form() {
        let c = Signal::Candidate(CandidateInit {
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        });
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["kind"], "candidate");
        assert_eq!(json["sdp_mline_index"], 0);
        let back: Signal = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
        let m: Signal =
            serde_json::from_str(r#"{"kind":"media_state","audio":false,"video":true}"#).unwrap();
        assert_eq!(
            m,
            Signal::MediaState {
                audio: false,
                video: true,
                screen: false,
            }
        );
        let sharing: Signal = serde_json::from_str(
            r#"{"kind":"media_state","audio":true,"video":false,"screen":true}"#,
        )
        .unwrap();
        assert!(matches!(sharing, Signal::MediaState { screen: true, .. }));
        assert!(serde_json::from_str::<Signal>(r#"{"kind":"offer"}"#).is_err());
    }
}

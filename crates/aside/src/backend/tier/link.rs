//! The backplane's listener ([`Link`]): what other instances and services
//! say, applied to this instance's copies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use super::Tier;
use super::events::{Message, Op};
use crate::backend::BackplaneListener;

/// The backplane's listener: applies what other instances and services say.
/// It runs where the backplane delivers (a Redis backplane: its own
/// thread), never waiting for the application's runtime.
pub(super) struct Link {
    tier: Weak<Tier>,
    /// The last message number heard from each instance.
    sources: Mutex<HashMap<String, u64>>,
}

impl Link {
    pub(super) fn new(tier: Weak<Tier>) -> Self {
        Link {
            tier,
            sources: Mutex::new(HashMap::new()),
        }
    }
}

/// Instances remembered at most; past it the map starts over (a gap, since a
/// jump could no longer be seen).
const MAX_SOURCES: usize = 10_000;

impl BackplaneListener for Link {
    fn connected(&self) {
        if let Some(tier) = self.tier.upgrade() {
            // Whatever was published while we were away is lost.
            tier.gap();
            tier.l1.set_trusted(true);
            if let Some(membered) = &tier.membered {
                membered.connected();
                // Tell strict writers we applied what we missed (by
                // dropping everything): see `Membered::rejoining`.
                rejoin(&tier);
            }
        }
    }

    fn disconnected(&self) {
        if let Some(tier) = self.tier.upgrade() {
            tier.l1.set_trusted(false);
            tier.gap();
        }
    }

    fn caught_up(&self, as_of: u64) {
        if let Some(tier) = self.tier.upgrade() {
            tier.l1.caught_up(as_of);
            if let Some((membered, _)) = tier.strict() {
                membered.heartbeat_back(as_of);
                // Registered only while heard: a renewal follows a
                // heartbeat.
                if membered.renewal_due(crate::clock::boot_ns()) {
                    super::strict::renew(&tier);
                }
            }
        }
    }

    fn message(&self, payload: &[u8]) {
        let Some(tier) = self.tier.upgrade() else {
            return;
        };
        let Some(message) = Message::decode(payload) else {
            tracing::warn!(
                "aside: a backplane message was not understood; dropping in-process copies"
            );
            tier.gap();
            return;
        };
        if message.op == Op::Ack {
            // An acknowledgement of our own message (strict invalidation),
            // sent to us alone: numbered by what it acknowledges.
            if let (Some(src), Some(membered)) = (&message.src, &tier.membered) {
                membered.ack(src, message.seq);
            }
            return;
        }
        match &message.src {
            Some(src) if *src == tier.id => {
                if let Some(membered) = &tier.membered {
                    membered.heard_own(message.seq);
                    if message.op == Op::Rejoin {
                        // Everything before our `rejoin` is applied now:
                        // say so, naming that `rejoin` (an older one may
                        // still be on its way, by another connection).
                        drop(tier.send(Op::Rejoined, &[message.seq.to_string()]));
                    }
                }
                return;
            }
            Some(src) => {
                let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
                if sources.len() >= MAX_SOURCES && !sources.contains_key(src) {
                    sources.clear();
                    tier.gap();
                }
                let last = sources.insert(src.clone(), message.seq);
                // The first message heard from an instance must be its first
                // (or we may have missed some before it), later ones must
                // follow on.
                let expected = last.map_or(1, |l| l.wrapping_add(1));
                if message.seq != expected {
                    tracing::debug!(source = %src, "aside: backplane messages were lost");
                    tier.gap();
                }
            }
            None => {}
        }
        tier.count(&tier.stats.received);
        match message.op {
            Op::Keys => tier.l1.evict(&message.keys),
            Op::Versions => tier.l1.evict_versions(&message.keys),
            Op::Clear | Op::Ack => tier.gap(),
            Op::Rejoin | Op::Rejoined => {
                if let (Some(src), Some(membered)) = (&message.src, &tier.membered) {
                    if message.op == Op::Rejoin {
                        membered.rejoining(src, message.seq);
                    } else {
                        let answers = message.keys.first().and_then(|k| k.parse().ok());
                        membered.rejoined(src, answers);
                    }
                }
                return;
            }
        }
        // Applied: the writer may be waiting for us to say so.
        if let (Some(src), Some((backplane, _)), true) = (&message.src, &tier.outbox, message.ack) {
            tier.acknowledge(backplane, src, message.seq);
        }
        if message.src.is_none() && message.op != Op::Clear {
            // From another service: nobody else applies it to L2.
            tier.count(&tier.stats.foreign);
            let tier = Arc::clone(&tier);
            crate::task::spawn(async move {
                // Retried like our own messages: for as long as a copy lives.
                let started = tokio::time::Instant::now();
                let mut pause = Duration::from_millis(10);
                loop {
                    let applied = match message.op {
                        Op::Versions => tier.l2.remove_versions(&message.keys).await,
                        _ => tier.l2.invalidate(&message.keys).await,
                    };
                    // Copies put while it ran were read before it landed.
                    match message.op {
                        Op::Versions => tier.l1.evict_versions(&message.keys),
                        _ => tier.l1.evict(&message.keys),
                    }
                    match applied {
                        Ok(()) => break,
                        Err(e) if started.elapsed() >= tier.max_l1_age => {
                            tracing::warn!(error = %e, "aside: could not apply another service's invalidation");
                            break;
                        }
                        Err(_) => {
                            tokio::time::sleep(pause).await;
                            pause = (pause * 2).min(Duration::from_secs(1));
                        }
                    }
                }
            });
        }
    }
}

/// Sends `rejoin`, again while it fails (the connection that carries it
/// may be coming back too) and the subscription holds, for up to a few
/// seconds: a writer that does not hear it only waits out our lease.
fn rejoin(tier: &Arc<Tier>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let tier = Arc::downgrade(tier);
    rt.spawn(async move {
        let mut pause = Duration::from_millis(20);
        for _ in 0..8 {
            let Some(sending) = tier
                .upgrade()
                .filter(|t| t.l1.is_trusted())
                .and_then(|t| t.send(Op::Rejoin, &[]))
            else {
                return;
            };
            if sending.1.await.is_ok() {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    });
}

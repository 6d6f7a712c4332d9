//! Flap damping in front of any discovery source: a member that keeps leaving and coming
//! back is held out for a while, so one bad backend cannot cause a storm of ring changes and
//! live moves.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::time::Instant;
use tower::discover::Change;
use tower_hashring::NodeId;

use crate::{changes::ChangeSender, Backend, MemberChanges};

/// Holds out a member that left `limit` times within `window` when it comes back again,
/// until `hold_down` after its latest departure: route-flap damping for a ring.
///
/// Each departure is counted; an announcement of a member with `limit` departures in the
/// last `window` is not passed on but kept, and passed on once the hold-down has run out.
/// A member that leaves again while held is simply forgotten until it returns (and is then
/// held again, from that latest departure). Updates of a member on the ring and every
/// departure pass at once. [`HeldDown`] tells which members are held now, and until when.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use discovery::{Backend, FlapDamping, StaticDiscovery};
///
/// let damping = FlapDamping::new(3, Duration::from_secs(60), Duration::from_secs(30));
/// assert_eq!(damping.to_string(), "held out for 30s after 3 departures within 60s");
/// let held = damping.held_down();
/// let members = damping.wrap(StaticDiscovery::new([
///     Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap()),
/// ]));
/// assert!(held.now().is_empty());
/// # drop(members);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct FlapDamping {
    pub(crate) limit: usize,
    pub(crate) window: Duration,
    pub(crate) hold_down: Duration,
    held: HeldDown,
}

/// The members a [`FlapDamping`] holds out now, with the time each is let back in at the
/// earliest. Cheap to clone; shared with the running damping.
#[derive(Clone, Debug, Default)]
pub struct HeldDown {
    held: Arc<Mutex<BTreeMap<NodeId, Instant>>>,
    total: Arc<std::sync::atomic::AtomicU64>,
}

impl HeldDown {
    /// Each member held out now, and until when.
    pub fn now(&self) -> BTreeMap<NodeId, Instant> {
        self.lock().clone()
    }

    /// How many times a member was held out since the start.
    pub fn total(&self) -> u64 {
        self.total.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Instant>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Display for FlapDamping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "held out for {:?} after {} departures within {:?}",
            self.hold_down, self.limit, self.window
        )
    }
}

impl Default for FlapDamping {
    /// A member that left 4 times within 60 s is held out for 30 s after its latest
    /// departure.
    fn default() -> Self {
        Self::new(4, Duration::from_secs(60), Duration::from_secs(30))
    }
}

impl FlapDamping {
    /// A member that left `limit` times (at least 1) within `window` is held out until
    /// `hold_down` after its latest departure.
    pub fn new(limit: u32, window: Duration, hold_down: Duration) -> Self {
        Self {
            limit: limit.max(1) as usize,
            window,
            hold_down,
            held: HeldDown::default(),
        }
    }

    /// The members held out now, as this damping runs.
    pub fn held_down(&self) -> HeldDown {
        self.held.clone()
    }

    /// Damps the flapping members of `source`.
    pub fn wrap<S, E>(self, source: S) -> MemberChanges
    where
        S: Stream<Item = Result<Change<NodeId, Backend>, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        MemberChanges::spawn(|changes| damp(self, source, changes))
    }
}

/// What the damping knows of the members: their recent departures, which ones it passed on,
/// and the announcements it holds.
#[derive(Default)]
struct Flaps {
    departures: HashMap<NodeId, VecDeque<Instant>>,
    passed: HashSet<NodeId>,
    // The latest announcement of each held member, and when it may pass.
    holding: HashMap<NodeId, (Backend, Instant)>,
}

impl Flaps {
    /// What to pass on for `change` at `now`, if anything.
    fn apply(
        &mut self,
        damping: &FlapDamping,
        change: Change<NodeId, Backend>,
        now: Instant,
    ) -> Option<Change<NodeId, Backend>> {
        match change {
            Change::Remove(id) => {
                let known = self.passed.contains(&id) || self.holding.contains_key(&id);
                if !known {
                    return None;
                }
                let departures = self.departures.entry(id.clone()).or_default();
                // Pruned here too: ids that never come back must not pile up.
                departures.retain(|left| now.saturating_duration_since(*left) <= damping.window);
                departures.push_back(now);
                // Held and gone again: nothing left to let in. Its departures still count
                // when it next comes back.
                if self.holding.remove(&id).is_some() {
                    damping.held.lock().remove(&id);
                }
                self.passed.remove(&id).then_some(Change::Remove(id))
            }
            Change::Insert(id, backend) => {
                if self.passed.contains(&id) {
                    return Some(Change::Insert(id, backend));
                }
                if let Some((held, _)) = self.holding.get_mut(&id) {
                    *held = backend;
                    return None;
                }
                let departures = self.departures.entry(id.clone()).or_default();
                while departures
                    .front()
                    .is_some_and(|left| now.saturating_duration_since(*left) > damping.window)
                {
                    departures.pop_front();
                }
                let until = departures.back().map(|last| *last + damping.hold_down);
                match until {
                    // Flapping, and its hold-down not over yet.
                    Some(until) if departures.len() >= damping.limit && until > now => {
                        tracing::warn!(
                            backend = %id,
                            departures = departures.len(),
                            hold_down = ?damping.hold_down,
                            "member flapping: held out of the ring"
                        );
                        damping.held.lock().insert(id.clone(), until);
                        damping
                            .held
                            .total
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.holding.insert(id, (backend, until));
                        None
                    }
                    _ => {
                        if departures.is_empty() {
                            self.departures.remove(&id);
                        }
                        self.passed.insert(id.clone());
                        Some(Change::Insert(id, backend))
                    }
                }
            }
        }
    }

    /// The earliest time a held member may pass.
    fn next_release(&self) -> Option<Instant> {
        self.holding.values().map(|(_, until)| *until).min()
    }

    /// The held members whose hold-down ran out by `now`, passed on. A member that left
    /// again while held has no announcement to pass: it is only forgotten.
    fn release(&mut self, damping: &FlapDamping, now: Instant) -> Vec<Change<NodeId, Backend>> {
        let due: Vec<NodeId> = self
            .holding
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut released = Vec::new();
        for id in due {
            let Some((backend, _)) = self.holding.remove(&id) else {
                continue;
            };
            damping.held.lock().remove(&id);
            tracing::info!(backend = %id, "hold-down over: member back on the ring");
            self.passed.insert(id.clone());
            released.push(Change::Insert(id, backend));
        }
        released
    }
}

async fn damp<S, E>(damping: FlapDamping, source: S, changes: ChangeSender)
where
    S: Stream<Item = Result<Change<NodeId, Backend>, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    let mut source = std::pin::pin!(source);
    let mut flaps = Flaps::default();
    loop {
        let release = flaps.next_release();
        let next = tokio::select! {
            next = source.next() => next,
            () = sleep_until(release) => {
                for change in flaps.release(&damping, Instant::now()) {
                    if changes.send(change).is_err() {
                        return;
                    }
                }
                continue;
            }
            () = changes.closed() => return,
        };
        let change = match next {
            None => return,
            Some(Err(error)) => {
                tracing::warn!(%error, "discovery source failed");
                continue;
            }
            Some(Ok(change)) => change,
        };
        if let Some(change) = flaps.apply(&damping, change, Instant::now()) {
            if changes.send(change).is_err() {
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

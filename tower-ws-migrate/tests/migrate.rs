//! The migrator with paused time and recording handles: exactly the affected connections
//! move, paced, and every migration is reported.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tower_hashring::{HashScheme, NodeId, Ring, RingSnapshot};
use tower_ws_migrate::{
    Migrate, Migration, MigrationPolicy, MigrationStats, Migrator, Outcome, Pacing, Registered,
    Registry,
};

type Log = Arc<Mutex<Vec<(String, Instant, MigrationPolicy)>>>;

/// Records when it was told to move, and with what.
#[derive(Clone)]
struct Recorder {
    key: String,
    log: Log,
    ended: bool,
}

impl Migrate for Recorder {
    fn migrate(&self, policy: &MigrationPolicy) -> Result<(), String> {
        if self.ended {
            return Err("already ended".into());
        }
        let entry = (self.key.clone(), Instant::now(), policy.clone());
        self.log.lock().unwrap().push(entry);
        Ok(())
    }
}

fn ring(nodes: &[&str]) -> Ring {
    nodes
        .iter()
        .fold(Ring::builder(), |b, id| b.node(*id, 1))
        .build()
        .unwrap()
}

struct Setup {
    registry: Registry<Recorder>,
    publish: watch::Sender<Arc<RingSnapshot>>,
    log: Log,
    guards: Vec<Registered<Recorder>>,
}

impl Setup {
    fn new(nodes: &[&str]) -> (Self, watch::Receiver<Arc<RingSnapshot>>) {
        let first = RingSnapshot::initial(HashScheme::default()).next(ring(nodes));
        let (publish, watch) = watch::channel(Arc::new(first));
        let setup = Setup {
            registry: Registry::new(),
            publish,
            log: Arc::default(),
            guards: Vec::new(),
        };
        (setup, watch)
    }

    /// Connects `users` on their owners in the current ring.
    fn connect(&mut self, users: impl IntoIterator<Item = String>) {
        let snapshot = self.publish.borrow().clone();
        for key in users {
            self.connect_on(&key, &snapshot);
        }
    }

    fn connect_on(&mut self, key: &str, snapshot: &RingSnapshot) {
        let ring = snapshot.ring();
        let owner = ring.route(key.as_bytes()).unwrap().id().clone();
        let handle = Recorder {
            key: key.to_owned(),
            log: self.log.clone(),
            ended: false,
        };
        let position = ring.key_position(key.as_bytes());
        let guard =
            self.registry
                .register(key.as_bytes(), position, owner, snapshot.version(), handle);
        self.guards.push(guard);
    }

    fn change(&self, nodes: &[&str]) -> Arc<RingSnapshot> {
        let next = Arc::new(self.publish.borrow().next(ring(nodes)));
        self.publish.send_replace(next.clone());
        next
    }

    fn moved_keys(&self) -> BTreeSet<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(k, ..)| k.clone())
            .collect()
    }

    fn moved_times(&self) -> Vec<Instant> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, t, _)| *t)
            .collect()
    }
}

fn users(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|u| format!("user-{u}"))
}

/// The users whose owner differs between the two rings, by brute force.
fn owner_changed(n: usize, old: &[&str], new: &[&str]) -> BTreeSet<String> {
    let (old, new) = (ring(old), ring(new));
    users(n)
        .filter(|u| {
            old.route(u.as_bytes()).map(|n| n.id()) != new.route(u.as_bytes()).map(|n| n.id())
        })
        .collect()
}

async fn settle() {
    // Let the spawned migrator observe the change and finish an unpaced batch.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn only_connections_whose_owner_changed_move() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    setup.connect(users(3000));
    let migrator = Migrator::new(setup.registry.clone(), watch).pacing(Pacing::unlimited());
    let stats = migrator.stats();
    tokio::spawn(migrator.run());

    setup.change(&["a", "b", "c", "d"]);
    settle().await;
    let expected = owner_changed(3000, &["a", "b", "c"], &["a", "b", "c", "d"]);
    assert!(expected.len() > 500, "a 4th node takes about a quarter");
    assert_eq!(
        setup.moved_keys(),
        expected,
        "exactly the owner-changed users moved"
    );
    assert_eq!(stats.moved(), expected.len() as u64);

    // The told clients reconnect: now everyone sits on its owner in the 4-node ring.
    // Removing a node then moves exactly its users.
    setup.guards.clear();
    setup.connect(users(3000));
    setup.log.lock().unwrap().clear();
    setup.change(&["a", "c", "d"]);
    settle().await;
    let on_b: BTreeSet<String> = {
        let four = ring(&["a", "b", "c", "d"]);
        users(3000)
            .filter(|u| four.route(u.as_bytes()).unwrap().id().as_str() == "b")
            .collect()
    };
    assert_eq!(setup.moved_keys(), on_b);
    assert!(setup
        .log
        .lock()
        .unwrap()
        .iter()
        .all(|(.., p)| *p == MigrationPolicy::reconnect()));
}

#[tokio::test(start_paused = true)]
async fn pacing_holds_the_rate() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    setup.connect(users(2000));
    let pacing = Pacing::per_second(100).jitter(0.2);
    tokio::spawn(
        Migrator::new(setup.registry.clone(), watch)
            .pacing(pacing)
            .run(),
    );

    let start = Instant::now();
    setup.change(&["a", "b", "c", "d"]);
    let expected = owner_changed(2000, &["a", "b", "c"], &["a", "b", "c", "d"]).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_first_second = setup.moved_keys().len();
    assert!(
        (95..=125).contains(&in_first_second),
        "about 100 in the first second, got {in_first_second}"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let times = setup.moved_times();
    assert_eq!(times.len(), expected);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(8),
            "gap {gap:?} under 10 ms - 20 %"
        );
        assert!(
            gap <= Duration::from_millis(12),
            "gap {gap:?} over 10 ms + 20 %"
        );
    }
    let span = *times.last().unwrap() - start;
    let mean = span.as_secs_f64() / (expected - 1) as f64;
    assert!((0.0095..0.0105).contains(&mean), "mean gap {mean}");
}

#[tokio::test(start_paused = true)]
async fn a_drain_spreads_over_its_window() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c", "d"]);
    setup.connect(users(4000));
    let leaving = owner_changed(4000, &["a", "b", "c", "d"], &["a", "b", "c"]);
    let window = Duration::from_secs(4);
    let pacing = Pacing::over(window, leaving.len());
    tokio::spawn(
        Migrator::new(setup.registry.clone(), watch)
            .pacing(pacing)
            .run(),
    );

    let start = Instant::now();
    setup.change(&["a", "b", "c"]);
    tokio::time::sleep(window + Duration::from_secs(1)).await;
    let times = setup.moved_times();
    assert_eq!(times.len(), leaving.len(), "every connection of d moved");
    let last = *times.last().unwrap() - start;
    assert!(
        last > window.mul_f64(0.9) && last <= window,
        "the last move lands at the end of the window, not at once: {last:?}"
    );
    let halfway = times.iter().filter(|t| **t - start <= window / 2).count();
    let half = leaving.len() / 2;
    assert!(
        halfway.abs_diff(half) <= leaving.len() / 50,
        "{halfway} by half time, not {half}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_hook_sees_every_migration_and_failures_are_counted() {
    let (mut setup, watch) = Setup::new(&["a", "b"]);
    setup.connect(users(500));
    // One connection has already ended but is still registered.
    let snapshot = setup.publish.borrow().clone();
    let ended_key = "ends-early";
    let owner_before = snapshot
        .ring()
        .route(ended_key.as_bytes())
        .unwrap()
        .id()
        .clone();
    let handle = Recorder {
        key: ended_key.into(),
        log: setup.log.clone(),
        ended: true,
    };
    let position = snapshot.ring().key_position(ended_key.as_bytes());
    let _ended = setup.registry.register(
        ended_key.as_bytes(),
        position,
        owner_before.clone(),
        snapshot.version(),
        handle,
    );

    type Seen = (String, NodeId, Option<NodeId>, Outcome);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hook_seen = seen.clone();
    let migrator = Migrator::new(setup.registry.clone(), watch)
        .pacing(Pacing::unlimited())
        .policy(MigrationPolicy::Reconnect {
            code: 1000,
            reason: "moved".into(),
        })
        .hook(move |m: &Migration<'_>| {
            hook_seen.lock().unwrap().push((
                String::from_utf8_lossy(m.key).into_owned(),
                m.from.clone(),
                m.to.cloned(),
                m.outcome.clone(),
            ))
        });
    let stats: MigrationStats = migrator.stats();
    tokio::spawn(migrator.run());
    // Remove the ended key's owner, so it must move too.
    let remaining = if owner_before.as_str() == "a" {
        "b"
    } else {
        "a"
    };
    setup.change(&[remaining]);
    settle().await;

    let seen = seen.lock().unwrap();
    let moved = setup.moved_keys();
    assert_eq!(
        seen.len(),
        moved.len() + 1,
        "the hook saw the moves and the failure"
    );
    for (key, from, to, outcome) in seen.iter() {
        assert_eq!(to.as_ref().map(NodeId::as_str), Some(remaining));
        assert_ne!(from.as_str(), remaining);
        if key == ended_key {
            assert_eq!(outcome, &Outcome::Failed("already ended".into()));
        } else {
            assert_eq!(outcome, &Outcome::Moved);
            assert!(moved.contains(key));
        }
    }
    assert_eq!((stats.moved(), stats.failed()), (moved.len() as u64, 1));
    assert!(setup
        .log
        .lock()
        .unwrap()
        .iter()
        .all(|(.., p)| matches!(p, MigrationPolicy::Reconnect { code: 1000, .. })));
}

/// The seed's race: a connection routed on the old ring but registered only after the
/// migrator planned the change still ends on its new owner.
#[tokio::test(start_paused = true)]
async fn a_connection_routed_on_the_old_ring_during_a_change_still_moves() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    let old = setup.publish.borrow().clone();
    setup.connect(users(300));
    tokio::spawn(
        Migrator::new(setup.registry.clone(), watch)
            .pacing(Pacing::unlimited())
            .run(),
    );
    // Change to a 4th node, let the migrator finish, then a latecomer routed on the old
    // ring registers; another change (unrelated to it) follows.
    setup.change(&["a", "b", "c", "d"]);
    settle().await;
    let new = ring(&["a", "b", "c", "d"]);
    let late = users(10_000)
        .skip(300)
        .find(|u| {
            old.ring().route(u.as_bytes()).unwrap().id() != new.route(u.as_bytes()).unwrap().id()
        })
        .unwrap();
    setup.connect_on(&late, &old);
    setup.log.lock().unwrap().clear();
    setup.change(&["a", "b", "c", "d", "e"]);
    settle().await;
    assert!(
        setup.moved_keys().contains(&late),
        "the latecomer routed on version {} was checked against the newest ring",
        old.version()
    );
}

/// A newer ring arriving in the middle of a paced batch replaces the rest of it, and no
/// connection is told twice.
#[tokio::test(start_paused = true)]
async fn a_change_mid_batch_replans_without_telling_anyone_twice() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    setup.connect(users(2000));
    tokio::spawn(
        Migrator::new(setup.registry.clone(), watch)
            .pacing(Pacing::per_second(100))
            .run(),
    );
    setup.change(&["a", "b", "c", "d"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Back to three nodes: the connections not yet told no longer need to move.
    setup.change(&["a", "b", "c"]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let log = setup.log.lock().unwrap();
    let distinct: BTreeSet<_> = log.iter().map(|(k, ..)| k).collect();
    assert_eq!(distinct.len(), log.len(), "nobody told twice");
    assert!(
        (45..=60).contains(&log.len()),
        "only the ~50 told before the change back: {}",
        log.len()
    );
}

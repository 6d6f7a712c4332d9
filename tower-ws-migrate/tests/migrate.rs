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
    Migrate, MigrateFuture, MigrationEvent, MigrationPolicy, MigrationStats, Migrator, Outcome,
    Pacing,
};
use tower_ws_proxy::{LiveConnections, Registered};

type Log = Arc<Mutex<Vec<(String, Instant, MigrationPolicy)>>>;

/// Records when it was told to move, and with what.
#[derive(Clone)]
struct Recorder {
    key: String,
    log: Log,
    ended: bool,
    /// Records the request, then never finishes (a peer that never answers).
    hangs: bool,
    /// Its route's policy, if it has its own.
    policy: Option<Arc<MigrationPolicy>>,
    /// A move takes this long before it reports its outcome.
    takes: Duration,
}

impl Migrate for Recorder {
    fn policy(&self) -> Option<Arc<MigrationPolicy>> {
        self.policy.clone()
    }

    fn migrate(&self, policy: &MigrationPolicy, _: &NodeId, _: Option<&NodeId>) -> MigrateFuture {
        if self.hangs {
            let entry = (self.key.clone(), Instant::now(), policy.clone());
            self.log.lock().unwrap().push(entry);
            return Box::pin(std::future::pending());
        }
        let outcome = if self.ended {
            Outcome::Failed("already ended".into())
        } else {
            let entry = (self.key.clone(), Instant::now(), policy.clone());
            self.log.lock().unwrap().push(entry);
            Outcome::Moved
        };
        let takes = self.takes;
        Box::pin(async move {
            tokio::time::sleep(takes).await;
            outcome
        })
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
    connections: LiveConnections<Recorder>,
    publish: watch::Sender<Arc<RingSnapshot>>,
    log: Log,
    guards: Vec<Registered<Recorder>>,
    /// Connections made from now on never finish a migration.
    hanging: bool,
    /// Moves of connections made from now on take this long.
    move_takes: Duration,
}

impl Setup {
    fn new(nodes: &[&str]) -> (Self, watch::Receiver<Arc<RingSnapshot>>) {
        let first = RingSnapshot::initial(HashScheme::default()).next(ring(nodes));
        let (publish, watch) = watch::channel(Arc::new(first));
        let setup = Setup {
            connections: LiveConnections::default(),
            publish,
            log: Arc::default(),
            guards: Vec::new(),
            hanging: false,
            move_takes: Duration::ZERO,
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
        self.connect_with_policy(key, snapshot, None);
    }

    /// Connects `key` on its owner in `snapshot`, on a route with its own policy or not.
    fn connect_with_policy(
        &mut self,
        key: &str,
        snapshot: &RingSnapshot,
        policy: Option<Arc<MigrationPolicy>>,
    ) {
        let ring = snapshot.ring();
        let owner = ring.route(key.as_bytes()).unwrap().id().clone();
        let handle = Recorder {
            key: key.to_owned(),
            log: self.log.clone(),
            ended: false,
            hangs: self.hanging,
            policy,
            takes: self.move_takes,
        };
        let position = ring.key_position(key.as_bytes());
        let guard =
            self.connections
                .register(key.as_bytes(), position, owner, snapshot.version(), handle);
        self.guards.push(guard);
    }

    /// Registers `key` on its owner in the current ring as a connection that has already
    /// ended (its every migration fails), and returns that owner.
    fn connect_ended(&mut self, key: &str) -> NodeId {
        let snapshot = self.publish.borrow().clone();
        let owner = snapshot.ring().route(key.as_bytes()).unwrap().id().clone();
        let handle = Recorder {
            key: key.into(),
            log: self.log.clone(),
            ended: true,
            hangs: false,
            policy: None,
            takes: Duration::ZERO,
        };
        let position = snapshot.ring().key_position(key.as_bytes());
        let guard = self.connections.register(
            key.as_bytes(),
            position,
            owner.clone(),
            snapshot.version(),
            handle,
        );
        self.guards.push(guard);
        owner
    }

    /// Connects `users` on their owners in the current ring, on a route with the Live policy.
    fn connect_live(&mut self, users: impl IntoIterator<Item = String>) {
        let snapshot = self.publish.borrow().clone();
        let live = Arc::new(MigrationPolicy::live());
        for key in users {
            self.connect_with_policy(&key, &snapshot, Some(live.clone()));
        }
    }

    /// The keys of connections that are not on their owner in `ring`.
    fn off_owner(&self, ring: &RingSnapshot) -> Vec<String> {
        let mut off_owner = Vec::new();
        self.connections.for_each(|tracked| {
            let owner = ring.ring().owner_of(tracked.position).unwrap().id();
            if &tracked.backend != owner {
                off_owner.push(String::from_utf8_lossy(&tracked.key).into_owned());
            }
        });
        off_owner
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
    // With time paused, the clock only advances once every task is idle: the migrator and
    // every migration it spawned have run by then.
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(start_paused = true)]
async fn only_connections_whose_owner_changed_move() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    setup.connect(users(3000));
    let migrator = Migrator::new(setup.connections.clone(), watch).pacing(Pacing::unlimited());
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
        Migrator::new(setup.connections.clone(), watch)
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
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
            .pacing(Pacing::unlimited())
            .drain_window(window)
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
    let ended_key = "ends-early";
    let owner_before = setup.connect_ended(ended_key);

    type Seen = (String, NodeId, Option<NodeId>, Outcome);
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let hook_seen = seen.clone();
    let migrator = Migrator::new(setup.connections.clone(), watch)
        .pacing(Pacing::unlimited())
        .policy(MigrationPolicy::Reconnect {
            code: 1000,
            reason: "moved".into(),
        })
        .hook(move |m: &MigrationEvent<'_>| {
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

/// The plan's blind spot: a connection routed on the old ring but registered only after
/// the migrator planned the change still ends on its new owner.
#[tokio::test(start_paused = true)]
async fn a_connection_routed_on_the_old_ring_during_a_change_still_moves() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    let old = setup.publish.borrow().clone();
    setup.connect(users(300));
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
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
        Migrator::new(setup.connections.clone(), watch)
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

/// A connection registered with its route's policy is moved with that policy; a live move
/// that succeeded counts the connection on its new backend.
#[tokio::test(start_paused = true)]
async fn route_policies_apply_and_live_moves_update_the_counts() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    let snapshot = setup.publish.borrow().clone();
    let live = Arc::new(MigrationPolicy::live());
    for key in users(1000) {
        // Even users are on a live route, odd ones on the migrator's (Reconnect).
        let n: usize = key.trim_start_matches("user-").parse().unwrap();
        let policy = n.is_multiple_of(2).then(|| live.clone());
        setup.connect_with_policy(&key, &snapshot, policy);
    }
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
            .pacing(Pacing::unlimited())
            .run(),
    );
    setup.change(&["a", "b", "c", "d"]);
    settle().await;

    let log = setup.log.lock().unwrap().clone();
    assert!(!log.is_empty());
    for (key, _, policy) in &log {
        let n: usize = key.trim_start_matches("user-").parse().unwrap();
        let expected = if n.is_multiple_of(2) {
            MigrationPolicy::live()
        } else {
            MigrationPolicy::reconnect()
        };
        assert_eq!(policy, &expected, "{key}");
    }
    // Live moves now count on d; reconnecting ones stay on their old backend until they
    // close (the recorder never closes them).
    let live_moved = log
        .iter()
        .filter(|(_, _, p)| *p == MigrationPolicy::live())
        .count() as u64;
    let counts = setup.connections.per_backend();
    assert_eq!(counts.get(&NodeId::from("d")).copied(), Some(live_moved));
    assert_eq!(counts.values().sum::<u64>(), 1000);
    use tower_hashring::LoadSource;
    assert_eq!(setup.connections.load(&NodeId::from("d")), live_moved);
    assert_eq!(setup.connections.total(), 1000);
}

/// The layer passes readiness through and gives every request the maker of movable
/// connection handles.
#[tokio::test]
async fn the_layer_passes_readiness_through_and_adds_the_handle_maker() {
    use tower::Layer;
    use tower_test::mock;
    use tower_ws_migrate::ProxiedConnection;
    use tower_ws_proxy::{MakeHandle, Upstream};

    let layer = tower_ws_migrate::MigrateLayer::new(|_: &NodeId| -> Option<Upstream> { None });
    let (service, mut handle) = mock::pair::<http::Request<()>, ()>();
    let mut service = mock::Spawn::new(layer.layer(service));

    handle.allow(0);
    assert!(
        service.poll_ready().is_pending(),
        "not ready while the proxy is not"
    );
    handle.allow(1);
    assert!(service.poll_ready().is_ready());
    let response = service.call(http::Request::get("/send?userId=7").body(()).unwrap());
    let (request, send) = handle.next_request().await.unwrap();
    let make = request.extensions().get::<MakeHandle<ProxiedConnection>>();
    assert!(make.is_some());
    assert_eq!(request.uri(), "/send?userId=7");
    send.send_response(());
    response.await.unwrap();
}

/// The plan's blind spot without a second change: a connection routed on the old ring that
/// registers only after the change was planned is moved as soon as it registers.
#[tokio::test(start_paused = true)]
async fn a_latecomer_on_the_old_ring_moves_as_soon_as_it_registers() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    let old = setup.publish.borrow().clone();
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
            .pacing(Pacing::unlimited())
            .run(),
    );
    setup.change(&["a", "b", "c", "d"]);
    settle().await;
    let new = ring(&["a", "b", "c", "d"]);
    let owner_changed = |u: &String| {
        old.ring().route(u.as_bytes()).unwrap().id() != new.route(u.as_bytes()).unwrap().id()
    };
    let late = users(10_000).find(|u| owner_changed(u)).unwrap();
    let unchanged = users(10_000).find(|u| !owner_changed(u)).unwrap();
    setup.connect_on(&late, &old);
    setup.connect_on(&unchanged, &old);
    settle().await;
    assert_eq!(setup.moved_keys(), BTreeSet::from([late]));
}

/// Migrations that never finish (a peer that never answers) give their permits back at the
/// deadline: with one permit, every affected connection is still tried, one deadline apart,
/// and each counts as failed.
#[tokio::test(start_paused = true)]
async fn a_stuck_migration_gives_back_its_permit_at_the_deadline() {
    let (mut setup, watch) = Setup::new(&["a"]);
    setup.hanging = true;
    setup.connect(users(200));
    let migrator = Migrator::new(setup.connections.clone(), watch)
        .pacing(Pacing::unlimited())
        .max_in_flight(1)
        .deadline(Duration::from_secs(1));
    let stats = migrator.stats();
    tokio::spawn(migrator.run());
    setup.change(&["a", "b"]);
    settle().await;
    let affected = setup.moved_keys().len();
    assert_eq!(affected, 1, "one permit: one migration at a time");
    let expected = owner_changed(200, &["a"], &["a", "b"]).len();
    tokio::time::sleep(Duration::from_secs(expected as u64) + Duration::from_millis(500)).await;
    assert_eq!(setup.moved_keys(), owner_changed(200, &["a"], &["a", "b"]));
    assert_eq!(stats.failed(), expected as u64);
    let times = setup.moved_times();
    assert!(times
        .windows(2)
        .all(|w| w[1] - w[0] == Duration::from_secs(1)));
}

/// The ring flaps a,b → a,b,c → a,b while live moves to c are under way: moves that finish
/// after the flap back put their connections on c, which the second plan could not see;
/// they are moved again, and every connection ends on its owner in the current ring.
#[tokio::test(start_paused = true)]
async fn a_ring_that_flaps_during_live_moves_ends_with_every_connection_on_its_owner() {
    let (mut setup, watch) = Setup::new(&["a", "b"]);
    setup.move_takes = Duration::from_secs(1);
    setup.connect_live(users(600));
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
            .pacing(Pacing::unlimited())
            .run(),
    );
    setup.change(&["a", "b", "c"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let under_way = setup.moved_keys().len();
    assert_eq!(
        under_way,
        owner_changed(600, &["a", "b"], &["a", "b", "c"]).len()
    );
    let back = setup.change(&["a", "b"]);
    tokio::time::sleep(Duration::from_secs(5)).await;

    let off_owner = setup.off_owner(&back);
    assert!(off_owner.is_empty(), "left off their owner: {off_owner:?}");
    assert_eq!(
        setup.log.lock().unwrap().len(),
        2 * under_way,
        "each moved to c, then back"
    );
    assert!(!setup
        .connections
        .per_backend()
        .contains_key(&NodeId::from("c")));
}

/// A change that both drains a departed backend and moves keys to a new one starts both
/// kinds of move from one pacing budget: together they never exceed the rate.
#[tokio::test(start_paused = true)]
async fn drains_and_owner_changes_share_one_pacing_budget() {
    let (mut setup, watch) = Setup::new(&["a", "b", "c"]);
    setup.connect(users(2000));
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
            .pacing(Pacing::per_second(100))
            .run(),
    );
    let start = Instant::now();
    setup.change(&["a", "b", "d"]);
    let expected = owner_changed(2000, &["a", "b", "c"], &["a", "b", "d"]).len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let in_first_second = setup.moved_keys().len();
    assert!(
        (99..=101).contains(&in_first_second),
        "100 in the first second, drains and changes together: {in_first_second}"
    );
    tokio::time::sleep(Duration::from_secs(expected as u64 / 100 + 2)).await;
    let times = setup.moved_times();
    assert_eq!(times.len(), expected);
    assert!(
        times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(10)),
        "no two moves closer than the rate allows"
    );
    let span = (*times.last().unwrap() - start).as_secs_f64();
    assert!(span >= (expected - 1) as f64 / 100.0 - 0.01, "{span}");
}

/// Under bounded loads, the migrator places moved connections as the balancer would: the
/// new backend takes its capacity and no more, and no backend ends above its capacity.
#[tokio::test(start_paused = true)]
async fn migration_plans_respect_bounded_loads() {
    let (mut setup, watch) = Setup::new(&["a", "b"]);
    let snapshot = setup.publish.borrow().clone();
    let three = ring(&["a", "b", "c"]);
    let live = Arc::new(MigrationPolicy::live());
    let for_c = (0..)
        .map(|u| format!("user-{u}"))
        .filter(|u| three.route(u.as_bytes()).unwrap().id().as_str() == "c")
        .take(300);
    for key in for_c {
        setup.connect_with_policy(&key, &snapshot, Some(live.clone()));
    }
    let factor = tower_hashring::LoadFactor::new(1.25).unwrap();
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
            .pacing(Pacing::unlimited())
            .bounded_loads(factor)
            .run(),
    );
    setup.change(&["a", "b", "c"]);
    settle().await;
    let capacity = factor.capacity(1, 3, 299);
    assert_eq!(capacity, 125);
    let counts = setup.connections.per_backend();
    assert_eq!(
        counts[&NodeId::from("c")],
        capacity,
        "c fills to its capacity"
    );
    assert!(
        counts.values().all(|&n| n <= capacity),
        "nobody above capacity: {counts:?}"
    );
    assert_eq!(counts.values().sum::<u64>(), 300);
}

/// The same flap with a paced batch: moves that finished before the flap back (the batch
/// still under way, so no newer ring had been planned yet) are moved back too.
#[tokio::test(start_paused = true)]
async fn a_flap_during_a_paced_batch_ends_with_every_connection_on_its_owner() {
    let (mut setup, watch) = Setup::new(&["a", "b"]);
    setup.move_takes = Duration::from_millis(1);
    setup.connect_live(users(600));
    tokio::spawn(
        Migrator::new(setup.connections.clone(), watch)
            .pacing(Pacing::per_second(100))
            .run(),
    );
    setup.change(&["a", "b", "c"]);
    tokio::time::sleep(Duration::from_millis(505)).await;
    let moved_to_c = setup.connections.per_backend()[&NodeId::from("c")];
    assert!(
        (45..=55).contains(&moved_to_c),
        "{moved_to_c} on c half a second in"
    );
    let back = setup.change(&["a", "b"]);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let off_owner = setup.off_owner(&back);
    assert!(off_owner.is_empty(), "left off their owner: {off_owner:?}");
    assert!(!setup
        .connections
        .per_backend()
        .contains_key(&NodeId::from("c")));
}

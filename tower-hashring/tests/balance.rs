//! The balancers against `tower-test` mocks: routing by key, discovery changes, readiness,
//! failover and typed errors.

use std::{sync::Arc, time::Duration};

use futures_util::{stream, Stream};
use tokio::sync::mpsc;
use tower::{discover::Change, Layer, Service, ServiceExt};
use tower_hashring::{
    balance::NodeWeight,
    error::{BoxError, DiscoverError, MissingKey, NoBackend, NoReadyBackend},
    HashRingBalance, HashRingLayer, LoadFactor, LoadSource, MissingKeyPolicy, NodeId, Ring,
};
use tower_test::mock::{self, Handle, Mock};

type Req = String;
type Backend = Mock<Req, &'static str>;
type DiscoveryItem = Result<Change<NodeId, Backend>, BoxError>;
type Discovery =
    std::pin::Pin<Box<dyn Stream<Item = Result<Change<NodeId, Backend>, BoxError>> + Send>>;

/// A discovery stream fed through a channel, so tests can add and remove nodes later.
fn discovery() -> (mpsc::UnboundedSender<DiscoveryItem>, Discovery) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    (tx, Box::pin(stream::poll_fn(move |cx| rx.poll_recv(cx))))
}

/// A mock backend that answers every request with its own name.
fn backend() -> (Backend, Handle<Req, &'static str>) {
    mock::pair()
}

fn answer_forever(name: &'static str, mut handle: Handle<Req, &'static str>) {
    handle.allow(u64::MAX);
    tokio::spawn(async move {
        while let Some((_, respond)) = handle.next_request().await {
            respond.send_response(name);
        }
    });
}

/// Adds backends that answer with their names.
fn serve(tx: &mpsc::UnboundedSender<DiscoveryItem>, names: &[&'static str]) {
    for &name in names {
        let (service, handle) = backend();
        answer_forever(name, handle);
        tx.send(insert(name, service)).unwrap();
    }
}

fn insert(name: &'static str, service: Backend) -> Result<Change<NodeId, Backend>, BoxError> {
    Ok(Change::Insert(NodeId::from(name), service))
}

/// The key is the request itself; requests without a key are empty strings.
fn by_request(req: &Req) -> Option<String> {
    (!req.is_empty()).then(|| req.clone())
}

type Balance = HashRingBalance<Discovery, fn(&Req) -> Option<String>, Req>;

fn balance(discover: Discovery) -> Balance {
    HashRingLayer::new(by_request as fn(&Req) -> Option<String>).layer(discover)
}

async fn send(balance: &mut Balance, key: &str) -> Result<&'static str, BoxError> {
    balance.ready().await?.call(key.to_owned()).await
}

fn owner(balance: &Balance, key: &str) -> String {
    balance
        .snapshot()
        .ring()
        .route(key.as_bytes())
        .unwrap()
        .id()
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn routes_every_key_to_its_ring_owner() {
    let (tx, discover) = discovery();
    serve(&tx, &["a", "b", "c"]);
    let mut balance = balance(discover);
    let mut seen = std::collections::HashSet::new();
    for i in 0..300 {
        let key = format!("user-{i}");
        let served_by = send(&mut balance, &key).await.unwrap();
        assert_eq!(served_by, owner(&balance, &key), "{key}");
        assert_eq!(send(&mut balance, &key).await.unwrap(), served_by, "sticky");
        seen.insert(served_by);
    }
    assert_eq!(seen.len(), 3, "keys spread over all backends");
}

#[tokio::test(start_paused = true)]
async fn discovery_changes_move_only_the_affected_keys() {
    let (tx, discover) = discovery();
    serve(&tx, &["a", "b"]);
    let mut balance = balance(discover);
    let mut watch = balance.subscribe();
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut before = vec![];
    for key in &keys {
        before.push(send(&mut balance, key).await.unwrap());
    }
    assert_eq!(
        watch.borrow_and_update().version(),
        1,
        "two inserts, one rebuild"
    );

    let (service, handle) = backend();
    answer_forever("c", handle);
    tx.send(insert("c", service)).unwrap();
    let mut moved_to_c = 0;
    for (key, old) in keys.iter().zip(&before) {
        let now = send(&mut balance, key).await.unwrap();
        assert!(now == *old || now == "c", "{key} moved from {old} to {now}");
        moved_to_c += usize::from(now == "c");
    }
    assert!(moved_to_c > 0);
    assert!(watch.has_changed().unwrap());
    let snapshot = watch.borrow_and_update().clone();
    assert_eq!(snapshot.version(), 2);
    assert_eq!(snapshot.ring().nodes().len(), 3);

    tx.send(Ok(Change::Remove(NodeId::from("a")))).unwrap();
    for (key, old) in keys.iter().zip(&before) {
        let now = send(&mut balance, key).await.unwrap();
        assert!(now != "a");
        if *old == "b" {
            assert!(
                now == "b" || now == "c",
                "only a's keys and keys taken by c differ"
            );
        }
    }
    assert_eq!(watch.borrow_and_update().ring().nodes().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn unready_owner_fails_over_to_the_next_successor() {
    let (tx, discover) = discovery();
    let mut handles = vec![];
    for name in ["a", "b", "c"] {
        let (service, mut handle) = backend();
        handle.allow(0);
        handles.push((name, handle));
        tx.send(insert(name, service)).unwrap();
    }
    let mut balance = balance(discover);
    let mut ready = tower_test::mock::Spawn::new(balance);
    // No backend admits requests yet: the balancer is not ready.
    assert!(ready.poll_ready().is_pending());
    balance = ready.into_inner();

    let key = "user-1";
    let order: Vec<String> = balance
        .snapshot()
        .ring()
        .successors(key.as_bytes())
        .map(|n| n.id().to_string())
        .collect();
    // Only the owner's first successor admits requests.
    for (name, handle) in &mut handles {
        if *name != order[0] {
            handle.allow(if *name == order[1] { 1 } else { 0 });
        }
    }
    let mut ready = tower_test::mock::Spawn::new(balance);
    assert!(ready.poll_ready().is_ready());
    let response = ready.call(key.to_owned());
    let (name, handle) = handles.iter_mut().find(|(n, _)| *n == order[1]).unwrap();
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request, key);
    respond.send_response(name);
    assert_eq!(response.await.unwrap(), order[1]);
}

#[tokio::test(start_paused = true)]
async fn empty_ring_and_missing_key_are_typed_errors() {
    let (tx, discover) = discovery();
    let mut balance = balance(discover);
    let err = send(&mut balance, "user-1").await.unwrap_err();
    assert!(err.is::<NoBackend>(), "{err}");

    let (service, handle) = backend();
    answer_forever("a", handle);
    tx.send(insert("a", service)).unwrap();
    let err = send(&mut balance, "").await.unwrap_err();
    assert!(err.is::<MissingKey>(), "{err}");
    assert_eq!(send(&mut balance, "user-1").await.unwrap(), "a");

    // Draining the only node (weight 0) leaves no backend for new keys.
    let (service, _handle) = backend();
    let drained = HashRingLayer::new(by_request as fn(&Req) -> Option<String>)
        .weights(|_: &NodeId, _: &Backend| 0)
        .layer(Box::pin(stream::iter([insert("a", service)])) as Discovery);
    let mut drained = drained;
    let err = drained
        .ready()
        .await
        .unwrap()
        .call("user-1".into())
        .await
        .unwrap_err();
    assert!(err.is::<NoBackend>(), "{err}");
}

/// All 100 loads sit on one node.
struct AllOn(NodeId);

impl LoadSource for AllOn {
    fn load(&self, node: &NodeId) -> u64 {
        if *node == self.0 {
            100
        } else {
            0
        }
    }

    fn total(&self) -> u64 {
        100
    }
}

#[tokio::test(start_paused = true)]
async fn bounded_loads_steer_keys_away_from_a_full_owner() {
    let (tx, discover) = discovery();
    serve(&tx, &["a", "b", "c"]);
    let same_ring = Ring::builder()
        .node("a", 1)
        .node("b", 1)
        .node("c", 1)
        .build()
        .unwrap();
    let full = same_ring.route(b"user-1").unwrap().id().clone();
    let mut balance = HashRingLayer::new(by_request as fn(&Req) -> Option<String>)
        .bounded_loads(
            LoadFactor::new(1.25).unwrap(),
            Arc::new(AllOn(full.clone())),
        )
        .layer(discover);
    let served = send(&mut balance, "user-1").await.unwrap();
    assert_eq!(
        full.as_str(),
        owner(&balance, "user-1"),
        "the ring owner is unchanged"
    );
    assert_ne!(served, full.as_str(), "the full owner is skipped");
}

#[tokio::test(start_paused = true)]
async fn all_backends_failed_is_an_error_not_a_hang() {
    let (service, mut handle) = backend();
    handle.send_error("connection refused");
    // A static list: the stream ends, so nothing but the balancer could wake the caller.
    let mut balance = balance(Box::pin(stream::iter([insert("a", service)])));
    let err = tokio::time::timeout(Duration::from_secs(5), send(&mut balance, "user-1"))
        .await
        .expect("must not hang")
        .unwrap_err();
    assert!(err.is::<NoReadyBackend>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn keyless_requests_can_be_spread_round_robin() {
    let (tx, discover) = discovery();
    serve(&tx, &["a", "b", "c"]);
    let mut balance = HashRingLayer::new(by_request as fn(&Req) -> Option<String>)
        .missing_key(MissingKeyPolicy::RoundRobin)
        .layer(discover);
    let mut counts = std::collections::HashMap::new();
    for _ in 0..300 {
        let name = balance
            .ready()
            .await
            .unwrap()
            .call(String::new())
            .await
            .unwrap();
        *counts.entry(name).or_insert(0) += 1;
    }
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|&n| n > 50), "{counts:?}");
}

#[tokio::test(start_paused = true)]
async fn weights_come_from_the_hook_and_a_discovery_error_surfaces() {
    #[derive(Clone)]
    struct Weighted;
    impl NodeWeight<Backend> for Weighted {
        fn weight(&self, id: &NodeId, _: &Backend) -> u32 {
            if id.as_str() == "heavy" {
                3
            } else {
                1
            }
        }
    }
    let (tx, discover) = discovery();
    serve(&tx, &["heavy", "light"]);
    let mut balance = HashRingLayer::new(by_request as fn(&Req) -> Option<String>)
        .weights(Weighted)
        .layer(discover);
    let mut heavy = 0;
    for i in 0..2000 {
        heavy += usize::from(
            balance
                .ready()
                .await
                .unwrap()
                .call(format!("k{i}"))
                .await
                .unwrap()
                == "heavy",
        );
    }
    assert!(
        (1350..1650).contains(&heavy),
        "about 3/4 of 2000, got {heavy}"
    );

    tx.send(Err("registry unreachable".into())).unwrap();
    let err = balance.ready().await.unwrap_err();
    assert!(err.is::<DiscoverError>(), "{err}");
}

mod shared {
    use super::*;

    use std::future::Future;

    /// Wakes a snapshot subscriber: notes, at that very moment, whether the service of
    /// node `id` can be looked up.
    struct LooksUp {
        service: tower_hashring::SharedHashRing<Backend, fn(&Req) -> Option<String>>,
        id: NodeId,
        found: std::sync::Mutex<Vec<bool>>,
    }

    impl std::task::Wake for LooksUp {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            let found = self.service.service(&self.id).is_some();
            self.found.lock().unwrap().push(found);
        }
    }

    /// A subscriber that hears of a new member (the migrator, which dials it at once for the
    /// connections it now owns) finds its service: the route table is in place before the
    /// snapshot is announced. Checked from inside the subscriber's wake-up, which the
    /// announcement runs synchronously.
    #[tokio::test]
    async fn a_new_members_service_is_there_when_its_snapshot_is_announced() {
        let (tx, discover) = discovery();
        let (service, mut driver) =
            HashRingLayer::new(by_request as fn(&Req) -> Option<String>).shared(discover);
        let watch = service.subscribe();
        let looks_up = Arc::new(LooksUp {
            service: service.clone(),
            id: NodeId::from("a"),
            found: std::sync::Mutex::default(),
        });
        let waker = std::task::Waker::from(looks_up.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut changed = watch.clone();
        let mut changed = std::pin::pin!(changed.changed());
        assert!(changed.as_mut().poll(&mut cx).is_pending());

        let (backend, _handle) = backend();
        tx.send(insert("a", backend)).unwrap();
        let noop = std::task::Waker::noop();
        assert!(std::pin::Pin::new(&mut driver)
            .poll(&mut std::task::Context::from_waker(noop))
            .is_pending());
        assert_eq!(watch.borrow().ring().nodes().len(), 1, "announced");
        assert_eq!(*looks_up.found.lock().unwrap(), [true]);
    }

    #[tokio::test(start_paused = true)]
    async fn clones_route_by_key_and_follow_discovery() {
        let (tx, discover) = discovery();
        serve(&tx, &["a", "b"]);
        let (service, driver) =
            HashRingLayer::new(by_request as fn(&Req) -> Option<String>).shared(discover);
        let mut watch = service.subscribe();
        tokio::spawn(driver);
        watch.changed().await.unwrap();
        assert_eq!(watch.borrow().ring().nodes().len(), 2);

        let clones: Vec<_> = (0..4).map(|_| service.clone()).collect();
        for i in 0..100 {
            let key = format!("user-{i}");
            let expected = service
                .snapshot()
                .ring()
                .route(key.as_bytes())
                .unwrap()
                .id()
                .to_string();
            let answered = clones[i % 4].clone().oneshot(key).await.unwrap();
            assert_eq!(answered, expected);
        }

        tx.send(Ok(Change::Remove(NodeId::from("a")))).unwrap();
        watch.changed().await.unwrap();
        for i in 0..50 {
            assert_eq!(
                service.clone().oneshot(format!("user-{i}")).await.unwrap(),
                "b"
            );
        }
        tx.send(Ok(Change::Remove(NodeId::from("b")))).unwrap();
        watch.changed().await.unwrap();
        let err = service.clone().oneshot("user-1".into()).await.unwrap_err();
        assert!(err.is::<NoBackend>(), "{err}");
        let err = service.clone().oneshot(String::new()).await.unwrap_err();
        assert!(err.is::<MissingKey>(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_owner_falls_over_and_waiting_keeps_the_key_on_its_owner() {
        let (tx, discover) = discovery();
        let mut handles = std::collections::HashMap::new();
        for name in ["a", "b", "c"] {
            let (service, handle) = backend();
            handles.insert(name, handle);
            tx.send(insert(name, service)).unwrap();
        }
        let (service, driver) =
            HashRingLayer::new(by_request as fn(&Req) -> Option<String>).shared(discover);
        let mut watch = service.subscribe();
        tokio::spawn(driver);
        watch.changed().await.unwrap();
        let key = "user-9";
        let order: Vec<String> = service
            .snapshot()
            .ring()
            .successors(key.as_bytes())
            .map(|n| n.id().to_string())
            .collect();
        let owner = handles.get_mut(order[0].as_str()).unwrap();
        owner.allow(0);

        // The owner is merely busy: the request waits for it rather than moving.
        let waiting = tokio::spawn(service.clone().oneshot(key.to_owned()));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        owner.allow(1);
        let (request, respond) = owner.next_request().await.unwrap();
        assert_eq!(request, key);
        respond.send_response("owner");
        assert_eq!(waiting.await.unwrap().unwrap(), "owner");

        // The owner's readiness fails: the next successor serves the request.
        let owner = handles.get_mut(order[0].as_str()).unwrap();
        owner.send_error("connection refused");
        let next = handles.get_mut(order[1].as_str()).unwrap();
        next.allow(1);
        let call = tokio::spawn(service.clone().oneshot(key.to_owned()));
        let (_, respond) = next.next_request().await.unwrap();
        respond.send_response("successor");
        assert_eq!(call.await.unwrap().unwrap(), "successor");

        // All fail: a typed error carrying the last cause.
        for name in &order {
            handles.get_mut(name.as_str()).unwrap().send_error("down");
        }
        let err = service.clone().oneshot(key.to_owned()).await.unwrap_err();
        let err = err
            .downcast_ref::<NoReadyBackend>()
            .expect("NoReadyBackend");
        assert_eq!(err.tried(), 3);
        assert!(std::error::Error::source(err).is_some());
    }

    /// Retries calls that failed with "refused", for requests not marked "has-body"; records
    /// the route on the request.
    #[derive(Clone)]
    struct RetryRefused;

    impl tower_hashring::balance::Failover<Req, BoxError> for RetryRefused {
        fn replay(&self, request: &Req) -> Option<Req> {
            (!request.contains("has-body")).then(|| request.clone())
        }
        fn fails_over(&self, error: &BoxError) -> bool {
            error.to_string() == "refused"
        }
        fn on_route(&self, request: &mut Req, route: &tower_hashring::balance::Route) {
            request.push_str(&format!("@{}", route.node));
        }
    }

    /// The next request that mock backend `name` receives, with its responder.
    async fn next_request_to(
        handles: &mut std::collections::HashMap<&'static str, Handle<Req, &'static str>>,
        name: &str,
    ) -> (Req, mock::SendResponse<&'static str>) {
        handles.get_mut(name).unwrap().next_request().await.unwrap()
    }

    /// With a failover policy, a call that fails in a way the policy retries goes on to the
    /// next successor, with the replayed request; a request the policy cannot replay is sent
    /// once; without a policy nothing is retried.
    #[tokio::test(start_paused = true)]
    async fn a_failover_policy_sends_failed_calls_to_the_successor() {
        let (tx, discover) = discovery();
        let mut handles = std::collections::HashMap::new();
        for name in ["a", "b"] {
            let (service, mut handle) = backend();
            handle.allow(u64::MAX);
            handles.insert(name, handle);
            tx.send(insert(name, service)).unwrap();
        }
        let (plain, driver) =
            HashRingLayer::new(by_request as fn(&Req) -> Option<String>).shared(discover);
        let mut watch = plain.subscribe();
        tokio::spawn(driver);
        watch.changed().await.unwrap();
        let retrying = plain.clone().failover(RetryRefused);
        let key = "user-9";
        let order: Vec<&'static str> = plain
            .snapshot()
            .ring()
            .successors(key.as_bytes())
            .map(|n| if n.id().as_str() == "a" { "a" } else { "b" })
            .collect();

        let call = tokio::spawn(retrying.clone().oneshot(key.to_owned()));
        let (first, respond) = next_request_to(&mut handles, order[0]).await;
        assert_eq!(first, format!("{key}@{}", order[0]));
        respond.send_error("refused");
        let (second, respond) = next_request_to(&mut handles, order[1]).await;
        assert_eq!(
            second,
            format!("{key}@{}", order[1]),
            "the replay, routed anew"
        );
        respond.send_response("successor");
        assert_eq!(call.await.unwrap().unwrap(), "successor");

        // Another error, or a request that cannot be replayed: sent once, the error returned.
        for (request, error) in [
            (key.to_owned(), "timed out"),
            (format!("{key} has-body"), "refused"),
        ] {
            // The whole request is the key here: find its owner.
            let snapshot = plain.snapshot();
            let owner = snapshot
                .ring()
                .route(request.as_bytes())
                .unwrap()
                .id()
                .as_str();
            let owner = if owner == "a" { "a" } else { "b" };
            let call = tokio::spawn(retrying.clone().oneshot(request));
            let (_, respond) = next_request_to(&mut handles, owner).await;
            respond.send_error(error);
            assert_eq!(call.await.unwrap().unwrap_err().to_string(), error);
        }
        // Without a policy, even "refused" is final.
        let call = tokio::spawn(plain.clone().oneshot(key.to_owned()));
        let (untouched, respond) = next_request_to(&mut handles, order[0]).await;
        assert_eq!(untouched, key, "no route recorded without a policy");
        respond.send_error("refused");
        assert_eq!(call.await.unwrap().unwrap_err().to_string(), "refused");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reinserted_service_replaces_the_old_one() {
        let (tx, discover) = discovery();
        serve(&tx, &["old"]);
        let (service, driver) =
            HashRingLayer::new(by_request as fn(&Req) -> Option<String>).shared(discover);
        let mut routes = service.subscribe();
        tokio::spawn(driver);
        routes.changed().await.unwrap();
        assert_eq!(service.clone().oneshot("k".into()).await.unwrap(), "old");

        // Same id, same weight, new connection: the ring is unchanged but the service is not.
        let (replacement, handle) = backend();
        answer_forever("new", handle);
        tx.send(Ok(Change::Insert(NodeId::from("old"), replacement)))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(service.clone().oneshot("k".into()).await.unwrap(), "new");
        assert_eq!(service.snapshot().version(), 1, "no new ring version");
    }

    #[tokio::test(start_paused = true)]
    async fn candidates_follow_the_ring_order_for_callers_that_retry() {
        let (tx, discover) = discovery();
        serve(&tx, &["a", "b", "c"]);
        let (service, driver) =
            HashRingLayer::new(by_request as fn(&Req) -> Option<String>).shared(discover);
        let mut routes = service.subscribe();
        tokio::spawn(driver);
        routes.changed().await.unwrap();
        let key = "user-3".to_owned();
        let expected: Vec<String> = service
            .snapshot()
            .ring()
            .successors(key.as_bytes())
            .map(|n| n.id().to_string())
            .collect();
        let candidates = service.candidates(&key).unwrap();
        let snapshot = service.snapshot();
        assert_eq!(candidates.ring_version(), snapshot.version());
        assert_eq!(
            candidates.key_position(),
            snapshot.ring().key_position(key.as_bytes()),
            "the position a migration layer registers the connection at"
        );
        let got: Vec<String> = candidates.map(|(id, _)| id.to_string()).collect();
        assert_eq!(got, expected);
        let err = service.candidates(&String::new()).unwrap_err();
        assert!(err.is::<MissingKey>(), "{err}");
    }

    #[test]
    fn the_shared_form_is_clone_send_sync() {
        fn assert_traits<T: Clone + Send + Sync + 'static>() {}
        assert_traits::<tower_hashring::SharedHashRing<Backend, fn(&Req) -> Option<String>>>();
    }
}

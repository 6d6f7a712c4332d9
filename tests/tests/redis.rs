//! Membership in a real Redis: registration, TTL expiry, idempotence, a Redis restart, and
//! two gateways that must agree on every key.

use std::{collections::BTreeMap, time::Duration};

use discovery::{Backend, MemberChanges, RedisRegistry};
use futures_util::StreamExt;
use tower_hashring::Ring;
use wscluster_testkit::RedisServer;

fn backend(n: u16) -> Backend {
    Backend::new(format!("backend-{n}"), ([127, 0, 0, 1], 7100 + n).into())
}

fn registry(redis: &RedisServer) -> RedisRegistry {
    RedisRegistry::new(&redis.url(), "chat")
        .unwrap()
        .ttl(Duration::from_millis(600))
        .resync(Duration::from_millis(100))
}

/// The members a discovery stream has announced so far.
#[derive(Default)]
struct Members(BTreeMap<String, Backend>);

impl Members {
    /// Applies changes until `done` holds; panics after `within`.
    async fn until(
        &mut self,
        stream: &mut MemberChanges,
        within: Duration,
        done: impl Fn(&BTreeMap<String, Backend>) -> bool,
    ) {
        wscluster_testkit::members_until(stream, &mut self.0, within, done).await;
    }

    fn ring(&self) -> Ring {
        self.0
            .values()
            .fold(Ring::builder(), |b, m| b.node(m.id.as_str(), m.weight))
            .build()
            .unwrap()
    }
}

#[tokio::test]
async fn three_registered_backends_make_a_ring_of_three_and_a_crash_lapses() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let registry = registry(&redis);
    let mut heartbeats = Vec::new();
    for n in 1..=3 {
        heartbeats.push(registry.register(backend(n)).await.unwrap());
    }
    let mut stream = registry.discover();
    let mut members = Members::default();
    members
        .until(&mut stream, Duration::from_secs(5), |m| m.len() == 3)
        .await;
    assert_eq!(members.ring().nodes().len(), 3);

    // backend-2 crashes: its heartbeat stops without deregistering.
    let crashed = heartbeats.remove(1);
    drop(crashed);
    let started = tokio::time::Instant::now();
    members
        .until(&mut stream, Duration::from_secs(5), |m| {
            !m.contains_key("backend-2")
        })
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "gone only once its TTL lapsed, not at once: {took:?}"
    );
    assert_eq!(members.0.len(), 2);

    // A clean leave is seen at once (an announcement, not the resync).
    let leaving = heartbeats.remove(0);
    leaving.deregister().await.unwrap();
    members
        .until(&mut stream, Duration::from_millis(500), |m| m.len() == 1)
        .await;
}

#[tokio::test]
async fn registering_twice_changes_nothing() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let registry = registry(&redis);
    let heavy = backend(1).weight(3);
    let _first = registry.register(heavy.clone()).await.unwrap();
    let _again = registry.register(heavy.clone()).await.unwrap();
    let mut stream = registry.discover();
    let mut members = Members::default();
    members
        .until(&mut stream, Duration::from_secs(5), |m| !m.is_empty())
        .await;
    // Let a few resyncs and heartbeats pass: nothing more may come.
    let more = tokio::time::timeout(Duration::from_millis(700), stream.next()).await;
    assert!(
        more.is_err(),
        "a repeated registration announced a change: {more:?}"
    );
    assert_eq!(members.0.len(), 1);
    assert_eq!(
        members.0["backend-1"].weight, 3,
        "the weight is not doubled"
    );
    assert_eq!(members.ring().nodes()[0].weight(), 3);
}

#[tokio::test]
async fn a_redis_restart_keeps_the_ring_then_resyncs() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let registry = registry(&redis);
    let _heartbeats = [
        registry.register(backend(1)).await.unwrap(),
        registry.register(backend(2)).await.unwrap(),
    ];
    let mut stream = registry.discover();
    let mut members = Members::default();
    members
        .until(&mut stream, Duration::from_secs(5), |m| m.len() == 2)
        .await;

    redis.stop().await;
    // While Redis is down nothing is removed: the gateway keeps routing on the last ring.
    let during = tokio::time::timeout(Duration::from_millis(1500), stream.next()).await;
    assert!(during.is_err(), "a change while Redis was down: {during:?}");

    // Redis comes back empty; the heartbeats register again and a late backend joins.
    redis.restart().await;
    let _late = loop {
        match registry.register(backend(3)).await {
            Ok(heartbeat) => break heartbeat,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    members
        .until(&mut stream, Duration::from_secs(10), |m| m.len() == 3)
        .await;
    assert!(members.0.contains_key("backend-1") && members.0.contains_key("backend-2"));
}

#[tokio::test]
async fn two_gateways_fed_by_one_redis_route_every_key_alike() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let registry = registry(&redis);
    let mut heartbeats = Vec::new();
    for n in 1..=5 {
        heartbeats.push(
            registry
                .register(backend(n).weight(u32::from(n % 3 + 1)))
                .await
                .unwrap(),
        );
    }
    let (mut first, mut second) = (registry.discover(), registry.discover());
    let (mut a, mut b) = (Members::default(), Members::default());
    a.until(&mut first, Duration::from_secs(5), |m| m.len() == 5)
        .await;
    b.until(&mut second, Duration::from_secs(5), |m| m.len() == 5)
        .await;
    // A change seen by both: one leaves.
    heartbeats.pop().unwrap().deregister().await.unwrap();
    a.until(&mut first, Duration::from_secs(5), |m| m.len() == 4)
        .await;
    b.until(&mut second, Duration::from_secs(5), |m| m.len() == 4)
        .await;

    let (ring_a, ring_b) = (a.ring(), b.ring());
    for key in 0..100_000u32 {
        let key = key.to_string();
        assert_eq!(
            ring_a.route(key.as_bytes()).unwrap().id(),
            ring_b.route(key.as_bytes()).unwrap().id(),
            "key {key}"
        );
    }
}

#[tokio::test]
async fn an_entry_whose_id_is_not_its_keys_is_refused_and_counted() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let metrics = discovery::DiscoveryMetrics::default();
    let registry = registry(&redis).metrics(metrics.clone());
    let _honest = registry.register(backend(3)).await.unwrap();
    // Filed under backend-1's key, claiming to be backend-2: it could shadow either.
    let forged = serde_json::to_string(&backend(2)).unwrap();
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("wscluster:chat:backend:backend-1")
        .arg(forged)
        .query_async(&mut connection)
        .await
        .unwrap();
    let mut stream = registry.discover();
    let mut members = Members::default();
    members
        .until(&mut stream, Duration::from_secs(5), |m| {
            m.contains_key("backend-3")
        })
        .await;
    let invalid = || {
        metrics.errors(
            discovery::Source::redis,
            discovery::ErrorKind::invalid_entry,
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while invalid() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(invalid() > 0, "the forged entry is counted");
    // A few resyncs later, still only the honest member.
    let more = tokio::time::timeout(Duration::from_millis(400), stream.next()).await;
    assert!(more.is_err(), "the forged entry made a change: {more:?}");
    assert_eq!(members.0.keys().collect::<Vec<_>>(), ["backend-3"]);
}

//! The gateway on a real 3-node Docker Swarm (`tests/multinode/swarm.sh`: every node a
//! network namespace with a dockerd of its own, one gateway per node, 6 backends, HAProxy in
//! front), under echo traffic from real WebSocket clients spread over the gateways. One test
//! builds the cluster once and runs the scenarios in order, since the later ones change it:
//! every gateway routes alike; a client reaches its owner through any gateway; a scale-up
//! and a scale-down through one gateway move exactly the affected users, live, on every
//! gateway; a node lost and back; a rolling update of the gateways. Every wait is bounded.

// In a folder of its own: a file beside this one would be a test binary of its own.
#[path = "multinode/traffic.rs"]
mod traffic;

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use serde_json::Value;
use tokio::time::Instant;
use wscluster_testkit::MultinodeSwarm;

use traffic::{probe, Traffic, UserEvents};

/// Users under echo traffic, a third first connected through each gateway.
const USERS: usize = 90;
/// The node the node-loss scenario cuts off.
const LOST_NODE: usize = 3;
/// The whole test, should a bounded step still add up to too much.
const WHOLE_TEST: Duration = Duration::from_secs(540);

fn member_ids(ring: &Value) -> BTreeSet<String> {
    ring["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The members whose task runs on `node` (the ring's `node` field, `wsnode-n`).
fn members_on_node(ring: &Value, node: usize) -> BTreeSet<String> {
    let name = format!("wsnode-{node}");
    ring["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["node"].as_str() == Some(name.as_str()))
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// Nothing to move on this gateway: no connection off its owner, no migration under way.
fn settled(ring: &Value) -> bool {
    ring["off_owner"] == 0 && ring["migrations"]["in_flight"] == 0
}

/// Polls the gateways of `nodes` until `done` holds for each one's ring; when each first
/// did. Panics after `within`, naming the gateways that never got there.
async fn until_gateways(
    swarm: &MultinodeSwarm,
    nodes: &[usize],
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Vec<Instant> {
    let deadline = Instant::now() + within;
    let mut when = vec![None; nodes.len()];
    while when.iter().any(Option::is_none) {
        if Instant::now() > deadline {
            let mut rings = Vec::new();
            for &node in nodes {
                rings.push(swarm.ring(node).await);
            }
            panic!("gateways {nodes:?} not there within {within:?} ({when:?}): {rings:?}");
        }
        for (seen, &node) in when.iter_mut().zip(nodes) {
            if seen.is_none() && swarm.ring(node).await.is_some_and(|ring| done(&ring)) {
                *seen = Some(Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    when.into_iter().flatten().collect()
}

fn spread(times: &[Instant]) -> Duration {
    let first = times.iter().min().expect("a time");
    *times.iter().max().expect("a time") - *first
}

fn owners_of(route: &Value) -> Vec<String> {
    route["owners"]
        .as_array()
        .expect("owners")
        .iter()
        .map(|o| o.as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The owners every gateway of `nodes` gives `keys`: one digest, one owner per key
/// (retried while a ring change is still reaching them all).
async fn agreed_owners(swarm: &MultinodeSwarm, nodes: &[usize], keys: &[String]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let first = swarm.route(nodes[0], keys).await;
        let mut agree = true;
        for &node in &nodes[1..] {
            let other = swarm.route(node, keys).await;
            if other["digest"] != first["digest"] {
                agree = false;
                continue;
            }
            // One digest is one ring: every key must then have the same owner.
            let differing = owners_of(&first)
                .iter()
                .zip(owners_of(&other))
                .filter(|(a, b)| **a != *b)
                .count();
            assert_eq!(
                differing, 0,
                "node {node} routes keys differently, same digest"
            );
        }
        if agree {
            return owners_of(&first);
        }
        assert!(Instant::now() < deadline, "gateways {nodes:?} never agreed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every gateway of `nodes` shows the same ring digest; panics after `within`.
async fn until_one_digest(swarm: &MultinodeSwarm, nodes: &[usize], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut digests = BTreeSet::new();
        for &node in nodes {
            let ring = swarm.ring(node).await.unwrap_or_default();
            digests.insert(ring["digest"].to_string());
        }
        if digests.len() == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "digests {digests:?} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scenario 1: Every gateway shows one digest and routes 100,000 keys identically, over all six
/// backends; returns the members.
async fn every_gateway_agrees_on_every_key(
    swarm: &MultinodeSwarm,
    keys: &[String],
) -> BTreeSet<String> {
    let all: Vec<usize> = (1..=swarm.nodes()).collect();
    until_gateways(swarm, &all, Duration::from_secs(60), |ring| {
        member_ids(ring).len() == 6
    })
    .await;
    let members = member_ids(&swarm.ring(1).await.expect("node 1's ring"));
    let digests: Vec<Value> = {
        let mut digests = Vec::new();
        for &node in &all {
            digests.push(swarm.ring(node).await.expect("a ring")["digest"].clone());
        }
        digests
    };
    assert!(digests.windows(2).all(|d| d[0] == d[1]), "{digests:?}");
    let started = Instant::now();
    let owners = agreed_owners(swarm, &all, keys).await;
    for member in &members {
        let share = owners.iter().filter(|o| *o == member).count();
        // A sixth would be 16,667: a ring that leaves a member far below is broken.
        assert!(share > 8_000, "{member} owns {share} of {}", keys.len());
    }
    eprintln!(
        "agreement: 3 gateways, digest {}, {} keys routed alike in {:?}",
        digests[0],
        keys.len(),
        started.elapsed()
    );
    members
}

/// Scenario 2: Every user landed on its key's owner through the gateway it chose, and a few keys
/// reach the same owner through every gateway alone and through the balancer.
async fn clients_reach_their_owner_through_any_gateway(
    swarm: &MultinodeSwarm,
    traffic: &Traffic,
    owners: &[String],
) {
    traffic.wait_connected(Duration::from_secs(60)).await;
    for (user, owner) in traffic.users().iter().zip(owners) {
        let first = user.first_backend().expect("connected");
        assert_eq!(
            &first, owner,
            "{} through gateway {}",
            user.key, user.gateway
        );
    }
    for (key, owner) in traffic.keys().iter().zip(owners).take(6) {
        for node in 1..=swarm.nodes() {
            let on = probe(swarm.gateway_alone(node), key).await;
            assert_eq!(&on, owner, "{key} through gateway {node} alone");
        }
        assert_eq!(&probe(swarm.balancer(), key).await, owner, "{key}");
    }
    let lost = traffic.quiesce(Duration::from_secs(20)).await;
    assert!(lost.is_empty(), "echoes lost: {lost:?}");
    let events = traffic.take_events();
    assert!(events.iter().all(UserEvents::is_quiet), "{events:?}");
    traffic.resume();
    eprintln!("owners: {USERS} users on their owners through 3 gateways");
}

/// Why a live move fell back to a reconnect: each gateway's own account.
async fn print_migration_accounts(swarm: &MultinodeSwarm) {
    for node in 1..=swarm.nodes() {
        let ring = swarm.ring(node).await.unwrap_or_default();
        eprintln!("gateway {node}: {} {}", ring["migrations"], ring["recent"]);
    }
}

/// Checks a ring change's effect on the users: exactly those whose owner changed moved,
/// once, live, from their old owner to their new one; nobody reconnected; no echo lost.
/// Returns how many moved.
async fn assert_exactly_the_affected_moved(
    swarm: &MultinodeSwarm,
    traffic: &Traffic,
    before: &[String],
    after: &[String],
    what: &str,
) -> usize {
    let affected: Vec<usize> = (0..before.len())
        .filter(|&u| before[u] != after[u])
        .collect();
    assert!(
        !affected.is_empty(),
        "{what}: no user is affected: too few users"
    );
    traffic.wait_moved(&affected, Duration::from_secs(20)).await;
    let lost = traffic.quiesce(Duration::from_secs(20)).await;
    assert!(lost.is_empty(), "{what}: echoes lost: {lost:?}");
    let events = traffic.take_events();
    if events.iter().any(|e| !e.closes.is_empty()) {
        print_migration_accounts(swarm).await;
    }
    for (u, events) in events.iter().enumerate() {
        let key = &traffic.keys()[u];
        assert!(
            events.closes.is_empty(),
            "{what}: {key} reconnected: {events:?}"
        );
        let moves: Vec<(&str, &str)> = events
            .moves
            .iter()
            .map(|m| (m.from.as_str(), m.to.as_str()))
            .collect();
        let expected: Vec<(&str, &str)> = if before[u] == after[u] {
            Vec::new()
        } else {
            vec![(before[u].as_str(), after[u].as_str())]
        };
        assert_eq!(moves, expected, "{what}: {key}'s moves");
    }
    traffic.resume();
    affected.len()
}

/// Scenario 3: A scale-up through gateway 1 and a scale-down through gateway 2: every gateway
/// converges, exactly the affected users move live, nothing is left off its owner.
async fn scaling_moves_exactly_the_affected_users(
    swarm: &MultinodeSwarm,
    traffic: &Traffic,
    six: &BTreeSet<String>,
) {
    let all: Vec<usize> = (1..=swarm.nodes()).collect();
    let before = agreed_owners(swarm, &all, traffic.keys()).await;
    let (status, body) = swarm.admin(1, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let added: Value = serde_json::from_str(&body).expect("JSON");
    let added = added["id"]
        .as_str()
        .expect("the new member's id")
        .to_owned();
    let asked = Instant::now();
    let joined = until_gateways(swarm, &all, Duration::from_secs(90), |ring| {
        member_ids(ring).contains(&added) && member_ids(ring).len() == 7 && settled(ring)
    })
    .await;
    let after = agreed_owners(swarm, &all, traffic.keys()).await;
    for (old, new) in before.iter().zip(&after) {
        assert!(old == new || *new == added, "a key moved {old} -> {new}");
    }
    let moved_up =
        assert_exactly_the_affected_moved(swarm, traffic, &before, &after, "scale-up").await;
    let up_took = *joined.iter().max().expect("times") - asked;
    let up_spread = spread(&joined);

    let (status, body) = swarm.admin(2, "DELETE", "/admin/backends", "").await;
    assert_eq!(status, 200, "{body}");
    let asked = Instant::now();
    let left = until_gateways(swarm, &all, Duration::from_secs(90), |ring| {
        member_ids(ring).len() == 6 && settled(ring)
    })
    .await;
    let remaining = member_ids(&swarm.ring(1).await.expect("node 1's ring"));
    let with_added: BTreeSet<String> = six.iter().cloned().chain([added.clone()]).collect();
    let removed: Vec<&String> = with_added.difference(&remaining).collect();
    assert_eq!(removed.len(), 1, "one member left: {remaining:?}");
    let final_owners = agreed_owners(swarm, &all, traffic.keys()).await;
    for (old, new) in after.iter().zip(&final_owners) {
        assert!(
            old == new || old == removed[0],
            "a key moved {old} -> {new}"
        );
    }
    let moved_down =
        assert_exactly_the_affected_moved(swarm, traffic, &after, &final_owners, "scale-down")
            .await;
    eprintln!(
        "scale-up through gateway 1: {added} on every ring {up_took:?} after the request \
         ({up_spread:?} apart), {moved_up} of {USERS} users moved live; scale-down through \
         gateway 2: {} left every ring {:?} after the request ({:?} apart), {moved_down} \
         users moved live; off_owner 0 everywhere, no echo lost",
        removed[0],
        *left.iter().max().expect("times") - asked,
        spread(&left)
    );
}

/// Which users a node loss touches, by how.
struct NodeLossGroups {
    /// Their backend was on the lost node; their gateway survives: they move live.
    moved_live: Vec<usize>,
    /// They were connected through the lost node's gateway: they reconnect.
    reconnecting: Vec<usize>,
    /// Neither: nothing may happen to them.
    undisturbed: Vec<usize>,
}

fn node_loss_groups(
    traffic: &Traffic,
    owners: &[String],
    lost: &BTreeSet<String>,
) -> NodeLossGroups {
    let mut groups = NodeLossGroups {
        moved_live: Vec::new(),
        reconnecting: Vec::new(),
        undisturbed: Vec::new(),
    };
    for (u, user) in traffic.users().iter().enumerate() {
        if user.gateway == LOST_NODE {
            groups.reconnecting.push(u);
        } else if lost.contains(&owners[u]) {
            groups.moved_live.push(u);
        } else {
            groups.undisturbed.push(u);
        }
    }
    groups
}

/// The users' owners before the loss (and again once Swarm replaced the lost tasks in their
/// slots), and while the lost node's backends are off the ring.
struct NodeLossOwners {
    before: Vec<String>,
    interim: Vec<String>,
}

/// The owners of `keys` on the ring a gateway builds from `members` (all of weight 1).
fn owners_on_ring_of(members: &BTreeSet<String>, keys: &[String]) -> Vec<String> {
    let ids: Vec<&String> = members.iter().collect();
    let ring = wscluster_testkit::ring_of(&ids);
    keys.iter()
        .map(|key| {
            let owner = ring.route(key.as_bytes()).expect("an owner");
            owner.id().as_str().to_owned()
        })
        .collect()
}

/// Times of the node-loss scenario, from the cut.
struct NodeLossTimings {
    first_noticed: Duration,
    all_noticed: Duration,
    all_moved: Duration,
    reconnected: Duration,
    rescheduled: Duration,
}

/// Scenario 4: Node 3 is cut off. Its backends' users are on their new owners within 5 s of the
/// first gateway noticing; the others see nothing; the clients of its gateway reconnect
/// through the balancer and reach their owners; Swarm's replacements take back their
/// slots (and their users); once the node is back, every gateway agrees again.
async fn losing_a_node(swarm: &MultinodeSwarm, traffic: &Traffic) {
    let survivors: Vec<usize> = (1..=swarm.nodes()).filter(|&n| n != LOST_NODE).collect();
    let all: Vec<usize> = (1..=swarm.nodes()).collect();
    let ring = swarm.ring(1).await.expect("node 1's ring");
    let members = member_ids(&ring);
    let lost = members_on_node(&ring, LOST_NODE);
    assert!(!lost.is_empty(), "no backend on node {LOST_NODE}: {ring}");
    let before = agreed_owners(swarm, &all, traffic.keys()).await;
    // Computed here, not read from a gateway during the loss: Swarm's replacements may be
    // back before a poll would see the interim ring.
    assert_eq!(
        owners_on_ring_of(&members, traffic.keys()),
        before,
        "the ring's model"
    );
    let survivors_ring: BTreeSet<String> = members.difference(&lost).cloned().collect();
    let owners = NodeLossOwners {
        interim: owners_on_ring_of(&survivors_ring, traffic.keys()),
        before: before.clone(),
    };
    let groups = node_loss_groups(traffic, &before, &lost);
    traffic.take_events();

    let cut = Instant::now();
    swarm.set_node_link(LOST_NODE, false).await;
    let timings = node_loss_moves(swarm, traffic, &survivors, &lost, &groups, &owners, cut).await;

    // Swarm starts the lost tasks elsewhere in their slots: the same ids come back, at new
    // addresses, and their users move back to them.
    until_gateways(swarm, &survivors, Duration::from_secs(90), |ring| {
        member_ids(ring) == members && members_on_node(ring, LOST_NODE).is_empty() && settled(ring)
    })
    .await;
    let back = agreed_owners(swarm, &survivors, traffic.keys()).await;
    assert_eq!(
        back, before,
        "the slots' ids came back: every key to its old owner"
    );
    let lost_echoes = traffic.quiesce(Duration::from_secs(20)).await;
    let events = traffic.take_events();
    assert_node_loss_events(traffic, &groups, &events, &lost_echoes, &back);
    traffic.resume();

    let plugged = Instant::now();
    swarm.set_node_link(LOST_NODE, true).await;
    until_gateways(swarm, &all, Duration::from_secs(120), |ring| {
        member_ids(ring) == members && settled(ring)
    })
    .await;
    // The returning gateway's ring lists the same ids before it has every task's new
    // address: one digest (which covers the addresses) is the end of convergence.
    until_one_digest(swarm, &all, Duration::from_secs(120)).await;
    let converged = agreed_owners(swarm, &all, traffic.keys()).await;
    assert_eq!(converged, before, "after the node's return");
    let lost_count: usize = lost_echoes.iter().map(|(_, seqs)| seqs.len()).sum();
    let NodeLossTimings {
        first_noticed,
        all_noticed,
        all_moved,
        reconnected,
        rescheduled,
    } = timings;
    eprintln!(
        "node loss: first gateway noticed {first_noticed:?} after the cut, all survivors \
         {all_noticed:?}; every user of the lost backends moved live by {all_moved:?}; the \
         lost gateway's clients reconnected by {reconnected:?}; Swarm's replacements on \
         every ring at {rescheduled:?}; {} users moved live off {lost:?}, {} reconnected through \
         the balancer, {} undisturbed; {lost_count} echoes lost (sent to a dead backend \
         before the move); every gateway agreed again {:?} after the node came back",
        groups.moved_live.len(),
        groups.reconnecting.len(),
        groups.undisturbed.len(),
        plugged.elapsed()
    );
}

/// From the cut until every affected user is on its new owner: detection by the surviving
/// gateways, the live moves, the reconnections.
async fn node_loss_moves(
    swarm: &MultinodeSwarm,
    traffic: &Traffic,
    survivors: &[usize],
    lost: &BTreeSet<String>,
    groups: &NodeLossGroups,
    owners: &NodeLossOwners,
    cut: Instant,
) -> NodeLossTimings {
    let noticed = until_gateways(swarm, survivors, Duration::from_secs(40), |ring| {
        member_ids(ring).is_disjoint(lost)
    })
    .await;
    let first_noticed = *noticed.iter().min().expect("times");
    let arrivals = traffic
        .wait_moved_to(&groups.moved_live, &owners.interim, Duration::from_secs(20))
        .await;
    let arrivals = match arrivals {
        Ok(arrivals) => arrivals,
        Err(why) => {
            print_migration_accounts(swarm).await;
            panic!("{why}");
        }
    };
    let all_moved = arrivals.into_iter().max().unwrap_or(first_noticed);
    assert!(
        all_moved.saturating_duration_since(first_noticed) <= Duration::from_secs(5),
        "the last user moved {:?} after the first gateway noticed",
        all_moved - first_noticed
    );
    let reconnects = traffic
        .wait_reconnected(&groups.reconnecting, Duration::from_secs(30))
        .await;
    for (&u, (_, on)) in groups.reconnecting.iter().zip(&reconnects) {
        // Before Swarm's replacement of a lost slot joins the ring, its users' owner is the
        // interim one; after, the slot's id again.
        assert!(
            *on == owners.interim[u] || *on == owners.before[u],
            "{} reconnected to {on}, owned by {} then {}",
            traffic.keys()[u],
            owners.interim[u],
            owners.before[u]
        );
    }
    let rescheduled = until_gateways(swarm, survivors, Duration::from_secs(90), |ring| {
        member_ids(ring).is_superset(lost)
    })
    .await;
    let reconnected = reconnects.iter().map(|(at, _)| *at).max().unwrap_or(cut);
    NodeLossTimings {
        first_noticed: first_noticed - cut,
        all_noticed: *noticed.iter().max().expect("times") - cut,
        all_moved: all_moved - cut,
        reconnected: reconnected - cut,
        rescheduled: *rescheduled.iter().max().expect("times") - cut,
    }
}

fn assert_node_loss_events(
    traffic: &Traffic,
    groups: &NodeLossGroups,
    events: &[UserEvents],
    lost_echoes: &[(String, Vec<u64>)],
    owners: &[String],
) {
    for &u in &groups.undisturbed {
        assert!(
            events[u].is_quiet(),
            "{}: {:?}",
            traffic.keys()[u],
            events[u]
        );
    }
    let may_lose: BTreeSet<&String> = groups
        .moved_live
        .iter()
        .map(|&u| &traffic.keys()[u])
        .collect();
    for (key, seqs) in lost_echoes {
        assert!(may_lose.contains(key), "{key} lost echoes {seqs:?}");
    }
    for &u in &groups.moved_live {
        assert!(
            events[u].closes.is_empty(),
            "{}: {:?}",
            traffic.keys()[u],
            events[u]
        );
    }
    for (user, owner) in traffic.users().iter().zip(owners) {
        assert_eq!(
            user.backend().as_ref(),
            Some(owner),
            "{} at the end",
            user.key
        );
    }
}

/// Scenario 5: `docker service update --force` of the gateways: every client closed with 1001 or
/// 1012 reconnects, resends what was not echoed, and every message is echoed exactly once.
async fn rolling_gateway_update_loses_no_message(swarm: &MultinodeSwarm, traffic: &Traffic) {
    let service = format!("{}_gateway", swarm.stack());
    traffic.take_events();
    let started = Instant::now();
    swarm
        .docker(1, &["service", "update", "--force", "--detach", &service])
        .await;
    let deadline = started + Duration::from_secs(240);
    loop {
        let state = swarm
            .docker(
                1,
                &[
                    "service",
                    "inspect",
                    "-f",
                    "{{.UpdateStatus.State}}",
                    &service,
                ],
            )
            .await;
        if state == "completed" {
            break;
        }
        assert!(
            !state.contains("paused") && !state.contains("rollback"),
            "{state}"
        );
        assert!(
            Instant::now() < deadline,
            "update still {state} after 240 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let updated = started.elapsed();
    let all: Vec<usize> = (1..=swarm.nodes()).collect();
    until_gateways(swarm, &all, Duration::from_secs(60), settled).await;
    traffic.wait_connected(Duration::from_secs(60)).await;
    let lost = traffic.quiesce(Duration::from_secs(30)).await;
    assert!(lost.is_empty(), "messages never echoed: {lost:?}");
    let events = traffic.take_events();
    let codes: HashMap<Option<u16>, usize> =
        events
            .iter()
            .flat_map(|e| &e.closes)
            .fold(HashMap::new(), |mut counts, close| {
                *counts.entry(close.code).or_default() += 1;
                counts
            });
    let reconnects: usize = codes.values().sum();
    assert!(reconnects > 0, "no client was closed: did the update run?");
    for code in codes.keys() {
        assert!(
            matches!(code, Some(1001 | 1012)),
            "closes by code: {codes:?}"
        );
    }
    let (sent, duplicated) = traffic.echo_counts();
    assert!(
        duplicated.is_empty(),
        "echoed more than once: {duplicated:?}"
    );
    eprintln!(
        "rolling update: {updated:?}; {reconnects} reconnects ({codes:?}), {sent} messages \
         each echoed exactly once"
    );
}

async fn scenarios(swarm: &MultinodeSwarm) {
    let keys: Vec<String> = (0..100_000).map(|u| format!("user-{u}")).collect();
    let six = every_gateway_agrees_on_every_key(swarm, &keys).await;
    let users = &keys[..USERS];
    let owners = agreed_owners(swarm, &[1, 2, 3], users).await;
    let traffic = Traffic::start(swarm, users);
    clients_reach_their_owner_through_any_gateway(swarm, &traffic, &owners).await;
    scaling_moves_exactly_the_affected_users(swarm, &traffic, &six).await;
    losing_a_node(swarm, &traffic).await;
    rolling_gateway_update_loses_no_message(swarm, &traffic).await;
    traffic.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_on_three_nodes_route_move_and_survive_a_node_loss() {
    let Some(swarm) = MultinodeSwarm::start().await else {
        return;
    };
    let started = Instant::now();
    tokio::time::timeout(WHOLE_TEST, scenarios(&swarm))
        .await
        .unwrap_or_else(|_| panic!("the scenarios took over {WHOLE_TEST:?}"));
    eprintln!("scenarios: {:?} on the cluster", started.elapsed());
}

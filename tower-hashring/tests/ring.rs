//! The ring's fixed layout, nginx and pingora compatibility, weights and successors.

use std::{collections::HashSet, net::SocketAddr};

use proptest::prelude::*;
use tower_hashring::{HashScheme, Node, Ring, RingError, MAX_NODES, MAX_POINTS};

fn abc() -> Ring {
    Ring::builder()
        .node("backend-a", 1)
        .node("backend-b", 1)
        .node("backend-c", 2)
        .build()
        .unwrap()
}

/// Fixes the default layout: if the hash or the point layout ever changes, every deployed
/// gateway would disagree with the new one, so this must fail.
#[test]
fn golden_default_ring() {
    // XXH3_64bits("") from the xxHash specification's test vectors.
    assert_eq!(
        HashScheme::default().key_position(b""),
        0x2d06_8005_38d3_94c2
    );

    let ring = abc();
    assert_eq!(ring.len_points(), 4 * 2048);
    // The documented layout, recomputed by hand: point i is XXH3_64bits(le32(i) ‖ id) with
    // its low 16 bits set.
    let point = |i: u32, id: &str| {
        xxhash_rust::xxh3::xxh3_64(&[&i.to_le_bytes()[..], id.as_bytes()].concat()) | 0xffff
    };
    for (i, id) in [(0, "backend-a"), (2047, "backend-b"), (4095, "backend-c")] {
        let position = point(i, id);
        assert_eq!(ring.owner_of(position).unwrap().id().as_str(), id);
        assert!(ring.points().any(|(p, _)| p == position));
    }
    assert!(!ring.points().any(|(p, _)| p == point(2048, "backend-a")));
    let first: Vec<(u64, &str)> = ring
        .points()
        .take(6)
        .map(|(p, n)| (p, n.id().as_str()))
        .collect();
    assert_eq!(
        first,
        [
            (0x0003_e71d_c4dd_ffff, "backend-c"),
            (0x0019_9103_3bb8_ffff, "backend-c"),
            (0x0027_c000_69d3_ffff, "backend-a"),
            (0x0040_558c_8bd0_ffff, "backend-c"),
            (0x0049_2bbe_613b_ffff, "backend-b"),
            (0x004c_f7df_fef6_ffff, "backend-c"),
        ]
    );
    let owners: Vec<&str> = (0..8)
        .map(|i| {
            ring.route(format!("user-{i}").as_bytes())
                .unwrap()
                .id()
                .as_str()
        })
        .collect();
    assert_eq!(
        owners,
        [
            "backend-c",
            "backend-c",
            "backend-c",
            "backend-c",
            "backend-b",
            "backend-c",
            "backend-b",
            "backend-c"
        ]
    );
}

#[test]
fn layout_ignores_insertion_order_and_repeats() {
    let shuffled = Ring::builder()
        .node("backend-c", 2)
        .node("backend-a", 1)
        .node("backend-b", 1)
        .node("backend-a", 1)
        .build()
        .unwrap();
    assert!(shuffled.points().eq(abc().points()));
}

struct Trace {
    servers: Vec<(String, u32)>,
    keys: Vec<(String, String)>,
}

fn nginx_trace() -> Trace {
    let text = include_str!("data/nginx-chash-trace.txt");
    let mut trace = Trace {
        servers: vec![],
        keys: vec![],
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["server", addr, weight] => trace.servers.push((addr.into(), weight.parse().unwrap())),
            ["key", key, server] => trace.keys.push((key.into(), server.into())),
            _ => panic!("bad trace line {line:?}"),
        }
    }
    trace
}

/// The ketama mode picks what a real nginx 1.22 picked with `hash $arg_key consistent`
/// (recorded by `tests/data/record-nginx-trace.sh`), weights included.
#[test]
fn ketama_matches_recorded_nginx_trace() {
    let trace = nginx_trace();
    assert_eq!(trace.keys.len(), 5000);
    let ring = trace
        .servers
        .iter()
        .fold(
            Ring::builder().scheme(HashScheme::Ketama),
            |b, (addr, w)| b.node(addr.as_str(), *w),
        )
        .build()
        .unwrap();
    let mismatches: Vec<_> = trace
        .keys
        .iter()
        .filter(|(key, server)| ring.route(key.as_bytes()).unwrap().id().as_str() != server)
        .collect();
    assert_eq!(mismatches, Vec::<&(String, String)>::new());
}

proptest! {
    /// Ketama mode equals pingora-ketama for any set of IPv4 servers and weights.
    #[test]
    fn ketama_matches_pingora(
        servers in prop::collection::btree_map((1u8..=254, 1000u16..=1100), 1u32..=4, 1..12),
        keys in prop::collection::vec("[a-zA-Z0-9-]{1,24}", 50),
    ) {
        let addrs: Vec<(SocketAddr, u32)> = servers
            .into_iter()
            .map(|((host, port), w)| (SocketAddr::from(([10, 0, 0, host], port)), w))
            .collect();
        let ring = addrs
            .iter()
            .fold(Ring::builder().scheme(HashScheme::Ketama), |b, &(a, w)| b.node(a, w))
            .build()
            .unwrap();
        let buckets: Vec<_> = addrs.iter().map(|&(a, w)| pingora_ketama::Bucket::new(a, w)).collect();
        let pingora = pingora_ketama::Continuum::new(&buckets);
        for key in &keys {
            let ours = ring.route(key.as_bytes()).unwrap().id().as_str().to_owned();
            prop_assert_eq!(ours, pingora.node(key.as_bytes()).unwrap().to_string());
        }
    }
}

#[test]
fn drained_nodes_stay_members_but_own_nothing() {
    let ring = Ring::builder().node("a", 1).node("b", 0).build().unwrap();
    assert_eq!(ring.nodes().len(), 2);
    assert_eq!(ring.routable_nodes(), 1);
    assert!(ring.node("b").unwrap().is_drained());
    for i in 0..1000 {
        assert_eq!(
            ring.route(format!("k{i}").as_bytes())
                .unwrap()
                .id()
                .as_str(),
            "a"
        );
    }

    let all_drained = Ring::builder().node("a", 0).node("b", 0).build().unwrap();
    assert!(all_drained.is_empty());
    assert_eq!(all_drained.route(b"k"), None);
    assert_eq!(all_drained.successors(b"k").count(), 0);
}

#[test]
fn empty_ring_routes_nothing() {
    let ring = Ring::builder().build().unwrap();
    assert!(ring.is_empty());
    assert_eq!(ring.route(b"user-1"), None);
    assert_eq!(ring.successors(b"user-1").next(), None);
}

/// A point keeps its owner's index in 16 bits: a 65,537th member is an error, whether the
/// ring is built or grown.
#[test]
fn too_many_members_are_an_error_not_a_panic() {
    let ids = |n: usize| (0..n).map(|i| Node::new(format!("n{i}"), 0));
    let err = Ring::builder()
        .nodes(ids(MAX_NODES + 1))
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        RingError::TooManyNodes {
            requested: MAX_NODES + 1
        }
    );
    assert!(err.to_string().contains(&MAX_NODES.to_string()));

    let full = Ring::builder().nodes(ids(MAX_NODES)).build().unwrap();
    assert_eq!(
        full.with_node("one-more", 1).unwrap_err(),
        RingError::TooManyNodes {
            requested: MAX_NODES + 1
        }
    );
    // Re-weighing a member of a full ring is no new member.
    assert!(full.with_node("n7", 1).is_ok());
}

#[test]
fn oversized_weights_are_an_error_not_a_panic() {
    let err = Ring::builder().node("a", u32::MAX).build().unwrap_err();
    assert_eq!(
        err,
        RingError::TooManyPoints {
            requested: u64::from(u32::MAX) * 2048
        }
    );
    assert!(err.to_string().contains(&MAX_POINTS.to_string()));

    // Sums that overflow u64 are too many points too, in debug and release builds.
    let huge = HashScheme::Xxh3 {
        points_per_weight: u32::MAX,
    };
    let err = Ring::builder()
        .scheme(huge)
        .node("a", u32::MAX)
        .node("b", u32::MAX)
        .build()
        .unwrap_err();
    assert_eq!(
        err,
        RingError::TooManyPoints {
            requested: u64::MAX
        }
    );
}

#[test]
fn successors_are_distinct_and_start_with_the_owner() {
    let ring = (0..20)
        .fold(Ring::builder(), |b, i| b.node(format!("n{i}"), 1 + i % 3))
        .build()
        .unwrap();
    for i in 0..200 {
        let key = format!("room-{i}");
        let order: Vec<&Node> = ring.successors(key.as_bytes()).collect();
        assert_eq!(order.len(), 20, "every node appears once");
        assert_eq!(
            order.iter().map(|n| n.id()).collect::<HashSet<_>>().len(),
            20
        );
        assert_eq!(order[0], ring.route(key.as_bytes()).unwrap());
    }
}

/// Points of two members can share a position (ketama's are 32-bit: a ring of 320,000 has
/// some). The smaller id owns it; a change node by node keeps exactly a rebuild's points,
/// and the diff's ranges stay well formed.
#[test]
fn tied_points_go_to_the_smaller_id_and_survive_changes() {
    let ids: Vec<String> = (0..2000)
        .map(|i| format!("10.0.{}.{}:80", i / 256, i % 256))
        .collect();
    let build = |ids: &[&String]| {
        ids.iter()
            .fold(Ring::builder().scheme(HashScheme::Ketama), |b, id| {
                b.node(id.as_str(), 1)
            })
            .build()
            .unwrap()
    };
    let ring = build(&ids.iter().collect::<Vec<_>>());
    let points: Vec<(u64, String)> = ring
        .points()
        .map(|(p, n)| (p, n.id().to_string()))
        .collect();
    let ties: Vec<(u64, String, String)> = points
        .windows(2)
        .filter(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1)
        .map(|w| (w[0].0, w[0].1.clone(), w[1].1.clone()))
        .collect();
    assert!(!ties.is_empty(), "this set of ids has tied points");
    for (position, winner, loser) in ties.iter().take(3) {
        assert!(winner < loser);
        assert_eq!(ring.owner_of(*position).unwrap().id().as_str(), winner);
        let without = ring.without_node(winner);
        let rebuilt = build(&ids.iter().filter(|id| *id != winner).collect::<Vec<_>>());
        assert!(without.points().eq(rebuilt.points()));
        assert_eq!(without.owner_of(*position).unwrap().id().as_str(), loser);
        let back = without.with_node(winner.as_str(), 1).unwrap();
        assert!(back.points().eq(ring.points()));
        let diff = tower_hashring::RingDiff::between(&ring, &without);
        assert!(diff.ranges().iter().all(|r| r.start <= r.end));
        let moved = diff.moved(*position).expect("the tied position moved");
        assert_eq!(moved.to.as_ref().unwrap().as_str(), loser);
    }
}

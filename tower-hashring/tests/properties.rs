//! Property tests: minimal movement, exact ring diffs, bounded-load capacities, and the
//! bucket index against a plain binary search.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use tower_hashring::{HashScheme, LoadFactor, LoadSource, NodeId, Ring, RingDiff};

fn scheme() -> impl Strategy<Value = HashScheme> {
    prop_oneof![
        (1u32..64).prop_map(|points_per_weight| HashScheme::Xxh3 { points_per_weight }),
        Just(HashScheme::Ketama),
    ]
}

/// Node ids with weights 0..=3 (0 = drained).
fn members() -> impl Strategy<Value = BTreeMap<String, u32>> {
    prop::collection::btree_map("[a-z0-9:.-]{1,12}", 0u32..=3, 0..10)
}

fn build(scheme: HashScheme, members: &BTreeMap<String, u32>) -> Ring {
    members
        .iter()
        .fold(Ring::builder().scheme(scheme), |b, (id, &w)| {
            b.node(id.as_str(), w)
        })
        .build()
        .unwrap()
}

fn positions() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(any::<u64>(), 200)
}

fn owner(ring: &Ring, position: u64) -> Option<&str> {
    ring.owner_of(position).map(|n| n.id().as_str())
}

proptest! {
    #[test]
    fn index_lookup_equals_binary_search(scheme in scheme(), members in members(), positions in positions()) {
        let ring = build(scheme, &members);
        let points: Vec<(u64, &str)> = ring.points().map(|(p, n)| (p, n.id().as_str())).collect();
        // Probe the points themselves and their neighbours too, where off-by-ones live.
        let probes = positions.iter().copied().chain(points.iter().flat_map(|&(p, _)| {
            [p.wrapping_sub(1), p, p.wrapping_add(1)]
        }));
        for position in probes {
            let expected = match points.partition_point(|&(p, _)| p < position) {
                _ if points.is_empty() => None,
                i if i == points.len() => Some(points[0].1),
                i => Some(points[i].1),
            };
            prop_assert_eq!(owner(&ring, position), expected);
        }
    }

    #[test]
    fn adding_a_node_moves_keys_only_to_it(
        scheme in scheme(), members in members(), new_id in "[A-Z]{1,8}", weight in 1u32..=3, positions in positions(),
    ) {
        let before = build(scheme, &members);
        let mut grown = members.clone();
        grown.insert(new_id.clone(), weight);
        let after = build(scheme, &grown);
        for position in positions {
            let (old, new) = (owner(&before, position), owner(&after, position));
            prop_assert!(old == new || new == Some(new_id.as_str()), "{old:?} -> {new:?}");
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys(
        scheme in scheme(), members in members(), pick in any::<prop::sample::Index>(), positions in positions(),
    ) {
        prop_assume!(!members.is_empty());
        let gone = members.keys().nth(pick.index(members.len())).unwrap().clone();
        let before = build(scheme, &members);
        let mut shrunk = members.clone();
        shrunk.remove(&gone);
        let after = build(scheme, &shrunk);
        for position in positions {
            let (old, new) = (owner(&before, position), owner(&after, position));
            prop_assert!(old == new || old == Some(gone.as_str()), "{old:?} -> {new:?}");
        }
    }

    #[test]
    fn raising_a_weight_moves_keys_only_to_that_node(
        members in members(), pick in any::<prop::sample::Index>(), extra in 1u32..=3, positions in positions(),
    ) {
        prop_assume!(!members.is_empty());
        let scheme = HashScheme::Xxh3 { points_per_weight: 16 };
        let id = members.keys().nth(pick.index(members.len())).unwrap().clone();
        let before = build(scheme, &members);
        let mut heavier = members.clone();
        *heavier.get_mut(&id).unwrap() += extra;
        let after = build(scheme, &heavier);
        for position in positions {
            let (old, new) = (owner(&before, position), owner(&after, position));
            prop_assert!(old == new || new == Some(id.as_str()), "{old:?} -> {new:?}");
        }
    }

    /// A position is in a moved range exactly when its owner changed, with the right owners.
    #[test]
    fn diff_holds_exactly_the_moved_positions(
        scheme in scheme(), old in members(), new in members(), positions in positions(),
    ) {
        let (before, after) = (build(scheme, &old), build(scheme, &new));
        let diff = RingDiff::between(&before, &after);
        for pair in diff.ranges().windows(2) {
            prop_assert!(pair[0].end < pair[1].start, "ranges ascend without overlap");
        }
        let boundaries = before.points().chain(after.points()).flat_map(|(p, _)| {
            [p.wrapping_sub(1), p, p.wrapping_add(1)]
        });
        for position in positions.into_iter().chain(boundaries).chain([0, u64::MAX]) {
            let (from, to) = (owner(&before, position), owner(&after, position));
            match diff.moved(position) {
                Some(range) => {
                    prop_assert_ne!(from, to);
                    prop_assert_eq!(range.from.as_ref().map(NodeId::as_str), from);
                    prop_assert_eq!(range.to.as_ref().map(NodeId::as_str), to);
                }
                None => prop_assert_eq!(from, to),
            }
        }
    }

    /// Placing keys one by one with bounded loads never puts a node over
    /// `ceil(c · keys · weight share)`.
    #[test]
    fn bounded_loads_never_exceed_capacity(
        members in members(), c in 1.01f64..2.0, keys in 1usize..400,
    ) {
        let ring = build(HashScheme::Xxh3 { points_per_weight: 32 }, &members);
        prop_assume!(!ring.is_empty());
        let factor = LoadFactor::new(c).unwrap();
        let mut loads: HashMap<NodeId, u64> = HashMap::new();
        for k in 0..keys {
            let position = ring.key_position(format!("key-{k}").as_bytes());
            let chosen = ring.route_bounded(position, factor, &loads).unwrap();
            let capacity = factor.capacity(chosen.weight(), ring.total_weight(), loads.total());
            prop_assert!(loads.load(chosen.id()) < capacity);
            *loads.entry(chosen.id().clone()).or_default() += 1;
        }
        for node in ring.nodes() {
            let share = f64::from(node.weight()) / ring.total_weight() as f64;
            prop_assert!(loads.load(node.id()) as f64 <= (c * keys as f64 * share).ceil());
        }
    }
}

#[test]
fn bounded_loads_are_deterministic_and_keep_the_owner_when_it_has_room() {
    let ring = (0..5)
        .fold(Ring::builder(), |b, i| b.node(format!("n{i}"), 1))
        .build()
        .unwrap();
    let factor = LoadFactor::new(1.25).unwrap();
    let empty: HashMap<NodeId, u64> = HashMap::new();
    for k in 0..100 {
        let position = ring.key_position(format!("k{k}").as_bytes());
        assert_eq!(
            ring.route_bounded(position, factor, &empty),
            ring.owner_of(position)
        );
    }
    let full: HashMap<NodeId, u64> = ring.nodes().iter().map(|n| (n.id().clone(), 100)).collect();
    let position = ring.key_position(b"k0");
    // Every node holds 100 of 500: capacity ceil(1.25 * 501 / 5) = 126, so the owner has room.
    assert_eq!(
        ring.route_bounded(position, factor, &full),
        ring.owner_of(position)
    );
}

/// One change to a ring's members: (id, Some(weight)) adds or re-weights, (id, None) removes.
fn changes() -> impl Strategy<Value = Vec<(String, Option<u32>)>> {
    prop::collection::vec(("[a-e]{1,2}", prop::option::of(0u32..=3)), 1..8)
}

proptest! {
    #[test]
    fn node_by_node_changes_make_the_ring_a_rebuild_makes(
        scheme in scheme(),
        start in members(),
        changes in changes(),
        probes in positions(),
    ) {
        let mut ring = build(scheme, &start);
        let mut members = start;
        for (id, weight) in changes {
            match weight {
                Some(weight) => {
                    ring = ring.with_node(id.as_str(), weight).unwrap();
                    members.insert(id, weight);
                }
                None => {
                    ring = ring.without_node(&id);
                    members.remove(&id);
                }
            }
        }
        let rebuilt = build(scheme, &members);
        prop_assert!(ring.points().map(|(p, n)| (p, n.id().clone())).eq(
            rebuilt.points().map(|(p, n)| (p, n.id().clone()))
        ));
        prop_assert_eq!(ring.nodes(), rebuilt.nodes());
        prop_assert_eq!(ring.routable_nodes(), rebuilt.routable_nodes());
        prop_assert_eq!(ring.total_weight(), rebuilt.total_weight());
        // Lookups go through the bucket index, which changes update rather than rebuild.
        let edges = [0, 1, u64::MAX / 2, u64::MAX];
        for position in probes.into_iter().chain(edges).chain(rebuilt.points().map(|(p, _)| p)) {
            prop_assert_eq!(owner(&ring, position), owner(&rebuilt, position));
            prop_assert_eq!(owner(&ring, position.wrapping_add(1)), owner(&rebuilt, position.wrapping_add(1)));
        }
    }
}

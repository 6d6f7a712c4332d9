//! Prints the balance and movement figures of the ring for 1M random keys.
//!
//! `cargo run --release -p tower-hashring --example ring-stats`

use std::collections::HashMap;

use tower_hashring::{HashScheme, LoadFactor, LoadSource, NodeId, Ring, RingError};

const KEYS: usize = 1_000_000;

/// Loads with a running total, as a connection tracker keeps them.
#[derive(Default)]
struct Counts {
    per_node: HashMap<NodeId, u64>,
    total: u64,
}

impl LoadSource for Counts {
    fn load(&self, node: &NodeId) -> u64 {
        self.per_node.get(node).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.total
    }
}

fn ring(nodes: usize, scheme: HashScheme) -> Result<Ring, RingError> {
    (0..nodes)
        .fold(Ring::builder().scheme(scheme), |b, i| {
            b.node(format!("backend-{i}"), 1)
        })
        .build()
}

fn peak_over_mean(counts: &HashMap<NodeId, u64>, nodes: usize) -> f64 {
    let peak = counts.values().copied().max().unwrap_or(0) as f64;
    peak / (KEYS as f64 / nodes as f64)
}

fn plain_load(ring: &Ring, keys: &[String]) -> f64 {
    let mut counts = HashMap::new();
    for key in keys {
        let owner = ring.route(key.as_bytes()).expect("non-empty ring");
        *counts.entry(owner.id().clone()).or_insert(0u64) += 1;
    }
    peak_over_mean(&counts, ring.routable_nodes())
}

fn bounded_load(ring: &Ring, keys: &[String], factor: LoadFactor) -> f64 {
    let mut counts = Counts::default();
    for key in keys {
        let position = ring.key_position(key.as_bytes());
        let owner = ring
            .route_bounded(position, factor, &counts)
            .expect("non-empty ring");
        *counts.per_node.entry(owner.id().clone()).or_insert(0) += 1;
        counts.total += 1;
    }
    peak_over_mean(&counts.per_node, ring.routable_nodes())
}

fn moved_fraction(before: &Ring, after: &Ring, keys: &[String]) -> f64 {
    let moved = keys
        .iter()
        .filter(|k| before.route(k.as_bytes()) != after.route(k.as_bytes()))
        .count();
    moved as f64 / keys.len() as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = fastrand::Rng::with_seed(42);
    let keys: Vec<String> = (0..KEYS).map(|_| format!("user-{}", rng.u64(..))).collect();
    let c = LoadFactor::new(1.05)?;
    let default = HashScheme::default();

    println!("1,000,000 random keys (seed 42), nodes `backend-0`..; peak/mean load:");
    println!("| nodes | default ({default:?}) | bounded loads c = 1.05 | ketama (160/node) |");
    println!("|---|---|---|---|");
    for nodes in [10, 100] {
        let ring = ring(nodes, default)?;
        println!(
            "| {nodes} | {:.3} | {:.3} | {:.3} |",
            plain_load(&ring, &keys),
            bounded_load(&ring, &keys, c),
            plain_load(&self::ring(nodes, HashScheme::Ketama)?, &keys),
        );
    }

    println!();
    println!(
        "Adding one node to 10 (ideal moved fraction 1/11 = {:.4}):",
        1.0 / 11.0
    );
    println!("| scheme | moved fraction | ratio to ideal |");
    println!("|---|---|---|");
    for scheme in [default, HashScheme::Ketama] {
        let moved = moved_fraction(&ring(10, scheme)?, &ring(11, scheme)?, &keys);
        println!("| {scheme:?} | {moved:.4} | {:.3} |", moved * 11.0);
    }

    println!();
    println!("Points per weight sweep, peak/mean at 100 nodes:");
    println!("| points per weight | peak/mean |");
    println!("|---|---|");
    for points_per_weight in [160, 256, 512, 1024, 2048] {
        let ring = ring(100, HashScheme::Xxh3 { points_per_weight })?;
        println!("| {points_per_weight} | {:.3} |", plain_load(&ring, &keys));
    }
    Ok(())
}

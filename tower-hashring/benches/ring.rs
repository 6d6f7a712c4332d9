//! Lookup, build and change times of `tower_hashring::Ring` side by side with
//! `pingora-ketama` and the `hashring` crate, on the same keys and node sets.
//!
//! `cargo bench -p tower-hashring --bench ring`

// criterion's macros generate undocumented items.
#![allow(missing_docs)]

use std::{
    hint::black_box,
    net::{Ipv4Addr, SocketAddr},
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tower_hashring::{HashScheme, Ring};

/// Lookups per measured iteration.
const KEYS: usize = 1024;

fn addrs(nodes: usize) -> Vec<SocketAddr> {
    (0..nodes)
        .map(|i| {
            SocketAddr::from((
                Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250) as u8 + 1),
                7100,
            ))
        })
        .collect()
}

fn keys() -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..KEYS).map(|_| format!("user-{}", rng.u64(..))).collect()
}

fn ring(nodes: &[SocketAddr], scheme: HashScheme) -> Ring {
    nodes
        .iter()
        .fold(Ring::builder().scheme(scheme), |b, &a| b.node(a, 1))
        .build()
        .expect("ring builds")
}

fn pingora(nodes: &[SocketAddr]) -> pingora_ketama::Continuum {
    let buckets: Vec<_> = nodes
        .iter()
        .map(|&a| pingora_ketama::Bucket::new(a, 1))
        .collect();
    pingora_ketama::Continuum::new(&buckets)
}

fn hashring_crate(nodes: &[SocketAddr]) -> hashring::HashRing<hashring_node::Vnode> {
    let mut ring = hashring::HashRing::new();
    for &addr in nodes {
        // The crate hashes each entry once: give it as many virtual nodes as ketama.
        for replica in 0..160 {
            ring.add(hashring_node::Vnode { addr, replica });
        }
    }
    ring
}

mod hashring_node {
    #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
    pub(crate) struct Vnode {
        pub(crate) addr: std::net::SocketAddr,
        pub(crate) replica: u32,
    }
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(KEYS as u64));
    for nodes in [10, 100, 1000] {
        let set = addrs(nodes);
        let default = ring(&set, HashScheme::default());
        let ketama = ring(&set, HashScheme::Ketama);
        let pingora = pingora(&set);
        let other = hashring_crate(&set);
        group.bench_with_input(
            BenchmarkId::new("tower-hashring", nodes),
            &keys,
            |b, keys| {
                b.iter(|| {
                    for key in keys {
                        black_box(default.route(black_box(key.as_bytes())));
                    }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("tower-hashring-ketama", nodes),
            &keys,
            |b, keys| {
                b.iter(|| {
                    for key in keys {
                        black_box(ketama.route(black_box(key.as_bytes())));
                    }
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("pingora-ketama", nodes),
            &keys,
            |b, keys| {
                b.iter(|| {
                    for key in keys {
                        black_box(pingora.node(black_box(key.as_bytes())));
                    }
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("hashring", nodes), &keys, |b, keys| {
            b.iter(|| {
                for key in keys {
                    black_box(other.get(black_box(key)));
                }
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let set = addrs(1000);
    let mut group = c.benchmark_group("build-1000-nodes");
    group.sample_size(10);
    group.bench_function("tower-hashring", |b| {
        b.iter(|| ring(black_box(&set), HashScheme::default()))
    });
    group.bench_function("tower-hashring-ketama", |b| {
        b.iter(|| ring(black_box(&set), HashScheme::Ketama))
    });
    group.bench_function("pingora-ketama", |b| b.iter(|| pingora(black_box(&set))));
    // Not the `hashring` crate: it inserts each virtual node into a sorted Vec, so one
    // 1000-node build (160,000 entries) takes about 21 s; see the crate README.
    group.finish();
}

/// One member joining or leaving a 1000-node ring, node by node (`with_node`,
/// `without_node`), beside a full rebuild and pingora-ketama's build of the same set (it has
/// no incremental change).
fn change(c: &mut Criterion) {
    let set = addrs(1000);
    let joining = SocketAddr::from((Ipv4Addr::new(10, 9, 9, 9), 7100));
    let full = ring(&set, HashScheme::default());
    let mut group = c.benchmark_group("change-1000-nodes");
    group.sample_size(20);
    group.bench_function("tower-hashring-add-one", |b| {
        b.iter(|| black_box(&full).with_node(black_box(joining), 1).unwrap())
    });
    let leaving = set[500].to_string();
    group.bench_function("tower-hashring-remove-one", |b| {
        b.iter(|| black_box(&full).without_node(black_box(&leaving)))
    });
    // The same with ketama's 160 points per member instead of the default 2048.
    let ketama = ring(&set, HashScheme::Ketama);
    group.bench_function("tower-hashring-ketama-add-one", |b| {
        b.iter(|| black_box(&ketama).with_node(black_box(joining), 1).unwrap())
    });
    group.bench_function("tower-hashring-ketama-remove-one", |b| {
        b.iter(|| black_box(&ketama).without_node(black_box(&leaving)))
    });
    let mut grown = set.clone();
    grown.push(joining);
    group.bench_function("tower-hashring-rebuild", |b| {
        b.iter(|| ring(black_box(&grown), HashScheme::default()))
    });
    group.bench_function("pingora-ketama-build", |b| {
        b.iter(|| pingora(black_box(&grown)))
    });
    group.finish();
}

criterion_group!(benches, lookup, build, change);
criterion_main!(benches);

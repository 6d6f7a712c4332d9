//! The ring digest: one hash over everything that decides where a key goes, so gateways
//! can compare rings without comparing rings. Two gateways with the same digest route every
//! key to the same backend address.

use std::{collections::BTreeMap, fmt::Write};

use sha2::{Digest, Sha256};
use tower_hashring::{NodeId, Ring, RingWatch};

use discovery::{Member, Membership};

/// SHA-256 over the ring's layout version and scheme and each member's id, address and
/// weight (in id order), as 16 hex digits. A member whose address is not known yet counts
/// as `-`.
pub(crate) fn ring_digest(ring: &Ring, members: &BTreeMap<NodeId, Member>) -> String {
    let mut nodes: Vec<_> = ring.nodes().iter().collect();
    nodes.sort_by(|a, b| a.id().cmp(b.id()));
    let mut hasher = Sha256::new();
    hasher.update(format!("layout {} {:?}\n", Ring::LAYOUT, ring.scheme()));
    for node in nodes {
        let address = members
            .get(node.id())
            .map_or_else(|| "-".to_owned(), |m| m.backend.address.to_string());
        hasher.update(format!("{} {address} {}\n", node.id(), node.weight()));
    }
    hasher.finalize()[..8]
        .iter()
        .fold(String::with_capacity(16), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Logs every new ring with its digest, for as long as rings are published.
pub(crate) fn log_ring_changes(mut ring: RingWatch, members: Membership) {
    tokio::spawn(async move {
        loop {
            let snapshot = ring.borrow_and_update().clone();
            let digest = ring_digest(snapshot.ring(), &members.members());
            tracing::info!(
                version = snapshot.version(),
                digest,
                members = snapshot.ring().nodes().len(),
                "ring"
            );
            if ring.changed().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use discovery::{Backend, Origin};

    fn members(entries: &[(&str, &str, u32)]) -> (Ring, BTreeMap<NodeId, Member>) {
        let ring = entries
            .iter()
            .fold(Ring::builder(), |b, (id, _, w)| b.node(*id, *w))
            .build()
            .unwrap();
        let map = entries
            .iter()
            .map(|(id, address, w)| {
                let backend = Backend::new(*id, address.parse().unwrap()).weight(*w);
                let member = Member::new(backend, Origin::Static);
                (NodeId::from(*id), member)
            })
            .collect();
        (ring, map)
    }

    #[test]
    fn the_digest_follows_ids_addresses_and_weights_not_order() {
        let (ring, map) = members(&[("a", "10.0.0.1:7100", 1), ("b", "10.0.0.2:7100", 1)]);
        let digest = ring_digest(&ring, &map);
        assert_eq!(digest.len(), 16);
        let (ring2, map2) = members(&[("b", "10.0.0.2:7100", 1), ("a", "10.0.0.1:7100", 1)]);
        assert_eq!(
            ring_digest(&ring2, &map2),
            digest,
            "the order members came in"
        );
        for other in [
            members(&[("a", "10.0.0.1:7100", 1), ("b", "10.0.0.3:7100", 1)]),
            members(&[("a", "10.0.0.1:7100", 1), ("b", "10.0.0.2:7100", 2)]),
            members(&[("a", "10.0.0.1:7100", 1), ("c", "10.0.0.2:7100", 1)]),
        ] {
            assert_ne!(ring_digest(&other.0, &other.1), digest);
        }
    }
}

//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018).

use std::{collections::HashMap, fmt};

use super::{Node, NodeId, Ring};

/// The factor `c > 1` of consistent hashing with bounded loads.
///
/// A node may hold at most `ceil(c · (total + 1) · weight / total_weight)` loads (connections)
/// when a new one arrives; a lookup skips fuller nodes, walking clockwise.
///
/// ```
/// use tower_hashring::LoadFactor;
///
/// assert!(LoadFactor::new(1.05).is_ok());
/// assert!(LoadFactor::new(1.0).is_err());
/// assert!(LoadFactor::new(f64::NAN).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(try_from = "f64"))]
pub struct LoadFactor(f64);

impl TryFrom<f64> for LoadFactor {
    type Error = InvalidLoadFactor;

    fn try_from(c: f64) -> Result<Self, Self::Error> {
        Self::new(c)
    }
}

impl LoadFactor {
    /// Checks that `c` is finite and greater than 1.
    pub fn new(c: f64) -> Result<Self, InvalidLoadFactor> {
        if c.is_finite() && c > 1.0 {
            Ok(Self(c))
        } else {
            Err(InvalidLoadFactor(c))
        }
    }

    /// The factor.
    pub fn get(self) -> f64 {
        self.0
    }

    /// The most loads `node` may hold before it takes one more, out of `total` current loads.
    pub fn capacity(self, node_weight: u32, total_weight: u64, total: u64) -> u64 {
        if total_weight == 0 {
            return 0;
        }
        let share = f64::from(node_weight) / total_weight as f64;
        (self.0 * (total as f64 + 1.0) * share).ceil() as u64
    }
}

/// A load factor that is not a finite number above 1.
///
/// ```
/// use tower_hashring::LoadFactor;
///
/// let err = LoadFactor::new(0.5).unwrap_err();
/// assert_eq!(err.to_string(), "load factor must be a finite number greater than 1, got 0.5");
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InvalidLoadFactor(f64);

impl fmt::Display for InvalidLoadFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "load factor must be a finite number greater than 1, got {}",
            self.0
        )
    }
}

impl std::error::Error for InvalidLoadFactor {}

/// Current per-node loads (e.g. live connection counts), supplied by the caller.
///
/// ```
/// use std::collections::HashMap;
/// use tower_hashring::{LoadSource, NodeId};
///
/// let loads = HashMap::from([(NodeId::from("a"), 3), (NodeId::from("b"), 4)]);
/// assert_eq!(loads.load(&NodeId::from("a")), 3);
/// assert_eq!(loads.total(), 7);
/// ```
pub trait LoadSource {
    /// The load of one node (0 if unknown).
    fn load(&self, node: &NodeId) -> u64;
    /// The sum over all nodes.
    fn total(&self) -> u64;
}

impl<S: std::hash::BuildHasher> LoadSource for HashMap<NodeId, u64, S> {
    fn load(&self, node: &NodeId) -> u64 {
        self.get(node).copied().unwrap_or(0)
    }

    /// Sums the map: O(nodes).
    fn total(&self) -> u64 {
        self.values().sum()
    }
}

impl<L: LoadSource + ?Sized> LoadSource for &L {
    fn load(&self, node: &NodeId) -> u64 {
        (**self).load(node)
    }

    fn total(&self) -> u64 {
        (**self).total()
    }
}

impl Ring {
    /// The node that should take one more load for this position under bounded loads:
    /// the first node clockwise from the position whose load is below its capacity
    /// (see [`LoadFactor`]). Deterministic for the same ring and loads.
    ///
    /// If the loads are inconsistent (no node below capacity, which the bound makes
    /// impossible when `total` is the sum of the loads), the plain owner is returned.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use tower_hashring::{LoadFactor, NodeId, Ring};
    ///
    /// let ring = Ring::builder().node("a", 1).node("b", 1).build()?;
    /// let c = LoadFactor::new(1.25).unwrap();
    /// let pos = ring.key_position(b"user-1");
    /// let owner = ring.owner_of(pos).unwrap().id().clone();
    /// // The owner already holds 10 of 10 loads: its capacity is ceil(1.25 * 11 / 2) = 7.
    /// let loads = HashMap::from([(owner.clone(), 10)]);
    /// assert_ne!(ring.route_bounded(pos, c, &loads).unwrap().id(), &owner);
    /// # Ok::<(), tower_hashring::RingError>(())
    /// ```
    pub fn route_bounded<L: LoadSource + ?Sized>(
        &self,
        position: u64,
        factor: LoadFactor,
        loads: &L,
    ) -> Option<&Node> {
        self.route_bounded_index(position, factor, loads)
            .map(|index| &self.nodes()[index])
    }

    /// [`Ring::route_bounded`] as an index into [`Ring::nodes`].
    pub(crate) fn route_bounded_index<L: LoadSource + ?Sized>(
        &self,
        position: u64,
        factor: LoadFactor,
        loads: &L,
    ) -> Option<usize> {
        let start = self.point_at_or_after(position)?;
        let total = loads.total();
        let points = self.len_points();
        (0..points)
            .map(|step| self.owner_index_at((start + step) % points))
            .find(|&index| {
                let node = &self.nodes()[index];
                loads.load(node.id()) < factor.capacity(node.weight(), self.total_weight(), total)
            })
            .or_else(|| Some(self.owner_index_at(start)))
    }
}

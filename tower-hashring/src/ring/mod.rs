//! The consistent hash ring: an immutable, sorted array of points with an O(1) bucket index.

mod bounded;
mod diff;
mod node;
mod scheme;
mod successors;

pub use self::{
    bounded::{InvalidLoadFactor, LoadFactor, LoadSource},
    diff::{MovedRange, RingDiff},
    node::{Node, NodeId},
    scheme::{HashScheme, DEFAULT_POINTS_PER_WEIGHT},
    successors::{SuccessorCursor, Successors},
};

use std::{collections::BTreeMap, fmt};

/// The most points a ring may hold (16.7 M, about 140 MiB with its index).
pub const MAX_POINTS: u64 = 1 << 24;

/// The most members a ring may hold: a point keeps its owner's index in its low 16 bits.
pub const MAX_NODES: usize = 1 << OWNER_BITS;

/// A point is one `u64`: its position's top 48 bits, then its owner's index in `nodes`.
const OWNER_BITS: u32 = 16;
const OWNER_MASK: u64 = (1 << OWNER_BITS) - 1;
/// Points per bucket of the index, on average at most: a lookup reads one or two cache
/// lines of points, and a change rewrites a quarter of the index it would at one per point.
const POINTS_PER_BUCKET: usize = 4;

/// An immutable consistent hash ring.
///
/// Build one with [`Ring::builder`]. Lookups hash the key once, then find the owning point
/// through a bucket index over the top bits of the position (a few points per bucket),
/// so they cost the same at 10 or 1000 nodes and never allocate. A point is one `u64`
/// holding both its position and its owner, so a lookup reads one array, and a change
/// copies 8 bytes per point.
///
/// The layout is fully determined by the [`HashScheme`] and the set of `(id, weight)`
/// pairs: the order in which nodes were added does not matter.
///
/// ```
/// use tower_hashring::Ring;
///
/// let ring = Ring::builder()
///     .node("backend-a", 1)
///     .node("backend-b", 1)
///     .node("backend-c", 2)
///     .build()?;
/// let owner = ring.route(b"user-42").expect("the ring is not empty");
/// // The same key always has the same owner.
/// assert_eq!(ring.route(b"user-42"), Some(owner));
/// // Failover order: the distinct nodes after the owner.
/// let order: Vec<_> = ring.successors(b"user-42").map(|n| n.id().as_str()).collect();
/// assert_eq!(order.len(), 3);
/// assert_eq!(order[0], owner.id().as_str());
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
#[derive(Clone)]
pub struct Ring {
    scheme: HashScheme,
    /// Members sorted by id; points refer to them by index.
    nodes: Box<[Node]>,
    /// Sorted points: each is its position's top 48 bits, then its owner's index in `nodes`
    /// (so tied positions sort by owner, the smaller id first). The point's position is
    /// these bits with the low 16 set: it owns every key up to the end of its 2^16 window.
    points: Box<[u64]>,
    /// `index[b]` is the first point at or after bucket `b`'s start (`b << index_shift`);
    /// it has one more entry than there are buckets.
    index: Box<[u32]>,
    index_shift: u32,
    /// Nodes with at least one point.
    routable: usize,
    total_weight: u64,
}

/// Why a ring could not be built.
///
/// ```
/// use tower_hashring::{Ring, RingError};
///
/// let err = Ring::builder().node("huge", u32::MAX).build().unwrap_err();
/// assert!(matches!(err, RingError::TooManyPoints { .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RingError {
    /// The weights ask for more than [`MAX_POINTS`] points.
    TooManyPoints {
        /// Points the weights ask for.
        requested: u64,
    },
    /// More than [`MAX_NODES`] members.
    TooManyNodes {
        /// Members asked for.
        requested: usize,
    },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::TooManyPoints { requested } => write!(
                f,
                "the node weights ask for {requested} ring points, more than the limit of {MAX_POINTS}; lower the weights or the points per weight"
            ),
            RingError::TooManyNodes { requested } => write!(
                f,
                "{requested} ring members, more than the limit of {MAX_NODES}"
            ),
        }
    }
}

impl std::error::Error for RingError {}

/// Collects nodes, then builds a [`Ring`].
///
/// Adding the same id twice keeps the last weight, so a repeated announcement never doubles
/// a node's share.
///
/// ```
/// use tower_hashring::{HashScheme, Ring};
///
/// let ring = Ring::builder()
///     .scheme(HashScheme::Ketama)
///     .node("127.0.0.1:8080", 1)
///     .node("127.0.0.1:8080", 1) // idempotent
///     .build()?;
/// assert_eq!(ring.len_points(), 160);
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct RingBuilder {
    scheme: HashScheme,
    nodes: BTreeMap<NodeId, u32>,
}

impl RingBuilder {
    /// Sets the hash scheme (default: [`HashScheme::default`]).
    pub fn scheme(mut self, scheme: HashScheme) -> Self {
        self.scheme = scheme;
        self
    }

    /// Adds a node, or sets its weight if it is already there.
    pub fn node(mut self, id: impl Into<NodeId>, weight: u32) -> Self {
        self.nodes.insert(id.into(), weight);
        self
    }

    /// Adds several nodes.
    pub fn nodes<I: IntoIterator<Item = Node>>(mut self, nodes: I) -> Self {
        self.nodes
            .extend(nodes.into_iter().map(|n| (n.id, n.weight)));
        self
    }

    /// Builds the ring.
    pub fn build(self) -> Result<Ring, RingError> {
        Ring::from_sorted(
            self.scheme,
            self.nodes
                .into_iter()
                .map(|(id, weight)| Node::new(id, weight))
                .collect(),
        )
    }
}

impl Ring {
    /// The version of the point layout. It changes whenever the same scheme and members
    /// could route a key elsewhere, so gateways that compare rings (a digest, say) should
    /// include it. Version 2: a point's position keeps 48 bits of its hash.
    ///
    /// ```
    /// assert_eq!(tower_hashring::Ring::LAYOUT, 2);
    /// ```
    pub const LAYOUT: u32 = 2;

    /// Starts building a ring.
    pub fn builder() -> RingBuilder {
        RingBuilder::default()
    }

    /// An empty ring: every lookup answers `None`.
    pub fn empty(scheme: HashScheme) -> Ring {
        // The index a build of no points gives, so a node added to it keeps a valid one.
        let (index, index_shift) = build_index(&[]);
        Ring {
            scheme,
            nodes: Box::default(),
            points: Box::default(),
            index,
            index_shift,
            routable: 0,
            total_weight: 0,
        }
    }

    /// `nodes` must be sorted by id and free of duplicates.
    fn from_sorted(scheme: HashScheme, nodes: Vec<Node>) -> Result<Ring, RingError> {
        let requested = nodes.iter().fold(0u64, |sum, n| {
            sum.saturating_add(scheme.points_for(n.weight))
        });
        if requested > MAX_POINTS {
            return Err(RingError::TooManyPoints { requested });
        }
        if nodes.len() > MAX_NODES {
            return Err(RingError::TooManyNodes {
                requested: nodes.len(),
            });
        }
        let mut points: Vec<u64> = Vec::with_capacity(requested as usize);
        let mut routable = 0;
        for (index, node) in nodes.iter().enumerate() {
            let before = points.len();
            node_points(scheme, node, index as u32, &mut points);
            routable += usize::from(points.len() > before);
        }
        // Ties on position go to the smaller node index, which is the smaller id. Tied points
        // are all kept (a lookup finds the first): removing a node then leaves exactly the
        // points a rebuild without it would have, which incremental changes rely on.
        points.sort_unstable();
        Ok(Ring::assemble(scheme, nodes, points, routable, None))
    }

    /// This ring with node `id` added at `weight` (or re-weighted, if it is there): the same
    /// ring a rebuild would give, made by merging the node's points into this one's, so a
    /// change costs one pass over the points instead of a sort of all of them.
    ///
    /// ```
    /// use tower_hashring::Ring;
    ///
    /// let ring = Ring::builder().node("a", 1).node("b", 1).build()?;
    /// let grown = ring.with_node("c", 2)?;
    /// let rebuilt = Ring::builder().node("a", 1).node("b", 1).node("c", 2).build()?;
    /// assert!(grown.points().eq(rebuilt.points()));
    /// # Ok::<(), tower_hashring::RingError>(())
    /// ```
    pub fn with_node(&self, id: impl Into<NodeId>, weight: u32) -> Result<Ring, RingError> {
        let id = id.into();
        if self.node(id.as_str()).is_some() {
            return self.without_node(id.as_str()).with_node(id, weight);
        }
        let added = self.scheme.points_for(weight);
        let requested = (self.points.len() as u64).saturating_add(added);
        if requested > MAX_POINTS {
            return Err(RingError::TooManyPoints { requested });
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(RingError::TooManyNodes {
                requested: self.nodes.len() + 1,
            });
        }
        let at = self
            .nodes
            .binary_search_by(|n| n.id.as_str().cmp(id.as_str()))
            .unwrap_or_else(|i| i) as u32;
        let node = Node::new(id, weight);
        let mut new = Vec::with_capacity(added as usize);
        node_points(self.scheme, &node, at, &mut new);
        new.sort_unstable();
        // A merge in the order a rebuild's sort gives, done as bulk copies of the runs of old
        // points between two new ones (a new node's points are few and spread out). Old
        // owners at or past `at` move up one, which keeps their order against the new
        // points: an old point tied with a new one sorts after it exactly when its owner
        // index is `at` or more, as it is before the shift.
        let mut runs = Runs::new(self, self.points.len() + new.len(), at, 1);
        let old = &self.points[..];
        let mut from = 0;
        for &point in &new {
            let to = gallop(old, from, point);
            runs.copy(from..to);
            runs.points.push(point);
            from = to;
        }
        runs.copy(from..old.len());
        let points = runs.points;
        let routable = self.routable + usize::from(!new.is_empty());
        let index = self.index_after(&new, true, points.len());
        let mut nodes = self.nodes.to_vec();
        nodes.insert(at as usize, node);
        Ok(Ring::assemble(self.scheme, nodes, points, routable, index))
    }

    /// This ring without node `id` (the same ring, if it is not there): the same ring a
    /// rebuild would give, made by bulk copies of the runs between the node's points.
    ///
    /// ```
    /// use tower_hashring::Ring;
    ///
    /// let ring = Ring::builder().node("a", 1).node("b", 1).build()?;
    /// let rebuilt = Ring::builder().node("b", 1).build()?;
    /// assert!(ring.without_node("a").points().eq(rebuilt.points()));
    /// # Ok::<(), tower_hashring::RingError>(())
    /// ```
    pub fn without_node(&self, id: &str) -> Ring {
        let Some(at) = self.node_index(id) else {
            return self.clone();
        };
        let at = at as u32;
        // Where its points are: found from their values, which its id, weight and index give.
        let mut removed =
            Vec::with_capacity(self.scheme.points_for(self.nodes[at as usize].weight) as usize);
        node_points(self.scheme, &self.nodes[at as usize], at, &mut removed);
        removed.sort_unstable();
        let old = &self.points[..];
        let mut slots = Vec::with_capacity(removed.len());
        let mut from = 0;
        for &point in &removed {
            let slot = gallop(old, from, point);
            if old.get(slot) != Some(&point) {
                // Not where its hashes say (cannot happen for a ring built here): filter.
                return self.without_node_filtered(at);
            }
            slots.push(slot);
            from = slot + 1;
        }
        let mut runs = Runs::new(self, old.len() - slots.len(), at, -1);
        let mut from = 0;
        for &slot in &slots {
            runs.copy(from..slot);
            from = slot + 1;
        }
        runs.copy(from..old.len());
        self.assemble_without(at, runs.points, &removed)
    }

    /// [`without_node`](Self::without_node) by one filtering pass over every point.
    fn without_node_filtered(&self, at: u32) -> Ring {
        let (mut points, mut removed) = (Vec::with_capacity(self.points.len()), Vec::new());
        for &point in self.points.iter() {
            match (point & OWNER_MASK) as u32 {
                owner if owner == at => removed.push(point),
                owner => points.push(point - u64::from(owner > at)),
            }
        }
        self.assemble_without(at, points, &removed)
    }

    /// This ring without the node at `at`, whose sorted points were `removed`, over `points`.
    fn assemble_without(&self, at: u32, points: Vec<u64>, removed: &[u64]) -> Ring {
        let routable = self.routable - usize::from(!removed.is_empty());
        let index = self.index_after(removed, false, points.len());
        let mut nodes = self.nodes.to_vec();
        nodes.remove(at as usize);
        Ring::assemble(self.scheme, nodes, points, routable, index)
    }

    /// The bucket index once the sorted points `changed` are added (or removed), for a ring
    /// of `len` points: this one's, shifted by how many changed points lie below each
    /// bucket, while the bucket count stays the same. The shift is constant between two
    /// changed points, so it is applied run by run.
    fn index_after(&self, changed: &[u64], added: bool, len: usize) -> Option<(Box<[u32]>, u32)> {
        if 64 - index_bits(len) != self.index_shift {
            return None;
        }
        let buckets = self.index.len() - 1;
        let mut index = Vec::with_capacity(self.index.len());
        let mut from = 0;
        for (below, &point) in changed.iter().enumerate() {
            // Buckets starting at or before `point` have `below` changed points under them.
            let to = ((point >> self.index_shift) as usize + 1).min(buckets);
            let shift = below as u32;
            if to > from {
                let run = self.index[from..to].iter();
                if added {
                    index.extend(run.map(|&count| count + shift));
                } else {
                    index.extend(run.map(|&count| count - shift));
                }
                from = to;
            }
        }
        let shift = changed.len() as u32;
        let run = self.index[from..buckets].iter();
        if added {
            index.extend(run.map(|&count| count + shift));
        } else {
            index.extend(run.map(|&count| count - shift));
        }
        index.push(len as u32);
        Some((index.into_boxed_slice(), self.index_shift))
    }

    /// A ring of `nodes` over these sorted points, `routable` of them with points, with its
    /// bucket index if it is known.
    fn assemble(
        scheme: HashScheme,
        nodes: Vec<Node>,
        points: Vec<u64>,
        routable: usize,
        index: Option<(Box<[u32]>, u32)>,
    ) -> Ring {
        let (index, index_shift) = index.unwrap_or_else(|| build_index(&points));
        Ring {
            scheme,
            routable,
            total_weight: nodes.iter().map(|n| u64::from(n.weight)).sum(),
            nodes: nodes.into_boxed_slice(),
            points: points.into_boxed_slice(),
            index,
            index_shift,
        }
    }

    /// The hash scheme.
    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }

    /// All members, drained ones included, sorted by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The member with this id.
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.node_index(id).map(|i| &self.nodes[i])
    }

    /// The index of a member in [`Ring::nodes`].
    pub fn node_index(&self, id: &str) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.id.as_str().cmp(id)).ok()
    }

    /// How many members own at least one point.
    pub fn routable_nodes(&self) -> usize {
        self.routable
    }

    /// Whether no key can be routed (no members, or all drained).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The number of points on the ring.
    pub fn len_points(&self) -> usize {
        self.points.len()
    }

    /// The sum of all members' weights.
    pub fn total_weight(&self) -> u64 {
        self.total_weight
    }

    /// Iterates over the points in ring order as `(position, owner)`: the owner takes every
    /// key position after the previous point's, up to and including this one's.
    pub fn points(&self) -> impl ExactSizeIterator<Item = (u64, &Node)> + '_ {
        self.points
            .iter()
            .map(|&p| (p | OWNER_MASK, &self.nodes[(p & OWNER_MASK) as usize]))
    }

    /// The ring position of a key under this ring's scheme.
    #[inline]
    pub fn key_position(&self, key: &[u8]) -> u64 {
        self.scheme.key_position(key)
    }

    /// The owner of a key.
    #[inline]
    pub fn route(&self, key: &[u8]) -> Option<&Node> {
        self.owner_of(self.key_position(key))
    }

    /// The owner of a ring position.
    #[inline]
    pub fn owner_of(&self, position: u64) -> Option<&Node> {
        let point = self.point_at_or_after(position)?;
        Some(&self.nodes[self.owner_index_at(point)])
    }

    /// The distinct nodes in ring order from a key's owner on: the owner, then failover
    /// candidates. Allocates only past the eighth node.
    pub fn successors(&self, key: &[u8]) -> Successors<'_> {
        self.successors_of(self.key_position(key))
    }

    /// [`Ring::successors`] for a ring position.
    pub fn successors_of(&self, position: u64) -> Successors<'_> {
        Successors::new(self, SuccessorCursor::new(self, position))
    }

    /// The index of the first point at or after `position`, wrapping to the first point.
    #[inline]
    fn point_at_or_after(&self, position: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        // A point at or past this holds a position at or past `position` (its low bits, the
        // owner, stand for all ones); the shift is at least 32, so the bucket is the same.
        let floor = position & !OWNER_MASK;
        let bucket = (position >> self.index_shift) as usize;
        let start = self.index[bucket] as usize;
        let end = self.index[bucket + 1] as usize;
        let found = start + self.points[start..end].partition_point(|&p| p < floor);
        Some(if found == self.points.len() { 0 } else { found })
    }

    pub(crate) fn owner_index_at(&self, point: usize) -> usize {
        (self.points[point] & OWNER_MASK) as usize
    }

    /// The position of the point at `point` (see [`Ring::points`]).
    pub(crate) fn position_at(&self, point: usize) -> u64 {
        self.points[point] | OWNER_MASK
    }
}

/// Appends a node's points, owned by index `owner`: each position's top 48 bits, then the
/// owner.
fn node_points(scheme: HashScheme, node: &Node, owner: u32, out: &mut Vec<u64>) {
    let start = out.len();
    scheme.push_points(node.id.as_str(), node.weight, out);
    for point in &mut out[start..] {
        *point = (*point & !OWNER_MASK) | u64::from(owner);
    }
}

/// Builds the bucket index: one bucket per point, rounded up to a power of two.
/// How many bits of a position pick its bucket, for a ring of `len` points.
/// The first index at or after `from` whose position is at or past `point`, found by
/// doubling steps from `from` and then a binary search within the last step: the next
/// changed point is a few thousand points on, so this touches a few cache lines near the
/// cursor instead of a binary search's ~21 misses across the whole array.
fn gallop(points: &[u64], from: usize, point: u64) -> usize {
    let mut low = from;
    let mut step = 1;
    while low + step < points.len() && points[low + step] < point {
        low += step;
        step *= 2;
    }
    let high = (low + step).min(points.len());
    low + points[low..high].partition_point(|&p| p < point)
}

/// Builds a changed ring's points from runs of an old ring's: `at` is the changed node's
/// index, and owner indices past it move by `step` (+1 when a node was inserted at `at`,
/// -1 when the node at `at` was removed).
struct Runs<'a> {
    points: Vec<u64>,
    old: &'a [u64],
    at: u64,
    step: i32,
}

impl<'a> Runs<'a> {
    fn new(ring: &'a Ring, capacity: usize, at: u32, step: i32) -> Self {
        Self {
            points: Vec::with_capacity(capacity),
            old: &ring.points,
            at: u64::from(at),
            step,
        }
    }

    /// Appends the old points `range` with their owners moved: a plain map over a slice,
    /// which the compiler vectorises.
    fn copy(&mut self, range: std::ops::Range<usize>) {
        let (run, at) = (self.old[range].iter(), self.at);
        if self.step > 0 {
            self.points
                .extend(run.map(|&p| p + u64::from(p & OWNER_MASK >= at)));
        } else {
            self.points
                .extend(run.map(|&p| p - u64::from(p & OWNER_MASK > at)));
        }
    }
}

fn index_bits(len: usize) -> u32 {
    (len.next_power_of_two() / POINTS_PER_BUCKET)
        .max(1)
        .trailing_zeros()
        .clamp(1, 32)
}

fn build_index(points: &[u64]) -> (Box<[u32]>, u32) {
    let bits = index_bits(points.len());
    let shift = 64 - bits;
    let buckets = 1usize << bits;
    let mut index = Vec::with_capacity(buckets + 1);
    let mut point = 0usize;
    for bucket in 0..buckets {
        let start = (bucket as u64) << shift;
        while point < points.len() && points[point] < start {
            point += 1;
        }
        index.push(point as u32);
    }
    index.push(points.len() as u32);
    (index.into_boxed_slice(), shift)
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("scheme", &self.scheme)
            .field("nodes", &self.nodes)
            .field("points", &self.points.len())
            .finish()
    }
}

impl PartialEq for Ring {
    fn eq(&self, other: &Self) -> bool {
        self.scheme == other.scheme && self.nodes == other.nodes
    }
}

impl Eq for Ring {}

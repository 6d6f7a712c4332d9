use smallvec::SmallVec;

use super::{Node, Ring};

/// The resumable state of a walk over the distinct nodes after a position.
///
/// [`Successors`] borrows a ring; this cursor does not, so a future that owns an
/// `Arc` of a ring can keep walking it across polls.
///
/// ```
/// use tower_hashring::{Ring, SuccessorCursor};
///
/// let ring = Ring::builder().node("a", 1).node("b", 1).build()?;
/// let mut cursor = SuccessorCursor::new(&ring, ring.key_position(b"user-7"));
/// let first = cursor.next(&ring).unwrap().1.id().clone();
/// let second = cursor.next(&ring).unwrap().1.id().clone();
/// assert_ne!(first, second);
/// assert!(cursor.next(&ring).is_none());
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
#[derive(Clone, Debug)]
pub struct SuccessorCursor {
    start: usize,
    step: usize,
    /// Node indices already yielded; inline up to 8, which covers any sane failover depth.
    seen: SmallVec<[u32; 8]>,
}

impl SuccessorCursor {
    /// A cursor starting at the owner of `position`.
    pub fn new(ring: &Ring, position: u64) -> Self {
        Self {
            start: ring.point_at_or_after(position).unwrap_or(0),
            step: 0,
            seen: SmallVec::new(),
        }
    }

    /// The next distinct node as `(index in ring.nodes(), node)`.
    ///
    /// `ring` must be the ring the cursor was made for.
    pub fn next<'r>(&mut self, ring: &'r Ring) -> Option<(usize, &'r Node)> {
        let points = ring.len_points();
        while self.step < points && self.seen.len() < ring.routable_nodes() {
            let owner = ring.owner_index_at((self.start + self.step) % points);
            self.step += 1;
            if !self.seen.contains(&(owner as u32)) {
                self.seen.push(owner as u32);
                return Some((owner, &ring.nodes()[owner]));
            }
        }
        None
    }
}

/// The distinct nodes in ring order from a position's owner on; see [`Ring::successors`].
///
/// ```
/// use tower_hashring::Ring;
///
/// let ring = Ring::builder().node("a", 1).node("b", 1).node("c", 0).build()?;
/// // Drained nodes are never candidates.
/// assert_eq!(ring.successors(b"k").count(), 2);
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Successors<'r> {
    ring: &'r Ring,
    cursor: SuccessorCursor,
}

impl<'r> Successors<'r> {
    pub(crate) fn new(ring: &'r Ring, cursor: SuccessorCursor) -> Self {
        Self { ring, cursor }
    }
}

impl<'r> Iterator for Successors<'r> {
    type Item = &'r Node;

    fn next(&mut self) -> Option<&'r Node> {
        self.cursor.next(self.ring).map(|(_, node)| node)
    }
}

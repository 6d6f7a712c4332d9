use super::{NodeId, Ring};

/// An inclusive range of ring positions whose owner changed between two rings.
///
/// `from` or `to` is `None` where that ring could route nothing (it was empty or drained).
///
/// ```
/// use tower_hashring::{Ring, RingDiff};
///
/// let before = Ring::builder().node("a", 1).build()?;
/// let after = Ring::builder().node("a", 1).node("b", 1).build()?;
/// let diff = RingDiff::between(&before, &after);
/// let moved = &diff.ranges()[0];
/// assert_eq!(moved.from.as_ref().unwrap().as_str(), "a");
/// assert_eq!(moved.to.as_ref().unwrap().as_str(), "b");
/// assert!(moved.start <= moved.end);
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MovedRange {
    /// The first position of the range.
    pub start: u64,
    /// The last position of the range (inclusive).
    pub end: u64,
    /// The owner in the old ring.
    pub from: Option<NodeId>,
    /// The owner in the new ring.
    pub to: Option<NodeId>,
}

impl MovedRange {
    /// Whether the range holds this position.
    pub fn contains(&self, position: u64) -> bool {
        self.start <= position && position <= self.end
    }
}

/// The ranges of positions whose owner differs between two rings, in ascending order.
///
/// Computed in one merge pass over both rings' points (O(points)), so the connections to
/// move can be found from their stored key positions without rehashing any key. Both rings
/// must use the same [`HashScheme`](super::HashScheme) for positions to mean the same keys.
///
/// ```
/// use tower_hashring::{Ring, RingDiff};
///
/// let before = Ring::builder().node("a", 1).node("b", 1).node("c", 1).build()?;
/// let after = Ring::builder().node("a", 1).node("b", 1).build()?;
/// let diff = RingDiff::between(&before, &after);
/// for key in ["user-1", "user-2", "user-3", "user-4"] {
///     let pos = before.key_position(key.as_bytes());
///     let moved = before.owner_of(pos) != after.owner_of(pos);
///     assert_eq!(diff.moved(pos).is_some(), moved);
/// }
/// # Ok::<(), tower_hashring::RingError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RingDiff {
    ranges: Vec<MovedRange>,
}

impl RingDiff {
    /// The positions whose owner changed from `old` to `new`.
    pub fn between(old: &Ring, new: &Ring) -> RingDiff {
        // Map each old node to the new node with the same id, to compare owners by index.
        let old_to_new: Vec<Option<u32>> = old
            .nodes()
            .iter()
            .map(|n| new.node_index(n.id().as_str()).map(|i| i as u32))
            .collect();
        let owner_old = |point: usize| -> Option<u32> {
            (!old.is_empty()).then(|| old.owner_index_at(point) as u32)
        };
        let owner_new = |point: usize| -> Option<u32> {
            (!new.is_empty()).then(|| new.owner_index_at(point) as u32)
        };

        let mut builder = RangesBuilder {
            old,
            new,
            old_to_new,
            ranges: Vec::new(),
        };
        let (a, b) = (old.len_points(), new.len_points());
        let at =
            |ring: &Ring, point: usize, len: usize| (point < len).then(|| ring.position_at(point));
        let (mut i, mut j) = (0usize, 0usize);
        // Every position in (previous boundary, boundary] maps to the first point at or
        // after the boundary in each ring; past the last boundary both wrap to point 0.
        let mut range_start = 0u64;
        loop {
            let (x, y) = (at(old, i, a), at(new, j, b));
            let boundary = match (x, y) {
                (Some(x), Some(y)) => x.min(y),
                (Some(x), None) => x,
                (None, Some(y)) => y,
                (None, None) => break,
            };
            let from = owner_old(if i < a { i } else { 0 });
            let to = owner_new(if j < b { j } else { 0 });
            // A point tied with the one before it owns no position of its own.
            if range_start <= boundary {
                builder.push(range_start, boundary, from, to);
            }
            if x == Some(boundary) {
                i += 1;
            }
            if y == Some(boundary) {
                j += 1;
            }
            match boundary.checked_add(1) {
                Some(next) => range_start = next,
                None => return builder.finish(),
            }
        }
        builder.push(range_start, u64::MAX, owner_old(0), owner_new(0));
        builder.finish()
    }

    /// The moved ranges, ascending and non-overlapping; adjacent ranges with the same old
    /// and new owner are merged.
    pub fn ranges(&self) -> &[MovedRange] {
        &self.ranges
    }

    /// Whether no position changed owner.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The moved range holding `position`, if its owner changed (binary search).
    pub fn moved(&self, position: u64) -> Option<&MovedRange> {
        let i = self.ranges.partition_point(|r| r.end < position);
        self.ranges.get(i).filter(|r| r.contains(position))
    }
}

struct RangesBuilder<'a> {
    old: &'a Ring,
    new: &'a Ring,
    old_to_new: Vec<Option<u32>>,
    ranges: Vec<MovedRange>,
}

impl RangesBuilder<'_> {
    fn push(&mut self, start: u64, end: u64, from: Option<u32>, to: Option<u32>) {
        let from_in_new = from.and_then(|f| self.old_to_new[f as usize]);
        let unchanged = from_in_new.is_some() && from_in_new == to;
        if unchanged || (from.is_none() && to.is_none()) {
            return;
        }
        let from = from.map(|f| self.old.nodes()[f as usize].id());
        let to = to.map(|t| self.new.nodes()[t as usize].id());
        if let Some(last) = self.ranges.last_mut() {
            if last.end.checked_add(1) == Some(start)
                && last.from.as_ref() == from
                && last.to.as_ref() == to
            {
                last.end = end;
                return;
            }
        }
        self.ranges.push(MovedRange {
            start,
            end,
            from: from.cloned(),
            to: to.cloned(),
        });
    }

    fn finish(self) -> RingDiff {
        RingDiff {
            ranges: self.ranges,
        }
    }
}

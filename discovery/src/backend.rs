//! A backend as discovery sources describe it, and the member set they converge on.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};
use tower::discover::Change;
use tower_hashring::NodeId;

/// One backend: its stable id (its place on the ring), where it listens, its weight, and
/// free-form metadata.
///
/// ```
/// use discovery::Backend;
///
/// let backend = Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap()).weight(2);
/// let json = serde_json::to_string(&backend).unwrap();
/// assert_eq!(serde_json::from_str::<Backend>(&json).unwrap(), backend);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    /// The stable id.
    pub id: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// Its share of the ring (0 drains it).
    #[serde(default = "one")]
    pub weight: u32,
    /// Anything else it wants to say about itself.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl Backend {
    /// A backend of weight 1.
    pub fn new(id: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            id: id.into(),
            address,
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the weight.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The ring id.
    pub fn node_id(&self) -> NodeId {
        NodeId::from(self.id.as_str())
    }
}

/// The members a source knows, by id; turns a newer full set into the changes that lead to
/// it, so sources that re-read everything (a resync) announce only what changed.
///
/// ```
/// use discovery::{Backend, MemberSet};
/// use tower::discover::Change;
///
/// let a = Backend::new("a", "127.0.0.1:7100".parse().unwrap());
/// let mut members = MemberSet::default();
/// assert_eq!(members.update([a.clone()]).len(), 1);
/// assert!(members.update([a.clone()]).is_empty(), "the same set changes nothing");
/// assert!(matches!(&members.update([])[..], [Change::Remove(id)] if id.as_str() == "a"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSet {
    members: BTreeMap<String, Backend>,
}

impl MemberSet {
    /// Replaces the set; returns the removals, then the insertions (new or changed members),
    /// each in id order.
    pub fn update(
        &mut self,
        newer: impl IntoIterator<Item = Backend>,
    ) -> Vec<Change<NodeId, Backend>> {
        let newer: BTreeMap<String, Backend> =
            newer.into_iter().map(|b| (b.id.clone(), b)).collect();
        let mut changes = Vec::new();
        for id in self.members.keys() {
            if !newer.contains_key(id) {
                changes.push(Change::Remove(NodeId::from(id.as_str())));
            }
        }
        for (id, backend) in &newer {
            if self.members.get(id) != Some(backend) {
                changes.push(Change::Insert(backend.node_id(), backend.clone()));
            }
        }
        self.members = newer;
        changes
    }

    /// Adds or updates one member: the change, if it is one (O(log n), for sources that
    /// learn of one member at a time).
    ///
    /// ```
    /// use discovery::{Backend, MemberSet};
    ///
    /// let a = Backend::new("a", "127.0.0.1:7100".parse().unwrap());
    /// let mut members = MemberSet::default();
    /// assert!(members.set(a.clone()).is_some());
    /// assert!(members.set(a).is_none(), "the same member changes nothing");
    /// assert!(members.remove("a").is_some() && members.is_empty());
    /// ```
    pub fn set(&mut self, backend: Backend) -> Option<Change<NodeId, Backend>> {
        if self.members.get(&backend.id) == Some(&backend) {
            return None;
        }
        self.members.insert(backend.id.clone(), backend.clone());
        Some(Change::Insert(backend.node_id(), backend))
    }

    /// Removes one member: the change, if it was one.
    pub fn remove(&mut self, id: &str) -> Option<Change<NodeId, Backend>> {
        self.members
            .remove(id)
            .map(|_| Change::Remove(NodeId::from(id)))
    }

    /// The current members.
    pub fn members(&self) -> impl Iterator<Item = &Backend> {
        self.members.values()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

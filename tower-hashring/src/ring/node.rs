use std::{borrow::Borrow, fmt, net::SocketAddr, sync::Arc};

/// The stable identity of a node on the ring, such as `backend-a` or `10.0.0.5:7100`.
///
/// The ring hashes the UTF-8 bytes of this string, never a process-random hash, so the
/// same set of ids gives the same ring on every machine, process and version.
/// Cloning is cheap (a reference count).
///
/// ```
/// use tower_hashring::NodeId;
///
/// let id = NodeId::from("backend-a");
/// assert_eq!(id.as_str(), "backend-a");
/// let addr: std::net::SocketAddr = "10.0.0.5:7100".parse().unwrap();
/// assert_eq!(NodeId::from(addr).as_str(), "10.0.0.5:7100");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(Arc<str>);

impl NodeId {
    /// Creates an id from any string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        Self(id.into())
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        Self(id.into())
    }
}

impl From<Arc<str>> for NodeId {
    fn from(id: Arc<str>) -> Self {
        Self(id)
    }
}

/// Formats as `ip:port` (`[v6]:port` for IPv6), the syntax of nginx's `server` directive.
impl From<SocketAddr> for NodeId {
    fn from(addr: SocketAddr) -> Self {
        Self(addr.to_string().into())
    }
}

/// A member of the ring: its id and its weight.
///
/// The number of points a node places on the ring is proportional to its weight. Weight 0
/// means *drained*: the node stays a member (so callers still see it and its connections)
/// but owns no keys.
///
/// ```
/// use tower_hashring::Node;
///
/// let node = Node::new("backend-a", 2);
/// assert_eq!(node.id().as_str(), "backend-a");
/// assert_eq!(node.weight(), 2);
/// assert!(!node.is_drained());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub(crate) id: NodeId,
    pub(crate) weight: u32,
}

impl Node {
    /// Creates a node with the given weight.
    pub fn new(id: impl Into<NodeId>, weight: u32) -> Self {
        Self {
            id: id.into(),
            weight,
        }
    }

    /// The node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// The node's weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// Whether the node has weight 0 and so owns no keys.
    pub fn is_drained(&self) -> bool {
        self.weight == 0
    }
}

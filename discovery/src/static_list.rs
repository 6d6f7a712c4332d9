//! A fixed list of backends.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    task::{Context, Poll},
};

use futures_core::Stream;
use tower::discover::Change;
use tower_hashring::NodeId;

use crate::Backend;

/// Announces a fixed list of backends once, then stays quiet (it never ends, so the
/// balancer keeps its ring).
///
/// ```
/// use discovery::{Backend, StaticDiscovery};
///
/// let members = StaticDiscovery::new([
///     Backend::new("a", "127.0.0.1:7100".parse().unwrap()),
///     Backend::new("b", "127.0.0.1:7101".parse().unwrap()),
/// ]);
/// # let _ = members;
/// ```
#[derive(Debug)]
pub struct StaticDiscovery {
    pending: VecDeque<Backend>,
}

impl StaticDiscovery {
    /// The list to announce.
    pub fn new(backends: impl IntoIterator<Item = Backend>) -> Self {
        Self {
            pending: backends.into_iter().collect(),
        }
    }
}

impl Stream for StaticDiscovery {
    type Item = Result<Change<NodeId, Backend>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.pending.pop_front() {
            Some(backend) => Poll::Ready(Some(Ok(Change::Insert(backend.node_id(), backend)))),
            None => Poll::Pending,
        }
    }
}

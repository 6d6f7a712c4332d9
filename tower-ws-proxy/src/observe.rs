//! A hook that hears of every WebSocket the proxy establishes, for layers above it (the
//! migration layer registers connections through it).

use std::{any::Any, fmt, sync::Arc};

use http::{request, HeaderMap};
use tower_hashring::NodeId;

use crate::RelayHandle;

/// A WebSocket the proxy has just established.
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenedConnection<'a> {
    /// The client's request head (path, query, headers): the key can be taken from it again.
    pub request: &'a request::Parts,
    /// The backend's 101 headers, as the client got them (the negotiated subprotocol and
    /// extensions).
    pub response_headers: &'a HeaderMap,
    /// The backend that accepted it.
    pub backend: &'a NodeId,
    /// The ring position the request routed to.
    pub key_position: u64,
    /// The version of the ring snapshot it was routed with.
    pub ring_version: u64,
    /// Controls its relay.
    pub handle: &'a RelayHandle,
}

/// Told of every WebSocket the proxy establishes. What it returns is kept for as long as the
/// relay runs and dropped when it ends (an unregistering guard, typically).
///
/// Closures `Fn(&OpenedConnection<'_>) -> G` implement it.
///
/// ```
/// use tower_ws_proxy::{ConnectionObserver, ObserveConnections, OpenedConnection};
///
/// let log = ObserveConnections::new(|c: &OpenedConnection<'_>| {
///     println!("websocket to {} at ring v{}", c.backend, c.ring_version);
/// });
/// // Put it in the request's extensions before the proxy:
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(log);
/// ```
pub trait ConnectionObserver: Send + Sync + 'static {
    /// Hears of one new connection; the result lives as long as its relay.
    fn opened(&self, connection: &OpenedConnection<'_>) -> Box<dyn Any + Send>;
}

impl<F, G> ConnectionObserver for F
where
    F: Fn(&OpenedConnection<'_>) -> G + Send + Sync + 'static,
    G: Send + 'static,
{
    fn opened(&self, connection: &OpenedConnection<'_>) -> Box<dyn Any + Send> {
        Box::new(self(connection))
    }
}

/// A request extension carrying a [`ConnectionObserver`] to the proxy; cheap to clone.
#[derive(Clone)]
pub struct ObserveConnections(Arc<dyn ConnectionObserver>);

impl ObserveConnections {
    /// Wraps an observer.
    pub fn new(observer: impl ConnectionObserver) -> Self {
        Self(Arc::new(observer))
    }

    pub(crate) fn opened(&self, connection: &OpenedConnection<'_>) -> Box<dyn Any + Send> {
        self.0.opened(connection)
    }
}

impl fmt::Debug for ObserveConnections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ObserveConnections")
    }
}

//! What [`LiveConnections`](crate::LiveConnections) keeps of each WebSocket to control it, and how a layer above the proxy
//! makes it (a migration layer keeps what a live move needs).

use std::{fmt, sync::Arc};

use http::{request, HeaderMap};
use tower_hashring::{NodeId, RoutingKey};

use crate::RelayHandle;

/// A WebSocket the proxy has just established, as a [`MakeHandle`] sees it.
///
/// ```
/// use tower_ws_proxy::{MakeHandle, OpenedConnection, RelayHandle};
///
/// let make = MakeHandle::new(|opened: &OpenedConnection<'_>| {
///     tracing::debug!(backend = %opened.backend, path = opened.request.uri.path(), "opened");
///     opened.handle.clone()
/// });
/// # let _: MakeHandle<RelayHandle> = make;
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct OpenedConnection<'a> {
    /// The client's request head (path, query, headers), e.g. to dial another backend the
    /// same way.
    pub request: &'a request::Parts,
    /// The backend's 101 headers, as the client got them (the negotiated subprotocol and
    /// extensions).
    pub response_headers: &'a HeaderMap,
    /// The backend that accepted it.
    pub backend: &'a NodeId,
    /// The key it was routed by; `None` for a keyless request.
    pub key: Option<&'a RoutingKey>,
    /// The ring position the request routed to.
    pub key_position: u64,
    /// The version of the ring snapshot it was routed with.
    pub ring_version: u64,
    /// Controls its relay.
    pub handle: &'a RelayHandle,
}

/// What [`LiveConnections`](crate::LiveConnections) keeps to control one connection: at
/// least its relay (to close it on shutdown).
///
/// ```
/// use tower_ws_proxy::{ConnectionHandle, RelayHandle};
///
/// let (relay, _commands) = RelayHandle::new();
/// assert!(!relay.relay().is_finished());
/// ```
pub trait ConnectionHandle: Clone + Send + Sync + 'static {
    /// The connection's relay.
    fn relay(&self) -> &RelayHandle;

    /// The handle of a connection whose request carried no [`MakeHandle`] of this type.
    fn plain(opened: &OpenedConnection<'_>) -> Self;

    /// What this handle was made from, for another process to make the same handle when
    /// the connection is handed over ([`ParkedConnection`](crate::ParkedConnection)): the
    /// request head and the 101's headers it keeps. `None` (the default): the handle keeps
    /// nothing of them.
    fn opened_by(&self) -> Option<(request::Parts, HeaderMap)> {
        None
    }
}

impl ConnectionHandle for RelayHandle {
    fn relay(&self) -> &RelayHandle {
        self
    }

    fn plain(opened: &OpenedConnection<'_>) -> Self {
        opened.handle.clone()
    }
}

/// A request extension through which a layer above the proxy makes the handle kept in the live connections
/// of the WebSocket the request opens (a migration layer puts one in every request); cheap
/// to clone.
///
/// ```
/// use tower_ws_proxy::{MakeHandle, OpenedConnection, RelayHandle};
///
/// let logged = MakeHandle::new(|c: &OpenedConnection<'_>| {
///     println!("websocket to {} at ring v{}", c.backend, c.ring_version);
///     c.handle.clone()
/// });
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(logged);
/// ```
pub struct MakeHandle<H>(Arc<dyn Fn(&OpenedConnection<'_>) -> H + Send + Sync>);

impl<H> MakeHandle<H> {
    /// Makes handles with `make`.
    pub fn new(make: impl Fn(&OpenedConnection<'_>) -> H + Send + Sync + 'static) -> Self {
        Self(Arc::new(make))
    }

    /// The handle of `opened`.
    pub fn make(&self, opened: &OpenedConnection<'_>) -> H {
        (self.0)(opened)
    }
}

impl<H> Clone for MakeHandle<H> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<H> fmt::Debug for MakeHandle<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MakeHandle")
    }
}

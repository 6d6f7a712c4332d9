//! What [`SharedHashRing`](super::SharedHashRing) does around each call: which failed calls
//! go on to the next backend on the ring, and how the chosen backend is told to the request.

use std::fmt;

use crate::{NodeId, RoutingKey};

/// The backend a request was routed to, and where on which ring.
///
/// ```
/// use tower_hashring::{balance::Route, NodeId};
///
/// let route = Route::new(NodeId::from("a"), 7, 3);
/// assert_eq!(route.node.as_str(), "a");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Route {
    /// The backend called.
    pub node: NodeId,
    /// The ring position the request's key hashed to.
    pub key_position: u64,
    /// The version of the ring it was routed on.
    pub ring_version: u64,
    /// The request's key; `None` for a keyless request routed by the fallback policy.
    pub key: Option<RoutingKey>,
}

impl Route {
    /// A route (the balancer makes them; this is for tests and other balancers).
    pub fn new(node: NodeId, key_position: u64, ring_version: u64) -> Self {
        Self {
            node,
            key_position,
            ring_version,
            key: None,
        }
    }

    /// The same route, for the request with `key`.
    pub fn with_key(mut self, key: Option<RoutingKey>) -> Self {
        self.key = key;
        self
    }
}

/// The failover policy of a [`SharedHashRing`](super::SharedHashRing).
///
/// The balancer always moves on to the next backend when one's `poll_ready` fails. A call
/// that fails goes on too only if the policy says both that the error means the request
/// never reached the backend's application ([`fails_over`](Self::fails_over)) and how to
/// send it again ([`replay`](Self::replay), asked before each call: a request with a body
/// that cannot be replayed is never re-sent). [`NoFailover`] does neither.
///
/// ```
/// use tower_hashring::balance::{Failover, Route};
///
/// /// Requests are strings; a "refused" error means nothing was sent.
/// #[derive(Clone)]
/// struct RetryRefused;
///
/// impl Failover<String, &'static str> for RetryRefused {
///     fn replay(&self, request: &String) -> Option<String> {
///         Some(request.clone())
///     }
///     fn fails_over(&self, error: &&'static str) -> bool {
///         *error == "refused"
///     }
/// }
/// assert!(RetryRefused.fails_over(&"refused"));
/// ```
pub trait Failover<Req, E>: Clone {
    /// A copy of `request` for the next backend, should this call fail; `None` never re-sends
    /// it (the default).
    fn replay(&self, request: &Req) -> Option<Req> {
        let _ = request;
        None
    }

    /// Whether `error` lets the request go on to the next backend (default: never).
    fn fails_over(&self, error: &E) -> bool {
        let _ = error;
        false
    }

    /// Called with the backend chosen for `request` just before it is called (default:
    /// nothing), e.g. to record the route in an HTTP request's extensions.
    fn on_route(&self, request: &mut Req, route: &Route) {
        let _ = (request, route);
    }
}

/// Fails over only when a backend's readiness fails; never re-sends a request. The
/// default policy of [`SharedHashRing`](super::SharedHashRing).
///
/// ```
/// use tower_hashring::balance::{Failover, NoFailover};
///
/// assert_eq!(Failover::<String, ()>::replay(&NoFailover, &"hello".to_owned()), None);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct NoFailover;

impl fmt::Debug for NoFailover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoFailover")
    }
}

impl<Req, E> Failover<Req, E> for NoFailover {}

//! The failover policy of the proxy's balancer.

use http::Request;
use hyper::body::Body;
use tower_hashring::balance::{Failover, Route};

use crate::{ProxyBody, UpstreamError};

/// The failover policy of the proxy's balancer: a request goes on to the next backend only
/// when nothing of it reached a backend's application (the connect failed or timed out, the
/// WebSocket handshake timed out or was answered with a 5xx), and only if it can be sent
/// again: a WebSocket upgrade, or a request whose body is known to be empty. The chosen
/// backend is recorded in the request's extensions ([`Route`]), for the relay's bookkeeping.
///
/// ```
/// use tower_hashring::balance::Failover;
/// use tower_ws_proxy::{ProxyBody, ProxyFailover, UpstreamError};
///
/// let request = http::Request::get("/count?userId=1").body(ProxyBody::default()).unwrap();
/// assert!(ProxyFailover.replay(&request).is_some(), "no body: it can be sent again");
/// assert!(ProxyFailover.fails_over(&UpstreamError::HandshakeTimeout));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct ProxyFailover;

impl Failover<Request<ProxyBody>, UpstreamError> for ProxyFailover {
    /// The method, URI, version and headers of a request without a body. Not its
    /// extensions: an [`Upstream`](crate::Upstream) reads none but the [`Route`], which
    /// [`on_route`](Failover::on_route) sets on the copy again (and copying them is most of
    /// the cost of a copy made for every handshake).
    fn replay(&self, request: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
        if request.body().size_hint().exact() != Some(0) {
            return None;
        }
        let mut copy = Request::new(ProxyBody::default());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        Some(copy)
    }

    fn fails_over(&self, error: &UpstreamError) -> bool {
        matches!(
            error,
            UpstreamError::Connect(_)
                | UpstreamError::HandshakeTimeout
                | UpstreamError::Unavailable(_)
        )
    }

    fn on_route(&self, request: &mut Request<ProxyBody>, route: &Route) {
        request.extensions_mut().insert(route.clone());
    }
}

use http::{request, Response, StatusCode};
use tokio::time::Instant;
use tower_hashring::{balance::Route, NodeId};

use super::{
    error::error_response,
    relay_task::{RelayTask, SharedConfig, Stage},
};
use crate::{
    client_limit::KeepWhileOpen,
    client_upgrade::ClientUpgrade,
    extended_connect,
    record::{HandshakeResult, OpenedVia, Recorder},
    relay::relay_sharing_config,
    Admission, BoxError, ConnectionHandle, LiveConnections, MakeHandle, OpenedConnection, Peer,
    ProxyBody, Registered, RelayHandle, UpstreamSocket,
};

/// An admitted WebSocket upgrade whose handshake is on its way to a backend: what answering
/// the client and relaying its connection take once the backend answered.
pub(super) struct PendingUpgrade<H> {
    /// How the client asked: an HTTP/2 stream's answer is a `200`, not the backend's `101`.
    pub(super) via: OpenedVia,
    /// Its place under the connection cap, held until the relay ends.
    pub(super) admission: Admission,
    /// What the layers above keep for as long as the WebSocket is open.
    pub(super) kept: Option<KeepWhileOpen>,
    /// The head as the client sent it.
    pub(super) head: request::Parts,
    pub(super) client_upgrade: ClientUpgrade,
    pub(super) connections: LiveConnections<H>,
    pub(super) relay: SharedConfig,
    pub(super) metrics: Recorder,
    pub(super) started: Instant,
}

impl<H: ConnectionHandle> PendingUpgrade<H> {
    /// The response the client gets for the backend's `answer`; a `101` with the backend's
    /// socket starts the relay.
    pub(super) fn answer_client(
        self,
        answer: Result<Response<ProxyBody>, BoxError>,
    ) -> Response<ProxyBody> {
        let mut response = match answer {
            Ok(response) => response,
            Err(error) => return self.no_backend_accepted(&*error),
        };
        let Some(upstream) = response
            .extensions_mut()
            .remove::<UpstreamSocket>()
            .and_then(|socket| socket.take())
        else {
            // The backend's own answer (a 4xx is its verdict on this request).
            self.count(HandshakeResult::backend_answered);
            return response;
        };
        self.count(HandshakeResult::upgraded);
        if self.via == OpenedVia::h2_extended_connect {
            let (mut head, body) = response.into_parts();
            extended_connect::into_stream_answer(&mut head.status, &mut head.headers);
            response = Response::from_parts(head, body);
        }
        let route = response
            .extensions_mut()
            .remove::<Route>()
            .unwrap_or_else(|| Route::new(NodeId::from("-"), 0, 0));
        self.spawn_relay(&response, route, upstream);
        response
    }

    /// No backend took the handshake: a balancer's own error, or a 502.
    fn no_backend_accepted(self, error: &(dyn std::error::Error + 'static)) -> Response<ProxyBody> {
        let response = error_response(error, "no backend accepted the websocket");
        self.count(match response.status() {
            StatusCode::BAD_GATEWAY => HandshakeResult::failed,
            _ => HandshakeResult::no_backend,
        });
        response
    }

    /// Registers the connection, then relays it on a task of its own once the client's
    /// side is upgraded too.
    fn spawn_relay(self, response: &Response<ProxyBody>, route: Route, upstream: Peer) {
        let (relay_handle, commands) = RelayHandle::new();
        let registration = self
            .register(response, &route, &relay_handle)
            .holding(self.admission)
            .keeping(self.kept);
        let commands = commands.counting(registration.traffic());
        let span = relay_span(&route, &self.head);
        drop(self.head);
        self.metrics.opened(&route.node, self.via);
        let task = RelayTask {
            stage: Stage::Upgrading {
                upgrade: self.client_upgrade,
                relay: Some((upstream, self.relay, commands)),
                start: relay_sharing_config::<tokio::net::TcpStream, SharedConfig>,
            },
            registration: Some(registration),
            metrics: self.metrics,
            started: self.started,
        };
        task.spawn(span);
    }

    /// Records the connection among the live connections, with the handle the request's
    /// [`MakeHandle`] makes (or the plain one).
    fn register(
        &self,
        response: &Response<ProxyBody>,
        route: &Route,
        relay_handle: &RelayHandle,
    ) -> Registered<H> {
        let opened = OpenedConnection {
            request: &self.head,
            response_headers: response.headers(),
            backend: &route.node,
            key: route.key.as_ref(),
            key_position: route.key_position,
            ring_version: route.ring_version,
            handle: relay_handle,
        };
        let handle = match self.head.extensions.get::<MakeHandle<H>>() {
            Some(make) => make.make(&opened),
            None => H::plain(&opened),
        };
        let key = route.key.as_ref().map_or(&b""[..], |k| k.as_bytes());
        self.connections.register(
            key,
            route.key_position,
            route.node.clone(),
            route.ring_version,
            handle,
        )
    }

    fn count(&self, result: HandshakeResult) {
        self.metrics.handshake(result, self.started);
    }
}

/// Everything the relay logs carries the connection's key, backend and request id.
fn relay_span(route: &Route, head: &request::Parts) -> tracing::Span {
    tracing::info_span!(
        "websocket",
        key = route.key.as_ref().map(|k| k.as_str()),
        backend = %route.node,
        request_id = head
            .headers
            .get("x-request-id")
            .and_then(|id| id.to_str().ok()),
    )
}

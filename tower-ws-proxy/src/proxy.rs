//! The keyed reverse proxy: routes each request and WebSocket to its key's owner on the ring.

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tower_hashring::{balance::RouteCandidates, error::http_status, KeyExtractor, SharedHashRing};
use tower_service::Service;

use crate::{
    check_upgrade, is_websocket_upgrade, relay, strip_internal_headers,
    upstream::{tcp_peer, BoxError},
    LiveConnections, ObserveConnections, OpenedConnection, Peer, ProxyBody, RelayConfig,
    RelayHandle, Upstream, UpstreamError, WebSocketAnswer,
};

/// Routes every request to the owner of its key: ordinary HTTP is forwarded, WebSocket
/// upgrades are handshaken with the backend and then relayed frame-aware.
///
/// Errors become responses, so it drops into hyper or `axum::Router` as is:
/// 400 (no key, a malformed WebSocket handshake or one with a body), 426 (a WebSocket
/// version other than 13), 503 (no backend, connection limit, shutting down), 502 (every
/// candidate backend refused or failed; requests with a body are only sent once). Error
/// bodies name no backend; the details are logged. Client headers in the gateway's own
/// `x-wscluster-*` namespace are dropped. A WebSocket whose
/// owner refuses the connection or fails the handshake goes to the next successor.
#[derive(Clone)]
pub struct HashRingProxy<E> {
    ring: SharedHashRing<Upstream, E>,
    connections: LiveConnections,
    relay: RelayConfig,
}

impl<E> HashRingProxy<E> {
    /// A proxy over the backends of `ring`, tracking WebSockets in `connections`.
    pub fn new(
        ring: SharedHashRing<Upstream, E>,
        connections: LiveConnections,
        relay: RelayConfig,
    ) -> Self {
        Self {
            ring,
            connections,
            relay,
        }
    }

    /// The live WebSocket connections.
    pub fn connections(&self) -> &LiveConnections {
        &self.connections
    }

    /// The ring service routed through.
    pub fn ring(&self) -> &SharedHashRing<Upstream, E> {
        &self.ring
    }
}

impl<E> fmt::Debug for HashRingProxy<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HashRingProxy")
            .field("ring", &self.ring)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// A plain-text response with a reason.
pub fn text_response(status: StatusCode, reason: impl Into<String>) -> Response<ProxyBody> {
    let mut body = reason.into();
    body.push('\n');
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        )
        .unwrap_or_else(|_| Response::new(ProxyBody::default()))
}

fn boxed(response: Response<Incoming>) -> Response<ProxyBody> {
    response.map(|body| body.map_err(Into::into).boxed_unsync())
}

impl<E, B> Service<Request<B>> for HashRingProxy<E>
where
    E: KeyExtractor<Request<B>> + Send + Sync + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        strip_internal_headers(request.headers_mut());
        let websocket = is_websocket_upgrade(&request);
        if websocket {
            if let Err(refusal) = check_upgrade(&request) {
                return Box::pin(std::future::ready(Ok(refusal.into_response())));
            }
        }
        let candidates = self.ring.candidates(&request);
        let this = self.clone_without_extractor_bound();
        Box::pin(async move {
            let candidates = match candidates {
                Ok(candidates) => candidates,
                Err(error) => return Ok(text_response(http_status(&*error), error.to_string())),
            };
            Ok(if websocket {
                this.websocket(request, candidates).await
            } else {
                http(request, candidates).await
            })
        })
    }
}

/// What a request future needs of the proxy (not the extractor: the key is already taken).
struct WebSocketRoute {
    connections: LiveConnections,
    relay: RelayConfig,
}

impl<E> HashRingProxy<E> {
    fn clone_without_extractor_bound(&self) -> WebSocketRoute {
        WebSocketRoute {
            connections: self.connections.clone(),
            relay: self.relay,
        }
    }
}

impl WebSocketRoute {
    async fn websocket<B>(
        self,
        mut request: Request<B>,
        candidates: RouteCandidates<Upstream>,
    ) -> Response<ProxyBody> {
        let admission = match self.connections.admit() {
            Ok(admission) => admission,
            Err(refusal) => {
                return text_response(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string())
            }
        };
        let client_upgrade = hyper::upgrade::on(&mut request);
        let (parts, _) = request.into_parts();
        let observer = parts.extensions.get::<ObserveConnections>().cloned();
        let (key_position, ring_version) = (candidates.key_position(), candidates.ring_version());
        let mut failures = Vec::new();
        for (backend, upstream) in candidates {
            let error = match upstream.open_websocket(&parts).await {
                Ok(WebSocketAnswer {
                    response,
                    upgraded: Some(upstream_io),
                }) => {
                    let (handle, commands) = RelayHandle::new();
                    let observed = observer.map(|observer| {
                        observer.opened(&OpenedConnection {
                            request: &parts,
                            response_headers: response.headers(),
                            backend: &backend,
                            key_position,
                            ring_version,
                            handle: &handle,
                        })
                    });
                    let registration =
                        self.connections
                            .register(admission, backend.clone(), handle);
                    let config = self.relay;
                    tokio::spawn(async move {
                        let outcome = match client_upgrade.await.map(tcp_peer) {
                            // The fast path: the raw socket, halves without a lock.
                            Ok(Ok(client)) => relay(client, upstream_io, config, commands).await,
                            // A server that wraps the socket (axum::serve, hyper-util's auto
                            // builder): the generic path over the upgraded connection.
                            Ok(Err(upgraded)) => {
                                let client = Peer::new(TokioIo::new(upgraded));
                                relay(client, upstream_io, config, commands).await
                            }
                            Err(error) => {
                                tracing::debug!(%error, "client upgrade failed");
                                drop((registration, observed));
                                return;
                            }
                        };
                        tracing::debug!(%backend, ?outcome, "websocket closed");
                        drop((registration, observed));
                    });
                    return response;
                }
                // The backend answered but refused: a 4xx is its verdict on this request.
                Ok(answer) if !answer.response.status().is_server_error() => {
                    return answer.response
                }
                Ok(answer) => format!("answered {}", answer.response.status()),
                Err(error) => error.to_string(),
            };
            tracing::warn!(%backend, %error, "websocket handshake failed; trying the next backend");
            failures.push(format!("{backend}: {error}"));
        }
        // Which backends, where and why goes to the log only: clients learn nothing of them.
        tracing::warn!(failures = %failures.join("; "), "no backend accepted the websocket");
        text_response(StatusCode::BAD_GATEWAY, "no backend accepted the websocket")
    }
}

/// Forwards to the first candidate; on to the next only when nothing was sent and the body
/// is known to be empty (so it can be sent again).
async fn http<B>(request: Request<B>, candidates: RouteCandidates<Upstream>) -> Response<ProxyBody>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let replayable = body.size_hint().exact() == Some(0);
    let mut body = Some(body.map_err(Into::into).boxed_unsync());
    let mut failures = Vec::new();
    for (backend, upstream) in candidates {
        let body = match body.take() {
            Some(body) => body,
            None if replayable => ProxyBody::default(),
            None => break,
        };
        match upstream
            .forward(Request::from_parts(parts.clone(), body))
            .await
        {
            Ok(response) => return boxed(response),
            Err(error @ (UpstreamError::Connect(_) | UpstreamError::HandshakeTimeout)) => {
                tracing::warn!(%backend, %error, "backend unreachable; trying the next backend");
                failures.push(format!("{backend}: {error}"));
            }
            Err(error) => {
                failures.push(format!("{backend}: {error}"));
                break;
            }
        }
    }
    tracing::warn!(failures = %failures.join("; "), "no backend answered");
    text_response(StatusCode::BAD_GATEWAY, "no backend answered")
}

//! What every public request goes through before the proxy.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::ConnectInfo,
    http::{HeaderName, HeaderValue, Request, StatusCode},
    Router,
};
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id kept from a client; a longer or odd one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The public layers: the client's address forwarded (`X-Forwarded-For`, `Forwarded`,
/// `X-Forwarded-Proto`); a request id kept if the client sent a valid one, generated
/// otherwise, forwarded to the backend and returned in the response; a tracing span; and a
/// timeout (408) on the response head. A WebSocket's head is its 101, so relays are not cut
/// by it.
pub(crate) fn with_public_layers(app: Router, timeout: Duration) -> Router {
    app.layer(
        ServiceBuilder::new()
            .map_request(|mut request: Request<axum::body::Body>| {
                let headers = request.headers_mut();
                if headers.get(X_REQUEST_ID).is_some_and(|id| !is_valid_id(id)) {
                    headers.remove(X_REQUEST_ID);
                }
                if let Some(ConnectInfo(client)) =
                    request.extensions().get::<ConnectInfo<SocketAddr>>().copied()
                {
                    tower_ws_proxy::set_forwarded_headers(request.headers_mut(), client, "http");
                }
                request
            })
            .layer(SetRequestIdLayer::new(X_REQUEST_ID, GatewayRequestIds::default()))
            .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
            .layer(TraceLayer::new_for_http().make_span_with(|request: &Request<axum::body::Body>| {
                let id = request.headers().get(X_REQUEST_ID).and_then(|v| v.to_str().ok());
                tracing::info_span!("request", method = %request.method(), uri = %request.uri(), id)
            }))
            .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, timeout)),
    )
}

/// Letters, digits, `-`, `_`, `.` and `:`, at most [`MAX_REQUEST_ID`] of them: what log
/// pipelines and other proxies' ids (UUIDs, hex, `host:counter`) are made of.
fn is_valid_id(id: &HeaderValue) -> bool {
    let id = id.as_bytes();
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// `<pid in hex>-<counter>`: unique per gateway process without a random source.
#[derive(Clone, Default)]
struct GatewayRequestIds(Arc<AtomicU64>);

impl MakeRequestId for GatewayRequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:x}-{n}", std::process::id());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_clients_are_kept_only_when_plain() {
        for (id, valid) in [
            ("3f2a-17", true),
            ("550e8400-e29b-41d4-a716-446655440000", true),
            ("", false),
            ("a b", false),
            ("<script>", false),
        ] {
            let value = HeaderValue::from_str(id).unwrap();
            assert_eq!(is_valid_id(&value), valid, "{id:?}");
        }
        let long = HeaderValue::from_str(&"a".repeat(MAX_REQUEST_ID + 1)).unwrap();
        assert!(!is_valid_id(&long));
    }
}

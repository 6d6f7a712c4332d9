//! What every public request goes through before the proxy.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    http::{HeaderName, HeaderValue, Request, StatusCode},
    Router,
};
use tower::ServiceBuilder;
use tower_hashring::{HttpKey, SharedHashRing};
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};
use tower_ws_migrate::MigrateLayer;
use tower_ws_migrate::ProxiedConnection;
use tower_ws_proxy::{
    client_limit::ClientLimitLayer,
    server::{ClientAddr, ClientTls},
    ProxyFailover, Upstream, WebSocketLayer,
};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id kept from a client; a longer or odd one is replaced.
const MAX_REQUEST_ID: usize = 128;

/// The public stack, one layer per concern, top to bottom: the client's address forwarded
/// (`X-Forwarded-For`, `Forwarded`, `X-Forwarded-Proto`) and an invalid request id dropped;
/// a request id (the client's valid one, or a new one) set, forwarded to the backend and
/// returned; a tracing span; a timeout (408) on the response head (a WebSocket's head is its
/// 101, so relays are not cut by it); live migration; the per-client limits (429); the
/// WebSocket proxy; and the
/// consistent-hash balancer over the backends, which fails over by [`ProxyFailover`].
pub(crate) fn public_stack(
    timeout: Duration,
    migrate: MigrateLayer,
    client_limits: ClientLimitLayer,
    websockets: WebSocketLayer<ProxiedConnection>,
    balancer: SharedHashRing<Upstream, HttpKey, ProxyFailover>,
) -> Router {
    let stack = ServiceBuilder::new()
        .map_request(forwarded)
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID,
            GatewayRequestIds::default(),
        ))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<axum::body::Body>| {
                let id = request
                    .headers()
                    .get(X_REQUEST_ID)
                    .and_then(|v| v.to_str().ok());
                tracing::info_span!("request", method = %request.method(), uri = %request.uri(), id)
            }),
        )
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(migrate)
        .layer(client_limits)
        .layer(websockets)
        .service(balancer);
    Router::new().fallback_service(stack)
}

/// Who the client is, for the backend; and no request id that no log should carry.
fn forwarded(mut request: Request<axum::body::Body>) -> Request<axum::body::Body> {
    let headers = request.headers_mut();
    if headers.get(X_REQUEST_ID).is_some_and(|id| !is_valid_id(id)) {
        headers.remove(X_REQUEST_ID);
    }
    if let Some(ClientAddr(client)) = request.extensions().get::<ClientAddr>().copied() {
        let proto = ClientTls::forwarded_proto(request.extensions());
        tower_ws_proxy::set_forwarded_headers(request.headers_mut(), client, proto);
    }
    request
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
#[derive(Clone)]
struct GatewayRequestIds {
    next: Arc<AtomicU64>,
    // Read once: `std::process::id()` is a system call, and every request asks.
    pid: u32,
}

impl Default for GatewayRequestIds {
    fn default() -> Self {
        Self {
            next: Arc::default(),
            pid: std::process::id(),
        }
    }
}

impl MakeRequestId for GatewayRequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // On the stack (8 hex digits, `-`, 20 digits at most), copied once into the value.
        let mut id = [0u8; 32];
        let len = {
            let mut out = &mut id[..];
            write!(out, "{:x}-{n}", self.pid).ok()?;
            32 - out.len()
        };
        HeaderValue::from_bytes(&id[..len]).ok().map(RequestId::new)
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

    #[test]
    fn new_request_ids_are_the_pid_in_hex_and_a_counter() {
        let mut ids = GatewayRequestIds::default();
        let request = Request::new(());
        let next = |ids: &mut GatewayRequestIds| {
            let id = ids.make_request_id(&request).expect("an id");
            id.header_value().to_str().unwrap().to_owned()
        };
        let pid = format!("{:x}", std::process::id());
        assert_eq!(next(&mut ids), format!("{pid}-0"));
        assert_eq!(next(&mut ids), format!("{pid}-1"));
        // The largest counter still fits the stack buffer.
        ids.next.store(u64::MAX, Ordering::Relaxed);
        let last = next(&mut ids);
        assert_eq!(last, format!("{pid}-{}", u64::MAX));
        assert!(is_valid_id(&HeaderValue::from_str(&last).unwrap()));
    }
}

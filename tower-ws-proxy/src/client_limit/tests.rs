use std::{
    convert::Infallible,
    net::SocketAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::{table::ClientTable, ClientLimitLayer, ClientLimits, KeepWhileOpen};
use crate::{server::ClientAddr, ProxyBody};

/// A proxy stand-in that holds each WebSocket's kept values, as a relay does, until the test
/// ends the connection.
#[derive(Clone, Default)]
struct HoldingProxy {
    open: Arc<Mutex<Vec<KeepWhileOpen>>>,
}

impl Service<Request<()>> for HoldingProxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<()>) -> Self::Future {
        if let Some(kept) = request.extensions_mut().remove::<KeepWhileOpen>() {
            self.open.lock().unwrap().push(kept);
        }
        let mut response = Response::new(ProxyBody::default());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        std::future::ready(Ok(response))
    }
}

fn upgrade(from: &str) -> Request<()> {
    let mut request = Request::get("/connect/42")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(())
        .unwrap();
    let peer: SocketAddr = format!("{from}:5000").parse().unwrap();
    request.extensions_mut().insert(ClientAddr(peer));
    request
}

async fn status(
    service: &mut impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = Infallible,
        Future = impl std::future::Future<Output = Result<Response<ProxyBody>, Infallible>>,
    >,
    request: Request<()>,
) -> (StatusCode, Option<String>) {
    let response = service.call(request).await.unwrap();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (response.status(), retry)
}

#[tokio::test(start_paused = true)]
async fn a_client_past_its_websockets_gets_429_until_one_closes() {
    let limits = ClientLimits {
        websockets: Some(2),
        ..ClientLimits::default()
    };
    let proxy = HoldingProxy::default();
    let mut service = ClientLimitLayer::new(limits).layer(proxy.clone());
    for _ in 0..2 {
        assert_eq!(
            status(&mut service, upgrade("198.51.100.1")).await.0,
            StatusCode::SWITCHING_PROTOCOLS
        );
    }
    let refused = status(&mut service, upgrade("198.51.100.1")).await;
    assert_eq!(refused, (StatusCode::TOO_MANY_REQUESTS, Some("1".into())));
    // Another client is not affected.
    assert_eq!(
        status(&mut service, upgrade("198.51.100.2")).await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
    // A WebSocket of the first ends: its place is free again.
    proxy.open.lock().unwrap().remove(0);
    assert_eq!(
        status(&mut service, upgrade("198.51.100.1")).await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
}

#[tokio::test(start_paused = true)]
async fn handshakes_past_the_rate_get_429_with_the_seconds_to_wait() {
    let limits = ClientLimits {
        handshakes_per_second: NonZeroU32::new(1),
        burst: NonZeroU32::new(3),
        ..ClientLimits::default()
    };
    let layer = ClientLimitLayer::new(limits);
    let refusals = layer.refusals();
    let mut service = layer.layer(HoldingProxy::default());
    for _ in 0..3 {
        assert_eq!(
            status(&mut service, upgrade("203.0.113.5")).await.0,
            StatusCode::SWITCHING_PROTOCOLS
        );
    }
    let refused = status(&mut service, upgrade("203.0.113.5")).await;
    assert_eq!(refused, (StatusCode::TOO_MANY_REQUESTS, Some("1".into())));
    assert_eq!((refusals.rate(), refusals.websockets()), (1, 0));
    tokio::time::advance(Duration::from_millis(1000)).await;
    assert_eq!(
        status(&mut service, upgrade("203.0.113.5")).await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
    assert_eq!(
        status(&mut service, upgrade("203.0.113.5")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn exempt_clients_and_plain_requests_are_not_limited() {
    let limits = ClientLimits {
        websockets: Some(1),
        exempt: vec!["10.0.0.0/8".parse().unwrap()],
        ..ClientLimits::default()
    };
    let mut service = ClientLimitLayer::new(limits).layer(HoldingProxy::default());
    for _ in 0..3 {
        assert_eq!(
            status(&mut service, upgrade("10.1.2.3")).await.0,
            StatusCode::SWITCHING_PROTOCOLS
        );
    }
    let plain = |from: &str| {
        let mut request = Request::post("/send?userId=42").body(()).unwrap();
        request
            .extensions_mut()
            .insert(ClientAddr(format!("{from}:1").parse().unwrap()));
        request
    };
    assert_eq!(
        status(&mut service, upgrade("192.0.2.1")).await.0,
        StatusCode::SWITCHING_PROTOCOLS
    );
    for _ in 0..3 {
        assert_ne!(
            status(&mut service, plain("192.0.2.1")).await.0,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
}

#[tokio::test(start_paused = true)]
async fn clients_that_went_away_leave_no_state() {
    let limits = ClientLimits {
        handshakes_per_second: NonZeroU32::new(10),
        ..ClientLimits::default()
    };
    let table = ClientTable::default();
    let mut slots = Vec::new();
    for n in 0..5000u32 {
        let ip = std::net::Ipv4Addr::from(0x0a00_0000 + n).into();
        slots.push(table.admit(ip, &limits).unwrap());
    }
    // Their handshakes ended at once (as failed or short WebSockets do).
    drop(slots);
    assert_eq!(
        table.len(),
        5000,
        "inside their rate window, they are remembered"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let newcomer = std::net::Ipv4Addr::new(192, 0, 2, 1).into();
    let _open = table.admit(newcomer, &limits).unwrap();
    assert_eq!(table.len(), 1, "the next handshake swept the departed");
}

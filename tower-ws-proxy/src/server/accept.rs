//! Accepting connections and serving each: a plaintext connection's first request on the
//! direct path when it is a WebSocket handshake (`direct`), otherwise hyper's HTTP/1.1
//! connection (upgrades on), or its HTTP/2 connection (extended CONNECT on) when a TLS
//! client picked `h2`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use http::Request;
use hyper::{
    body::Incoming,
    server::conn::{http1, http2},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use socket2::SockRef;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch, Notify, OwnedSemaphorePermit},
    task::JoinSet,
};
use tower_service::Service;

use super::{
    direct::{self, HeadLimits, Served},
    handshake::{Handshake, Plaintext},
    proxy_protocol::read_proxy_header,
    ClientAddr, ClientTls, HttpLimits, HttpService, RequestBody, Stopped,
};
use crate::client_limit::is_in;

/// Serves `service` on `listener` from a task on the current runtime until `stop` turns
/// true; the returned future resolves once in-flight requests finished (or the limits'
/// stop grace dropped them). Every request carries its [`ClientAddr`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use tokio::{net::TcpListener, sync::watch};
/// use tower_ws_proxy::server::{serve, HttpLimits};
///
/// let app = tower::service_fn(|_: http::Request<tower_ws_proxy::server::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
/// });
/// let (stop, stopped) = watch::channel(false);
/// let serving = serve(TcpListener::bind("127.0.0.1:0").await?, app, HttpLimits::default(), stopped);
/// stop.send_replace(true);
/// serving.await;
/// # Ok(()) }
/// ```
pub fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
) -> Stopped
where
    S: HttpService,
{
    spawn_accept_loop(listener, service, limits, Plaintext, stop)
}

/// [`serve`] over TLS: each connection's handshake runs on its own task and must end
/// within the limits' `head_timeout`; every request also carries [`ClientTls`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::{net::TcpListener, sync::watch};
/// use tower_ws_proxy::server::{serve_tls, tls::{TlsAcceptor, TlsSettings}, HttpLimits};
///
/// let app = tower::service_fn(|_: http::Request<tower_ws_proxy::server::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
/// });
/// let tls = TlsAcceptor::new(&TlsSettings::new("cert.pem", "key.pem"))?;
/// let (stop, stopped) = watch::channel(false);
/// let serving = serve_tls(TcpListener::bind("127.0.0.1:0").await?, app, HttpLimits::default(), tls, stopped);
/// stop.send_replace(true);
/// serving.await;
/// # Ok(()) }
/// ```
#[cfg(feature = "tls")]
pub fn serve_tls<S>(
    listener: TcpListener,
    service: S,
    limits: HttpLimits,
    tls: super::tls::TlsAcceptor,
    stop: watch::Receiver<bool>,
) -> Stopped
where
    S: HttpService,
{
    spawn_accept_loop(listener, service, limits, tls, stop)
}

fn spawn_accept_loop<S, H>(
    listener: TcpListener,
    service: S,
    limits: HttpLimits,
    handshake: H,
    stop: watch::Receiver<bool>,
) -> Stopped
where
    S: HttpService,
    H: Handshake,
{
    let (done, stopped) = oneshot::channel();
    tokio::spawn(async move {
        accept_loop(listener, service, limits, handshake, stop).await;
        let _ = done.send(());
    });
    Stopped::new(stopped)
}

/// Accepts until `stop` turns true, then gives in-flight requests the stop grace. Upgraded
/// WebSockets are detached from hyper: their `LiveConnections` close them.
pub(super) async fn accept_loop<S, H>(
    listener: TcpListener,
    service: S,
    limits: HttpLimits,
    handshake: H,
    mut stop: watch::Receiver<bool>,
) where
    S: HttpService,
    H: Handshake,
{
    // Set once on the listener rather than five system calls per connection.
    let inherited = match limits.relay.tune_listener(SockRef::from(&listener)) {
        Ok(inherited) => inherited,
        Err(error) => {
            tracing::warn!(%error, "cannot set socket options on the listener");
            false
        }
    };
    let mut connections = JoinSet::new();
    // Shared: a connection's task keeps a pointer, not its own copy of both builders.
    let http = Arc::new(Protocols::new(&limits));
    let mut shed = Shed::default();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, typically: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Ok(permit) = shed.admit(&limits) else {
            continue;
        };
        if !inherited {
            let _ = limits.relay.tune_socket(SockRef::from(&tcp));
        }
        let service = WithClientAddr {
            inner: service.clone(),
            client: ClientAddr(peer),
            tls: None,
            first_request: Arc::default(),
        };
        // A balancer's connection starts with the client's address, read on the connection's
        // own task, within the head deadline.
        let proxied = is_in(peer.ip(), &limits.proxy_protocol_from);
        connections.spawn(serve_connection(
            http.clone(),
            tcp,
            (handshake.clone(), limits.head_timeout),
            service,
            proxied,
            permit,
            stop.clone(),
        ));
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    finish(connections, limits.stop_grace).await;
}

/// hyper's two servers, configured once per listener.
struct Protocols {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// A plaintext connection's first head, read without hyper.
    direct: HeadLimits,
}

impl Protocols {
    fn new(limits: &HttpLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.head_timeout)
            .max_buf_size(limits.max_head_bytes.max(8192))
            .max_headers(limits.max_headers)
            // A client may half-close once its request is out, and still gets its answer.
            // It also spares each upgrade a read while the backend answers, which finds
            // nothing and costs a second 8 KiB read buffer (the head's header values still
            // share the first); a client that leaves is seen when its answer is written.
            .half_close(true);
        Self {
            http1,
            http2: limits.http2.builder(limits.max_head_bytes),
            direct: HeadLimits::new(limits),
        }
    }
}

/// The connection cap is reached.
struct AtCap;

/// Connections closed at once at the cap, logged at powers of two.
#[derive(Default)]
struct Shed(u64);

impl Shed {
    /// A place under the cap (`None` with no cap); `Err`: close this connection.
    fn admit(&mut self, limits: &HttpLimits) -> Result<Option<OwnedSemaphorePermit>, AtCap> {
        let Some(open) = &limits.open_connections else {
            return Ok(None);
        };
        match open.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                // Closing at once costs less than anything else we could answer.
                self.0 += 1;
                if self.0.is_power_of_two() {
                    tracing::warn!(
                        shed = self.0,
                        "at the connection cap: closing new connections"
                    );
                }
                Err(AtCap)
            }
        }
    }
}

/// One connection: its handshake, then served until it ends, or, once `stop` turns true,
/// until the request in flight is answered.
async fn serve_connection<S, H>(
    http: Arc<Protocols>,
    mut tcp: TcpStream,
    (handshake, head_timeout): (H, Duration),
    mut service: WithClientAddr<S>,
    proxied: bool,
    permit: Option<OwnedSemaphorePermit>,
    mut stop: watch::Receiver<bool>,
) where
    S: HttpService,
    H: Handshake,
{
    let _permit = permit;
    let accepted = tokio::time::Instant::now();
    if proxied {
        // Boxed: only connections from a balancer read it.
        let header = Box::pin(tokio::time::timeout(
            head_timeout,
            read_proxy_header(&mut tcp),
        ));
        let header = tokio::select! {
            header = header => header,
            () = stopped(&mut stop) => return,
        };
        match header {
            Ok(Ok(Some(client))) => service.client = ClientAddr(client),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => {
                tracing::debug!(peer = %service.client.0, %error, "closing a connection");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %service.client.0, "no PROXY header within the head timeout");
                return;
            }
        }
    }
    // The PROXY header and the TLS handshake share one head deadline.
    let within = head_timeout.saturating_sub(accepted.elapsed());
    let Some((io, tls)) = handshake.handshake(tcp, within, &mut stop).await else {
        return;
    };
    let http2 = tls.as_ref().is_some_and(|tls| tls.http2);
    service.tls = tls;
    if http2 {
        // Its WebSockets are streams of this connection, which serves them until they end
        // (their relays close them on a shutdown); GOAWAY tells the client to open no more.
        let (io, service) = (TokioIo::new(io), TowerToHyperService::new(service));
        let mut connection = Box::pin(http.http2.serve_connection(io, service));
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = stopped(&mut stop) => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        return log_end(result);
    }
    match H::into_tcp(io) {
        Ok(tcp) => {
            let first = direct::serve_first_request(
                tcp,
                &mut service,
                http.direct,
                (accepted + head_timeout, FIRST_REQUEST_GRACE),
                &mut stop,
            );
            match first.await {
                Served::ToHyper(io) => serve_http1(&http, io, service, &mut stop).await,
                Served::Answered | Served::Gone => {}
            }
        }
        Err(io) => serve_http1(&http, io, service, &mut stop).await,
    }
    // (hyper's connections are boxed: a connection that becomes a WebSocket on the direct
    // path never needs their room, and its task is allocated and moved with the largest
    // state of this future.)
}

/// hyper's HTTP/1.1 connection, upgrades on, until it ends; once `stop` turns true, after
/// the request in flight is answered.
async fn serve_http1<S, I>(
    http: &Protocols,
    io: I,
    service: WithClientAddr<S>,
    stop: &mut watch::Receiver<bool>,
) where
    S: HttpService,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let first_request = service.first_request.clone();
    let (io, service) = (TokioIo::new(io), TowerToHyperService::new(service));
    let mut connection = Box::pin(http.http1.serve_connection(io, service).with_upgrades());
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(stop) => {
            // Accepted just before the stop, its request on the way: let it arrive, or
            // the graceful shutdown would close an idle connection under it (a client
            // connecting while an upgrade hands the listeners over).
            let arrived = tokio::time::timeout(FIRST_REQUEST_GRACE, first_request.arrived());
            tokio::select! {
                result = connection.as_mut() => return log_end(result),
                _ = arrived => {}
            }
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    log_end(result);
}

fn log_end<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(error) = result {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// How long a connection that has not sent its first request yet gets after a stop.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Whether a connection's first request has arrived, and a wake-up when it does.
#[derive(Debug, Default)]
struct FirstRequest {
    arrived: AtomicBool,
    notify: Notify,
}

impl FirstRequest {
    fn mark(&self) {
        if !self.arrived.swap(true, Ordering::AcqRel) {
            self.notify.notify_waiters();
        }
    }

    /// Resolves once the first request has arrived (at once if it has).
    async fn arrived(&self) {
        let notified = self.notify.notified();
        if !self.arrived.load(Ordering::Acquire) {
            notified.await;
        }
    }
}

/// Waits up to `grace` for the connections still serving, then drops them.
async fn finish(mut connections: JoinSet<()>, grace: Duration) {
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            left = connections.len(),
            "dropping connections still open after the stop grace"
        );
        connections.shutdown().await;
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// `inner`, with the client's address (and TLS details) in every request's extensions.
#[derive(Clone)]
struct WithClientAddr<S> {
    inner: S,
    client: ClientAddr,
    tls: Option<ClientTls>,
    first_request: Arc<FirstRequest>,
}

impl<S> WithClientAddr<S> {
    fn tag<B>(&self, request: &mut Request<B>) {
        self.first_request.mark();
        request.extensions_mut().insert(self.client);
        if let Some(tls) = &self.tls {
            request.extensions_mut().insert(tls.clone());
        }
    }
}

/// A request hyper read.
impl<S: Service<Request<RequestBody>>> Service<Request<Incoming>> for WithClientAddr<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Incoming>) -> S::Future {
        self.tag(&mut request);
        self.inner.call(request.map(RequestBody::from))
    }
}

/// A WebSocket handshake read without hyper.
impl<S: Service<Request<RequestBody>>> Service<Request<RequestBody>> for WithClientAddr<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> S::Future {
        self.tag(&mut request);
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every accepted connection's task is allocated (and moved) whole: hyper's connections
    /// are boxed, so one that becomes a WebSocket on the direct path does not carry their
    /// room (4,336 bytes before they were).
    #[tokio::test]
    async fn a_connections_task_leaves_hypers_room_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, peer) = listener.accept().await.unwrap();
        let app = tower::service_fn(|_: Request<RequestBody>| async {
            let empty = http_body_util::Empty::<bytes::Bytes>::new();
            Ok::<_, std::convert::Infallible>(http::Response::new(empty))
        });
        let limits = HttpLimits::default();
        let service = WithClientAddr {
            inner: app,
            client: ClientAddr(peer),
            tls: None,
            first_request: Arc::default(),
        };
        let (_stop, stopped) = watch::channel(false);
        let http = Arc::new(Protocols::new(&limits));
        let task = serve_connection(
            http,
            tcp,
            (Plaintext, limits.head_timeout),
            service,
            false,
            None,
            stopped,
        );
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2_048, "{size} bytes");
    }
}

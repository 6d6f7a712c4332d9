//! Serving the public and admin listeners: hyper's HTTP/1.1 server with upgrades, either on
//! the caller's runtime or on per-thread runtimes that each own an `SO_REUSEPORT` listener.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use axum::{extract::ConnectInfo, Router};
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch, Semaphore},
    task::JoinSet,
};
use tower::ServiceExt;
use tower_ws_proxy::{socket2::SockRef, RelayConfig};

/// Resolves when a server has stopped accepting and finished its in-flight HTTP requests.
pub(crate) type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What an HTTP connection may cost and how long it may take, before a request reaches the
/// app.
#[derive(Clone, Debug)]
pub(crate) struct HttpLimits {
    /// The whole request head must arrive within this, counted from when the connection
    /// waits for a request: after the accept, or after the previous response on a
    /// keep-alive connection (so it bounds the keep-alive idle wait too).
    pub(crate) head_timeout: Duration,
    /// The largest request head (hyper answers 431 past it; at least 8 KiB).
    pub(crate) max_head_bytes: usize,
    /// The most request headers (431 past it).
    pub(crate) max_headers: usize,
    /// Accepted connections served at once; past it new ones are closed right away, so a
    /// flood cannot take the descriptors that live WebSockets and health checks need.
    pub(crate) open_connections: Option<Arc<Semaphore>>,
    /// After `stop`, in-flight requests get this long before their connections are dropped.
    pub(crate) stop_grace: Duration,
    /// Every accepted socket gets `TCP_NODELAY` and this config's keepalive, inherited from
    /// its listener where the platform does that (Linux), so the relay need not set them
    /// (its config says `client_keepalive_inherited`).
    pub(crate) relay: RelayConfig,
}

impl HttpLimits {
    /// The admin listener's: the same deadlines, no cap (it is not public).
    pub(crate) fn without_cap(&self) -> Self {
        Self {
            open_connections: None,
            ..self.clone()
        }
    }
}

/// Serves `app` on `listener` from a task on the current runtime.
pub(crate) fn on_current_runtime(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
) -> Stopped {
    let task = tokio::spawn(accept_loop(listener, app, limits, stop));
    Box::pin(async move {
        let _ = task.await;
    })
}

/// Serves `app` on `threads` threads, each a single-threaded runtime with its own listener on
/// `addr` (`SO_REUSEPORT`: the kernel spreads connections over them).
///
/// Why: a WebSocket's relay and both its sockets then live on one thread, so no wakeup
/// crosses threads, as in nginx's worker model. A thread keeps its runtime, and with it the
/// relays it spawned, until `exit` turns true, so shutdown can close them first.
pub(crate) fn on_worker_threads(
    addr: SocketAddr,
    threads: usize,
    app: Router,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, Vec<Stopped>)> {
    let mut addr = addr;
    let mut stopped = Vec::with_capacity(threads);
    for n in 0..threads {
        let socket = reuseport_listener(addr)?;
        addr = socket.local_addr()?.as_socket().unwrap_or(addr);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (app, limits, stop, mut exit) =
            (app.clone(), limits.clone(), stop.clone(), exit.clone());
        let (done, done_receiver) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{n}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(socket.into())?;
                    // A task rather than `block_on`'s own future: waking that one (each
                    // accept, each connection that ends) writes to the driver's eventfd
                    // even from its own thread, while a task is queued in place.
                    let accepting = tokio::spawn(accept_loop(listener, app, limits, stop));
                    let _ = accepting.await;
                    let _ = done.send(());
                    let _ = exit.wait_for(|exit| *exit).await;
                    std::io::Result::Ok(())
                })
            })?;
        stopped.push(Box::pin(async move {
            let _ = done_receiver.await;
        }) as Stopped);
    }
    Ok((addr, stopped))
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket)
}

/// Accepts until `stop` turns true, then gives in-flight requests the stop grace. Upgraded
/// WebSockets are detached from hyper: the proxy's registry closes them. (hyper's HTTP/1
/// builder, not `axum::serve`: the relay needs the raw TCP socket back from an upgrade,
/// which the auto-detecting builder wraps.)
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) {
    // Set once on the listener rather than five system calls per connection.
    let inherited = match limits.relay.tune_listener(SockRef::from(&listener)) {
        Ok(inherited) => inherited,
        Err(error) => {
            tracing::warn!(%error, "cannot set socket options on the listener");
            false
        }
    };
    let mut connections = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .max_headers(limits.max_headers);
    let mut shed: u64 = 0;
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
        let permit = match &limits.open_connections {
            None => None,
            Some(open) => match open.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    // Closing at once costs less than anything else we could answer.
                    shed += 1;
                    if shed.is_power_of_two() {
                        tracing::warn!(shed, "at the connection cap: closing new connections");
                    }
                    continue;
                }
            },
        };
        if !inherited {
            let _ = limits.relay.tune_socket(SockRef::from(&tcp));
        }
        // The client's address, for X-Forwarded-For and the logs.
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let connection = http
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let mut stop = stop.clone();
        connections.spawn(async move {
            let _permit = permit;
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stopped(&mut stop) => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.stop_grace, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            left = connections.len(),
            "dropping connections still open after the stop grace"
        );
        connections.shutdown().await;
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

//! Worker threads, each a single-threaded runtime with its own `SO_REUSEPORT` listener.

use std::net::SocketAddr;

use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
};

use super::{
    accept::accept_loop,
    handshake::{Handshake, Plaintext},
    HttpLimits, HttpService, Stopped,
};

/// Serves `service` on `threads` threads, each a single-threaded runtime with its own
/// listener on `addr` (`SO_REUSEPORT`: the kernel spreads connections over them); returns
/// the bound address (port 0 becomes the one the first listener got) and one [`Stopped`]
/// per thread.
///
/// Why: a WebSocket's relay and both its sockets then live on one thread, so no wakeup
/// crosses threads. A thread keeps its runtime, and with it the relays it spawned, until
/// `exit` turns true, so a shutdown can close them first.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use tokio::sync::watch;
/// use tower_ws_proxy::server::{serve_on_workers, HttpLimits};
///
/// let app = tower::service_fn(|_: http::Request<tower_ws_proxy::server::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
/// });
/// let (stop, stopped) = watch::channel(false);
/// let (exit, exited) = watch::channel(false);
/// let (addr, servers) = serve_on_workers("127.0.0.1:0".parse().unwrap(), 2, app, HttpLimits::default(), stopped, exited)?;
/// assert_ne!(addr.port(), 0);
/// stop.send_replace(true);
/// futures_util::future::join_all(servers).await;
/// exit.send_replace(true); // the worker runtimes may end
/// # Ok(()) }
/// ```
pub fn serve_on_workers<S>(
    addr: SocketAddr,
    threads: usize,
    service: S,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, Vec<Stopped>)>
where
    S: HttpService,
{
    let listeners = bind_workers(addr, threads)?;
    let addr = local_addr(&listeners, addr);
    Ok((
        addr,
        spawn_workers(listeners, service, limits, Plaintext, stop, exit)?,
    ))
}

/// Binds `threads` listeners on `addr` with `SO_REUSEPORT` (port 0 becomes the port the
/// first one got), for [`serve_on_listeners`]: a process keeps copies
/// (`try_clone`) to hand them to its successor ([`handover`](super::handover)).
pub fn bind_workers(
    addr: SocketAddr,
    threads: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut addr = addr;
    let mut listeners = Vec::with_capacity(threads);
    for _ in 0..threads {
        let socket = reuseport_listener(addr)?;
        addr = socket.local_addr()?.as_socket().unwrap_or(addr);
        listeners.push(socket.into());
    }
    Ok(listeners)
}

/// [`serve_on_workers`] on listeners already bound (by [`bind_workers`], or taken from the
/// process before this one): one worker thread each.
pub fn serve_on_listeners<S>(
    listeners: Vec<std::net::TcpListener>,
    service: S,
    limits: HttpLimits,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
) -> std::io::Result<Vec<Stopped>>
where
    S: HttpService,
{
    spawn_workers(listeners, service, limits, Plaintext, stop, exit)
}

/// [`serve_on_listeners`] over TLS, as [`serve_tls_on_workers`].
#[cfg(feature = "tls")]
pub fn serve_tls_on_listeners<S>(
    listeners: Vec<std::net::TcpListener>,
    service: S,
    limits: HttpLimits,
    tls: super::tls::TlsAcceptor,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
) -> std::io::Result<Vec<Stopped>>
where
    S: HttpService,
{
    spawn_workers(listeners, service, limits, tls, stop, exit)
}

fn local_addr(listeners: &[std::net::TcpListener], bound: SocketAddr) -> SocketAddr {
    listeners
        .first()
        .and_then(|listener| listener.local_addr().ok())
        .unwrap_or(bound)
}

/// [`serve_on_workers`] over TLS: each connection's handshake runs on its own task (on its
/// worker) and must end within the limits' `head_timeout`; every request also carries
/// [`ClientTls`](super::ClientTls). The workers share the certificates, so one reload
/// serves them all.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::sync::watch;
/// use tower_ws_proxy::server::{serve_tls_on_workers, tls::{TlsAcceptor, TlsSettings}, HttpLimits};
///
/// let app = tower::service_fn(|_: http::Request<tower_ws_proxy::server::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("ok"))))
/// });
/// let tls = TlsAcceptor::new(&TlsSettings::new("cert.pem", "key.pem"))?;
/// let (stop, stopped) = watch::channel(false);
/// let (exit, exited) = watch::channel(false);
/// let (addr, servers) = serve_tls_on_workers("127.0.0.1:0".parse()?, 2, app, HttpLimits::default(), tls, stopped, exited)?;
/// stop.send_replace(true);
/// futures_util::future::join_all(servers).await;
/// exit.send_replace(true);
/// # Ok(()) }
/// ```
#[cfg(feature = "tls")]
pub fn serve_tls_on_workers<S>(
    addr: SocketAddr,
    threads: usize,
    service: S,
    limits: HttpLimits,
    tls: super::tls::TlsAcceptor,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, Vec<Stopped>)>
where
    S: HttpService,
{
    let listeners = bind_workers(addr, threads)?;
    let addr = local_addr(&listeners, addr);
    Ok((
        addr,
        spawn_workers(listeners, service, limits, tls, stop, exit)?,
    ))
}

fn spawn_workers<S, H>(
    listeners: Vec<std::net::TcpListener>,
    service: S,
    limits: HttpLimits,
    handshake: H,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
) -> std::io::Result<Vec<Stopped>>
where
    S: HttpService,
    H: Handshake,
{
    let mut stopped = Vec::with_capacity(listeners.len());
    for (n, socket) in listeners.into_iter().enumerate() {
        socket.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (service, limits, handshake, stop, mut exit) = (
            service.clone(),
            limits.clone(),
            handshake.clone(),
            stop.clone(),
            exit.clone(),
        );
        let (done, done_receiver) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{n}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(socket)?;
                    // A task rather than `block_on`'s own future: waking that one (each
                    // accept, each connection that ends) writes to the driver's eventfd
                    // even from its own thread, while a task is queued in place.
                    let accepting =
                        tokio::spawn(accept_loop(listener, service, limits, handshake, stop));
                    let _ = accepting.await;
                    let _ = done.send(());
                    let _ = exit.wait_for(|exit| *exit).await;
                    std::io::Result::Ok(())
                })
            })?;
        stopped.push(Stopped::new(done_receiver));
    }
    Ok(stopped)
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

//! Serving the public and admin listeners: hyper's HTTP/1.1 server with upgrades, either on
//! the caller's runtime or on per-thread runtimes that each own an `SO_REUSEPORT` listener.

use std::{future::Future, net::SocketAddr, pin::Pin, time::Duration};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tokio::{
    net::TcpListener,
    sync::{oneshot, watch},
    task::JoinSet,
};

/// Resolves when a server has stopped accepting and finished its in-flight HTTP requests.
pub(crate) type Stopped = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `app` on `listener` from a task on the current runtime.
pub(crate) fn on_current_runtime(
    listener: TcpListener,
    app: Router,
    stop: watch::Receiver<bool>,
) -> Stopped {
    let task = tokio::spawn(accept_loop(listener, app, stop));
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
        let (app, stop, mut exit) = (app.clone(), stop.clone(), exit.clone());
        let (done, done_receiver) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("gateway-worker-{n}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(socket.into())?;
                    accept_loop(listener, app, stop).await;
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

/// Accepts until `stop` turns true, then waits for in-flight requests. Upgraded WebSockets
/// are detached from hyper: the proxy's registry closes them. (hyper's HTTP/1 builder, not
/// `axum::serve`: the relay needs the raw TCP socket back from an upgrade, which the
/// auto-detecting builder wraps.)
async fn accept_loop(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    let service = TowerToHyperService::new(app);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of descriptors, typically: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = tcp.set_nodelay(true);
        let connection = http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service.clone())
            .with_upgrades();
        let mut stop = stop.clone();
        connections.spawn(async move {
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
    while connections.join_next().await.is_some() {}
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

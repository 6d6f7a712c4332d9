//! The process's stop signals.

/// Resolves on Ctrl-C (SIGINT) or SIGTERM: what a server's `main` waits for before it stops.
///
/// ```no_run
/// # async fn f() {
/// tower_ws_proxy::server::shutdown_signal().await;
/// println!("stopping");
/// # }
/// ```
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Resolves on a Ctrl-C (SIGINT): what a server waits for during its shutdown, to exit at
/// once. A repeated SIGTERM is only logged: an orchestrator sends it again while the
/// shutdown runs (Docker's engine sends the stop signal on every stop request, and Swarm's
/// agent asks again when the task changes meanwhile), and exiting on it would drop every
/// WebSocket not yet closed with no close frame at all. The orchestrator's hard stop is
/// SIGKILL after its grace period, which a server's shutdown bound should stay under.
///
/// ```no_run
/// # async fn f(shutdown: impl std::future::Future<Output = ()>) {
/// tokio::select! {
///     () = shutdown => {}
///     () = tower_ws_proxy::server::interrupted_again() => std::process::exit(130),
/// }
/// # }
/// ```
pub async fn interrupted_again() {
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut again) => {
                while again.recv().await.is_some() {
                    tracing::warn!("SIGTERM again: the shutdown goes on");
                }
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => std::future::pending().await,
    }
}

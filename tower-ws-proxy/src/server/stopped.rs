//! The future of a server's end.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::sync::oneshot;

/// Resolves when a server has stopped accepting and its in-flight HTTP requests finished
/// (or the stop grace dropped them). Upgraded WebSockets are not waited for: their
/// [`LiveConnections::shutdown`](crate::LiveConnections::shutdown) closes them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use tokio::{net::TcpListener, sync::watch};
/// use tower_ws_proxy::server::{self, HttpLimits, Stopped};
///
/// let app = tower::service_fn(|_: http::Request<tower_ws_proxy::server::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// });
/// let (stop, stopped) = watch::channel(false);
/// let serving: Stopped = server::serve(TcpListener::bind("127.0.0.1:0").await?, app, HttpLimits::default(), stopped);
/// stop.send_replace(true);
/// serving.await;
/// # Ok(()) }
/// ```
pub struct Stopped {
    done: oneshot::Receiver<()>,
}

impl Stopped {
    pub(super) fn new(done: oneshot::Receiver<()>) -> Self {
        Self { done }
    }
}

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // A dropped sender (its thread or task ended) is a stop as well.
        Pin::new(&mut self.done).poll(cx).map(|_| ())
    }
}

impl fmt::Debug for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stopped").finish_non_exhaustive()
    }
}

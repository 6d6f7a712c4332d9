//! The task of one proxied WebSocket, from the client's upgrade to the relay's end.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::{net::TcpStream, time::Instant};
use tracing::Instrument;

use crate::{
    client_upgrade::{ClientUpgrade, UpgradedClient},
    record::Recorder,
    relay::relay_sharing_config,
    Peer, Registered, RelayCommands, RelayConfig, RelayOutcome,
};

/// The proxy's config, shared by all its relays.
pub(super) type SharedConfig = Arc<RelayConfig>;

type RelayArgs = (Peer, SharedConfig, RelayCommands);

pin_project! {
    /// A proxied WebSocket's task: it waits for the client's upgrade, relays, then counts
    /// the close and leaves the live connections. A named future rather than an `async` block,
    /// which would keep the upstream socket, the config and the commands twice (as its
    /// captures and inside the relay): every idle connection would pay for that.
    pub(super) struct RelayTask<F, H> {
        #[pin]
        pub(super) stage: Stage<F>,
        pub(super) registration: Option<Registered<H>>,
        pub(super) metrics: Recorder,
        // (The backend is in the task's span, with the key: the logs below carry it.)
        pub(super) started: Instant,
    }
}

pin_project! {
    #[project = StageProj]
    pub(super) enum Stage<F> {
        Upgrading {
            upgrade: ClientUpgrade,
            relay: Option<RelayArgs>,
            start: fn(Peer<TcpStream>, Peer, SharedConfig, RelayCommands) -> F,
        },
        // The fast path: the raw socket, halves without a lock.
        Raw { #[pin] relay: F },
        // TLS, or a server that wraps the socket (axum::serve, hyper-util's auto builder):
        // boxed, since the relay's future differs by stream type.
        Wrapped { relay: Pin<Box<dyn Future<Output = RelayOutcome> + Send>> },
    }
}

impl<F: Future<Output = RelayOutcome>> Future for Stage<F> {
    /// `None`: the client's upgrade failed.
    type Output = Option<RelayOutcome>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RelayOutcome>> {
        loop {
            let next = match self.as_mut().project() {
                StageProj::Upgrading {
                    upgrade,
                    relay: args,
                    start,
                } => {
                    let upgraded = std::task::ready!(Pin::new(upgrade).poll(cx));
                    let Some((upstream, config, commands)) = args.take() else {
                        return Poll::Ready(None);
                    };
                    match upgraded {
                        Ok(UpgradedClient::Tcp(client)) => Stage::Raw {
                            relay: start(client, upstream, config, commands),
                        },
                        Ok(UpgradedClient::Wrapped(upgraded)) => Stage::Wrapped {
                            relay: wrapped_relay(upgraded, (upstream, config, commands)),
                        },
                        Err(error) => {
                            tracing::debug!(%error, "client upgrade failed");
                            return Poll::Ready(None);
                        }
                    }
                }
                StageProj::Raw { relay } => return relay.poll(cx).map(Some),
                StageProj::Wrapped { relay } => return relay.as_mut().poll(cx).map(Some),
            };
            self.set(next);
        }
    }
}

/// The relay over a connection that is not a bare socket: the TLS stream of
/// `server::serve_tls` when it is one (no dynamic I/O between the relay and rustls), or the
/// upgraded connection as hyper hands it over.
fn wrapped_relay(
    upgraded: Upgraded,
    (upstream, config, commands): RelayArgs,
) -> Pin<Box<dyn Future<Output = RelayOutcome> + Send>> {
    #[cfg(feature = "tls")]
    let upgraded = match crate::server::tls::tls_peer(upgraded) {
        Ok(client) => return Box::pin(relay_sharing_config(client, upstream, config, commands)),
        Err(upgraded) => upgraded,
    };
    let client = Peer::new(TokioIo::new(upgraded));
    Box::pin(relay_sharing_config(client, upstream, config, commands))
}

impl<F, H> RelayTask<F, H>
where
    Self: Future<Output = ()> + Send + 'static,
{
    /// Runs the task in `span`, or bare where the span records nothing: a disabled span
    /// would still take room in every connection's task.
    pub(super) fn spawn(self, span: tracing::Span) {
        if span.is_disabled() {
            tokio::spawn(self);
        } else {
            tokio::spawn(self.instrument(span));
        }
    }
}

impl<F: Future<Output = RelayOutcome>, H> Future for RelayTask<F, H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        match std::task::ready!(this.stage.poll(cx)) {
            // It goes on elsewhere: not a close.
            Some(outcome) if outcome.parked => {
                tracing::debug!("websocket parked");
            }
            Some(outcome) => {
                tracing::debug!(?outcome, "websocket closed");
                this.metrics.closed(this.started.elapsed());
            }
            None => {}
        }
        // Out of the live connections (and their cap) as soon as the relay ends.
        this.registration.take();
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RelayHandle;

    /// What an idle WebSocket's task holds besides tokio's header: about 2,500 bytes before
    /// the relay's futures stopped keeping their arguments twice, its rare states were boxed
    /// and its config was shared (an `Arc`, instead of a copy in every task); about 1,410
    /// now (rustc 1.95).
    const MOST: usize = 1_500;

    #[tokio::test]
    async fn an_idle_websockets_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let upstream = TcpStream::connect(addr).await.unwrap();
        let (_handle, commands) = RelayHandle::new();
        let config = SharedConfig::default();
        let relay = relay_sharing_config(
            Peer::new(client),
            Peer::new(upstream.into()),
            config,
            commands,
        );
        let task = RelayTask {
            stage: Stage::Raw { relay },
            registration: None::<Registered<RelayHandle>>,
            metrics: Recorder::NONE,
            started: Instant::now(),
        };
        let size = std::mem::size_of_val(&task);
        assert!(
            size <= MOST,
            "a WebSocket's task takes {size} bytes, more than {MOST}: every idle connection pays it"
        );
    }
}

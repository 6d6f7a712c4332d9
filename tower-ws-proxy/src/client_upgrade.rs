//! How the client's side of a WebSocket upgrade reaches its relay: through hyper's
//! `OnUpgrade` (any server built on hyper, `axum::serve` included), or straight from this
//! crate's server, which answers a WebSocket handshake without hyper (`server::direct`).

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use http::Request;
use hyper::upgrade::{OnUpgrade, Upgraded};
use tokio::{net::TcpStream, sync::oneshot};

use crate::{tcp_peer, BoxError, Peer};

/// The server's promise of the client's socket once the `101` is written, carried by the
/// request as an extension. Extensions must be `Clone`, hence the shared slot: the proxy
/// takes the receiver out of it once.
#[derive(Clone)]
pub(crate) struct DirectUpgrade(Arc<Mutex<Option<oneshot::Receiver<Peer<TcpStream>>>>>);

impl DirectUpgrade {
    /// The extension, and the server's end: it sends the socket (with any bytes read past
    /// the head) once the `101` is out, or drops the sender if the client is gone.
    pub(crate) fn new() -> (Self, oneshot::Sender<Peer<TcpStream>>) {
        let (send, receive) = oneshot::channel();
        (Self(Arc::new(Mutex::new(Some(receive)))), send)
    }

    fn take(&self) -> Option<oneshot::Receiver<Peer<TcpStream>>> {
        self.0.lock().ok()?.take()
    }
}

/// The client's connection once its `101` is written.
pub(crate) enum ClientUpgrade {
    /// hyper wrote the `101`.
    Hyper(OnUpgrade),
    /// This crate's server wrote it.
    Direct(oneshot::Receiver<Peer<TcpStream>>),
}

impl ClientUpgrade {
    /// The request's upgrade: the server's own where it answers handshakes itself,
    /// otherwise hyper's.
    pub(crate) fn take<B>(request: &mut Request<B>) -> Self {
        match request
            .extensions_mut()
            .remove::<DirectUpgrade>()
            .and_then(|direct| direct.take())
        {
            Some(direct) => Self::Direct(direct),
            None => Self::Hyper(hyper::upgrade::on(request)),
        }
    }
}

/// An upgraded client connection.
pub(crate) enum UpgradedClient {
    /// The bare socket, with any bytes read past the head.
    Tcp(Peer<TcpStream>),
    /// A connection that is not a bare socket (TLS, an HTTP/2 stream, a wrapped socket).
    Wrapped(Upgraded),
}

impl Future for ClientUpgrade {
    type Output = Result<UpgradedClient, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match self.get_mut() {
            Self::Hyper(upgrade) => match ready!(Pin::new(upgrade).poll(cx)) {
                Ok(upgraded) => Ok(match tcp_peer(upgraded) {
                    Ok(client) => UpgradedClient::Tcp(client),
                    Err(upgraded) => UpgradedClient::Wrapped(upgraded),
                }),
                Err(error) => Err(error.into()),
            },
            Self::Direct(socket) => match ready!(Pin::new(socket).poll(cx)) {
                Ok(client) => Ok(UpgradedClient::Tcp(client)),
                Err(_) => Err("the client left before its 101 was written".into()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_direct_upgrade_is_taken_once_and_fails_when_the_server_drops_it() {
        let (direct, server) = DirectUpgrade::new();
        let mut request = Request::new(());
        request.extensions_mut().insert(direct.clone());
        let upgrade = ClientUpgrade::take(&mut request);
        assert!(matches!(upgrade, ClientUpgrade::Direct(_)));
        // The slot is empty now: a clone of the extension gives nothing more.
        assert!(direct.take().is_none());
        drop(server);
        assert!(upgrade.await.is_err());
    }

    #[tokio::test]
    async fn without_the_servers_extension_the_upgrade_is_hypers() {
        let mut request = Request::new(());
        let upgrade = ClientUpgrade::take(&mut request);
        assert!(matches!(upgrade, ClientUpgrade::Hyper(_)));
        // No hyper connection behind this request: the upgrade fails, it does not hang.
        assert!(upgrade.await.is_err());
    }
}

//! The client side of a relay: a raw TCP socket (the fast path), or any upgraded hyper
//! connection (the generic path, for servers that wrap the socket, like `axum::serve`), or,
//! with the `tls` feature, the TLS stream of `server::serve_tls`.

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{tcp, TcpStream},
};

/// A stream a relay can serve a client on: split into a read and a write half that two
/// directions use at once.
///
/// Implemented for [`TcpStream`], whose halves are plain borrows (no lock, no copy), and for
/// `TokioIo<Upgraded>`, whose halves share the connection through `tokio::io::split`.
///
/// ```
/// fn relayable<C: tower_ws_proxy::ClientStream>() {}
/// relayable::<tokio::net::TcpStream>();
/// relayable::<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>();
/// ```
pub trait ClientStream: Send + Unpin + 'static + sealed::Sealed {
    /// The read half.
    type ReadHalf<'a>: AsyncRead + Unpin + Send
    where
        Self: 'a;
    /// The write half.
    type WriteHalf<'a>: AsyncWrite + Unpin + Send + sealed::CloseIsFin
    where
        Self: 'a;

    /// Both halves, for as long as one relay phase lasts.
    fn halves(&mut self) -> (Self::ReadHalf<'_>, Self::WriteHalf<'_>);

    /// The TCP socket, where it can be reached (for keepalive).
    fn socket(&self) -> Option<socket2::SockRef<'_>>;

    /// Whether [`into_socket`](Self::into_socket) gives the socket: the connection has no
    /// state in this process beyond the socket.
    const TRANSFERABLE: bool = false;

    /// The bare socket, for a parked relay to hand over: `None` where the connection's state
    /// lives in this process (TLS, an HTTP/2 stream, a wrapped connection).
    fn into_socket(self) -> Option<std::io::Result<std::net::TcpStream>>
    where
        Self: Sized,
    {
        None
    }
}

impl ClientStream for TcpStream {
    type ReadHalf<'a> = tcp::ReadHalf<'a>;
    type WriteHalf<'a> = tcp::WriteHalf<'a>;

    fn halves(&mut self) -> (Self::ReadHalf<'_>, Self::WriteHalf<'_>) {
        self.split()
    }

    fn socket(&self) -> Option<socket2::SockRef<'_>> {
        Some(socket2::SockRef::from(self))
    }

    const TRANSFERABLE: bool = true;

    fn into_socket(self) -> Option<std::io::Result<std::net::TcpStream>> {
        Some(self.into_std())
    }
}

impl ClientStream for TokioIo<Upgraded> {
    type ReadHalf<'a> = tokio::io::ReadHalf<&'a mut TokioIo<Upgraded>>;
    type WriteHalf<'a> = tokio::io::WriteHalf<&'a mut TokioIo<Upgraded>>;

    fn halves(&mut self) -> (Self::ReadHalf<'_>, Self::WriteHalf<'_>) {
        tokio::io::split(self)
    }

    fn socket(&self) -> Option<socket2::SockRef<'_>> {
        None
    }
}

/// A WebSocket over TLS (`wss://`) from [`serve_tls`](crate::server::serve_tls): the
/// halves share the TLS session through `tokio::io::split`, and the TCP socket beneath is
/// reachable for keepalive.
#[cfg(feature = "tls")]
impl ClientStream for tokio_rustls::server::TlsStream<TcpStream> {
    type ReadHalf<'a> = tokio::io::ReadHalf<&'a mut tokio_rustls::server::TlsStream<TcpStream>>;
    type WriteHalf<'a> = tokio::io::WriteHalf<&'a mut tokio_rustls::server::TlsStream<TcpStream>>;

    fn halves(&mut self) -> (Self::ReadHalf<'_>, Self::WriteHalf<'_>) {
        tokio::io::split(self)
    }

    fn socket(&self) -> Option<socket2::SockRef<'_>> {
        Some(socket2::SockRef::from(self.get_ref().0))
    }
}

pub(crate) use sealed::CloseIsFin;

mod sealed {
    pub trait Sealed {}
    impl Sealed for tokio::net::TcpStream {}
    impl Sealed for hyper_util::rt::TokioIo<hyper::upgrade::Upgraded> {}
    #[cfg(feature = "tls")]
    impl Sealed for tokio_rustls::server::TlsStream<tokio::net::TcpStream> {}

    /// Whether closing a write half's stream sends the same FIN a `shutdown` would, so a
    /// relay that drops both sockets right away can skip the `shutdown`. Not for TLS (its
    /// shutdown sends close_notify) nor an upgraded hyper connection (over HTTP/2 it ends
    /// the stream, where a drop would reset it).
    pub trait CloseIsFin {
        fn close_is_fin(&self) -> bool;
    }

    impl CloseIsFin for tokio::net::tcp::WriteHalf<'_> {
        fn close_is_fin(&self) -> bool {
            true
        }
    }

    impl<T> CloseIsFin for tokio::io::WriteHalf<T> {
        fn close_is_fin(&self) -> bool {
            false
        }
    }
}

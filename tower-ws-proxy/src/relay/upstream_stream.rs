//! The backend side of a relay: a TCP socket, or (the `tls` feature) a TLS session over one
//! for backends reached at `wss://`.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{tcp, TcpStream},
};

/// A relay's connection to its backend: a plain TCP socket, or a TLS session over one
/// ([`Upstream::tls`](crate::Upstream::tls), the `tls` feature).
///
/// ```
/// # async fn f() -> std::io::Result<()> {
/// use tower_ws_proxy::{Peer, UpstreamStream};
///
/// let tcp = tokio::net::TcpStream::connect("127.0.0.1:7100").await?;
/// let upstream: Peer = Peer::new(UpstreamStream::from(tcp));
/// # let _ = upstream; Ok(()) }
/// ```
#[derive(Debug)]
pub enum UpstreamStream {
    /// Plain TCP: the relay reads and writes it through borrowed halves, with no lock.
    Tcp(TcpStream),
    /// TLS to a backend that requires it: the halves share the session.
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl From<TcpStream> for UpstreamStream {
    fn from(tcp: TcpStream) -> Self {
        Self::Tcp(tcp)
    }
}

impl UpstreamStream {
    /// The TCP socket beneath (for keepalive).
    pub(crate) fn socket(&self) -> socket2::SockRef<'_> {
        match self {
            Self::Tcp(tcp) => socket2::SockRef::from(tcp),
            #[cfg(feature = "tls")]
            Self::Tls(tls) => socket2::SockRef::from(tls.get_ref().0),
        }
    }

    /// The stream with its socket registered on the current runtime's I/O driver (see
    /// [`Peer`](super::Peer)). A TLS session cannot be taken apart and put back together, so
    /// its socket stays with the runtime that dialed it (a migrator's, which lives as long as
    /// the gateway): its reads then wake the relay from that runtime's thread.
    pub(crate) fn on_this_runtime(self) -> io::Result<Self> {
        match self {
            Self::Tcp(tcp) => Ok(Self::Tcp(TcpStream::from_std(tcp.into_std()?)?)),
            #[cfg(feature = "tls")]
            tls @ Self::Tls(_) => Ok(tls),
        }
    }

    /// Both halves, for one relay phase.
    pub(crate) fn halves(&mut self) -> (UpstreamRead<'_>, UpstreamWrite<'_>) {
        match self {
            Self::Tcp(tcp) => {
                let (read, write) = tcp.split();
                (UpstreamRead::Tcp(read), UpstreamWrite::Tcp(write))
            }
            #[cfg(feature = "tls")]
            Self::Tls(tls) => {
                let (read, write) = tokio::io::split(&mut **tls);
                (UpstreamRead::Tls(read), UpstreamWrite::Tls(write))
            }
        }
    }
}

#[cfg(feature = "tls")]
type TlsHalf<'a> = &'a mut tokio_rustls::client::TlsStream<TcpStream>;

impl super::Peer {
    /// Marks a peer dialed at a loopback address (see [`Upstream`](crate::Upstream)): the
    /// relay sets no TCP keepalive on it. Keepalive finds a peer whose host vanished or
    /// whose path dropped the connection's state; on loopback the same kernel holds both
    /// ends, and a backend that dies is closed (FIN or RST) by it, so probes have nothing to
    /// find and cost four `setsockopt`s per connection.
    pub(crate) fn on_same_host(mut self, same_host: bool) -> Self {
        self.same_host = same_host;
        self
    }

    /// The TCP socket beneath, for tests to read its options.
    #[cfg(test)]
    pub(crate) fn socket(&self) -> socket2::SockRef<'_> {
        self.stream.socket()
    }
}

/// The read half of an [`UpstreamStream`].
pub(crate) enum UpstreamRead<'a> {
    Tcp(tcp::ReadHalf<'a>),
    #[cfg(feature = "tls")]
    Tls(tokio::io::ReadHalf<TlsHalf<'a>>),
}

/// The write half of an [`UpstreamStream`].
pub(crate) enum UpstreamWrite<'a> {
    Tcp(tcp::WriteHalf<'a>),
    #[cfg(feature = "tls")]
    Tls(tokio::io::WriteHalf<TlsHalf<'a>>),
}

/// Calls `$method` on whichever stream `$self` holds.
macro_rules! dispatch {
    ($self:expr, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Tcp($stream) => $call,
            #[cfg(feature = "tls")]
            Self::Tls($stream) => $call,
        }
    };
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

impl AsyncRead for UpstreamRead<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl super::client::CloseIsFin for UpstreamWrite<'_> {
    fn close_is_fin(&self) -> bool {
        match self {
            Self::Tcp(_) => true,
            #[cfg(feature = "tls")]
            Self::Tls(_) => false,
        }
    }
}

impl AsyncWrite for UpstreamWrite<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        dispatch!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        dispatch!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

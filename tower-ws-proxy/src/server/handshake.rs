//! What a connection goes through between the accept and its first request.

use std::{future::Future, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::watch,
};

use super::ClientTls;

/// Turns an accepted socket into the stream HTTP is served on, on the connection's own
/// task (a slow client must not hold up the accept loop).
pub(crate) trait Handshake: Clone + Send + Sync + 'static {
    /// What HTTP is served on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The stream, and its TLS details if any; `None`: drop the connection. Must finish
    /// `within`, and give up once `stop` turns true.
    fn handshake(
        &self,
        tcp: TcpStream,
        within: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = Option<(Self::Io, Option<ClientTls>)>> + Send;

    /// The bare socket, where the stream is one: its first request may then be read
    /// without hyper (`direct`).
    fn into_tcp(io: Self::Io) -> Result<TcpStream, Self::Io> {
        Err(io)
    }
}

/// Plaintext: the socket as accepted, with nothing to wait for.
#[derive(Clone, Copy)]
pub(super) struct Plaintext;

impl Handshake for Plaintext {
    type Io = TcpStream;

    fn handshake(
        &self,
        tcp: TcpStream,
        _: Duration,
        _: &mut watch::Receiver<bool>,
    ) -> impl Future<Output = Option<(TcpStream, Option<ClientTls>)>> + Send {
        std::future::ready(Some((tcp, None)))
    }

    fn into_tcp(io: TcpStream) -> Result<TcpStream, TcpStream> {
        Ok(io)
    }
}

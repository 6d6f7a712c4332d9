//! Helpers shared by the integration tests that run real relays.

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Two connected loopback sockets: (the connecting side, the accepted side).
pub(crate) async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (accepted, connected) = tokio::join!(listener.accept(), connect);
    (connected.unwrap(), accepted.unwrap().0)
}

/// A backend's side of one WebSocket handshake: accepts a connection, reads the request
/// head and answers 101 (any key: the relay does not check the accept value).
pub(crate) async fn accept_handshake(listener: &TcpListener) -> TcpStream {
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    tcp.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )
    .await
    .unwrap();
    tcp
}

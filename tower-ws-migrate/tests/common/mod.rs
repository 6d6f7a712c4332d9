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

/// The old backend: answers the relay's close (its frames are masked) with 1001, so the
/// switch need not wait for its deadline.
pub(crate) async fn answer_the_close(mut tcp: TcpStream) {
    loop {
        let mut header = [0u8; 2];
        if tcp.read_exact(&mut header).await.is_err() {
            return;
        }
        let mut rest = vec![0u8; 4 + usize::from(header[1] & 0x7f)];
        if tcp.read_exact(&mut rest).await.is_err() {
            return;
        }
        if header[0] & 0x0f == 0x8 {
            let _ = tcp.write_all(&[0x88, 2, 0x03, 0xe9]).await;
            return;
        }
    }
}

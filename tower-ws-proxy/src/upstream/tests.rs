use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::{relay, RelayConfig, RelayHandle};

#[test]
fn loopback_authorities_are_on_this_host() {
    for same_host in [
        "127.0.0.1:7100",
        "127.1.2.3:80",
        "[::1]:7100",
        "localhost:7100",
    ] {
        assert!(is_loopback(same_host), "{same_host}");
    }
    for remote in [
        "10.0.0.7:7100",
        "[2001:db8::1]:80",
        "backend-1:7100",
        "localhost.example:1",
    ] {
        assert!(!is_loopback(remote), "{remote}");
    }
}

/// A backend on 127.0.0.1 that takes one WebSocket handshake and then stays silent.
/// The balancer clones the chosen backend's service for every request: one reference
/// count, not a hyper client's half dozen.
#[tokio::test]
async fn a_clone_of_an_upstream_is_one_shared_pointer() {
    let upstream = Upstream::new("127.0.0.1:7100", UpstreamConfig::default());
    assert_eq!(
        std::mem::size_of::<Upstream>(),
        std::mem::size_of::<usize>()
    );
    let clone = upstream.clone();
    assert!(Arc::ptr_eq(&upstream.0, &clone.0));
    assert_eq!(Arc::strong_count(&upstream.0), 2);
}

async fn accepting_backend() -> (String, tokio::task::JoinHandle<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let backend = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            socket.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        socket
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
            .await
            .unwrap();
        socket
    });
    (authority, backend)
}

/// An upstream dialed at a loopback address gets no keepalive from the relay (the kernel
/// reports its end); the client's socket still does.
#[tokio::test]
async fn a_loopback_upstream_gets_no_keepalive() {
    let (authority, backend) = accepting_backend().await;
    let upstream = Upstream::new(authority, UpstreamConfig::default());
    let (head, ()) = Request::get("/connect/1")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap()
        .into_parts();
    let answer = upstream.open_websocket(&head).await.unwrap();
    let peer = answer.upgraded.expect("a 101");
    let _backend = backend.await.unwrap();
    let upstream_socket = peer.socket().try_clone().unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (_client_side, accepted) = tokio::join!(
        TcpStream::connect(listener.local_addr().unwrap()),
        listener.accept()
    );
    let client = accepted.unwrap().0;
    let client_socket = socket2::SockRef::from(&client).try_clone().unwrap();
    let (handle, commands) = RelayHandle::new();
    let config = RelayConfig::default().tcp_keepalive(Some(Duration::from_secs(42)));
    let task = tokio::spawn(relay(Peer::new(client), peer, config, commands));
    // The relay sets both sockets' options as it starts, the client's first.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !client_socket.keepalive().unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the client's socket gets keepalive");
    assert!(!upstream_socket.keepalive().unwrap());
    handle.close(1001, "done");
    drop(task);
}

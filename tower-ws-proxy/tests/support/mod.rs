//! What the relay tests share: echo servers and a relaying proxy over loopback TCP.
#![allow(dead_code, unreachable_pub)]

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::Message;
use tower_ws_proxy::{relay, Peer, RelayConfig, RelayHandle, RelayOutcome};

/// An echo server that records the close it received.
pub async fn echo_server() -> (std::net::SocketAddr, JoinHandle<Option<u16>>) {
    serve_echoes(|message| message).await
}

/// A server that answers each data message with `reply(message)`, and returns the code of
/// the close it received.
pub async fn serve_echoes(
    reply: impl Fn(Message) -> Message + Send + 'static,
) -> (std::net::SocketAddr, JoinHandle<Option<u16>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let mut close = None;
        // Keep polling after the close: that is what sends tungstenite's answer to it.
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Close(frame) => close = frame.map(|f| u16::from(f.code)),
                Message::Text(_) | Message::Binary(_) => {
                    let Ok(()) = ws.send(reply(message)).await else {
                        break;
                    };
                }
                _ => {}
            }
        }
        close
    });
    (addr, task)
}

/// Copies the HTTP upgrade exchange byte by byte (so no frame byte is read early), then relays.
pub async fn proxy(
    upstream: std::net::SocketAddr,
    config: RelayConfig,
) -> (std::net::SocketAddr, RelayHandle, JoinHandle<RelayOutcome>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (handle, commands) = RelayHandle::new();
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut server = TcpStream::connect(upstream).await.unwrap();
        copy_head(&mut client, &mut server).await;
        copy_head(&mut server, &mut client).await;
        relay(
            Peer::new(client),
            Peer::new(server.into()),
            config,
            commands,
        )
        .await
    });
    (addr, handle, task)
}

pub async fn copy_head(from: &mut TcpStream, to: &mut TcpStream) {
    let mut head = vec![];
    while !head.ends_with(b"\r\n\r\n") {
        head.push(from.read_u8().await.unwrap());
    }
    to.write_all(&head).await.unwrap();
}

//! The relay between a real tokio-tungstenite client and server over loopback TCP.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::{
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};
use tower_ws_proxy::{relay, Peer, RelayConfig, RelayHandle, Traffic};

mod support;
use support::*;

#[tokio::test]
async fn messages_and_a_client_close_pass_through() {
    let (server, server_task) = echo_server().await;
    let (proxy, _handle, relay_task) = proxy(server, RelayConfig::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    let big = "x".repeat(200_000);
    for text in ["hello", "", big.as_str()] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "done".into(),
    }))
    .await
    .unwrap();
    // The server's answer to the close comes back through the relay.
    while let Some(Ok(message)) = ws.next().await {
        assert!(message.is_close(), "{message:?}");
    }
    assert_eq!(server_task.await.unwrap(), Some(4000));
    let outcome = relay_task.await.unwrap();
    assert_eq!(outcome.client_close, Some(4000));
    assert_eq!(outcome.upstream_close, Some(4000));
    assert_eq!(outcome.relay_close, None);
    assert!(outcome.client_bytes > 200_000 && outcome.upstream_bytes > 200_000);
}

#[tokio::test]
async fn what_the_relay_carried_is_counted_by_direction() {
    let (server, server_task) = echo_server().await;
    let traffic = std::sync::Arc::new(Traffic::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let (_handle, commands) = RelayHandle::new();
    let commands = commands.counting(traffic.clone());
    let relay_task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut upstream = TcpStream::connect(server).await.unwrap();
        copy_head(&mut client, &mut upstream).await;
        copy_head(&mut upstream, &mut client).await;
        relay(
            Peer::new(client),
            Peer::new(upstream.into()),
            RelayConfig::default(),
            commands,
        )
        .await
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    let big = "y".repeat(100_000);
    for text in ["one", "", big.as_str()] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    // A ping and its pong are control frames, not messages.
    ws.send(Message::Ping(vec![1, 2].into())).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_pong());
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    server_task.await.unwrap();
    let outcome = relay_task.await.unwrap();
    let totals = traffic.totals();
    assert_eq!(
        (totals.to_backend.messages, totals.to_client.messages),
        (3, 3)
    );
    assert_eq!(totals.to_backend.bytes, outcome.client_bytes);
    assert_eq!(totals.to_client.bytes, outcome.upstream_bytes);
    assert!(totals.to_backend.bytes > 100_000, "{totals:?}");
}

/// Under continuous traffic of large messages, a requested close reaches both sides between
/// messages: every message the client receives is whole, then the close with the code.
#[tokio::test]
async fn a_requested_close_lands_between_messages_on_both_sides() {
    let (server, server_task) = echo_server().await;
    let (proxy, handle, relay_task) = proxy(server, RelayConfig::default()).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let payload = "y".repeat(50_000);
    let sender = {
        let payload = payload.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                if sink.send(Message::text(payload.clone())).await.is_err() {
                    break;
                }
            }
            sink
        })
    };
    // Let traffic flow, then ask for the close mid-stream.
    let mut echoes = 0;
    while echoes < 5 {
        assert_eq!(
            stream.next().await.unwrap().unwrap(),
            Message::text(payload.clone())
        );
        echoes += 1;
    }
    handle.close(1001, "gateway shutting down");
    let close = loop {
        match stream.next().await.unwrap().unwrap() {
            Message::Text(text) => assert_eq!(text.len(), payload.len(), "whole messages only"),
            Message::Close(frame) => break frame.unwrap(),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "gateway shutting down");
    drop(sender.await.unwrap());
    drop(stream);
    assert_eq!(
        server_task.await.unwrap(),
        Some(1001),
        "the upstream got the close too"
    );
    let outcome = tokio::time::timeout(Duration::from_secs(10), relay_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.relay_close, Some(1001));
}

#[tokio::test]
async fn an_idle_connection_is_closed_with_1001() {
    let (server, server_task) = echo_server().await;
    let config = RelayConfig::default().idle_timeout(Some(Duration::from_millis(300)));
    let (proxy, handle, relay_task) = proxy(server, config).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "idle timeout");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    drop(ws);
    assert_eq!(server_task.await.unwrap(), Some(1001));
    relay_task.await.unwrap();
    assert!(handle.is_finished());
}

/// A close the backend starts reaches the client with its code, and the answer goes back.
#[tokio::test]
async fn a_backend_close_reaches_the_client_with_its_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        ws.close(Some(CloseFrame {
            code: CloseCode::Library(4001),
            reason: "kicked".into(),
        }))
        .await
        .unwrap();
        // The client's answer to the close comes back through the relay.
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    });
    let (proxy, _handle, relay_task) = proxy(server_addr, RelayConfig::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 4001);
            assert_eq!(frame.reason.as_str(), "kicked");
        }
        other => panic!("expected the backend's close, got {other:?}"),
    }
    while ws.next().await.is_some() {}
    let _ = server.await.unwrap();
    let outcome = relay_task.await.unwrap();
    assert_eq!(outcome.upstream_close, Some(4001));
    assert_eq!(
        outcome.client_close,
        Some(4001),
        "tungstenite answers with the same code"
    );
}

/// After the relay injected a close toward the client, nothing the upstream still sends
/// reaches the client, not even a large frame that spans many reads.
#[tokio::test]
async fn nothing_follows_an_injected_close() {
    let (client_side, relay_client) = socket_pair().await;
    let (upstream_side, relay_upstream) = socket_pair().await;
    let (handle, commands) = RelayHandle::new();
    handle.close(1012, "moving");
    let relay_task = tokio::spawn(relay(
        Peer::new(relay_client),
        Peer::new(relay_upstream.into()),
        RelayConfig::default(),
        commands,
    ));
    let expected_close = tower_ws_proxy::frame::close_frame(1012, "moving", false);
    let (mut client_side, mut upstream_side) = (client_side, upstream_side);

    // The upstream, unaware, sends a 200 KB binary frame and then answers the close.
    let mut frame = vec![0x82, 127];
    frame.extend_from_slice(&(200_000u64).to_be_bytes());
    frame.resize(frame.len() + 200_000, 0xab);
    upstream_side.write_all(&frame).await.unwrap();
    upstream_side
        .write_all(&tower_ws_proxy::frame::close_frame(1012, "", false))
        .await
        .unwrap();
    client_side
        .write_all(&tower_ws_proxy::frame::close_frame(1012, "", true))
        .await
        .unwrap();

    let mut received = Vec::new();
    client_side.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, expected_close, "the close, then nothing");
    let outcome = relay_task.await.unwrap();
    assert_eq!(outcome.relay_close, Some(1012));
}

/// A connected pair of loopback sockets.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (accepted, connected) = tokio::join!(listener.accept(), connect);
    (connected.unwrap(), accepted.unwrap().0)
}

/// An echo server that tags each text echo with its name and records the close it received.
async fn tagged_echo_server(tag: &'static str) -> (std::net::SocketAddr, JoinHandle<Option<u16>>) {
    serve_echoes(move |message| match message {
        Message::Text(text) => Message::text(format!("{tag}:{text}")),
        other => other,
    })
    .await
}

/// Opens a WebSocket to `addr` the way the gateway does, reading the 101 byte by byte so that
/// no frame byte is taken early.
async fn handshaken(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: backend\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// Under a steady stream of messages, the relay moves the client to another upstream: no
/// close reaches the client, and every message gets exactly one echo, in order, first from
/// the old upstream and then from the new one.
#[tokio::test]
async fn a_switch_moves_the_client_without_a_close_or_a_lost_message() {
    let (old, old_task) = tagged_echo_server("old").await;
    let (new, new_task) = tagged_echo_server("new").await;
    let (proxy, handle, relay_task) = proxy(old, RelayConfig::default()).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    const MESSAGES: usize = 400;
    let sender = tokio::spawn(async move {
        for i in 0..MESSAGES {
            sink.send(Message::text(format!("m{i}"))).await.unwrap();
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sink
    });
    let mut echoes = Vec::new();
    let mut switched = None;
    while echoes.len() < MESSAGES {
        match stream.next().await.unwrap().unwrap() {
            Message::Text(text) => echoes.push(text.to_string()),
            other => panic!("the client saw {other:?} before all its echoes"),
        }
        if echoes.len() == 50 {
            let handle = handle.clone();
            switched = Some(tokio::spawn(async move {
                handle
                    .switch_to(Peer::new(handshaken(new).await.into()))
                    .await
            }));
        }
    }
    switched
        .unwrap()
        .await
        .unwrap()
        .expect("the switch succeeded");
    let from_old = echoes.iter().take_while(|e| e.starts_with("old:")).count();
    let expected: Vec<String> = (0..MESSAGES)
        .map(|i| format!("{}:m{i}", if i < from_old { "old" } else { "new" }))
        .collect();
    assert_eq!(
        echoes, expected,
        "one echo per message, in order, old then new"
    );
    assert!(from_old < MESSAGES, "the switch happened mid-stream");

    let mut sink = sender.await.unwrap();
    sink.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    while stream.next().await.is_some() {}
    assert_eq!(
        old_task.await.unwrap(),
        Some(1001),
        "the old upstream was closed"
    );
    assert_eq!(
        new_task.await.unwrap(),
        Some(1000),
        "the client's close reached the new one"
    );
    let outcome = relay_task.await.unwrap();
    assert_eq!(outcome.switches, 1);
    assert_eq!(outcome.client_close, Some(1000));
}

/// A switch cannot complete when the old upstream closes in the middle of a fragmented
/// message: the client, who has half a message, gets 1012 instead, and `switch_to` says why.
/// A second switch while one is pending is refused as busy.
#[tokio::test]
async fn a_switch_interrupted_mid_message_closes_the_client_with_1012() {
    use tower_ws_proxy::{frame::close_frame, SwitchError};

    let (mut client_side, relay_client) = socket_pair().await;
    let (mut old_side, relay_old) = socket_pair().await;
    let (handle, commands) = RelayHandle::new();
    let relay_task = tokio::spawn(relay(
        Peer::new(relay_client),
        Peer::new(relay_old.into()),
        RelayConfig::default(),
        commands,
    ));
    // The old upstream starts a fragmented text message: "hel" without FIN.
    let first_fragment = [0x01, 0x03, b'h', b'e', b'l'];
    old_side.write_all(&first_fragment).await.unwrap();
    let mut got = [0u8; 5];
    client_side.read_exact(&mut got).await.unwrap();
    assert_eq!(got, first_fragment);

    let (_new_side, relay_new) = socket_pair().await;
    let switching = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.switch_to(Peer::new(relay_new.into())).await })
    };
    // The relay closed the old upstream (masked, 1001): the switch is under way.
    let mut closed = vec![0u8; close_frame(1001, "moved to another backend", true).len()];
    old_side.read_exact(&mut closed).await.unwrap();
    let (_other, relay_other) = socket_pair().await;
    assert_eq!(
        handle.switch_to(Peer::new(relay_other.into())).await,
        Err(SwitchError::Busy)
    );
    // The old upstream answers with its close before finishing the message.
    old_side
        .write_all(&close_frame(1001, "", false))
        .await
        .unwrap();

    assert_eq!(switching.await.unwrap(), Err(SwitchError::Interrupted));
    let expected = close_frame(1012, "Service Restart", false);
    let mut got = vec![0u8; expected.len()];
    client_side.read_exact(&mut got).await.unwrap();
    assert_eq!(
        got, expected,
        "the client gets 1012, not the old upstream's close"
    );
    drop(client_side);
    let outcome = tokio::time::timeout(Duration::from_secs(10), relay_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.switches, 0);
}

//! Parking a relay between messages and resuming it with another relay on the same sockets
//! (what an in-place upgrade does across processes), over loopback TCP with real
//! tokio-tungstenite peers.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::{
    protocol::{frame::coding::CloseCode, CloseFrame},
    Message,
};
use tower_ws_proxy::{relay, ParkError, ParkedRelay, Peer, RelayConfig, RelayHandle, RelayOutcome};

mod support;
use support::{echo_server, proxy};

/// A new relay over a parked one's sockets and bytes read ahead.
fn resume(parked: ParkedRelay) -> (RelayHandle, JoinHandle<RelayOutcome>) {
    let client = TcpStream::from_std(parked.client).unwrap();
    let upstream = TcpStream::from_std(parked.upstream).unwrap();
    let (handle, commands) = RelayHandle::new();
    let commands = commands.idle_for(parked.idle_for);
    let task = tokio::spawn(relay(
        Peer::with_preread(client, parked.client_preread),
        Peer::with_preread(upstream.into(), parked.upstream_preread),
        RelayConfig::default(),
        commands,
    ));
    (handle, task)
}

/// Under a steady stream of messages both ways, the relay is parked and a second relay
/// resumes on its sockets: the client sees no close, and every message gets exactly one
/// echo, in order. The first relay ends parked, with no close sent to either side; the
/// backend later gets the client's own close through the second.
#[tokio::test]
async fn a_parked_relay_resumes_with_no_message_lost_repeated_or_reordered() {
    let (backend, backend_task) = echo_server().await;
    let (proxy, handle, first) = proxy(backend, RelayConfig::default()).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    const MESSAGES: usize = 600;
    let sender = tokio::spawn(async move {
        for i in 0..MESSAGES {
            sink.send(Message::text(format!("m{i}"))).await.unwrap();
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        sink
    });
    let mut echoes = Vec::new();
    let mut parking = None;
    while echoes.len() < MESSAGES {
        match stream.next().await.unwrap().unwrap() {
            Message::Text(text) => echoes.push(text.to_string()),
            other => panic!("the client saw {other:?} before all its echoes"),
        }
        if echoes.len() == 100 {
            let handle = handle.clone();
            parking = Some(tokio::spawn(async move {
                let parked = handle.park().await.expect("parked between messages");
                resume(parked)
            }));
        }
    }
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(echoes, expected, "one echo per message, in order");
    let (_second_handle, second) = parking.unwrap().await.unwrap();
    let parked = first.await.unwrap();
    assert!(parked.parked, "the first relay handed its sockets off");
    assert_eq!((parked.client_close, parked.upstream_close), (None, None));
    assert_eq!(parked.relay_close, None, "nobody got a close from the park");

    let mut sink = sender.await.unwrap();
    sink.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    while stream.next().await.is_some() {}
    assert_eq!(backend_task.await.unwrap(), Some(1000));
    let resumed = second.await.unwrap();
    assert_eq!(resumed.client_close, Some(1000));
    assert!(!resumed.parked);
}

/// A masked frame from a client (mask of zeros: the payload reads as it is).
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(payload);
    frame
}

/// A client inside a fragmented message gives the park no boundary: after the switch
/// timeout it fails with `NoBoundary`, and the relay goes on: the message completes and
/// is echoed, and a second park, now between messages, succeeds.
#[tokio::test]
async fn a_park_without_a_message_boundary_gives_up_and_the_relay_goes_on() {
    let (backend, _backend_task) = echo_server().await;
    let config = RelayConfig::default().switch_timeout(Duration::from_millis(200));
    let (proxy, handle, first) = proxy(backend, config).await;
    let mut client = TcpStream::connect(proxy).await.unwrap();
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.unwrap());
    }
    // The first fragment of a text message, and no more for now.
    client.write_all(&client_frame(0x01, b"ab")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = tokio::time::Instant::now();
    assert_eq!(handle.park().await.unwrap_err(), ParkError::NoBoundary);
    assert!(started.elapsed() >= Duration::from_millis(150));

    client.write_all(&client_frame(0x80, b"cd")).await.unwrap();
    let mut echo = [0u8; 6];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"\x81\x04abcd", "the message went through whole");

    let parked = handle.park().await.expect("between messages now");
    assert!(parked.client_preread.is_empty() && parked.upstream_preread.is_empty());
    assert!(first.await.unwrap().parked);
}

/// A park asked of a relay that is closing is refused at once, and the close goes on.
#[tokio::test]
async fn a_closing_relay_refuses_to_park() {
    let (backend, backend_task) = echo_server().await;
    let (proxy, handle, first) = proxy(backend, RelayConfig::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello"),
        "the relay runs"
    );
    handle.close(1001, "going away");
    assert_eq!(handle.park().await.unwrap_err(), ParkError::Ended);
    while ws.next().await.is_some() {}
    assert_eq!(backend_task.await.unwrap(), Some(1001));
    let outcome = first.await.unwrap();
    assert!(!outcome.parked);
    assert_eq!(outcome.relay_close, Some(1001));
}

//! The relay against broken and hostile peers: every case ends within its deadline, with
//! both sockets closed, whatever the peers do.

use std::time::{Duration, Instant};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tower_ws_proxy::{
    frame::{close_frame, FrameLimits, FrameTracker},
    relay, Peer, RelayConfig, RelayHandle, RelayOutcome, SwitchError,
};

/// A connected pair of loopback sockets.
async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = TcpStream::connect(listener.local_addr().unwrap());
    let (accepted, connected) = tokio::join!(listener.accept(), connect);
    (connected.unwrap(), accepted.unwrap().0)
}

/// A relay between two sockets the test plays by hand: (client side, backend side).
async fn relayed(
    config: RelayConfig,
) -> (TcpStream, TcpStream, RelayHandle, JoinHandle<RelayOutcome>) {
    let (client_side, relay_client) = socket_pair().await;
    let (backend_side, relay_backend) = socket_pair().await;
    let (handle, commands) = RelayHandle::new();
    let task = tokio::spawn(relay(
        Peer::new(relay_client),
        Peer::new(relay_backend.into()),
        config,
        commands,
    ));
    (client_side, backend_side, handle, task)
}

/// A masked client frame.
fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [1, 2, 3, 4];
    let mut frame = vec![first_byte, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads until EOF (or a reset), failing the test past `limit`.
async fn read_to_end_within(socket: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.expect("the relay closed the socket in time");
    received
}

async fn ended_within(task: JoinHandle<RelayOutcome>, limit: Duration) -> RelayOutcome {
    tokio::time::timeout(limit, task)
        .await
        .expect("the relay ended in time")
        .unwrap()
}

/// A reserved opcode from the client passes through untouched, like nginx and HAProxy: the
/// backend, which owns the protocol, answers 1002, and that close reaches the client
/// before the connection ends.
#[tokio::test]
async fn a_framing_error_passes_through_and_the_backends_1002_reaches_the_client() {
    let (mut client, mut backend, _handle, task) = relayed(RelayConfig::default()).await;
    let bad = masked(0x83, b"x"); // opcode 3 is reserved
    client.write_all(&bad).await.unwrap();
    let mut got = vec![0u8; bad.len()];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(
        got, bad,
        "the offending frame reaches the backend as it was"
    );

    let answer = close_frame(1002, "reserved opcode", false);
    backend.write_all(&answer).await.unwrap();
    drop(backend);
    let started = Instant::now();
    let received = read_to_end_within(&mut client, Duration::from_secs(2)).await;
    assert_eq!(received, answer, "the backend's 1002, then EOF");
    assert!(started.elapsed() < Duration::from_millis(500));
    // The client never closes its end: the half-close timeout (1 s) still ends the relay.
    let outcome = ended_within(task, Duration::from_secs(2)).await;
    assert_eq!(outcome.upstream_close, Some(1002));
}

/// After a framing error, endpoints that never end the connection get the close timeout,
/// then both sockets are dropped.
#[tokio::test]
async fn a_framing_error_with_silent_endpoints_ends_at_the_close_timeout() {
    let config = RelayConfig::default().close_timeout(Duration::from_millis(300));
    let (mut client, mut backend, _handle, task) = relayed(config).await;
    let started = Instant::now();
    client.write_all(&[0x89, 126, 0, 200]).await.unwrap(); // a 200-byte ping
    read_to_end_within(&mut backend, Duration::from_secs(3)).await;
    read_to_end_within(&mut client, Duration::from_secs(3)).await;
    ended_within(task, Duration::from_secs(3)).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

/// A client that half-closes (FIN without a close frame) is passed on as a FIN; a backend
/// that ignores it has the half-close timeout, then both sockets are released.
#[tokio::test]
async fn a_half_close_ends_the_relay_within_the_half_close_timeout() {
    let config = RelayConfig::default().half_close_timeout(Duration::from_millis(200));
    let (mut client, mut backend, _handle, task) = relayed(config).await;
    client.write_all(&masked(0x81, b"hi")).await.unwrap();
    client.shutdown().await.unwrap();
    let started = Instant::now();
    let received = read_to_end_within(&mut backend, Duration::from_secs(2)).await;
    assert_eq!(received, masked(0x81, b"hi"), "the message, then the FIN");
    // The backend stays silent and keeps its socket open: the relay still ends.
    ended_within(task, Duration::from_secs(2)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "{took:?}");
    read_to_end_within(&mut client, Duration::from_secs(1)).await;
}

/// A client that sends its Close and then leaves (its socket closed, not waiting for the
/// server's Close) ends the relay at once, as nginx does: the backend gets the Close and
/// then EOF, and is not waited for, where a half-close would have waited up to the
/// half-close timeout for the backend's Close only to write it into a socket whose owner is
/// gone.
#[tokio::test]
async fn a_client_that_leaves_after_its_close_ends_the_relay_at_once() {
    let config = RelayConfig::default().half_close_timeout(Duration::from_secs(30));
    let (mut client, mut backend, _handle, task) = relayed(config).await;
    let close = masked(0x88, &[0x03, 0xe8]); // 1000
    client.write_all(&close).await.unwrap();
    drop(client);
    let started = Instant::now();
    // The backend stays silent, its socket open: the relay ends anyway.
    let outcome = ended_within(task, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(outcome.client_close, Some(1000));
    assert_eq!(outcome.upstream_close, None);
    let received = read_to_end_within(&mut backend, Duration::from_secs(1)).await;
    assert_eq!(received, close, "the client's Close, then EOF");
}

/// A client that half-closes without a Close is still a half-close: the backend's last
/// messages reach it until the backend ends too.
#[tokio::test]
async fn a_half_close_without_a_close_still_carries_the_backends_messages() {
    let config = RelayConfig::default().half_close_timeout(Duration::from_secs(30));
    let (mut client, mut backend, _handle, task) = relayed(config).await;
    client.shutdown().await.unwrap();
    let mut eof = [0u8; 1];
    assert_eq!(
        backend.read(&mut eof).await.unwrap(),
        0,
        "the FIN passed on"
    );
    let last = [0x81, 0x04, b'l', b'a', b's', b't'];
    backend.write_all(&last).await.unwrap();
    drop(backend);
    let received = read_to_end_within(&mut client, Duration::from_secs(2)).await;
    // Then the relay's own close for a backend that vanished without one.
    assert!(received.starts_with(&last), "{received:?}");
    ended_within(task, Duration::from_secs(2)).await;
}

/// A client that vanishes with a reset stops both directions at once.
#[tokio::test]
async fn a_reset_client_releases_the_backend_socket() {
    let config = RelayConfig::default().half_close_timeout(Duration::from_secs(30));
    let (client, mut backend, _handle, task) = relayed(config).await;
    socket2::SockRef::from(&client)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(client); // RST
                  // The backend keeps talking to the vanished client.
    let chatter = tokio::spawn(async move {
        let frame = [0x81, 0x02, b'h', b'i'];
        for _ in 0..1000 {
            if backend.write_all(&frame).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the backend socket was never closed");
    });
    ended_within(task, Duration::from_secs(2)).await;
    tokio::time::timeout(Duration::from_secs(2), chatter)
        .await
        .expect("the backend socket was closed")
        .unwrap();
}

/// A client parked in the middle of a message has no boundary to switch at: the switch
/// gives up after the switch timeout, and the connection goes on with the old backend,
/// which gets the rest of the message.
#[tokio::test]
async fn a_switch_gives_up_on_a_client_parked_mid_message() {
    let config = RelayConfig::default().switch_timeout(Duration::from_millis(200));
    let (mut client, mut backend, handle, task) = relayed(config).await;
    let first = masked(0x01, b"hel"); // text, no FIN
    client.write_all(&first).await.unwrap();
    let mut got = vec![0u8; first.len()];
    backend.read_exact(&mut got).await.unwrap();

    let (mut new_backend, relay_new) = socket_pair().await;
    let started = Instant::now();
    let switched = handle.switch_to(Peer::new(relay_new.into())).await;
    assert_eq!(switched, Err(SwitchError::NoBoundary));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(150) && took < Duration::from_secs(1),
        "{took:?}"
    );
    assert_eq!(
        read_to_end_within(&mut new_backend, Duration::from_secs(1)).await,
        b"",
        "the new backend was dropped unused"
    );

    // Still relaying both ways with the old backend.
    let rest = masked(0x80, b"lo"); // continuation, FIN
    client.write_all(&rest).await.unwrap();
    let mut got = vec![0u8; rest.len()];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(got, rest);
    backend.write_all(&[0x81, 0x02, b'o', b'k']).await.unwrap();
    let mut echo = [0u8; 4];
    client.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, &[0x81, 0x02, b'o', b'k']);
    drop((client, backend));
    ended_within(task, Duration::from_secs(2)).await;
}

/// A message past the size limit is not relayed: both sides get a 1009 close.
#[tokio::test]
async fn a_message_past_the_limit_closes_both_sides_with_1009() {
    let limits = FrameLimits {
        max_frame: None,
        max_message: Some(1000),
    };
    let config = RelayConfig::default()
        .limits(limits)
        .close_timeout(Duration::from_millis(300));
    let (mut client, mut backend, _handle, task) = relayed(config).await;
    // A masked binary frame announcing 5,000 bytes, and its first bytes.
    let mut big = vec![0x82, 0x80 | 126, 0x13, 0x88, 9, 9, 9, 9];
    big.extend_from_slice(&[0u8; 100]);
    client.write_all(&big).await.unwrap();

    let to_client = read_to_end_within(&mut client, Duration::from_secs(2)).await;
    let (_, end) = FrameTracker::default().feed(&to_client).unwrap().unwrap();
    assert_eq!(end.close_code, Some(1009), "the client is closed with 1009");
    let to_backend = read_to_end_within(&mut backend, Duration::from_secs(2)).await;
    let (consumed, end) = FrameTracker::default().feed(&to_backend).unwrap().unwrap();
    assert_eq!(end.close_code, Some(1009), "the backend is told why");
    assert_eq!(consumed, to_backend.len(), "nothing of the big message");
    let outcome = ended_within(task, Duration::from_secs(2)).await;
    assert_eq!(outcome.relay_close, Some(1009));
}

/// Both sockets get TCP keepalive, so a peer that vanished without a FIN or RST is found.
#[tokio::test]
async fn both_sockets_get_tcp_keepalive() {
    let (_client_side, relay_client) = socket_pair().await;
    let (_backend_side, relay_backend) = socket_pair().await;
    let relay_client = relay_client.into_std().unwrap();
    let relay_backend = relay_backend.into_std().unwrap();
    let watched = [
        relay_client.try_clone().unwrap(),
        relay_backend.try_clone().unwrap(),
    ];
    for socket in &watched {
        assert!(!socket2::SockRef::from(socket).keepalive().unwrap());
    }
    let (handle, commands) = RelayHandle::new();
    let config = RelayConfig::default().tcp_keepalive(Some(Duration::from_secs(42)));
    let task = tokio::spawn(relay(
        Peer::new(TcpStream::from_std(relay_client).unwrap()),
        Peer::new(TcpStream::from_std(relay_backend).unwrap().into()),
        config,
        commands,
    ));
    // The relay sets the options as it starts: wait (up to 5 s) until both sockets show
    // them, then check.
    let set = |socket: &std::net::TcpStream| {
        let socket = socket2::SockRef::from(socket);
        socket.keepalive().unwrap()
            && socket.tcp_keepalive_time().unwrap() == Duration::from_secs(42)
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while !watched.iter().all(set) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for socket in &watched {
        let socket = socket2::SockRef::from(socket);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(42)
        );
    }
    handle.close(1001, "done");
    drop(task);
}

/// A client socket that inherited its options from the listener is left alone: the relay
/// sets keepalive on the upstream's socket only.
#[tokio::test]
async fn an_inherited_client_keepalive_is_not_set_again() {
    let (_client_side, relay_client) = socket_pair().await;
    let (_backend_side, relay_backend) = socket_pair().await;
    let relay_client = relay_client.into_std().unwrap();
    let relay_backend = relay_backend.into_std().unwrap();
    let (client, upstream) = (
        relay_client.try_clone().unwrap(),
        relay_backend.try_clone().unwrap(),
    );
    let (handle, commands) = RelayHandle::new();
    let config = RelayConfig::default()
        .tcp_keepalive(Some(Duration::from_secs(42)))
        .client_keepalive_inherited(true);
    let task = tokio::spawn(relay(
        Peer::new(TcpStream::from_std(relay_client).unwrap()),
        Peer::new(TcpStream::from_std(relay_backend).unwrap().into()),
        config,
        commands,
    ));
    let upstream = socket2::SockRef::from(&upstream);
    tokio::time::timeout(Duration::from_secs(2), async {
        while !upstream.keepalive().unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the upstream's socket gets keepalive");
    assert_eq!(
        upstream.tcp_keepalive_time().unwrap(),
        Duration::from_secs(42)
    );
    assert!(!socket2::SockRef::from(&client).keepalive().unwrap());
    handle.close(1001, "done");
    drop(task);
}

//! `server::handover`'s live connections with real sockets: WebSockets under echo traffic
//! pass from one set of live connections to another (as from the old process to the new)
//! with no close and no message lost, repeated or reordered; if the taking side dies before
//! it is ready, the offering side resumes the batch and keeps everything.
#![cfg(unix)]

use std::{
    os::fd::AsFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::Message;
use tower_hashring::NodeId;
use tower_ws_proxy::{
    relay,
    server::handover::{hand_over, receive, take_listeners, Arrivals, Handover, TransferOptions},
    LiveConnections, Peer, RelayConfig, RelayHandle, Resumer, WebSocketLayer,
};

fn socket_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "wscluster-handover-conns-{test}-{}.sock",
        std::process::id()
    ))
}

/// An echo server for any number of WebSockets.
async fn echo_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// A proxy that registers each WebSocket in `live` and relays it, as the gateway does.
async fn proxy(backend: std::net::SocketAddr, live: LiveConnections) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let live = live.clone();
            tokio::spawn(async move {
                let mut server = TcpStream::connect(backend).await.unwrap();
                copy_head(&mut client, &mut server).await;
                copy_head(&mut server, &mut client).await;
                let (handle, commands) = RelayHandle::new();
                let registration = live.register(b"k", 7, NodeId::from("echo"), 1, handle);
                let commands = commands.counting(registration.traffic());
                relay(
                    Peer::new(client),
                    Peer::new(server.into()),
                    RelayConfig::default(),
                    commands,
                )
                .await;
                drop(registration);
            });
        }
    });
    address
}

async fn copy_head(from: &mut TcpStream, to: &mut TcpStream) {
    let mut head = vec![];
    while !head.ends_with(b"\r\n\r\n") {
        head.push(from.read_u8().await.unwrap());
    }
    to.write_all(&head).await.unwrap();
}

/// A client sending numbered messages until `stop`, checking each echo: returns how many
/// were echoed, or what went wrong.
fn client(
    proxy: std::net::SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
    echoes: Arc<AtomicUsize>,
) -> JoinHandle<Result<usize, String>> {
    tokio::spawn(async move {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/"))
            .await
            .map_err(|e| e.to_string())?;
        let (mut sink, mut stream) = ws.split();
        let mut sent = 0usize;
        loop {
            if *stop.borrow() {
                return Ok(sent);
            }
            sink.send(Message::text(sent.to_string()))
                .await
                .map_err(|e| format!("send {sent}: {e}"))?;
            let echo = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
            match echo {
                Ok(Some(Ok(Message::Text(text)))) if text.as_str() == sent.to_string() => {}
                other => return Err(format!("echo of {sent}: {other:?}")),
            }
            echoes.fetch_add(1, Ordering::Relaxed);
            sent += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The taking side: takes the listeners offered at `path` once the offer is there, and
/// says it serves.
async fn taking(path: &std::path::Path) -> Arrivals {
    let inherited = loop {
        match take_listeners(path).await {
            Ok(inherited) => break inherited,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    inherited.serving().await.unwrap()
}

/// Both sides' live connections and resumers.
fn side() -> (LiveConnections, Resumer) {
    let live = LiveConnections::new(10_000);
    let resumer = WebSocketLayer::new(live.clone(), RelayConfig::default()).resumer();
    (live, resumer)
}

async fn wait_for(live: &LiveConnections, count: usize) {
    for _ in 0..500 {
        if live.len() == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} live connections, not {count}", live.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_websockets_pass_to_the_taking_side_with_no_message_lost() {
    const CLIENTS: usize = 150;
    let backend = echo_backend().await;
    let (old_live, old_resumer) = side();
    let (new_live, new_resumer) = side();
    let address = proxy(backend, old_live.clone()).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let echoes = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| client(address, stopped.clone(), echoes.clone()))
        .collect();
    wait_for(&old_live, CLIENTS).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = socket_path("pass");
    let taker = tokio::spawn({
        let path = path.clone();
        async move {
            let arrivals = taking(&path).await;
            receive(arrivals, &new_resumer, None).await
        }
    });
    let mut taken = Handover::new(&path)
        .offer(&[("public", listener.as_fd())])
        .await
        .unwrap();
    let options = TransferOptions::default()
        .batch(40)
        .settle(Duration::from_millis(300));
    let mut stopped_accepting = false;
    let handed = hand_over(&mut taken, &old_live, (&old_resumer, None), options, || {
        stopped_accepting = true
    })
    .await;
    let received = taker.await.unwrap();
    assert!(stopped_accepting);

    assert_eq!(handed.failed, None);
    assert_eq!((handed.handed, handed.closed, handed.kept), (CLIENTS, 0, 0));
    assert!(handed.batches >= CLIENTS / 40, "{handed:?}");
    assert_eq!((received.resumed, received.refused), (CLIENTS, 0));
    assert_eq!(handed.pauses.len(), CLIENTS);
    wait_for(&new_live, CLIENTS).await;
    assert!(old_live.is_empty());

    // Traffic goes on through the new side's relays.
    let before = echoes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    for client in clients {
        client
            .await
            .unwrap()
            .expect("every echo, in order, and no close");
    }
    let after = echoes.load(Ordering::Relaxed) - before;
    assert!(after >= CLIENTS, "only {after} echoes after the handover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taker_that_dies_before_it_is_ready_leaves_everything_with_the_offering_side() {
    const CLIENTS: usize = 60;
    let backend = echo_backend().await;
    let (old_live, old_resumer) = side();
    let address = proxy(backend, old_live.clone()).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let echoes = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| client(address, stopped.clone(), echoes.clone()))
        .collect();
    wait_for(&old_live, CLIENTS).await;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = socket_path("dies");
    let taker = tokio::spawn({
        let path = path.clone();
        async move {
            // Serves, then dies before reading a single batch.
            let arrivals = taking(&path).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(arrivals);
        }
    });
    let mut taken = Handover::new(&path)
        .offer(&[("public", listener.as_fd())])
        .await
        .unwrap();
    let options = TransferOptions::default();
    let mut stopped_accepting = false;
    let handed = hand_over(&mut taken, &old_live, (&old_resumer, None), options, || {
        stopped_accepting = true
    })
    .await;
    taker.await.unwrap();
    assert!(!stopped_accepting, "the old side goes on accepting");
    assert!(handed.failed.is_some(), "{handed:?}");
    assert_eq!((handed.handed, handed.kept), (0, CLIENTS));
    wait_for(&old_live, CLIENTS).await;

    let before = echoes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send_replace(true);
    for client in clients {
        client
            .await
            .unwrap()
            .expect("every echo, in order, and no close");
    }
    let after = echoes.load(Ordering::Relaxed) - before;
    assert!(after >= CLIENTS, "only {after} echoes after the handover");
}

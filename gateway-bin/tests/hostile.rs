//! Hostile clients beside well-behaved ones. A test binary of its own: it counts the
//! process's descriptors, which other tests running in parallel would disturb.

mod common;

use std::time::Duration;

use common::*;
use gateway_bin::gateway::Gateway;
use tokio::{io::AsyncWriteExt, net::TcpStream, task::JoinHandle};

/// What a hostile client did and what it got back.
#[derive(Debug)]
struct Hostile {
    kind: &'static str,
    /// The bytes the gateway sent, up to its close; `None` if it kept the socket open.
    answer: Option<Vec<u8>>,
}

/// Opens one hostile client of each kind that the gateway must close: a partial head, then
/// WebSockets that send a reserved opcode, a ping over 125 bytes, a fragmented ping, an
/// unmasked frame, garbage, or a message over the limit. Each task sends its bytes and
/// reads until the gateway closes, or gives up after `limit`.
async fn hostile_clients_until_closed(
    gateway: &Gateway,
    limit: Duration,
) -> Vec<JoinHandle<Hostile>> {
    let mut hostile = Vec::new();
    // A partial head, then silence.
    let mut slowloris = TcpStream::connect(gateway.public).await.unwrap();
    slowloris
        .write_all(b"GET /connect/1 HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    hostile.push(("partial-head", slowloris, Vec::new()));
    for (kind, bytes) in [
        ("reserved-opcode", masked(0x83, b"x")),
        ("long-ping", {
            let mut frame = vec![0x89, 0x80 | 126, 0, 200, 1, 2, 3, 4];
            frame.extend([0u8; 200]);
            frame
        }),
        ("fragmented-ping", masked(0x09, b"p")),
        ("unmasked", vec![0x81, 0x02, b'h', b'i']),
        ("garbage", vec![0xff; 64]),
        (
            "big-message",
            vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0x06, 0, 0, 0, 1, 2, 3, 4],
        ),
    ] {
        let tcp = raw_websocket(gateway, &format!("hostile-{kind}")).await;
        hostile.push((kind, tcp, bytes));
    }
    let mut tasks = Vec::new();
    for (kind, mut tcp, bytes) in hostile {
        tasks.push(tokio::spawn(async move {
            tcp.write_all(&bytes).await.unwrap();
            Hostile {
                kind,
                answer: until_closed(&mut tcp, limit).await,
            }
        }));
    }
    tasks
}

/// Every kind of hostile client at once, while well-behaved clients keep echoing: they lose
/// nothing, every hostile connection ends within its deadline, and afterwards the live connections
/// is empty and the descriptors are back at their baseline.
#[tokio::test]
async fn hostile_clients_leave_no_trace_and_disturb_no_one() {
    let gateway = gateway_bin::demo::start(strict(), vec![], 3).await.unwrap();
    // Warm up: one full round trip, so lazily opened descriptors are in the baseline.
    drop(connect(&gateway, "warm-up").await);
    assert!(
        eventually(Duration::from_secs(2), async || live_connections(&gateway)
            .await
            == 0)
        .await
    );
    let baseline = open_descriptors();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut good = Vec::new();
    for n in 0..10 {
        let user = format!("good-{n}");
        let (client, _) = connect(&gateway, &user).await;
        good.push(tokio::spawn(echo_traffic(user, client, stopped.clone())));
    }

    let limit = Duration::from_secs(3);
    let tasks = hostile_clients_until_closed(&gateway, limit).await;
    // Half-closed after the handshake, and parked mid-message: these stay until they leave.
    let mut half_closed = raw_websocket(&gateway, "hostile-half-close").await;
    half_closed.shutdown().await.unwrap();
    let mut parked = raw_websocket(&gateway, "hostile-parked").await;
    parked.write_all(&masked(0x01, b"hel")).await.unwrap();

    for task in tasks {
        let hostile = task.await.unwrap();
        assert!(hostile.answer.is_some(), "{} was left open", hostile.kind);
    }
    assert!(
        until_closed(&mut half_closed, limit).await.is_some(),
        "the half-closed client was let go"
    );

    stop.send_replace(true);
    for traffic in good {
        traffic.await.unwrap().assert_untouched();
    }
    drop((parked, half_closed));
    assert!(
        eventually(Duration::from_secs(2), async || live_connections(&gateway)
            .await
            == 0)
        .await,
        "every connection left the live connections"
    );
    assert!(
        eventually(Duration::from_secs(2), async || open_descriptors()
            <= baseline)
        .await,
        "descriptors back at {baseline}, now {}",
        open_descriptors()
    );
    gateway.shutdown().await;
}

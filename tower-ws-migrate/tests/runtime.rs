//! A live move hands the relay a socket dialed on the migrator's runtime; the relay takes it onto
//! its own I/O driver, so the moved connection outlives the migrator's runtime.

mod common;

use std::{sync::Arc, time::Duration};

use http::HeaderMap;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    runtime::{Builder, Runtime},
};
use tower_hashring::NodeId;
use tower_ws_migrate::{Migrate, MigrationPolicy, Outcome, ProxiedConnection, UpstreamLookup};
use tower_ws_proxy::{relay, Peer, RelayConfig, RelayHandle, Upstream, UpstreamConfig};

/// A frame the new backend sends for every frame it gets: unmasked text "pong".
const PONG: [u8; 6] = [0x81, 4, b'p', b'o', b'n', b'g'];

fn runtime() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A backend that takes one WebSocket handshake, then answers each masked frame of up to
/// 125 bytes with [`PONG`].
async fn ponging_backend() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut tcp = common::accept_handshake(&listener).await;
        loop {
            let mut header = [0u8; 2];
            if tcp.read_exact(&mut header).await.is_err() {
                return;
            }
            let mut rest = vec![0u8; 4 + usize::from(header[1] & 0x7f)];
            if tcp.read_exact(&mut rest).await.is_err() || tcp.write_all(&PONG).await.is_err() {
                return;
            }
        }
    });
    address
}

#[test]
fn a_moved_connection_outlives_the_migrators_runtime() {
    // The relay's runtime: the connection is opened and relayed here.
    let relays = runtime();
    let (mut client, connection) = relays.block_on(async {
        let (client, relay_client) = common::socket_pair().await;
        let (old_backend, relay_upstream) = common::socket_pair().await;
        tokio::spawn(common::answer_the_close(old_backend));
        let (handle, commands) = RelayHandle::new();
        tokio::spawn(relay(
            Peer::new(relay_client),
            Peer::new(relay_upstream.into()),
            RelayConfig::default(),
            commands,
        ));
        let new_backend = ponging_backend().await;
        let lookup: Arc<dyn UpstreamLookup> = Arc::new(move |_: &NodeId| {
            Some(Upstream::new(
                new_backend.as_str(),
                UpstreamConfig::default(),
            ))
        });
        let request = http::Request::get("/connect/7")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let connection = ProxiedConnection::new(handle, &request, &HeaderMap::new(), lookup);
        (client, connection)
    });

    // The migrator's runtime moves it, then goes away.
    let migrator = Builder::new_current_thread().enable_all().build().unwrap();
    let outcome = migrator.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            connection.migrate(
                &MigrationPolicy::live(),
                &NodeId::from("a"),
                Some(&NodeId::from("b")),
            ),
        )
        .await
        .expect("the move ends")
    });
    assert!(matches!(outcome, Outcome::Moved), "{outcome:?}");
    drop(migrator);

    // The moved connection still reaches its new backend and hears back.
    relays.block_on(async {
        let masked_ping = [
            0x81,
            0x84,
            1,
            2,
            3,
            4,
            b'p' ^ 1,
            b'i' ^ 2,
            b'n' ^ 3,
            b'g' ^ 4,
        ];
        client.write_all(&masked_ping).await.unwrap();
        let mut answer = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut answer))
            .await
            .expect("the new backend answers through the relay")
            .unwrap();
        assert_eq!(answer, PONG);
    });
}

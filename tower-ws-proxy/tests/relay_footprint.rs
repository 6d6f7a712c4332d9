//! What an idle relayed WebSocket costs the gateway in memory: its relay's future is most of
//! its task, which lives as long as the connection. bench/README.md has the RSS per
//! connection this adds up to; this guards the part that code changes move most.

use tower_ws_proxy::{relay, Peer, RelayConfig, RelayHandle};

/// An idle relay's future is what every open WebSocket holds: it was 4,200 bytes before
/// timers and command wakeups were boxed per direction only when needed and nothing was
/// held twice, 2,100 (2,320 with `tls`) before its `async fn`s stopped keeping their
/// arguments twice and a direction's close, switch and park state was boxed; it is about
/// 1,430 bytes now (with rustc 1.95, in debug and release alike, `tls` or not).
const MOST: usize = 1_600;

#[tokio::test]
async fn an_idle_relay_future_stays_small() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let upstream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_handle, commands) = RelayHandle::new();
    let relaying = relay(
        Peer::new(client),
        Peer::new(upstream.into()),
        RelayConfig::default(),
        commands,
    );
    let size = std::mem::size_of_val(&relaying);
    assert!(
        size <= MOST,
        "a relay's future takes {size} bytes, more than {MOST}: every idle connection pays it"
    );
}

//! Health checks over real sockets: a backend joins after its checks pass, leaves when they
//! fail, and returns when healthy; one that never answers never joins.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use discovery::{Backend, HealthCheck, StaticDiscovery};
use futures_util::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tower::discover::Change;

/// An HTTP server whose `/health` answers 200 while `healthy` holds, 503 otherwise.
async fn health_server(healthy: Arc<AtomicBool>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let healthy = healthy.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = tcp.read(&mut request).await;
                let status = if healthy {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                let _ = tcp.write_all(response.as_bytes()).await;
            });
        }
    });
    address
}

async fn next(members: &mut discovery::MemberChanges) -> Change<tower_hashring::NodeId, Backend> {
    tokio::time::timeout(Duration::from_secs(5), members.next())
        .await
        .expect("a change within 5 s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn backends_join_leave_and_return_with_their_health() {
    let healthy = Arc::new(AtomicBool::new(true));
    let alive = health_server(healthy.clone()).await;
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap() // dropped: nothing listens there
    };
    let source = StaticDiscovery::new([Backend::new("alive", alive), Backend::new("dead", dead)]);
    let mut members = HealthCheck::http("/health")
        .interval(Duration::from_millis(20))
        .timeout(Duration::from_millis(200))
        .thresholds(2, 2)
        .wrap(source);

    assert!(matches!(next(&mut members).await, Change::Insert(id, _) if id.as_str() == "alive"));
    healthy.store(false, Ordering::SeqCst);
    assert!(matches!(next(&mut members).await, Change::Remove(id) if id.as_str() == "alive"));
    healthy.store(true, Ordering::SeqCst);
    assert!(matches!(next(&mut members).await, Change::Insert(id, _) if id.as_str() == "alive"));
    // "dead" never answered: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), members.next())
            .await
            .is_err(),
        "the dead backend never joins"
    );
}

//! Talking to a running gateway over plain sockets: the helpers every end-to-end test of
//! the gateway shares (`gateway-bin`'s own tests and the integration tests here).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One HTTP/1.1 request with `body` (JSON, as the admin API takes it, for any method but
/// GET); the status and the body of the answer.
///
/// ```no_run
/// # async fn f(admin: std::net::SocketAddr) {
/// let (status, body) = wscluster_testkit::http(admin, "GET", "/admin/ring", "").await;
/// # }
/// ```
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let json = if method == "GET" {
        ""
    } else {
        "content-type: application/json\r\n"
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\n{json}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    http_raw(addr, &request).await
}

/// Sends `request` as it is; the status and the body of the answer.
pub async fn http_raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("the server answers");
    tcp.write_all(request.as_bytes())
        .await
        .expect("request sent");
    let mut response = String::new();
    tcp.read_to_string(&mut response)
        .await
        .expect("response read");
    let status = response[9..12].parse().expect("a status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The ids of the members on a gateway's ring, in id order.
pub async fn ring_members(admin: SocketAddr) -> Vec<String> {
    let (_, body) = http(admin, "GET", "/admin/ring", "").await;
    let ring: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    ring["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Waits (up to 30 s) until the gateway's members are exactly `expected`.
pub async fn wait_for_members(admin: SocketAddr, expected: &[impl AsRef<str>]) {
    let expected: Vec<&str> = expected.iter().map(AsRef::as_ref).collect();
    let exact = eventually(Duration::from_secs(30), async || {
        ring_members(admin).await == expected
    });
    if !exact.await {
        let members = ring_members(admin).await;
        panic!("members {members:?}, expected {expected:?}");
    }
}

/// Adds a backend through a gateway's admin API (`POST /admin/backends`, no body), which its
/// scaler starts: in process for the demo, a container on Docker. Returns its id.
pub async fn add_backend(admin: SocketAddr) -> String {
    let (status, body) = http(admin, "POST", "/admin/backends", "").await;
    assert_eq!(status, 201, "{body}");
    let added: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    added["id"].as_str().expect("an id").to_owned()
}

/// The ring the gateway builds from these members, all of weight 1.
pub fn ring_of<S: AsRef<str>>(ids: &[S]) -> tower_hashring::Ring {
    ids.iter()
        .fold(tower_hashring::Ring::builder(), |b, id| {
            b.node(id.as_ref(), 1)
        })
        .build()
        .expect("a valid ring")
}

/// Checks `check` every 20 ms until it holds or `limit` has passed; whether it held.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

//! The fast-path server's HTTP/1.1 connections, seen from a client's socket.

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower_ws_proxy::server::{serve, HttpLimits};

/// A client that half-closes once its request is out still gets the answer, even one that
/// comes after the FIN (the server does not watch for the client's end while it answers).
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    let app = tower::service_fn(|_: http::Request<hyper::body::Incoming>| async {
        // Answer after the client's FIN has arrived.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("late"))))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = watch::channel(false);
    let serving = serve(listener, app, HttpLimits::default(), stopped);

    let mut client = TcpStream::connect(address).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut answer))
        .await
        .expect("the server answers")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("late"), "{answer:?}");

    stop.send_replace(true);
    serving.await;
}

//! Real servers for the integration tests in `tests/`: each test starts its own, on a free
//! loopback port, and stops it when dropped.
//!
//! The servers come from Debian's packages (`apt-get install redis-server`); `.ci/run`
//! installs them. Where one is missing a test is skipped with a message, unless `CI` is set:
//! there a missing server fails the test.

use std::{
    net::{SocketAddr, TcpListener},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

/// A `redis-server` of this test's own, on loopback, with no persistence.
///
/// ```no_run
/// # async fn f() {
/// let Some(redis) = wscluster_tests::RedisServer::start().await else { return };
/// assert!(redis.url().starts_with("redis://127.0.0.1:"));
/// # }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`; `None` (skip) where
    /// `redis-server` is not installed and `CI` is not set.
    pub async fn start() -> Option<Self> {
        if !installed("redis-server") {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed: `apt-get install redis-server` (.ci/run does)"
            );
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return None;
        }
        let port = free_port();
        let mut server = Self { port, child: None };
        server.restart().await;
        Some(server)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it (the data is gone: nothing is persisted).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port, empty, and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop().await;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let address: SocketAddr = ([127, 0, 0, 1], self.port).into();
        for _ in 0..200 {
            if ping(address).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "redis-server on port {} did not answer PING in 5 s",
            self.port
        );
    }
}

async fn ping(address: SocketAddr) -> bool {
    let Ok(mut tcp) = TcpStream::connect(address).await else {
        return false;
    };
    let mut answer = [0u8; 7];
    tcp.write_all(b"PING\r\n").await.is_ok()
        && tcp.read_exact(&mut answer).await.is_ok()
        && &answer == b"+PONG\r\n"
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The RabbitMQ broker on loopback (`amqp://127.0.0.1:5672/%2f`), started by `.ci/run`
/// (`rabbitmq-server` from Debian's packages): one broker per machine, since Erlang nodes
/// are slow to start. `None` (skip) where none answers and `CI` is not set.
///
/// ```no_run
/// # async fn f() {
/// let Some(broker) = wscluster_tests::RabbitMq::running().await else { return };
/// assert!(broker.url().starts_with("amqp://"));
/// # }
/// ```
#[derive(Debug)]
pub struct RabbitMq {
    _private: (),
}

impl RabbitMq {
    /// The broker, once it answers on port 5672.
    pub async fn running() -> Option<Self> {
        for _ in 0..40 {
            if TcpStream::connect(("127.0.0.1", 5672)).await.is_ok() {
                return Some(Self { _private: () });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "no RabbitMQ on 127.0.0.1:5672: .ci/run installs and starts rabbitmq-server"
        );
        eprintln!("skipped: no RabbitMQ on 127.0.0.1:5672 (apt-get install rabbitmq-server)");
        None
    }

    /// The broker's URL.
    pub fn url(&self) -> String {
        "amqp://guest:guest@127.0.0.1:5672/%2f".into()
    }

    /// Stops the broker application (every connection drops) and starts it again, the way
    /// an operator restarts it; returns once it accepts connections again.
    pub async fn restart(&self) {
        for command in ["stop_app", "start_app"] {
            let status = Command::new("rabbitmqctl")
                .arg(command)
                .stdout(Stdio::null())
                .status()
                .await
                .expect("rabbitmqctl runs");
            assert!(status.success(), "rabbitmqctl {command} failed");
        }
        for _ in 0..120 {
            if TcpStream::connect(("127.0.0.1", 5672)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("RabbitMQ did not come back within 30 s");
    }
}

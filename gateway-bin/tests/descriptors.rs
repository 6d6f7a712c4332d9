//! The reference binary under a small descriptor limit: it derives its caps from the limit,
//! sheds what is over them, and keeps its admin API and health checks (so its ring) working.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::watch,
};

async fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.ok()?;
        let status = response.get(9..12)?.parse().ok()?;
        Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()?
}

/// Opens a WebSocket through `public` and returns the socket if the answer was 101.
async fn websocket(public: SocketAddr, user: usize) -> Result<TcpStream, String> {
    let mut tcp = TcpStream::connect(public)
        .await
        .map_err(|e| e.to_string())?;
    let head = format!(
        "GET /connect/{user} HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
         sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut answer)).await {
        Ok(Ok(_)) if answer.starts_with(b"HTTP/1.1 101") => Ok(tcp),
        Ok(Ok(_)) => Err(String::from_utf8_lossy(&answer[9..12]).into_owned()),
        Ok(Err(_)) => Err("closed".into()),
        Err(_) => Err("no answer".into()),
    }
}

/// A front for the backend at `backend`: it pipes every connection through, and counts
/// those closed before sending a byte, which are the gateway's TCP health checks (a
/// connect, then a close).
async fn counting_front(backend: SocketAddr) -> (SocketAddr, watch::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (count, probes) = watch::channel(0);
    let count = Arc::new(count);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 4096];
                match tcp.read(&mut first).await {
                    Ok(0) | Err(_) => count.send_modify(|n| *n += 1),
                    Ok(n) => {
                        let Ok(mut upstream) = TcpStream::connect(backend).await else {
                            return;
                        };
                        if upstream.write_all(&first[..n]).await.is_ok() {
                            let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                        }
                    }
                }
            });
        }
    });
    (address, probes)
}

/// Starts a `wsbackend` with id `only` and waits until it listens.
async fn start_backend() -> (SocketAddr, Child) {
    let backend = free_address().await;
    let process = Command::new(wscluster_testkit::wsbackend_binary())
        .args(["--id", "only", "--listen", &backend.to_string()])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(backend).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the backend never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (backend, process)
}

/// The gateway binary under `prlimit --nofile=600:600`, with one backend reached at `front`.
struct LimitedGateway {
    process: Child,
    public: SocketAddr,
    admin: SocketAddr,
    config: PathBuf,
    /// The line the gateway logged about its descriptor limit and the caps it derived.
    limits: String,
}

impl LimitedGateway {
    async fn start(front: SocketAddr) -> Self {
        let (public, admin) = (free_address().await, free_address().await);
        let config = std::env::temp_dir().join(format!("wscluster-fd-{}.toml", std::process::id()));
        std::fs::write(
            &config,
            "[discovery.health]\ncheck = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nup = 1\ndown = 2\n",
        )
        .unwrap();
        // 600 descriptors: 344 after the reserve, so 155 WebSockets and 17 connections at once.
        let mut process = Command::new("prlimit")
            .args(["--nofile=600:600", "--"])
            .arg(env!("CARGO_BIN_EXE_gateway-bin"))
            .args(["--config", config.to_str().unwrap()])
            .args([
                "--public",
                &public.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args([
                "--workers",
                "1",
                "run",
                "--backend",
                &format!("only={front}"),
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut log = BufReader::new(process.stdout.take().unwrap()).lines();
        let limits = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(line) = log.next_line().await.unwrap() {
                // The caps the gateway sized from its descriptor limit, with that limit.
                if line.contains("connection caps") {
                    return without_colours(&line);
                }
            }
            panic!("the gateway exited");
        })
        .await
        .unwrap();
        // Keep draining the log so the gateway never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
        Self {
            process,
            public,
            admin,
            config,
            limits,
        }
    }

    /// The admin API's status and the ring's member count, if it answered.
    async fn members(&self) -> Option<(u16, usize)> {
        let (status, body) = get(self.admin, "/admin/ring").await?;
        let ring: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some((status, ring["members"].as_array()?.len()))
    }

    async fn wait_for_the_backend_to_join(&self) {
        let started = Instant::now();
        while self.members().await != Some((200, 1)) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the backend never joined"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(mut self) {
        let _ = self.process.start_kill();
        let _ = std::fs::remove_file(self.config);
    }
}

/// Opens WebSockets for users `0..attempts` and keeps those that got through, with the
/// number refused or shed.
async fn flood(public: SocketAddr, attempts: usize) -> (Vec<TcpStream>, usize) {
    let mut open = Vec::new();
    let mut refused = 0;
    for user in 0..attempts {
        match websocket(public, user).await {
            Ok(tcp) => open.push(tcp),
            Err(_) => refused += 1,
        }
    }
    (open, refused)
}

#[tokio::test]
async fn a_descriptor_shortage_sheds_connections_but_keeps_the_ring_and_admin_api() {
    let (backend, _backend) = start_backend().await;
    // The gateway reaches the backend through a front that counts its health checks.
    let (front, mut health_checks) = counting_front(backend).await;
    let gateway = LimitedGateway::start(front).await;
    let limits = &gateway.limits;
    assert!(
        limits.contains("soft=600") && limits.contains("max_websockets=155"),
        "{limits}"
    );
    gateway.wait_for_the_backend_to_join().await;
    let public = gateway.public;

    // Far more than the descriptors allow: 155 get through, the rest are refused or shed.
    let (open, refused) = flood(public, 400).await;
    assert_eq!(open.len(), 155, "{refused} refused");
    // Saturated, for several health-check rounds (5, more than the 2 failures that would
    // take the member out): the ring keeps its member, the admin API answers.
    let before = *health_checks.borrow_and_update();
    let rounds = tokio::time::timeout(
        Duration::from_secs(10),
        health_checks.wait_for(|&checks| checks >= before + 5),
    );
    assert!(
        matches!(rounds.await, Ok(Ok(_))),
        "no 5 health checks reached the backend while saturated: {} of them",
        *health_checks.borrow() - before
    );
    assert_eq!(gateway.members().await, Some((200, 1)));
    let (status, _) = get(public, "/count?userId=1")
        .await
        .expect("HTTP still served");
    assert_eq!(status, 200);

    drop(open);
    let started = Instant::now();
    loop {
        match websocket(public, 1).await {
            Ok(_) => break,
            Err(why) => assert!(
                started.elapsed() < Duration::from_secs(5),
                "no new websocket after the flood: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.stop();
}

/// The line without ANSI colour sequences (`ESC [ … m`).
fn without_colours(line: &str) -> String {
    let mut plain = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            plain.push(c);
        }
    }
    plain
}

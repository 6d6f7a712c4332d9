//! The in-place upgrade (SIGUSR2) with the real binary: a client connecting in a tight loop
//! through the whole upgrade is never refused nor failed, the new process (another pid and
//! instance) serves the same addresses, and the old one exits. (A second upgrade during one
//! is refused: `tower-ws-proxy/tests/handover.rs`; two signals sent at once may merge into
//! one, so it is not tested here.)

use std::{net::SocketAddr, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    sync::watch,
    task::JoinHandle,
};
use wscluster_testkit::free_port;

/// A reference backend in this process.
async fn backend() -> SocketAddr {
    let listener =
        reference_backend::ReferenceBackend::listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    let backend = reference_backend::ReferenceBackend::new("backend-a");
    tokio::spawn(backend.serve(listener, std::future::pending()));
    address
}

/// What the gateway at `admin` says of itself; `None` while nothing answers there.
async fn replica(admin: SocketAddr) -> Option<Value> {
    let (status, body) = get(admin, "/admin/replica").await.ok()?;
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// `GET path` on a new connection: the status and body, or why it failed.
async fn get(address: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer));
    read.await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.get(9..12).and_then(|s| s.parse().ok());
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    status
        .map(|status| (status, body.to_owned()))
        .ok_or(format!("answered {answer:?}"))
}

/// One request through the gateway to the backend on a new connection: 200, or what failed.
async fn count(public: SocketAddr, user: usize) -> Result<u16, String> {
    let (status, body) = get(public, &format!("/count?userId={user}")).await?;
    match status {
        200 => Ok(status),
        _ => Err(format!("{status}: {body}")),
    }
}

/// Ends whatever gateway process still serves `admin` (the new one, started by the old, is
/// not this test's child), even when the test fails.
struct KillOnDrop(SocketAddr);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pattern = format!("gateway-bin --public .* --admin {} ", self.0);
        let _ = std::process::Command::new("pkill")
            .args(["-f", &pattern])
            .status();
    }
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
    assert!(status.unwrap().success(), "kill -{name} {pid}");
}

/// The gateway binary on `public` and `admin` over `backend`, its log lines, and its
/// replica report once it answers.
async fn start_gateway(
    public: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
) -> (Child, Lines<BufReader<ChildStdout>>, Value) {
    let mut gateway = Command::new(env!("CARGO_BIN_EXE_gateway-bin"))
        .args([
            "--public",
            &public.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args([
            "--workers",
            "2",
            "run",
            "--backend",
            &format!("backend-a={backend}"),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log = BufReader::new(gateway.stdout.take().unwrap()).lines();
    let report = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Some(report) = replica(admin).await {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (gateway, log, report.await.expect("the gateway answers"))
}

/// Requests on new connections, one after another, until 200 after `done` (30,000 at most).
fn tight_loop(
    public: SocketAddr,
    done: watch::Receiver<bool>,
) -> JoinHandle<Vec<Result<u16, String>>> {
    tokio::spawn(async move {
        let (mut answers, mut after) = (Vec::new(), 0);
        while after < 200 && answers.len() < 30_000 {
            answers.push(count(public, answers.len()).await);
            after += usize::from(*done.borrow());
        }
        answers
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_the_listeners_to_a_new_process_and_no_connection_is_refused() {
    let backend = backend().await;
    let (public, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let (mut old, mut log, before) = start_gateway(public, admin, backend).await;
    let _new = KillOnDrop(admin);
    // Read, so that neither process ever blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    assert_eq!(count(public, 0).await, Ok(200));
    let (done_tx, done) = watch::channel(false);
    let client = tight_loop(public, done);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let old_pid = old.id().unwrap();
    signal(old_pid, "USR2");
    let exited = tokio::time::timeout(Duration::from_secs(20), old.wait()).await;
    assert!(exited.expect("the old process exits").unwrap().success());
    done_tx.send_replace(true);
    let answers = client.await.unwrap();
    let after = replica(admin)
        .await
        .expect("the new process answers on the same admin address");
    let new_pid = after["pid"].as_u64().unwrap() as u32;
    signal(new_pid, "TERM");

    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    assert_ne!(new_pid, old_pid);
    assert_ne!(after["instance"], before["instance"]);
    eprintln!(
        "upgrade: {} requests on new connections throughout, none failed",
        answers.len()
    );
    let gone = tokio::time::timeout(Duration::from_secs(20), async {
        while replica(admin).await.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(gone.await.is_ok(), "the new process stops on SIGTERM");
}

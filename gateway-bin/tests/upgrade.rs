//! The in-place upgrade (SIGUSR2) with the real binary: a client connecting in a tight loop
//! through the whole upgrade is never refused nor failed, the new process (another pid and
//! instance) serves the same addresses, and the old one exits. Live WebSockets under echo
//! traffic pass to the new build with no close and no echo lost, repeated or reordered. (A second upgrade during one
//! is refused: `tower-ws-proxy/tests/handover.rs`; two signals sent at once may merge into
//! one, so it is not tested here.)

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    sync::{watch, Semaphore},
    task::JoinHandle,
};
use wscluster_testkit::free_port;

mod common;

/// The tests here run one at a time: each loads the machine (thousands of connections, or
/// a tight loop), and two at once would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
    binary: &Path,
    public: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
) -> (Child, Lines<BufReader<ChildStdout>>, Value) {
    start_configured(binary, (public, admin, backend), None).await
}

/// [`start_gateway`] with a config file.
async fn start_configured(
    binary: &Path,
    (public, admin, backend): (SocketAddr, SocketAddr, SocketAddr),
    config: Option<&Path>,
) -> (Child, Lines<BufReader<ChildStdout>>, Value) {
    let backends = [format!("backend-a={backend}")];
    start_over(binary, (public, admin), &backends, config).await
}

/// [`start_configured`] over `backends` (`id=address` each).
async fn start_over(
    binary: &Path,
    (public, admin): (SocketAddr, SocketAddr),
    backends: &[String],
    config: Option<&Path>,
) -> (Child, Lines<BufReader<ChildStdout>>, Value) {
    let mut gateway = Command::new(binary);
    if let Some(config) = config {
        gateway.env("WSCLUSTER_CONFIG", config);
    }
    let mut gateway = gateway
        .args([
            "--public",
            &public.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .args(["--workers", "2", "run"])
        .args(backends.iter().flat_map(|b| ["--backend", b]))
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
    let _alone = ONE_AT_A_TIME.lock().await;
    let backend = backend().await;
    let (public, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_gateway-bin"));
    let (mut old, mut log, before) = start_gateway(binary, public, admin, backend).await;
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

/// The gateway binary installed in a directory of its own, as a deployment would have it.
fn install(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let installed = dir.join("wscluster-gateway");
    std::fs::copy(env!("CARGO_BIN_EXE_gateway-bin"), &installed).unwrap();
    installed
}

/// Replaces the installed binary (rename, as a package manager does) with a second build:
/// this one with `label` written into its build label, so that it reports
/// `<version>+<label>`.
fn roll_out_second_build(installed: &Path, label: &str) {
    const FIELD: &[u8] = b"wscluster-build:        ";
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_gateway-bin")).unwrap();
    let at = bytes
        .windows(FIELD.len())
        .position(|w| w == FIELD)
        .expect("the binary has a build label");
    let value = &mut bytes[at + 16..at + FIELD.len()];
    value.fill(b' ');
    value[..label.len()].copy_from_slice(label.as_bytes());
    let next = installed.with_extension("next");
    std::fs::write(&next, bytes).unwrap();
    let mode = std::fs::metadata(installed).unwrap().permissions();
    std::fs::set_permissions(&next, mode).unwrap();
    std::fs::rename(&next, installed).unwrap();
}

/// A WebSocket client of `user` that sends a numbered message every `every` and checks each
/// echo until `stop`, then closes: how many were echoed, or the first thing that went wrong
/// (a close, an error, an echo missing, repeated or out of order).
fn echo_client(
    public: SocketAddr,
    user: usize,
    (every, handshakes): (Duration, Arc<Semaphore>),
    stop: watch::Receiver<bool>,
) -> JoinHandle<Result<usize, String>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    tokio::spawn(async move {
        // Handshakes at once stay under the gateway's cap on open HTTP connections (512
        // here), past which it turns connections away.
        let permit = handshakes.acquire_owned().await.unwrap();
        let url = format!("ws://{public}/connect/{user}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| format!("user {user} connect: {e}"))?;
        let first = ws.next().await;
        let Some(Ok(Message::Text(_))) = first else {
            return Err(format!("user {user}: no greeting: {first:?}"));
        };
        drop(permit);
        let mut sent = 0usize;
        while !*stop.borrow() {
            let text = format!("{user}:{sent}");
            ws.send(Message::text(text.clone()))
                .await
                .map_err(|e| format!("user {user} send {sent}: {e}"))?;
            let echo = loop {
                let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
                let Ok(Some(Ok(Message::Text(next)))) = next else {
                    return Err(format!("user {user} echo of {sent}: {next:?}"));
                };
                let next: Value = serde_json::from_str(next.as_str()).unwrap();
                // A new backend's greeting after a live move comes between echoes.
                if next["type"] != "connected" {
                    break next;
                }
            };
            if echo["content"] != text.as_str() {
                return Err(format!("user {user} sent {text}, echo {echo}"));
            }
            sent += 1;
            tokio::time::sleep(every).await;
        }
        let _ = ws.close(None).await;
        Ok(sent)
    })
}

/// `clients` echo clients (see [`echo_client`]), once the gateway at `admin` counts them all.
async fn connect_all(
    (public, admin): (SocketAddr, SocketAddr),
    clients: usize,
    pace: (Duration, Arc<Semaphore>),
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<Result<usize, String>>> {
    let users: Vec<_> = (0..clients)
        .map(|user| echo_client(public, user, pace.clone(), stop.clone()))
        .collect();
    let live = testkit_eventually(|| async {
        replica(admin).await.map(|r| r["connections"].as_u64()) == Some(Some(clients as u64))
    });
    if !live.await {
        let seen = replica(admin).await.map(|r| r["connections"].clone());
        let finished = users.into_iter().filter(|u| u.is_finished());
        let first = futures_util::future::join_all(finished)
            .await
            .into_iter()
            .next();
        panic!("not all {clients} clients connected: the gateway has {seen:?}; {first:?}");
    }
    users
}

/// Live WebSockets under echo traffic, upgraded to a second build mid-traffic: none is
/// closed, no echo is lost, repeated or reordered, the new process reports the new build
/// and how many it took over, and the old one exits. `WSCLUSTER_UPGRADE_CLIENTS` sets how
/// many (default 2,000), `WSCLUSTER_UPGRADE_EVERY_MS` how often each sends (default 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_live_websockets_to_the_new_build_with_no_close_and_no_lost_echo() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let clients: usize = std::env::var("WSCLUSTER_UPGRADE_CLIENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let backend = backend().await;
    let (public, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let dir = std::env::temp_dir().join(format!("wscluster-upgrade-{}", std::process::id()));
    let installed = install(&dir);
    let (mut old, log, before) = start_gateway(&installed, public, admin, backend).await;
    let _new = KillOnDrop(admin);
    let upgrade_line = tokio::spawn(async move {
        let mut log = log;
        let mut line = None;
        while let Ok(Some(next)) = log.next_line().await {
            if next.starts_with("upgrade:") {
                line = Some(next);
            }
        }
        line
    });
    let (stop_tx, stop) = watch::channel(false);
    let every = std::env::var("WSCLUSTER_UPGRADE_EVERY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok());
    let pace = (
        Duration::from_millis(every.unwrap_or(500)),
        Arc::new(Semaphore::new(200)),
    );
    let users = connect_all((public, admin), clients, pace, &stop).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    roll_out_second_build(&installed, "second");
    signal(old.id().unwrap(), "USR2");
    let exited = tokio::time::timeout(Duration::from_secs(90), old.wait()).await;
    assert!(exited.expect("the old process exits").unwrap().success());
    // Traffic goes on through the new process for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = replica(admin).await.expect("the new process answers");
    stop_tx.send_replace(true);
    let mut failed = Vec::new();
    let mut echoed = 0;
    for user in users {
        match user.await.unwrap() {
            Ok(count) => echoed += count,
            Err(why) => failed.push(why),
        }
    }
    let new_pid = after["pid"].as_u64().unwrap() as u32;
    signal(new_pid, "TERM");
    let _ = std::fs::remove_dir_all(&dir);
    let upgrade = upgrade_line.await.unwrap();
    eprintln!(
        "{clients} clients, {echoed} echoes; old process: {upgrade:?}; new: {}",
        after["handover"]
    );
    assert!(
        failed.is_empty(),
        "{} of {clients} clients failed, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert_ne!(after["pid"], before["pid"]);
    assert_eq!(before["build"].as_str().unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(
        after["build"].as_str().unwrap(),
        format!("{}+second", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        after["handover"]["resumed"].as_u64(),
        Some(clients as u64),
        "{after}"
    );
    assert_eq!(after["connections"].as_u64(), Some(clients as u64));
}

/// Polls `check` for up to 60 s.
async fn testkit_eventually<F: std::future::Future<Output = bool>>(
    mut check: impl FnMut() -> F,
) -> bool {
    for _ in 0..600 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The new process, once it runs: the old one's child.
async fn child_of(pid: u32) -> u32 {
    for _ in 0..2_000 {
        // Any of its threads may have started it.
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        for task in tasks.flatten() {
            let children = std::fs::read_to_string(task.path().join("children"));
            let child = children
                .ok()
                .and_then(|c| c.split_whitespace().next()?.parse().ok());
            if let Some(child) = child {
                return child;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("process {pid} started no new process");
}

/// SIGKILLs the new process of an upgrade of `old_pid` once it holds about 100
/// connections' sockets (two each): during the first pass, which takes well under a second,
/// so it is looked at every millisecond.
async fn kill_mid_handover(old_pid: u32) {
    let new_pid = child_of(old_pid).await;
    let baseline = open_descriptors(new_pid);
    let mid = async {
        while open_descriptors(new_pid) < baseline + 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let mid = tokio::time::timeout(Duration::from_secs(30), mid).await;
    assert!(mid.is_ok(), "the new process took connections");
    signal(new_pid, "KILL");
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// The new process killed (SIGKILL) in the middle of the handover: the old one takes back
/// the batch in flight and keeps serving, on the same listeners. Its clients lose no echo;
/// those already handed over were the dead process's and are cut, none of them after a
/// wrong echo; and new clients still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_process_keeps_serving_when_the_new_one_is_killed_mid_handover() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const CLIENTS: usize = 1_000;
    let backend = backend().await;
    let (public, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_gateway-bin"));
    let (mut old, log, before) = start_gateway(binary, public, admin, backend).await;
    let _both = KillOnDrop(admin);
    let (line_tx, upgrade_line) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut log, mut line_tx) = (log, Some(line_tx));
        // Read to the end: the gateway must never find its stdout closed.
        while let Ok(Some(line)) = log.next_line().await {
            if line.starts_with("upgrade:") {
                line_tx.take().map(|tx| tx.send(line));
            }
        }
    });
    let (stop_tx, stop) = watch::channel(false);
    let pace = (Duration::from_millis(200), Arc::new(Semaphore::new(200)));
    let users = connect_all((public, admin), CLIENTS, pace.clone(), &stop).await;

    let old_pid = old.id().unwrap();
    signal(old_pid, "USR2");
    kill_mid_handover(old_pid).await;
    let upgrade = tokio::time::timeout(Duration::from_secs(30), upgrade_line)
        .await
        .expect("the old process reports the upgrade")
        .unwrap();
    let handed: usize = upgrade.split_whitespace().nth(1).unwrap().parse().unwrap();

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        old.try_wait().unwrap().is_none(),
        "the old process still runs"
    );
    let now = replica(admin).await.expect("the old process answers");
    assert_eq!(now["pid"], before["pid"]);
    let newcomer = echo_client(public, CLIENTS, pace.clone(), stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_tx.send_replace(true);
    assert!(
        newcomer.await.unwrap().unwrap() > 0,
        "a new client gets in and is echoed"
    );
    let (mut kept, mut cut) = (0, Vec::new());
    for user in users {
        match user.await.unwrap() {
            Ok(_) => kept += 1,
            Err(why) => cut.push(why),
        }
    }
    signal(old_pid, "TERM");
    eprintln!(
        "killed mid-handover: {upgrade}; {kept} clients kept, {} cut",
        cut.len()
    );
    assert_eq!(
        cut.len(),
        handed,
        "exactly the handed-over clients were cut: {:?}",
        cut.first()
    );
    assert!(handed > 0 && kept > 0, "{upgrade}");
    assert!(
        !cut.iter().any(|why| why.contains(", echo ")),
        "no client saw a wrong echo"
    );
}

/// How a client ended: its echoes, the close code it got, and when.
type Closed = (usize, Option<u16>, Duration);

/// A `wss://` client of `user` trusting `cert`, echoing every 200 ms until the gateway
/// closes it: its echoes, and the close code and when it came (from `since`), or what went
/// wrong before a close.
fn wss_client(
    public: SocketAddr,
    user: usize,
    cert: tokio_rustls::rustls::pki_types::CertificateDer<'static>,
    since: tokio::time::Instant,
) -> JoinHandle<Result<Closed, String>> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_tungstenite::tungstenite::Message;
    tokio::spawn(async move {
        let client = common::client_trusting(&cert);
        let tcp = tokio::net::TcpStream::connect(public)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let url = format!("wss://localhost:{}/connect/{user}", public.port());
        let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
            .await
            .map_err(|e| e.to_string())?;
        ws.next().await; // the greeting
        let mut sent = 0;
        loop {
            let text = format!("{user}:{sent}");
            if ws.send(Message::text(text.clone())).await.is_err() {
                // Closed while sending: the close is read below.
            }
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                Ok(Some(Ok(Message::Text(echo)))) if echo.contains(&format!("\"{text}\"")) => {}
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Ok((sent, frame.map(|f| u16::from(f.code)), since.elapsed()));
                }
                other => return Err(format!("user {user} echo of {sent}: {other:?}")),
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// With TLS on the public listener nothing is handed over (a session's keys live in the
/// process): the old process keeps serving its `wss://` clients through the upgrade, for
/// `shutdown.upgrade_drain`, and then closes them with 1001, each after its last echo; the
/// new process serves new clients meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_websockets_are_served_by_the_old_process_until_the_drain_then_closed_with_1001() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const CLIENTS: usize = 20;
    let (dir, cert) = common::localhost_certificate("wscluster-upgrade-tls");
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n\
             [shutdown]\nupgrade_drain = \"3s\"\nwindow = \"500ms\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let backend = backend().await;
    let (public, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_gateway-bin"));
    let (mut old, mut log, before) =
        start_configured(binary, (public, admin, backend), Some(&config)).await;
    let _both = KillOnDrop(admin);
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let start = tokio::time::Instant::now();
    let users: Vec<_> = (0..CLIENTS)
        .map(|user| wss_client(public, user, cert.der().clone(), start))
        .collect();
    let all_in = testkit_eventually(|| async {
        replica(admin).await.map(|r| r["connections"].as_u64()) == Some(Some(CLIENTS as u64))
    });
    assert!(all_in.await, "all clients connected");

    let signalled = start.elapsed();
    signal(old.id().unwrap(), "USR2");
    let new_pid = child_of(old.id().unwrap()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let newcomer = wss_client(public, CLIENTS, cert.der().clone(), start);
    let exited = tokio::time::timeout(Duration::from_secs(30), old.wait()).await;
    assert!(exited.expect("the old process exits").unwrap().success());
    let after = replica(admin).await.expect("the new process answers");
    assert_eq!(after["pid"].as_u64(), Some(u64::from(new_pid)));
    assert_ne!(after["pid"], before["pid"]);
    for user in users {
        let (echoes, close, at) = user.await.unwrap().expect("echoed until its close");
        assert_eq!(close, Some(1001));
        assert!(
            at >= signalled + Duration::from_secs(3),
            "closed {at:?}, before the drain ended"
        );
        assert!(echoes > 10, "{echoes} echoes");
    }
    assert!(
        !newcomer.is_finished(),
        "the new client is served by the new process"
    );
    signal(new_pid, "TERM");
    let _ = newcomer.await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A reference backend in a process of its own, to be killed; and its address.
fn backend_process(id: &str) -> (Child, String) {
    let address = format!("127.0.0.1:{}", free_port());
    let child = Command::new(wscluster_testkit::wsbackend_binary())
        .args(["--id", id, "--listen", &address])
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, address)
}

/// An upgrade while the ring changes under live traffic: a member joins (its users move
/// live, paced) and, as the upgrade starts, another member's process is killed. Every client
/// either keeps every echo, in order, or is closed with a close frame (1012 or 1001) after
/// its last echo, and can reconnect; none is left hanging, none sees a wrong echo. The
/// upgrade completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_during_a_live_migration_and_a_backend_failure_loses_no_echo() {
    let _alone = ONE_AT_A_TIME.lock().await;
    const CLIENTS: usize = 300;
    let (mut doomed, b) = backend_process("backend-b");
    let (_c_process, c) = backend_process("backend-c");
    let a = backend().await;
    let (public, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_gateway-bin"));
    let backends = [format!("backend-a={a}"), format!("backend-b={b}")];
    let dir = std::env::temp_dir().join(format!("wscluster-upgrade-moving-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    // What cannot be handed over is drained within seconds here.
    std::fs::write(
        &config,
        "[shutdown]\nupgrade_drain = \"5s\"\nwindow = \"1s\"\n",
    )
    .unwrap();
    let (mut old, mut log, before) =
        start_over(binary, (public, admin), &backends, Some(&config)).await;
    let _both = KillOnDrop(admin);
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let (stop_tx, stop) = watch::channel(false);
    let pace = (Duration::from_millis(100), Arc::new(Semaphore::new(200)));
    let users = connect_all((public, admin), CLIENTS, pace, &stop).await;

    let joined = format!("{{\"id\":\"backend-c\",\"address\":\"{c}\"}}");
    let (status, _) = wscluster_testkit::http(admin, "POST", "/admin/backends", &joined).await;
    assert_eq!(status, 201);
    signal(old.id().unwrap(), "USR2");
    doomed.start_kill().unwrap();
    let exited = tokio::time::timeout(Duration::from_secs(60), old.wait()).await;
    assert!(exited.expect("the old process exits").unwrap().success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = replica(admin).await.expect("the new process answers");
    stop_tx.send_replace(true);
    std::fs::remove_dir_all(&dir).ok();
    let (mut untouched, mut closed) = (0, Vec::new());
    for user in users {
        match user.await.unwrap() {
            Ok(_) => untouched += 1,
            Err(why) => closed.push(why),
        }
    }
    signal(after["pid"].as_u64().unwrap() as u32, "TERM");
    eprintln!(
        "{untouched} clients untouched, {} closed; new process: {after}",
        closed.len()
    );
    assert_ne!(after["pid"], before["pid"]);
    let bad: Vec<_> = closed
        .iter()
        .filter(|why| !why.contains("Close(Some(CloseFrame { code: "))
        .collect();
    assert!(
        bad.is_empty(),
        "{} ended without a close frame, first: {:?}",
        bad.len(),
        bad.first()
    );
    assert!(
        untouched > CLIENTS / 3,
        "{untouched} of {CLIENTS} untouched"
    );
}

/// A repeated SIGTERM, as Docker sends on every stop request while a container stops (Swarm's
/// agent asks again when the task changes meanwhile), does not cut the shutdown short: every
/// WebSocket, closed after it too, still gets its 1001, and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_sigterm_still_closes_every_websocket_with_1001() {
    use futures_util::StreamExt;
    let _alone = ONE_AT_A_TIME.lock().await;
    const CLIENTS: usize = 10;
    let dir = std::env::temp_dir().join(format!("wscluster-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("gateway.toml");
    // Closes paced over 2 s: most come after the second SIGTERM.
    std::fs::write(&config, "[shutdown]\nwindow = \"2s\"\n").unwrap();
    let backend = backend().await;
    let (public, admin): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_gateway-bin"));
    let (mut gateway, mut log, _) =
        start_configured(binary, (public, admin, backend), Some(&config)).await;
    let _gone = KillOnDrop(admin);
    tokio::spawn(async move { while let Ok(Some(_)) = log.next_line().await {} });
    let mut clients = Vec::new();
    for user in 0..CLIENTS {
        let url = format!("ws://{public}/connect/{user}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        ws.next().await; // the greeting
        clients.push(ws);
    }
    let pid = gateway.id().unwrap();
    signal(pid, "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(pid, "TERM");
    for (user, mut ws) in clients.into_iter().enumerate() {
        let close = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => {
                        return frame.map(|f| u16::from(f.code));
                    }
                    Some(Ok(_)) => {}
                    other => panic!("user {user}: no close frame: {other:?}"),
                }
            }
        });
        assert_eq!(
            close.await.expect("closed in time"),
            Some(1001),
            "user {user}"
        );
    }
    let exited = tokio::time::timeout(Duration::from_secs(15), gateway.wait()).await;
    assert!(exited.expect("the gateway exits").unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

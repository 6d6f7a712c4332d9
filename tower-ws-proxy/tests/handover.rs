//! `server::handover` with real sockets: the listeners pass to the taking side while a client
//! connects in a tight loop (none refused, none stranded), the offering side keeps serving
//! when the taker dies before serving, and a second offer, a silent taker or another user
//! is refused.
#![cfg(unix)]

use std::{
    os::fd::AsFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tower_ws_proxy::server::handover::{take_listeners, Handover, HandoverError};

fn socket_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "wscluster-handover-{test}-{}.sock",
        std::process::id()
    ))
}

/// Answers every connection on `listener` with `name` and a newline.
fn answer_as(listener: TcpListener, name: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.write_all(format!("{name}\n").as_bytes()).await;
            });
        }
    })
}

/// The offering side's listener, its address, and its accept loop answering "old".
fn old_side() -> (std::net::TcpListener, std::net::SocketAddr, JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let copy = TcpListener::from_std(listener.try_clone().unwrap()).unwrap();
    (listener, address, answer_as(copy, "old"))
}

/// Who answered a new connection to `address`, or why it failed.
async fn who_answers(address: std::net::SocketAddr) -> Result<String, String> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut reader = BufReader::new(tcp);
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(_)) if !line.is_empty() => Ok(line.trim_end().to_owned()),
        _ => Err("accepted by nobody".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connecting_in_a_tight_loop_sees_no_refusal_across_the_handover() {
    let (std_listener, address, old) = old_side();
    let done = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn({
        let done = done.clone();
        async move {
            let mut answers = Vec::new();
            // Bounded: until the handover is over plus 100 more, at most 20,000.
            let mut after = 0;
            while after < 100 && answers.len() < 20_000 {
                answers.push(who_answers(address).await);
                after += usize::from(done.load(Ordering::Acquire));
            }
            answers
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let path = socket_path("loop");
    let handover = Handover::new(&path).deadline(Duration::from_secs(10));
    let taker = tokio::spawn({
        let path = path.clone();
        async move {
            let mut inherited = loop {
                match take_listeners(&path).await {
                    Ok(inherited) => break inherited,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            let listener = inherited.listener("public").expect("the public listener");
            let new = answer_as(TcpListener::from_std(listener).unwrap(), "new");
            inherited.serving().await.unwrap();
            new.abort_handle()
        }
    });
    let taken = handover.offer(&[("public", std_listener.as_fd())]).await;
    assert!(taken.is_ok(), "{taken:?}");
    // Only now does the old side stop accepting: both copies of the socket are closed here.
    old.abort();
    drop(std_listener);
    done.store(true, Ordering::Release);
    let answers = client.await.unwrap();
    let new = taker.await.unwrap();
    let failed: Vec<_> = answers.iter().filter(|a| a.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        answers.len(),
        failed.first()
    );
    let last_old = answers.iter().rposition(|a| a.as_deref() == Ok("old"));
    let first_new = answers.iter().position(|a| a.as_deref() == Ok("new"));
    assert!(
        last_old.is_some() && first_new.is_some(),
        "both sides answered"
    );
    assert_eq!(answers.last().unwrap().as_deref(), Ok("new"));
    assert!(!path.exists(), "the handover socket is removed");
    new.abort();
}

#[tokio::test]
async fn the_offering_side_keeps_serving_when_the_taker_dies_before_serving() {
    let (std_listener, address, old) = old_side();
    let path = socket_path("dies");
    let handover = Handover::new(&path).deadline(Duration::from_secs(10));
    let taker = tokio::spawn({
        let path = path.clone();
        async move {
            loop {
                if let Ok(inherited) = take_listeners(&path).await {
                    assert_eq!(inherited.names(), ["public"]);
                    // Dies holding the listener, before it serves.
                    return drop(inherited);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let offered = handover.offer(&[("public", std_listener.as_fd())]).await;
    assert!(
        matches!(offered, Err(HandoverError::Protocol(_))),
        "{offered:?}"
    );
    taker.await.unwrap();
    for _ in 0..20 {
        assert_eq!(who_answers(address).await.as_deref(), Ok("old"));
    }
    old.abort();
}

#[tokio::test]
async fn a_second_offer_while_one_runs_is_refused_and_a_silent_taker_times_out() {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = socket_path("twice");
    let handover = Handover::new(&path).deadline(Duration::from_millis(500));
    let first = tokio::spawn({
        let handover = handover.clone();
        let fd = std_listener.try_clone().unwrap();
        async move { handover.offer(&[("public", fd.as_fd())]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = handover.offer(&[("public", std_listener.as_fd())]).await;
    assert!(
        matches!(second, Err(HandoverError::InProgress)),
        "{second:?}"
    );
    assert!(second
        .unwrap_err()
        .to_string()
        .contains("already in progress"));
    // Nobody takes the first one: it ends at its deadline, and the next may run.
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(HandoverError::TimedOut(_))),
        "{first:?}"
    );
    assert!(!path.exists());
    let again = handover.offer(&[("public", std_listener.as_fd())]).await;
    assert!(
        matches!(again, Err(HandoverError::TimedOut(_))),
        "{again:?}"
    );
}

/// Another user cannot even connect: the socket is the owner's alone (mode 0600). Needs
/// root and `setpriv` to run a client as `nobody`.
#[tokio::test]
async fn another_user_cannot_reach_the_handover_socket() {
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    if !rustix::process::getuid().is_root() || !setpriv.exists() {
        eprintln!("SKIPPED: needs root and setpriv");
        return;
    }
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let path = socket_path("user");
    let handover = Handover::new(&path).deadline(Duration::from_secs(3));
    let offer = tokio::spawn({
        let handover = handover.clone();
        async move { handover.offer(&[("public", std_listener.as_fd())]).await }
    });
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let script = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect({:?})",
        path.to_str().unwrap()
    );
    let output = tokio::process::Command::new(setpriv)
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "python3",
            "-c",
            &script,
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert!(matches!(
        offer.await.unwrap(),
        Err(HandoverError::TimedOut(_))
    ));
}

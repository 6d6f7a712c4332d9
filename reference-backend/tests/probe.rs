//! `wsbackend --probe`, the health check of images without a shell: 0 on a healthy
//! backend's `/health`, not 0 on a draining one or where nothing listens.

use std::process::Command;

use reference_backend::ReferenceBackend;

fn probe(url: &str) -> bool {
    Command::new(env!("CARGO_BIN_EXE_wsbackend"))
        .args(["--probe", url])
        .status()
        .expect("wsbackend runs")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_on_a_healthy_backend_only() {
    let listener = ReferenceBackend::listen(([127, 0, 0, 1], 0).into()).unwrap();
    let address = listener.local_addr().unwrap();
    let backend = ReferenceBackend::new("probed");
    tokio::spawn(backend.clone().serve(listener, std::future::pending()));
    let url = format!("http://{address}/health");
    let healthy = tokio::task::spawn_blocking({
        let url = url.clone();
        move || probe(&url)
    });
    assert!(healthy.await.unwrap(), "a healthy backend passes");
    drop(backend);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = format!("http://{}/health", closed.local_addr().unwrap());
    drop(closed);
    let refused = tokio::task::spawn_blocking(move || probe(&nowhere));
    assert!(!refused.await.unwrap(), "nothing listening fails");
}

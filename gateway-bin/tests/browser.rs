//! The dashboard in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) driven by `tests/browser/dashboard.py` (Python `selenium`) against a
//! demo gateway with 3 in-process backends (and, over plaintext, a replica that disagrees). With `DASHBOARD_SCREENSHOT=path.png` it saves a
//! screenshot of the page at the end (how `docs/dashboard.png` is made).

mod common;

use std::time::Duration;

use common::*;
use gateway_bin::{
    admin_access::AdminToken,
    config::{ClusterConfig, GatewayConfig},
};

const TOKEN: &str = "browser-test-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium() {
    if !wscluster_testkit::browser_available() {
        return;
    }
    // A replica of the gateway whose ring differs (one absent backend of its own): the
    // replica view marks it.
    let mut replica = any_port();
    replica.admin.token = Some(AdminToken::new(TOKEN).unwrap());
    let backends = vec![("backend-x".into(), "127.0.0.1:9".parse().unwrap())];
    let replica = gateway_bin::gateway::Gateway::start(replica, backends)
        .await
        .unwrap();
    let mut config = any_port();
    config.admin.token = Some(AdminToken::new(TOKEN).unwrap());
    config.cluster = Some(ClusterConfig {
        peers: vec![replica.admin],
        interval: Duration::from_millis(300),
        ..ClusterConfig::default()
    });
    let gateway = gateway_bin::demo::start(config, vec![], 3).await.unwrap();
    let mut command = dashboard_checks(&format!("http://{}", gateway.admin));
    command.env("REPLICA", replica.admin.to_string());
    if let Some(path) = std::env::var_os("DASHBOARD_SCREENSHOT") {
        command.env("SCREENSHOT", path);
    }
    run(command).await;
}

/// The same checks over HTTPS, both listeners on TLS: the card's WebSocket rides the page's
/// HTTP/2 connection to the public listener as an extended CONNECT, and a live move keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_https_the_dashboards_websockets_ride_http2() {
    if !wscluster_testkit::browser_available() {
        return;
    }
    let (dir, _) = common::localhost_certificate("wscluster-browser-tls");
    let file = GatewayConfig::parse(&format!(
        "[admin]\ntoken = \"{TOKEN}\"\ntls = true\n[tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"",
        dir.display()
    ))
    .unwrap();
    let config = GatewayConfig {
        admin: file.admin,
        tls: file.tls,
        ..any_port()
    };
    let gateway = gateway_bin::demo::start(config, vec![], 3).await.unwrap();
    run(dashboard_checks(&format!("https://{}", gateway.admin))).await;
    std::fs::remove_dir_all(&dir).ok();
}

/// `tests/browser/dashboard.py` against the admin listener at `admin`.
fn dashboard_checks(admin: &str) -> tokio::process::Command {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/dashboard.py");
    let mut command = tokio::process::Command::new("python3");
    command
        .arg(script)
        .env("ADMIN", admin)
        .env("TOKEN", TOKEN)
        .kill_on_drop(true);
    command
}

async fn run(mut command: tokio::process::Command) {
    let run = tokio::time::timeout(Duration::from_secs(180), command.output());
    let output = run
        .await
        .expect("the browser checks end within 3 minutes")
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

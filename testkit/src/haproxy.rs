//! HAProxy in TCP mode in front of one server, sending it a PROXY protocol v2 header per
//! connection, as an L4 balancer in front of gateways does.

use std::net::SocketAddr;

use tokio::process::{Child, Command};

use crate::{free_port, installed, skipped};

/// A running `haproxy` (Debian's package) that forwards `127.0.0.1:<port>` to one server with
/// `send-proxy-v2`; killed when dropped.
#[derive(Debug)]
pub struct HaproxyTcp {
    address: SocketAddr,
    _child: Child,
    dir: std::path::PathBuf,
}

impl HaproxyTcp {
    /// Starts one in front of `server` and waits until it accepts; `None` (skip) where
    /// `haproxy` is not installed and `CI` is not set.
    pub async fn start(server: SocketAddr) -> Option<Self> {
        if !installed("haproxy") {
            assert!(
                std::env::var_os("CI").is_none(),
                "haproxy is not installed: `apt-get install haproxy` (.ci/run does)"
            );
            skipped("haproxy is not installed (apt-get install haproxy)");
            return None;
        }
        let address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir = std::env::temp_dir().join(format!("wscluster-haproxy-{}", address.port()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
                 timeout server 30s\nfrontend front\n  bind {address}\n  default_backend gw\n\
                 backend gw\n  server gw {server} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "haproxy never listened on {address}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Some(Self {
            address,
            _child: child,
            dir,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for HaproxyTcp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

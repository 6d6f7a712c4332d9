//! Real servers for the integration tests in `tests/`: each test starts its own, on a free
//! loopback port, and stops it when dropped.
//!
//! The servers come from Debian's packages (`apt-get install redis-server`); `.ci/run`
//! installs them. Where one is missing a test is skipped with a message, unless `CI` is set:
//! there a missing server fails the test.

mod gateway;
mod haproxy;
mod members;
mod multinode;

pub use self::{
    gateway::{add_backend, eventually, http, http_raw, ring_members, ring_of, wait_for_members},
    haproxy::HaproxyTcp,
    members::members_until,
    multinode::MultinodeSwarm,
};

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

/// The `wsbackend` binary of this build (the reference backend, standalone), for tests
/// that need a backend in a process of its own (killed with SIGKILL, say). `cargo test
/// --workspace` builds it; a test binary run on its own builds it first.
///
/// ```no_run
/// let backend = std::process::Command::new(wscluster_testkit::wsbackend_binary())
///     .args(["--id", "backend-a", "--listen", "127.0.0.1:7100"])
///     .spawn();
/// ```
pub fn wsbackend_binary() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            // A test binary runs from target/<profile>/deps; the binaries sit one up.
            let exe = std::env::current_exe().expect("the test binary's path");
            let profile_dir = exe
                .parent()
                .and_then(std::path::Path::parent)
                .expect("target/<profile>");
            let binary = profile_dir.join("wsbackend");
            if binary.exists() {
                // `cargo test --workspace` built it with everything else.
                return binary;
            }
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build.args([
                "build",
                "-q",
                "-p",
                "reference-backend",
                "--bin",
                "wsbackend",
            ]);
            if profile_dir
                .file_name()
                .is_some_and(|name| name == "release")
            {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "cannot build wsbackend");
            assert!(binary.exists(), "{} is missing", binary.display());
            binary
        })
        .clone()
}

/// A `redis-server` of this test's own, on loopback, with no persistence.
///
/// ```no_run
/// # async fn f() {
/// let Some(redis) = wscluster_testkit::RedisServer::start().await else { return };
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
            skipped("redis-server is not installed (apt-get install redis-server)");
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

/// Says that the running test is skipped, past the test harness's output capture (which
/// would hide it for a test that "passes"), as a `SKIPPED:` line that `.ci/run` counts: the
/// harness itself can only report the test as passed.
pub fn skipped(why: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

/// Headless Chromium for browser tests: Debian's `chromium` and `chromium-driver`, and
/// Python's `selenium` to drive them. `false` (skip) where one is missing and `CI` is not
/// set.
pub fn browser_available() -> bool {
    let selenium = std::process::Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|out| out.status.success());
    let missing: Vec<&str> = [
        (!installed("chromium")).then_some("chromium"),
        (!installed("chromedriver")).then_some("chromium-driver"),
        (!selenium).then_some("python3 selenium"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} missing: `apt-get install chromium chromium-driver python3-pip && pip install selenium` (.ci/run does)",
        missing.join(", ")
    );
    assert!(std::env::var_os("CI").is_none(), "{why}");
    skipped(&why);
    false
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
/// let Some(broker) = wscluster_testkit::RabbitMq::running().await else { return };
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
        skipped("no RabbitMQ on 127.0.0.1:5672 (apt-get install rabbitmq-server)");
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

/// The local Docker engine with the `wscluster-backend` image (built by
/// `docker/build-images.sh`, which `.ci/run` calls), and a bridge network of this
/// test's own; everything the test created is removed when this is dropped.
///
/// ```no_run
/// # async fn f() {
/// let Some(docker) = wscluster_testkit::DockerHost::start("demo").await else { return };
/// assert!(docker.network().starts_with("wscluster-test-"));
/// # }
/// ```
#[derive(Debug)]
pub struct DockerHost {
    network: String,
    label_value: String,
}

impl DockerHost {
    /// Checks the engine and the image, and creates the network; `None` (skip) where either
    /// is missing and `CI` is not set.
    pub async fn start(name: &str) -> Option<Self> {
        let image = Command::new("docker")
            .args(["image", "inspect", "wscluster-backend"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if !image.is_ok_and(|s| s.success()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "no docker engine or no wscluster-backend image: run docker/build-images.sh"
            );
            skipped("no docker or no wscluster-backend image (docker/build-images.sh)");
            return None;
        }
        let suffix = format!("{name}-{}", std::process::id());
        let network = format!("wscluster-test-{suffix}");
        docker(&["network", "create", &network]).await;
        Some(Self {
            network,
            label_value: format!("wstest-{suffix}"),
        })
    }

    /// The test's network.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// A service name (label value) of this test's own.
    pub fn service(&self) -> &str {
        &self.label_value
    }

    /// Runs a container of the backend image on the network without our label.
    pub async fn run_unlabelled(&self, name: &str) {
        docker(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &self.network,
            "--label",
            &format!("wscluster.test={}", self.label_value),
            "wscluster-backend",
            "--id",
            name,
            "--listen",
            "0.0.0.0:7100",
        ])
        .await;
    }

    /// Runs a container of the backend image on the network as one of this test's service,
    /// with `labels` (`key=value`) besides the service label.
    pub async fn run_labelled(&self, name: &str, labels: &[&str]) {
        let service = format!("wscluster.service={}", self.label_value);
        let mut args = vec!["run", "-d", "--name", name, "--network", &self.network];
        for label in std::iter::once(service.as_str()).chain(labels.iter().copied()) {
            args.extend(["--label", label]);
        }
        args.extend([
            "wscluster-backend",
            "--id",
            name,
            "--listen",
            "0.0.0.0:7100",
        ]);
        docker(&args).await;
    }

    /// Whether container `name` is running.
    pub async fn running(&self, name: &str) -> bool {
        let output = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", name])
            .output()
            .await
            .expect("docker runs");
        String::from_utf8_lossy(&output.stdout).trim() == "true"
    }

    /// The names of this test's service's containers, running or not.
    pub async fn containers(&self) -> Vec<String> {
        let label = format!("label=wscluster.service={}", self.label_value);
        let output = Command::new("docker")
            .args(["ps", "-a", "--filter", &label, "--format", "{{.Names}}"])
            .output()
            .await
            .expect("docker runs");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Container `name`'s memory (bytes), CPU (billionths) and pids limits.
    pub async fn limits(&self, name: &str) -> (i64, i64, i64) {
        let format = "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}";
        let output = Command::new("docker")
            .args(["inspect", "-f", format, name])
            .output()
            .await
            .expect("docker runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let values: Vec<i64> = text
            .split_whitespace()
            .map(|v| v.parse().expect("a number"))
            .collect();
        (values[0], values[1], values[2])
    }

    /// Stops container `name` the way an operator would (`docker stop`, 20 s grace).
    pub async fn stop(&self, name: &str) {
        docker(&["stop", "-t", "20", name]).await;
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        // Whatever this test created: its service's containers, its unlabelled ones, its
        // network.
        for label in [
            format!("wscluster.service={}", self.label_value),
            format!("wscluster.test={}", self.label_value),
        ] {
            let ids = std::process::Command::new("docker")
                .args(["ps", "-aq", "--filter", &format!("label={label}")])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            if !ids.is_empty() {
                let _ = std::process::Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .status();
            }
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network])
            .stdout(Stdio::null())
            .status();
    }
}

async fn docker(args: &[&str]) {
    let status = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .expect("docker runs");
    assert!(status.success(), "docker {args:?} failed");
}

//! Swarm discovery on a real single-node swarm (created and left by the test when the
//! engine is not in one already): a labelled Swarm service's running tasks are members with
//! ids stable per replica slot, a replaced task takes back its slot's id, and a scale-up adds
//! the next slot. Bounded: every wait gives up after a minute.

use std::{collections::BTreeMap, time::Duration};

use discovery::{Backend, MemberChanges, SwarmSource};
use futures_util::StreamExt;
use tokio::process::Command;
use tower::discover::Change;

async fn docker(args: &[&str]) -> String {
    let output = Command::new("docker")
        .args(args)
        .output()
        .await
        .expect("docker runs");
    assert!(
        output.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A swarm for the test, its overlay network and its service; all removed when dropped
/// (and the swarm left, if the test created it).
struct SwarmHost {
    created_swarm: bool,
    network: String,
    service: String,
    label: String,
}

impl SwarmHost {
    async fn start() -> Option<Self> {
        let image = Command::new("docker")
            .args(["image", "inspect", "wscluster-backend"])
            .output()
            .await;
        if !image.is_ok_and(|o| o.status.success()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "no docker engine or no wscluster-backend image: run docker/build-images.sh"
            );
            wscluster_tests::skipped(
                "no docker or no wscluster-backend image (docker/build-images.sh)",
            );
            return None;
        }
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]).await;
        let created_swarm = state != "active";
        if created_swarm {
            docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]).await;
        }
        let suffix = std::process::id();
        let host = Self {
            created_swarm,
            network: format!("wstest-swarm-net-{suffix}"),
            service: format!("wstest-swarm-{suffix}"),
            label: format!("wstest-swarm-{suffix}"),
        };
        docker(&[
            "network",
            "create",
            "-d",
            "overlay",
            "--attachable",
            &host.network,
        ])
        .await;
        Some(host)
    }

    async fn deploy(&self, replicas: u32) {
        let replicas = replicas.to_string();
        let label = format!("wscluster.service={}", self.label);
        docker(&[
            "service",
            "create",
            "--detach",
            "--name",
            &self.service,
            "--replicas",
            &replicas,
            "--network",
            &self.network,
            "--endpoint-mode",
            "dnsrr",
            "--label",
            &label,
            "--label",
            "wscluster.port=7100",
            "--env",
            "WSBACKEND_ID={{.Service.Name}}.{{.Task.Slot}}",
            "wscluster-backend",
        ])
        .await;
    }
}

impl Drop for SwarmHost {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = std::process::Command::new("docker").args(args).output();
        };
        run(&["service", "rm", &self.service]);
        // The service's containers go first; the network can only go after them.
        for _ in 0..50 {
            let left = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-q",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={}", self.service),
                ])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false);
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        run(&["network", "rm", &self.network]);
        if self.created_swarm {
            run(&["swarm", "leave", "--force"]);
        }
    }
}

/// Applies changes until `done` holds; panics after a minute.
async fn until(
    stream: &mut MemberChanges,
    members: &mut BTreeMap<String, Backend>,
    done: impl Fn(&BTreeMap<String, Backend>) -> bool,
) {
    wscluster_tests::members_until(stream, members, Duration::from_secs(60), done).await;
}

#[tokio::test]
async fn swarm_tasks_are_members_with_ids_stable_per_slot() {
    let Some(host) = SwarmHost::start().await else {
        return;
    };
    host.deploy(3).await;
    let mut stream = SwarmSource::new(host.label.as_str())
        .network(host.network.as_str())
        .resync(Duration::from_millis(200))
        .discover();
    let mut members = BTreeMap::new();
    let slots =
        |n: u32| -> Vec<String> { (1..=n).map(|s| format!("{}.{s}", host.service)).collect() };
    let expected = slots(3);
    until(&mut stream, &mut members, |m| {
        m.keys().cloned().collect::<Vec<_>>() == expected
    })
    .await;
    for backend in members.values() {
        assert_eq!(backend.address.port(), 7100, "{backend:?}");
        assert!(
            !backend.address.ip().is_loopback(),
            "a task address: {backend:?}"
        );
    }

    // A task's container dies: Swarm replaces it, and the slot's id comes back.
    let slot_two = format!("{}.2", host.service);
    let container = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.swarm.service.name={}", host.service),
        "--filter",
        &format!("name={}.2.", host.service),
    ])
    .await;
    assert!(!container.is_empty(), "slot 2's container");
    docker(&["rm", "-f", &container]).await;
    // Either it leaves and comes back, or it comes back at once at a new address.
    let changed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.next().await {
                Some(Ok(Change::Insert(id, backend))) => {
                    let id = id.to_string();
                    let done = id == slot_two;
                    members.insert(id, backend);
                    if done {
                        return;
                    }
                }
                Some(Ok(Change::Remove(id))) => {
                    members.remove(id.as_str());
                    if id.as_str() == slot_two {
                        return;
                    }
                }
                other => panic!("the stream ended: {other:?}"),
            }
        }
    });
    changed
        .await
        .expect("slot 2's replacement seen within a minute");
    until(&mut stream, &mut members, |m| {
        m.keys().cloned().collect::<Vec<_>>() == expected
    })
    .await;

    // A scale-up adds the next slot.
    docker(&[
        "service",
        "scale",
        "--detach",
        &format!("{}=4", host.service),
    ])
    .await;
    let four = slots(4);
    until(&mut stream, &mut members, |m| {
        m.keys().cloned().collect::<Vec<_>>() == four
    })
    .await;
}

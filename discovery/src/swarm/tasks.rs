//! The Swarm tasks API, read with a typed model of our own: bollard's `Task` has no
//! `NetworksAttachments`, where a manager keeps each task's overlay address for tasks on
//! every node. (Inspecting a task's container works only on the node that runs it.)

use std::{collections::HashMap, net::IpAddr, time::Duration};

use http_body_util::{BodyExt, Empty};
use hyper::{body::Bytes, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{de::DeserializeOwned, Deserialize};
use tokio::net::{TcpStream, UnixStream};

use crate::docker::DockerError;

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{path}"),
            Self::Tcp(address) => write!(f, "tcp://{address}"),
        }
    }
}

/// A task as `GET /tasks` describes it: what membership needs and nothing more.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SwarmTask {
    /// The replica slot (absent for global services).
    pub(crate) slot: Option<u64>,
    /// The node the task is scheduled on.
    #[serde(rename = "NodeID")]
    pub(crate) node_id: Option<String>,
    pub(crate) status: Option<TaskStatus>,
    #[serde(default)]
    pub(crate) networks_attachments: Vec<NetworkAttachment>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TaskStatus {
    /// `running` once its container runs, and, where it has a health check, is healthy:
    /// Swarm holds a task in `starting` until then, and fails it when it turns unhealthy.
    pub(crate) state: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NetworkAttachment {
    network: Option<AttachedNetwork>,
    /// CIDR notation: `10.0.1.5/24`.
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AttachedNetwork {
    spec: Option<NetworkSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NetworkSpec {
    name: Option<String>,
    #[serde(default)]
    ingress: bool,
}

impl SwarmTask {
    /// Whether Swarm reports it running (and so healthy, where it has a check).
    pub(crate) fn is_running(&self) -> bool {
        self.status.as_ref().and_then(|s| s.state.as_deref()) == Some("running")
    }

    /// Its address on `network`, or on its first network other than the ingress.
    pub(crate) fn address(&self, network: Option<&str>) -> Option<IpAddr> {
        let attachment = self.networks_attachments.iter().find(|attachment| {
            let spec = attachment.network.as_ref().and_then(|n| n.spec.as_ref());
            match (network, spec) {
                (Some(wanted), Some(spec)) => spec.name.as_deref() == Some(wanted),
                (None, Some(spec)) => !spec.ingress && spec.name.as_deref() != Some("ingress"),
                (_, None) => false,
            }
        })?;
        let cidr = attachment.addresses.first()?;
        cidr.split('/').next()?.parse().ok()
    }
}

/// Where the engine's API is: `DOCKER_HOST` (`unix:///…` or `tcp://host[:port]`, port 2375
/// by default, as for the docker CLI and bollard), else the local socket. A gateway on a
/// worker node points it at a manager's API, since only managers answer the Swarm APIs.
/// TLS (`DOCKER_TLS_VERIFY`, `https://`) and `ssh://` are refused with the reason: the
/// source would otherwise send the request in plaintext to an engine expecting TLS.
#[derive(Clone, Debug)]
pub(crate) enum Engine {
    Unix(String),
    Tcp(String),
}

impl Engine {
    pub(crate) fn from_env() -> Result<Self, DockerError> {
        let tls = std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty());
        Self::parse(std::env::var("DOCKER_HOST").ok().as_deref(), tls)
    }

    fn parse(docker_host: Option<&str>, tls: bool) -> Result<Self, DockerError> {
        let refuse = |why| {
            Err(DockerError::UnsupportedHost {
                host: docker_host.unwrap_or_default().to_owned(),
                why,
            })
        };
        let Some(host) = docker_host.filter(|host| !host.is_empty()) else {
            return Ok(Self::Unix("/var/run/docker.sock".to_owned()));
        };
        let (scheme, rest) = host.split_once("://").unwrap_or(("tcp", host));
        match scheme {
            "unix" => Ok(Self::Unix(rest.to_owned())),
            "tcp" | "http" if tls => refuse(
                "DOCKER_TLS_VERIFY is set, and Swarm discovery does not speak TLS to the engine: \
                 mount a manager's socket, or reach its API on a private network without TLS",
            ),
            "tcp" | "http" => {
                let address = rest.trim_end_matches('/');
                // The docker CLI's default port for a plaintext engine.
                let has_port = address
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
                    && !address.ends_with(']');
                Ok(Self::Tcp(if has_port {
                    address.to_owned()
                } else {
                    format!("{address}:2375")
                }))
            }
            "https" => {
                refuse("Swarm discovery does not speak TLS to the engine: use a manager's socket")
            }
            _ => refuse("Swarm discovery reaches the engine by unix:// or tcp:// only"),
        }
    }

    /// The running tasks of a Swarm service, with their networks.
    pub(crate) async fn running_tasks(&self, service: &str) -> Result<Vec<SwarmTask>, DockerError> {
        let filters = serde_json::json!({ "service": [service], "desired-state": ["running"] });
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("filters", &filters.to_string())
            .finish();
        self.get(&format!("/tasks?{query}")).await
    }

    /// The hostnames of the swarm's nodes, by node id.
    pub(crate) async fn node_names(&self) -> Result<HashMap<String, String>, DockerError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Node {
            #[serde(rename = "ID")]
            id: String,
            description: Option<Description>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Description {
            hostname: Option<String>,
        }
        let nodes: Vec<Node> = self.get("/nodes").await?;
        Ok(nodes
            .into_iter()
            .filter_map(|node| Some((node.id, node.description?.hostname?)))
            .collect())
    }

    /// One GET on a connection of its own, bounded by 10 s.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, DockerError> {
        let fetched = async {
            let unreachable = |e: std::io::Error| DockerError::Api(format!("{self}: {e}"));
            let body = match self {
                Self::Unix(socket) => {
                    let stream = UnixStream::connect(socket).await.map_err(unreachable)?;
                    fetch(stream, path).await?
                }
                Self::Tcp(address) => {
                    let stream = TcpStream::connect(address).await.map_err(unreachable)?;
                    fetch(stream, path).await?
                }
            };
            serde_json::from_slice(&body).map_err(|e| DockerError::Api(format!("GET {path}: {e}")))
        };
        tokio::time::timeout(Duration::from_secs(10), fetched)
            .await
            .map_err(|_| DockerError::Api(format!("GET {path}: no answer within 10 s")))?
    }
}

/// The most an answer of the engine may weigh (32 MiB: tens of thousands of tasks).
const MAX_BODY: usize = 32 << 20;

async fn fetch<S>(stream: S, path: &str) -> Result<Bytes, DockerError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let api = |e: hyper::Error| DockerError::Api(format!("GET {path}: {e}"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(api)?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| DockerError::Api(format!("GET {path}: {e}")))?;
    let response = sender.send_request(request).await.map_err(api)?;
    let status = response.status();
    // Bounded: a broken or hostile engine (it may be a remote one) cannot grow this forever.
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| DockerError::Api(format!("GET {path}: {e}")))?
        .to_bytes();
    if status != StatusCode::OK {
        let message = String::from_utf8_lossy(&body);
        return Err(DockerError::Api(format!(
            "GET {path}: {status}: {}",
            message.trim()
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task as a manager lists it (trimmed), with the ingress and a stack overlay.
    const TASK: &str = r#"{
        "ID": "x1", "Slot": 2, "NodeID": "n3",
        "Status": { "State": "running", "ContainerStatus": { "ContainerID": "c" } },
        "NetworksAttachments": [
            { "Network": { "ID": "i", "Spec": { "Name": "ingress", "Ingress": true } },
              "Addresses": ["10.0.0.9/24"] },
            { "Network": { "ID": "o", "Spec": { "Name": "chat_backends" } },
              "Addresses": ["10.0.1.7/24"] }
        ]
    }"#;

    #[test]
    fn a_task_is_reached_on_the_named_network_or_the_first_that_is_not_the_ingress() {
        let task: SwarmTask = serde_json::from_str(TASK).unwrap();
        assert!(task.is_running());
        assert_eq!(task.slot, Some(2));
        assert_eq!(task.node_id.as_deref(), Some("n3"));
        let overlay: IpAddr = "10.0.1.7".parse().unwrap();
        assert_eq!(task.address(None), Some(overlay));
        assert_eq!(task.address(Some("chat_backends")), Some(overlay));
        assert_eq!(
            task.address(Some("ingress")),
            Some("10.0.0.9".parse().unwrap())
        );
        assert_eq!(task.address(Some("elsewhere")), None);
    }

    #[test]
    fn a_task_not_running_or_without_networks_has_no_address_to_use() {
        let starting: SwarmTask =
            serde_json::from_str(r#"{ "Slot": 1, "Status": { "State": "starting" } }"#).unwrap();
        assert!(!starting.is_running());
        assert_eq!(starting.address(None), None);
    }

    fn tcp(host: &str) -> String {
        match Engine::parse(Some(host), false) {
            Ok(Engine::Tcp(address)) => address,
            other => panic!("{host}: {other:?}"),
        }
    }

    #[test]
    fn docker_host_picks_the_engine() {
        assert!(
            matches!(Engine::parse(None, false), Ok(Engine::Unix(path)) if path == "/var/run/docker.sock")
        );
        assert!(
            matches!(Engine::parse(Some("unix:///run/n1.sock"), false), Ok(Engine::Unix(path)) if path == "/run/n1.sock")
        );
        assert_eq!(tcp("tcp://10.231.0.11:2375"), "10.231.0.11:2375");
        assert_eq!(tcp("tcp://manager-1"), "manager-1:2375");
        assert_eq!(tcp("tcp://[fd00::1]"), "[fd00::1]:2375");
        assert_eq!(tcp("tcp://[fd00::1]:4243/"), "[fd00::1]:4243");
    }

    #[test]
    fn an_engine_it_cannot_speak_to_is_refused_with_the_reason() {
        for (host, tls, reason) in [
            ("tcp://manager-1:2376", true, "DOCKER_TLS_VERIFY"),
            ("https://manager-1:2376", false, "TLS"),
            ("ssh://admin@manager-1", false, "unix:// or tcp://"),
        ] {
            let error = Engine::parse(Some(host), tls).unwrap_err().to_string();
            assert!(error.contains(host) && error.contains(reason), "{error}");
        }
    }
}

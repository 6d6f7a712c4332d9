//! Docker: containers carrying a service label are members; the admin API can start and
//! stop more of them. Only ever through the local socket, and only labelled containers.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bollard::{
    models::{ContainerCreateBody, ContainerInspectResponse, HealthStatusEnum, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
        RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    },
    Docker,
};
use futures_util::StreamExt;
use tower::discover::Change;
use tower_hashring::NodeId;

use crate::{
    backoff::{Backoff, Reconnect},
    changes::ChangeSender,
    source_errors::SourceErrors,
    Backend, MemberChanges, MemberSet,
};
#[cfg(feature = "metrics")]
use crate::{DiscoveryMetrics, Source};

/// The label that names a container's service.
pub const SERVICE_LABEL: &str = "wscluster.service";
/// The label of a gateway service's own Swarm service (`wscluster.gateway=<name>`), by which
/// gateway replicas find each other; see [`SwarmSource::label`](crate::SwarmSource::label).
pub const GATEWAY_LABEL: &str = "wscluster.gateway";
/// The label that gives the port a container's backend listens on (default 7100).
pub const PORT_LABEL: &str = "wscluster.port";
/// The label that gives its weight (default 1).
pub const WEIGHT_LABEL: &str = "wscluster.weight";

/// Docker could not be reached, or refused.
///
/// ```
/// use discovery::DockerError;
///
/// let error = DockerError::NotOurs("postgres".into());
/// assert_eq!(error.to_string(), "container postgres does not carry our service label");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DockerError {
    /// The engine answered with an error, or could not be reached.
    #[error("docker: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// A request the engine's API answered with an error, or did not answer in time.
    #[error("docker: {0}")]
    Api(String),
    /// The container exists but is not one of ours: it is never touched.
    #[error("container {0} does not carry our service label")]
    NotOurs(String),
    /// No such container.
    #[error("no container {0}")]
    NotFound(String),
    /// The instance cap is reached.
    #[error("the service already runs {0} containers, its cap")]
    AtCap(usize),
    /// The Swarm service exists but does not carry our service label: never touched.
    #[error("Swarm service {0} does not carry our service label")]
    ServiceNotOurs(String),
    /// No Swarm service carries the label, or it is not a replicated one.
    #[error("no replicated Swarm service for {0}")]
    NoService(String),
    /// Several Swarm services carry the label: which to scale is not ours to guess.
    #[error("several Swarm services carry our service label ({0}): scale one by hand")]
    SeveralServices(String),
    /// The Swarm service runs as many replicas as allowed (the cap, or the floor of 1).
    #[error("Swarm service {service} already runs {replicas} replicas, its {bound}")]
    AtBound {
        /// The service.
        service: String,
        /// Its replicas.
        replicas: u64,
        /// `cap` or `floor`.
        bound: &'static str,
    },
    /// Another update of the Swarm service came first: read it again and retry.
    #[error("Swarm service {0} was updated meanwhile: retry")]
    Concurrent(String),
    /// `DOCKER_HOST` names an engine this source cannot speak to.
    #[error("DOCKER_HOST={host}: {why}")]
    UnsupportedHost {
        /// The value.
        host: String,
        /// Why, and what works instead.
        why: &'static str,
    },
}

/// Where the members of a service run on Docker: containers labelled
/// `wscluster.service=<service>`, reached at their address on `network` (or their first
/// network) and the port in their `wscluster.port` label.
///
/// ```no_run
/// use discovery::DockerSource;
///
/// let members = DockerSource::new("chat").network("wscluster").discover();
/// # let _ = members;
/// ```
#[derive(Clone, Debug)]
pub struct DockerSource {
    service: String,
    network: Option<String>,
    errors: SourceErrors,
    inspections: Arc<AtomicU64>,
}

impl DockerSource {
    /// The containers of `service`.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            network: None,
            errors: SourceErrors::default(),
            inspections: Arc::default(),
        }
    }

    /// How many containers [`discover`](Self::discover) inspected so far: each one once
    /// per connection to the engine, then one per event of a labelled container.
    pub fn inspections(&self) -> u64 {
        self.inspections.load(Ordering::Relaxed)
    }

    /// Counts the errors of [`discover`](Self::discover) (a lost engine) into `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: DiscoveryMetrics) -> Self {
        self.errors = SourceErrors::new(metrics, Source::docker);
        self
    }

    /// Reach containers on this network.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// Follows the containers of the service: the engine's event stream starts from just
    /// before the containers are listed (so no change falls between the two); then each
    /// event costs one inspection of the container it names, never a new listing, so the
    /// work per event does not grow with the service. Repeated events change nothing, and a
    /// broken event stream is followed by a fresh list. While Docker is unreachable nothing
    /// is yielded.
    pub fn discover(&self) -> MemberChanges {
        let this = self.clone();
        MemberChanges::spawn(|changes| follow(this, changes))
    }

    /// The backend a container is, if it runs, has valid labels (a bad port or weight is
    /// logged and counted), is healthy (where it has a health check) and has an address.
    fn backend(&self, container: &ContainerInspectResponse) -> Option<Backend> {
        let state = container.state.as_ref()?;
        if state.running != Some(true) || state.paused == Some(true) {
            return None;
        }
        let labels = container.config.as_ref()?.labels.as_ref()?;
        if labels.get(SERVICE_LABEL) != Some(&self.service) {
            return None;
        }
        let name = container.name.as_deref()?.trim_start_matches('/');
        let (port, weight) = member_labels(labels, name, &self.errors)?;
        // Labels first: a bad one is reported while the container is still starting.
        let health = state.health.as_ref().and_then(|h| h.status);
        if matches!(
            health,
            Some(HealthStatusEnum::STARTING | HealthStatusEnum::UNHEALTHY)
        ) {
            return None;
        }
        let networks = container.network_settings.as_ref()?.networks.as_ref()?;
        let endpoint = match &self.network {
            Some(network) => networks.get(network)?,
            None => networks.values().next()?,
        };
        let ip: IpAddr = endpoint.ip_address.as_deref()?.parse().ok()?;
        Some(Backend::new(name, (ip, port).into()).weight(weight))
    }
}

/// The port and weight a member's labels give (7100 and 1 where absent). A label that is
/// there must be valid: a typo is logged, counted against `source`, and leaves the member
/// out (`None`) rather than becoming a silent default.
pub(crate) fn member_labels(
    labels: &HashMap<String, String>,
    name: &str,
    errors: &SourceErrors,
) -> Option<(u16, u32)> {
    let label = |key: &str, what: &str, valid: fn(u32) -> bool| match labels.get(key) {
        None => Some(None),
        Some(value) => match value.parse::<u32>() {
            Ok(parsed) if valid(parsed) => Some(Some(parsed)),
            _ => {
                tracing::warn!(member = name, "{key}={value:?} is not {what}: left out");
                errors.invalid_entry();
                None
            }
        },
    };
    let port = label(PORT_LABEL, "a port (1 to 65535)", |p| {
        (1..=65535).contains(&p)
    })?;
    let weight = label(WEIGHT_LABEL, "a weight (0 to 4294967295)", |_| true)?;
    Some((port.map_or(7100, |p| p as u16), weight.unwrap_or(1)))
}

async fn follow(source: DockerSource, changes: ChangeSender) {
    let mut members = MemberSet::default();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let lost = "docker discovery lost the engine";
    let mut reconnect = Reconnect::new(backoff, lost, source.errors.clone());
    loop {
        let started = tokio::time::Instant::now();
        match session(&source, &mut members, &changes).await {
            Ok(()) => return,
            Err(error) => reconnect.after(started, error).await,
        }
    }
}

async fn session(
    source: &DockerSource,
    members: &mut MemberSet,
    changes: &ChangeSender,
) -> Result<(), DockerError> {
    let docker = connect().await?;
    let mut filters = label_filter(&source.service);
    filters.insert("type".into(), vec!["container".into()]);
    // Only what can change membership: not the exec events of every health probe.
    filters.insert(
        "event".into(),
        MEMBERSHIP_EVENTS.map(str::to_owned).to_vec(),
    );
    // The stream connects when first polled, after the listing: the engine replays what
    // happened since just before it, so no change falls between the two.
    let mut events = docker.events(Some(
        EventsOptionsBuilder::default()
            .filters(&filters)
            .since(&events_since())
            .build(),
    ));
    // The member each container is, so an event that names only the container (its death,
    // its removal) finds the member it takes away.
    let mut by_container: HashMap<String, String> = HashMap::new();
    let options = ListContainersOptionsBuilder::default()
        .filters(&label_filter(&source.service))
        .build();
    let mut listed = Vec::new();
    for summary in docker.list_containers(Some(options)).await? {
        let Some(id) = summary.id else { continue };
        if let Some(backend) = source.inspect(&docker, &id).await? {
            by_container.insert(id, backend.id.clone());
            listed.push(backend);
        }
    }
    let send_all =
        |list: Vec<Change<NodeId, Backend>>| list.into_iter().all(|c| changes.send(c).is_ok());
    if !send_all(members.update(listed)) {
        return Ok(());
    }
    while let Some(event) = events.next().await {
        let Some(container) = event?.actor.and_then(|actor| actor.id) else {
            continue;
        };
        let now = source.inspect(&docker, &container).await?;
        let before = match &now {
            Some(backend) => by_container.insert(container, backend.id.clone()),
            None => by_container.remove(&container),
        };
        // A renamed container leaves under its old name.
        let gone = before
            .filter(|old| now.as_ref().is_none_or(|backend| &backend.id != old))
            .and_then(|old| members.remove(&old));
        let came = now.and_then(|backend| members.set(backend));
        if !send_all(gone.into_iter().chain(came).collect()) {
            return Ok(());
        }
    }
    Err(DockerError::Engine(bollard::errors::Error::IOError {
        err: std::io::Error::other("the event stream ended"),
    }))
}

impl DockerSource {
    /// The member container `id` is now: `None` when it is not one (any more), including
    /// when it no longer exists.
    async fn inspect(&self, docker: &Docker, id: &str) -> Result<Option<Backend>, DockerError> {
        self.inspections.fetch_add(1, Ordering::Relaxed);
        match docker.inspect_container(id, None).await {
            Ok(container) => Ok(self.backend(&container)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }
}

/// The engine filter for objects labelled `wscluster.service=<service>`.
pub(crate) fn label_filter(service: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![format!("{SERVICE_LABEL}={service}")],
    )])
}

/// A second before now, as the engine's `since` takes it (Unix seconds): events from then on
/// are replayed, a few twice, which changes nothing.
pub(crate) fn events_since() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_secs().saturating_sub(1).to_string()
}

/// The container events that can change whether, or where, a container is a member
/// (the engine matches `health_status` by prefix).
pub(crate) const MEMBERSHIP_EVENTS: [&str; 7] = [
    "start",
    "die",
    "destroy",
    "health_status",
    "rename",
    "pause",
    "unpause",
];

pub(crate) async fn connect() -> Result<Docker, DockerError> {
    // `DOCKER_HOST` as for the docker CLI: a local socket, or a manager's API over TCP.
    Ok(Docker::connect_with_defaults()?.negotiate_version().await?)
}

/// Starts and stops containers of one service: `POST /admin/backends` and
/// `DELETE /admin/backends/{id}` when the gateway runs on Docker. It only ever touches
/// containers that carry the service's label.
///
/// ```no_run
/// # async fn f() -> Result<(), discovery::DockerError> {
/// use discovery::DockerScaler;
///
/// let scaler = DockerScaler::new("chat", "wscluster-backend:latest").network("wscluster").cap(10);
/// let name = scaler.start_one().await?;
/// scaler.stop(&name).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DockerScaler {
    service: String,
    image: String,
    network: Option<String>,
    cap: usize,
    port: u16,
    limits: ContainerLimits,
    // Starts one at a time: the cap is checked and the container created under it, so
    // concurrent requests cannot all pass the check.
    starting: Arc<tokio::sync::Mutex<()>>,
}

/// The resources each container the scaler starts may use.
///
/// ```
/// use discovery::ContainerLimits;
///
/// let limits = ContainerLimits::default();
/// assert_eq!(limits.memory_bytes, 256 << 20);
/// ```
///
/// With the `serde` feature it reads as `{ memory_bytes = 268435456, cpus = 0.5, pids = 256 }`;
/// a field left out keeps its default, and a value Docker would refuse is an error.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct ContainerLimits {
    /// Memory, in bytes (default: 256 MiB; at least 6 MiB).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::container::memory_bytes")
    )]
    pub memory_bytes: u64,
    /// CPUs, possibly fractional (default: 1).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::container::cpus")
    )]
    pub cpus: f64,
    /// Processes and threads (default: 256).
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::container::pids")
    )]
    pub pids: u32,
}

impl Default for ContainerLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            cpus: 1.0,
            pids: 256,
        }
    }
}

impl fmt::Debug for DockerScaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerScaler")
            .field("service", &self.service)
            .field("image", &self.image)
            .field("cap", &self.cap)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl DockerScaler {
    /// Containers of `image` for `service` (at most 16 unless [`cap`](Self::cap) says).
    pub fn new(service: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            image: image.into(),
            network: None,
            cap: 16,
            port: 7100,
            limits: ContainerLimits::default(),
            starting: Arc::default(),
        }
    }

    /// Each container's memory, CPU and process limits.
    pub fn limits(mut self, limits: ContainerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Attach new containers to this network.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.network = Some(network.into());
        self
    }

    /// The most containers the service may run.
    pub fn cap(mut self, cap: usize) -> Self {
        self.cap = cap;
        self
    }

    /// Creates and starts one more container; returns its name (its backend id). The image
    /// must run the reference backend (`wsbackend`).
    pub async fn start_one(&self) -> Result<String, DockerError> {
        let _one_at_a_time = self.starting.lock().await;
        let docker = connect().await?;
        let filters = label_filter(&self.service);
        let existing = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::default()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await?;
        if existing.len() >= self.cap {
            return Err(DockerError::AtCap(self.cap));
        }
        let taken: Vec<String> = existing
            .iter()
            .flat_map(|c| c.names.clone().unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_owned())
            .collect();
        let name = (1..)
            .map(|n| format!("{}-{n}", self.service))
            .find(|name| !taken.contains(name))
            .expect("an unused name");
        let labels = HashMap::from([
            (SERVICE_LABEL.to_owned(), self.service.clone()),
            (PORT_LABEL.to_owned(), self.port.to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            // Through the environment, so the image's health probe checks the same address.
            env: Some(vec![
                format!("WSBACKEND_ID={name}"),
                format!("WSBACKEND_LISTEN=0.0.0.0:{}", self.port),
            ]),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: self.network.clone(),
                memory: i64::try_from(self.limits.memory_bytes).ok(),
                // No swap beyond the memory limit.
                memory_swap: i64::try_from(self.limits.memory_bytes).ok(),
                nano_cpus: Some((self.limits.cpus * 1e9) as i64),
                pids_limit: Some(i64::from(self.limits.pids)),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        docker.create_container(Some(options), body).await?;
        docker.start_container(&name, None).await?;
        Ok(name)
    }

    /// Stops and removes container `name`, if it is one of ours.
    pub async fn stop(&self, name: &str) -> Result<(), DockerError> {
        let docker = connect().await?;
        let container = match docker.inspect_container(name, None).await {
            Ok(container) => container,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return Err(DockerError::NotFound(name.to_owned())),
            Err(error) => return Err(error.into()),
        };
        let ours = container
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(SERVICE_LABEL))
            == Some(&self.service);
        if !ours {
            return Err(DockerError::NotOurs(name.to_owned()));
        }
        docker
            .stop_container(
                name,
                Some(StopContainerOptionsBuilder::default().t(5).build()),
            )
            .await?;
        docker
            .remove_container(
                name,
                Some(RemoveContainerOptionsBuilder::default().force(true).build()),
            )
            .await?;
        Ok(())
    }

    /// Whether container `name` is one of ours (labelled for this service).
    pub async fn owns(&self, name: &str) -> Result<bool, DockerError> {
        let docker = connect().await?;
        match docker.inspect_container(name, None).await {
            Ok(container) => Ok(container
                .config
                .and_then(|c| c.labels)
                .and_then(|l| l.get(SERVICE_LABEL).cloned())
                .as_ref()
                == Some(&self.service)),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(DockerError::NotFound(name.to_owned())),
            Err(error) => Err(error.into()),
        }
    }
}

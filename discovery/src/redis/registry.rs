//! The backend side: register, heartbeat, deregister.

use std::time::Duration;

use redis::AsyncCommands;
use tokio::task::JoinHandle;

use super::RedisError;
use crate::{source_errors::SourceErrors, Backend, MemberChanges};
#[cfg(feature = "metrics")]
use crate::{DiscoveryMetrics, Source};

/// Where the backends of one service register in Redis; cheap to clone.
///
/// ```no_run
/// # async fn f() -> Result<(), discovery::RedisError> {
/// use std::time::Duration;
/// use discovery::{Backend, RedisRegistry};
///
/// let registry = RedisRegistry::new("redis://127.0.0.1:6379", "chat")?.ttl(Duration::from_secs(3));
/// // A backend:
/// let heartbeat = registry.register(Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap())).await?;
/// // A gateway:
/// let members = registry.discover();
/// # let _ = members;
/// heartbeat.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisRegistry {
    pub(super) client: redis::Client,
    pub(super) service: String,
    pub(super) ttl: Duration,
    pub(super) resync: Duration,
    pub(super) errors: SourceErrors,
}

impl RedisRegistry {
    /// A registry for `service` in the Redis at `url` (`redis://host:port/db`). Nothing is
    /// connected yet.
    pub fn new(url: &str, service: impl Into<String>) -> Result<Self, RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            service: service.into(),
            ttl: Duration::from_secs(3),
            resync: Duration::from_secs(1),
            errors: SourceErrors::default(),
        })
    }

    /// How long a registration lives without a heartbeat (default 3 s); heartbeats come
    /// three times per TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How often a gateway re-reads the whole set even without an announcement (default
    /// 1 s): this bounds how late a lapsed registration is noticed.
    pub fn resync(mut self, every: Duration) -> Self {
        self.resync = every.max(Duration::from_millis(10));
        self
    }

    /// Counts the errors of [`discover`](Self::discover) into `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: DiscoveryMetrics) -> Self {
        self.errors = SourceErrors::new(metrics, Source::redis);
        self
    }

    pub(super) fn key(&self, id: &str) -> String {
        format!("wscluster:{}:backend:{id}", self.service)
    }

    pub(super) fn pattern(&self) -> String {
        format!("wscluster:{}:backend:*", self.service)
    }

    pub(super) fn channel(&self) -> String {
        format!("wscluster:{}:members", self.service)
    }

    /// Registers `backend` and keeps it registered, renewing it every third of the TTL,
    /// until the [`Heartbeat`] is deregistered (it leaves at once) or dropped (as in a crash:
    /// it leaves when the TTL lapses). Registering the same backend twice changes nothing.
    /// While Redis is down the heartbeat keeps trying, and announces the backend again
    /// once Redis is back.
    pub async fn register(&self, backend: Backend) -> Result<Heartbeat, RedisError> {
        let mut connection = self.client.get_connection_manager().await?;
        let key = self.key(&backend.id);
        let value = serde_json::to_string(&backend).expect("a backend serializes");
        self.renew(&mut connection, &key, &value).await?;
        let (this, key_for_task) = (self.clone(), key.clone());
        let mut heartbeat_connection = connection.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(this.ttl / 3);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if let Err(error) = this
                    .renew(&mut heartbeat_connection, &key_for_task, &value)
                    .await
                {
                    tracing::warn!(%error, key = %key_for_task, "heartbeat failed; retrying");
                }
            }
        });
        Ok(Heartbeat {
            registry: self.clone(),
            connection,
            key,
            id: backend.id,
            task,
        })
    }

    /// Sets the key with the TTL; announces the backend when the key was absent (first
    /// registration, lapsed, or Redis restarted empty).
    async fn renew(
        &self,
        connection: &mut redis::aio::ConnectionManager,
        key: &str,
        value: &str,
    ) -> Result<(), RedisError> {
        let ttl_ms = self.ttl.as_millis() as u64;
        let previous: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET")
            .query_async(connection)
            .await?;
        if previous.as_deref() != Some(value) {
            let _: i64 = connection.publish(self.channel(), key).await?;
        }
        Ok(())
    }

    /// Follows the member set of this service: it is re-read on every announcement, every
    /// resync interval and after every reconnect, and only what changed is yielded; while
    /// Redis is unreachable nothing is, so the ring stays as it was.
    pub fn discover(&self) -> MemberChanges {
        let this = self.clone();
        MemberChanges::spawn(|changes| super::watch::follow(this, changes))
    }
}

/// Keeps one backend registered; see [`RedisRegistry::register`].
#[derive(Debug)]
pub struct Heartbeat {
    registry: RedisRegistry,
    connection: redis::aio::ConnectionManager,
    key: String,
    id: String,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// The registered backend's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops the heartbeat and removes the registration now, announcing it.
    pub async fn deregister(mut self) -> Result<(), RedisError> {
        self.task.abort();
        let _: i64 = self.connection.del(&self.key).await?;
        let _: i64 = self
            .connection
            .publish(self.registry.channel(), &self.key)
            .await?;
        Ok(())
    }
}

impl Drop for Heartbeat {
    /// Stops renewing; the registration lapses after the TTL, as if the backend crashed.
    fn drop(&mut self) {
        self.task.abort();
    }
}

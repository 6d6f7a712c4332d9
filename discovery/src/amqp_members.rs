//! Membership through RabbitMQ: backends announce themselves on a fanout exchange, gateways
//! follow the announcements.

use std::{collections::BTreeMap, time::Duration};

use futures_util::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use tokio::{task::JoinHandle, time::Instant};

use crate::{
    backoff::Backoff,
    changes::ChangeSender,
    events::{fanout_channel, publish},
    source_errors::SourceErrors,
    Backend, MemberChanges, MemberSet,
};
#[cfg(feature = "metrics")]
use crate::{DiscoveryMetrics, Source};

/// One announcement on the members exchange.
///
/// ```
/// use discovery::{Announcement, Backend};
///
/// let up = Announcement::Up {
///     instance: "7f3a".into(),
///     backend: Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap()),
///     ttl_ms: 3000,
/// };
/// let json = serde_json::to_string(&up).unwrap();
/// assert!(json.starts_with(r#"{"event":"up","#));
/// assert_eq!(serde_json::from_str::<Announcement>(&json).unwrap(), up);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Announcement {
    /// The backend is up; it repeats this before `ttl_ms` passes, or is taken for gone.
    Up {
        /// This run of the backend (a restart is a new instance).
        instance: String,
        /// The backend.
        backend: Backend,
        /// How long this announcement holds.
        ttl_ms: u64,
    },
    /// The backend leaves. Ignored unless `instance` is the one currently announced, so a
    /// late `down` of an old run never removes a restarted backend.
    Down {
        /// The run that leaves.
        instance: String,
        /// The backend's id.
        id: String,
    },
}

/// Announces one backend: `up` now and every third of the TTL, `down` on
/// [`leave`](Self::leave). Reconnects by itself; a dropped announcer stops repeating, and
/// gateways take the backend for gone when its TTL lapses.
///
/// ```no_run
/// # async fn f() {
/// use std::time::Duration;
/// use discovery::{AmqpAnnouncer, Backend};
///
/// let me = Backend::new("backend-a", "127.0.0.1:7100".parse().unwrap());
/// let announcer = AmqpAnnouncer::start("amqp://127.0.0.1:5672/%2f", "wscluster.members", me, Duration::from_secs(3));
/// announcer.leave().await;
/// # }
/// ```
#[derive(Debug)]
pub struct AmqpAnnouncer {
    url: String,
    exchange: String,
    instance: String,
    id: String,
    task: JoinHandle<()>,
}

impl AmqpAnnouncer {
    /// Starts announcing `backend` with a fresh instance id.
    pub fn start(url: &str, exchange: &str, backend: Backend, ttl: Duration) -> Self {
        let instance = format!("{:016x}", fastrand::u64(..));
        let up = Announcement::Up {
            instance: instance.clone(),
            backend: backend.clone(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let (task_url, task_exchange) = (url.to_owned(), exchange.to_owned());
        let task = tokio::spawn(async move {
            let payload = serde_json::to_vec(&up).expect("JSON serializes");
            let mut ticks = tokio::time::interval(ttl / 3);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut channel = None;
            loop {
                ticks.tick().await;
                if channel.is_none() {
                    channel = fanout_channel(&task_url, &task_exchange).await.ok();
                }
                if let Some(open) = &channel {
                    if publish(open, &task_exchange, &payload).await.is_err() {
                        tracing::warn!("lost the broker while announcing; reconnecting");
                        channel = None;
                    }
                }
            }
        });
        Self {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            instance,
            id: backend.id,
            task,
        }
    }

    /// This run's instance id.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Stops announcing and says `down` (best effort: if the broker is unreachable,
    /// gateways notice when the TTL lapses).
    pub async fn leave(self) {
        self.task.abort();
        let down = Announcement::Down {
            instance: self.instance.clone(),
            id: self.id.clone(),
        };
        let payload = serde_json::to_vec(&down).expect("JSON serializes");
        match fanout_channel(&self.url, &self.exchange).await {
            Ok(channel) => {
                if let Err(error) = publish(&channel, &self.exchange, &payload).await {
                    tracing::warn!(%error, "could not announce down");
                }
            }
            Err(error) => tracing::warn!(%error, "could not announce down"),
        }
    }
}

impl Drop for AmqpAnnouncer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The members announced on a RabbitMQ fanout exchange. Repeated `up`s change nothing, a
/// `down` counts only from the instance that is up, and a member whose `up` is not repeated
/// within its TTL is gone (a crash). While the broker is unreachable nothing expires and
/// nothing changes; after a reconnect members get one more TTL to be heard from.
///
/// ```no_run
/// # async fn f() {
/// let members = discovery::amqp_members("amqp://127.0.0.1:5672/%2f", "wscluster.members");
/// # let _ = members;
/// # }
/// ```
pub fn amqp_members(url: &str, exchange: &str) -> MemberChanges {
    follow_spawned(url, exchange, SourceErrors::default())
}

/// [`amqp_members`], counting its errors (a lost broker, a message that is not an
/// announcement) into `metrics`.
///
/// ```no_run
/// # async fn f() {
/// let metrics = discovery::DiscoveryMetrics::default();
/// let members = discovery::amqp_members_counted("amqp://127.0.0.1:5672/%2f", "wscluster.members", metrics);
/// # let _ = members;
/// # }
/// ```
#[cfg(feature = "metrics")]
pub fn amqp_members_counted(url: &str, exchange: &str, metrics: DiscoveryMetrics) -> MemberChanges {
    follow_spawned(url, exchange, SourceErrors::new(metrics, Source::amqp))
}

/// Follows the announcements on a task, counting its errors into `errors`.
fn follow_spawned(url: &str, exchange: &str, errors: SourceErrors) -> MemberChanges {
    let (url, exchange) = (url.to_owned(), exchange.to_owned());
    MemberChanges::spawn(|changes| follow(url, exchange, changes, errors))
}

/// A member as last announced.
struct Announced {
    backend: Backend,
    instance: String,
    expires: Instant,
}

async fn follow(url: String, exchange: String, changes: ChangeSender, errors: SourceErrors) {
    let mut announced: BTreeMap<String, Announced> = BTreeMap::new();
    let mut members = MemberSet::default();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let mut consumer = match consume(&url, &exchange).await {
            Ok(consumer) => consumer,
            Err(error) => {
                tracing::warn!(%error, "cannot reach the broker; keeping the last members");
                errors.connection();
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        extend_after_reconnect(&mut announced);
        let mut sweep = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => receive(&mut announced, &delivery.data, &errors),
                    _ => {
                        tracing::warn!("lost the broker; keeping the last members");
                        errors.connection();
                        break;
                    }
                },
                _ = sweep.tick() => expire(&mut announced),
                () = changes.closed() => return,
            }
            let current = announced.values().map(|m| m.backend.clone());
            for change in members.update(current) {
                if changes.send(change).is_err() {
                    return;
                }
            }
        }
    }
}

/// A consumer of `exchange`'s announcements, on a queue of this gateway's own (exclusive,
/// deleted with the connection).
async fn consume(url: &str, exchange: &str) -> Result<lapin::Consumer, lapin::Error> {
    let channel = fanout_channel(url, exchange).await?;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    channel
        .basic_consume(
            queue.name().clone(),
            "gateway".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
}

/// Announcements sent while we were away are lost: gives everyone one more TTL.
fn extend_after_reconnect(announced: &mut BTreeMap<String, Announced>) {
    let reconnected = Instant::now();
    for member in announced.values_mut() {
        let ttl = member.expires.saturating_duration_since(reconnected);
        member.expires = member
            .expires
            .max(reconnected + ttl.max(Duration::from_secs(1)));
    }
}

/// Applies one delivered message, counting one that is not a valid announcement.
fn receive(announced: &mut BTreeMap<String, Announced>, data: &[u8], errors: &SourceErrors) {
    match serde_json::from_slice::<Announcement>(data) {
        Ok(announcement) => {
            if let Err(why) = apply(announced, announcement) {
                tracing::warn!("ignoring an announcement out of range: {why}");
                errors.invalid_entry();
            }
        }
        Err(error) => {
            tracing::warn!(%error, "ignoring a message that is not an announcement");
            errors.invalid_entry();
        }
    }
}

/// Forgets the members whose last `up` is older than its TTL (a crash).
fn expire(announced: &mut BTreeMap<String, Announced>) {
    let now = Instant::now();
    announced.retain(|id, member| {
        let alive = member.expires > now;
        if !alive {
            tracing::warn!(backend = %id, "no announcement within its TTL: gone");
        }
        alive
    });
}

/// The longest TTL an announcement may ask for: past it, a backend that crashed would stay
/// on the ring for too long (and `now + ttl` could overflow the clock).
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// Applies `announcement`, or says why it was ignored.
fn apply(
    announced: &mut BTreeMap<String, Announced>,
    announcement: Announcement,
) -> Result<(), String> {
    match announcement {
        Announcement::Up {
            instance,
            backend,
            ttl_ms,
        } => {
            let ttl = Duration::from_millis(ttl_ms);
            if ttl.is_zero() || ttl > MAX_TTL {
                return Err(format!(
                    "`up` of {} with ttl_ms {ttl_ms}: it must be 1 to {}",
                    backend.id,
                    MAX_TTL.as_millis()
                ));
            }
            let expires = Instant::now() + ttl;
            announced.insert(
                backend.id.clone(),
                Announced {
                    backend,
                    instance,
                    expires,
                },
            );
        }
        Announcement::Down { instance, id } => {
            if announced.get(&id).is_some_and(|m| m.instance == instance) {
                announced.remove(&id);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(id: &str, ttl_ms: u64) -> Announcement {
        Announcement::Up {
            instance: "run-1".into(),
            backend: Backend::new(id, "127.0.0.1:7100".parse().unwrap()),
            ttl_ms,
        }
    }

    #[tokio::test]
    async fn a_ttl_out_of_range_is_ignored_without_panicking() {
        let mut announced = BTreeMap::new();
        for ttl_ms in [u64::MAX, u64::MAX / 2, 0, MAX_TTL.as_millis() as u64 + 1] {
            let why = apply(&mut announced, up("a", ttl_ms)).unwrap_err();
            assert!(why.contains("ttl_ms"), "{why}");
        }
        assert!(announced.is_empty());
        apply(&mut announced, up("a", 3000)).unwrap();
        assert!(
            announced.contains_key("a"),
            "later announcements still count"
        );
    }
}

//! The gateway side: follow the member set.

use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;

use super::{RedisError, RedisRegistry};
use crate::{
    backoff::{Backoff, Reconnect},
    changes::ChangeSender,
    Backend, MemberSet,
};

/// Subscribes, resyncs, and resubscribes after every lost connection, with backoff.
pub(super) async fn follow(registry: RedisRegistry, changes: ChangeSender) {
    let mut members = MemberSet::default();
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    let lost = "redis discovery lost its connection";
    let mut reconnect = Reconnect::new(backoff, lost, registry.errors.clone());
    loop {
        let started = tokio::time::Instant::now();
        match session(&registry, &mut members, &changes).await {
            Ok(()) => return, // the stream was dropped
            Err(error) => reconnect.after(started, error).await,
        }
    }
}

/// One connected period: returns `Ok` only when nobody listens any more.
async fn session(
    registry: &RedisRegistry,
    members: &mut MemberSet,
    changes: &ChangeSender,
) -> Result<(), RedisError> {
    let mut pubsub = registry.client.get_async_pubsub().await?;
    pubsub.subscribe(registry.channel()).await?;
    let mut connection = registry.client.get_multiplexed_async_connection().await?;
    let mut announcements = pubsub.into_on_message();
    let mut resync = tokio::time::interval(registry.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Subscribed first, then read: nothing announced in between is missed.
        for change in members.update(read_members(registry, &mut connection).await?) {
            if changes.send(change).is_err() {
                return Ok(());
            }
        }
        tokio::select! {
            announced = announcements.next() => {
                if announced.is_none() {
                    return Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::ConnectionReset,
                    ))
                    .into());
                }
            }
            _ = resync.tick() => {}
            () = changes.closed() => return Ok(()),
        }
    }
}

/// Every registered backend of the service, now.
async fn read_members(
    registry: &RedisRegistry,
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<Backend>, RedisError> {
    let mut keys: Vec<String> = Vec::new();
    let mut iter = connection
        .scan_match::<_, String>(registry.pattern())
        .await?;
    while let Some(key) = iter.next_item().await {
        keys.push(key?);
    }
    drop(iter);
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(connection)
        .await?;
    Ok(keys
        .iter()
        .zip(values)
        .filter_map(|(key, value)| {
            // A key that lapsed between the scan and the read is simply gone.
            let value = value?;
            match serde_json::from_str::<Backend>(&value) {
                // The key names the member: an entry claiming another id would let one
                // registration replace or shadow another's.
                Ok(backend) if registry.key(&backend.id) != *key => {
                    tracing::warn!(%key, id = %backend.id, "ignoring a registration whose id is not its key's");
                    registry.errors.invalid_entry();
                    None
                }
                Ok(backend) => Some(backend),
                Err(error) => {
                    tracing::warn!(%key, %error, "ignoring a registration that is not a backend");
                    registry.errors.invalid_entry();
                    None
                }
            }
        })
        .collect())
}

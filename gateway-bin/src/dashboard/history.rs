//! The last 10 minutes of the dashboard's numbers, so a page opened now draws its charts
//! from the minutes before it: per member, its live connections and messages relayed (both
//! ways, a running total the page turns into a rate); the moves so far; the ring's version
//! (a change is marked on the time axis).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use serde_json::{json, Map, Value};

use crate::admin::{overview, AdminState};

/// How often a sample is taken.
const EVERY: Duration = Duration::from_secs(5);
/// 10 minutes of samples.
const KEPT: usize = 120;

/// Samples of the overview, oldest first, at most [`KEPT`].
#[derive(Clone, Debug, Default)]
pub(crate) struct History(Arc<Mutex<VecDeque<Value>>>);

impl History {
    /// Samples `state` every 5 s for as long as an admin app holds `state`: the sampler's
    /// own clone is then the last holder of the history, and it stops.
    pub(crate) fn follow(state: AdminState) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if Arc::strong_count(&state.history.0) <= 1 {
                    return;
                }
                state.history.record(point(&overview(&state)));
            }
        });
    }

    fn record(&self, sample: Value) {
        let mut samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every sample kept, oldest first.
    pub(crate) fn samples(&self) -> Vec<Value> {
        let samples = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().cloned().collect()
    }
}

/// What a chart needs of one overview: `{at_ms, version, moved, backends: {id: {c, m}}}`,
/// `c` the live connections and `m` the messages relayed so far, both ways. The page makes
/// the same point of every live state it receives.
pub(crate) fn point(overview: &Value) -> Value {
    let mut backends = Map::new();
    let all = [&overview["members"], &overview["others"]];
    for member in all.into_iter().filter_map(Value::as_array).flatten() {
        let Some(id) = member["id"].as_str() else {
            continue;
        };
        let traffic = &member["traffic"];
        let messages = traffic["to_backend"]["messages"].as_u64().unwrap_or(0)
            + traffic["to_client"]["messages"].as_u64().unwrap_or(0);
        backends.insert(
            id.to_owned(),
            json!({ "c": member["connections"], "m": messages }),
        );
    }
    json!({
        "at_ms": overview["at_ms"],
        "version": overview["version"],
        "moved": overview["migrations"]["moved"],
        "backends": backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_keeps_each_members_connections_and_messages_and_the_moves() {
        let overview = json!({
            "at_ms": 1000, "version": 3, "migrations": { "moved": 7 },
            "members": [{ "id": "a", "connections": 2,
                "traffic": { "to_backend": { "messages": 5 }, "to_client": { "messages": 6 } } }],
            "others": [{ "id": "b", "connections": 0,
                "traffic": { "to_backend": { "messages": 1 }, "to_client": { "messages": 0 } } }],
        });
        let point = point(&overview);
        assert_eq!(point["version"], 3);
        assert_eq!(point["moved"], 7);
        assert_eq!(point["backends"]["a"], json!({ "c": 2, "m": 11 }));
        assert_eq!(point["backends"]["b"], json!({ "c": 0, "m": 1 }));
    }

    #[test]
    fn ten_minutes_are_kept_and_the_oldest_go_first() {
        let history = History::default();
        for n in 0..KEPT + 5 {
            history.record(json!(n));
        }
        let samples = history.samples();
        assert_eq!(samples.len(), KEPT);
        assert_eq!(samples[0], json!(5));
        assert_eq!(samples[KEPT - 1], json!(KEPT + 4));
    }
}

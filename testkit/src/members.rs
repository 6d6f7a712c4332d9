//! Following a discovery stream in a test.

use std::{collections::BTreeMap, time::Duration};

use discovery::{Backend, MemberChanges};
use futures_util::StreamExt;
use tower::discover::Change;

/// Applies the changes of `stream` to `members` (by id) until `done` holds; panics, naming
/// the members it has, after `within`.
///
/// ```no_run
/// # async fn f(mut stream: discovery::MemberChanges) {
/// use std::{collections::BTreeMap, time::Duration};
///
/// let mut members = BTreeMap::new();
/// wscluster_testkit::members_until(&mut stream, &mut members, Duration::from_secs(5), |m| m.len() == 3).await;
/// # }
/// ```
pub async fn members_until(
    stream: &mut MemberChanges,
    members: &mut BTreeMap<String, Backend>,
    within: Duration,
    done: impl Fn(&BTreeMap<String, Backend>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !done(members) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(Change::Insert(id, backend)))) => {
                members.insert(id.to_string(), backend);
            }
            Ok(Some(Ok(Change::Remove(id)))) => {
                members.remove(id.as_str());
            }
            other => panic!("members {:?} after {within:?}: {other:?}", members.keys()),
        }
    }
}

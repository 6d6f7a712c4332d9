//! Flap damping with paused time: a member that keeps leaving and coming back is held out
//! for the hold-down, then let back in; everyone else passes untouched.

use std::{convert::Infallible, time::Duration};

use discovery::{Backend, FlapDamping, MemberChanges};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tower::discover::Change;
use tower_hashring::NodeId;

const WINDOW: Duration = Duration::from_secs(60);
const HOLD_DOWN: Duration = Duration::from_secs(30);

type Source = mpsc::UnboundedSender<Result<Change<NodeId, Backend>, Infallible>>;

fn damped() -> (Source, MemberChanges, discovery::HeldDown) {
    let (source, receiver) = mpsc::unbounded_channel();
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|change| (change, receiver))
    });
    let damping = FlapDamping::new(3, WINDOW, HOLD_DOWN);
    let held = damping.held_down();
    (source, damping.wrap(stream), held)
}

fn up(id: &str) -> Result<Change<NodeId, Backend>, Infallible> {
    Ok(Change::Insert(
        NodeId::from(id),
        Backend::new(id, "127.0.0.1:7100".parse().unwrap()),
    ))
}

fn down(id: &str) -> Result<Change<NodeId, Backend>, Infallible> {
    Ok(Change::Remove(NodeId::from(id)))
}

/// The next change passed on within `within`, as `+id` or `-id`.
async fn next(members: &mut MemberChanges, within: Duration) -> Option<String> {
    let change = tokio::time::timeout(within, members.next()).await.ok()??;
    Some(match change.unwrap() {
        Change::Insert(id, _) => format!("+{id}"),
        Change::Remove(id) => format!("-{id}"),
    })
}

/// Asserts that the next change, within a second, is `expected`.
async fn expect(members: &mut MemberChanges, expected: &str) {
    assert_eq!(
        next(members, Duration::from_secs(1)).await.as_deref(),
        Some(expected)
    );
}

#[tokio::test(start_paused = true)]
async fn a_member_that_flaps_is_held_out_for_the_hold_down() {
    let (source, mut members, held) = damped();
    source.send(up("a")).unwrap();
    expect(&mut members, "+a").await;
    // Two departures and returns within the window pass.
    for _ in 0..2 {
        source.send(down("a")).unwrap();
        expect(&mut members, "-a").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        source.send(up("a")).unwrap();
        expect(&mut members, "+a").await;
    }
    // The third departure passes; the return after it does not.
    source.send(down("a")).unwrap();
    expect(&mut members, "-a").await;
    let left = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    source.send(up("a")).unwrap();
    // Others pass meanwhile.
    source.send(up("b")).unwrap();
    expect(&mut members, "+b").await;
    let until = held.now()[&NodeId::from("a")];
    assert_eq!(
        until,
        left + HOLD_DOWN,
        "held until the hold-down after its last departure"
    );
    assert_eq!(held.total(), 1);
    // Nothing for "a" until the hold-down has run out, then its announcement.
    assert_eq!(
        next(&mut members, HOLD_DOWN - Duration::from_secs(3)).await,
        None
    );
    assert_eq!(
        next(&mut members, Duration::from_secs(2)).await.as_deref(),
        Some("+a")
    );
    assert!(tokio::time::Instant::now() >= left + HOLD_DOWN);
    assert!(held.now().is_empty());
    // On the ring again: an update passes at once.
    source.send(up("a")).unwrap();
    assert_eq!(
        next(&mut members, Duration::from_millis(10))
            .await
            .as_deref(),
        Some("+a")
    );
}

#[tokio::test(start_paused = true)]
async fn departures_spread_wider_than_the_window_are_not_flapping() {
    let (source, mut members, held) = damped();
    for _ in 0..5 {
        source.send(up("a")).unwrap();
        expect(&mut members, "+a").await;
        source.send(down("a")).unwrap();
        expect(&mut members, "-a").await;
        tokio::time::sleep(WINDOW / 2 + Duration::from_secs(1)).await;
    }
    assert_eq!(held.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_held_member_that_leaves_again_is_held_from_its_latest_departure() {
    let (source, mut members, held) = damped();
    for _ in 0..3 {
        source.send(up("a")).unwrap();
        source.send(down("a")).unwrap();
    }
    for expected in ["+a", "-a", "+a", "-a", "+a", "-a"] {
        expect(&mut members, expected).await;
    }
    source.send(up("a")).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(held.now().len(), 1);
    // Gone while held: no departure is passed (it was never let back in), nothing is held.
    source.send(down("a")).unwrap();
    let last = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(held.now().is_empty());
    source.send(up("a")).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(held.now()[&NodeId::from("a")], last + HOLD_DOWN);
    assert_eq!(
        next(&mut members, HOLD_DOWN - Duration::from_secs(2)).await,
        None
    );
    assert_eq!(
        next(&mut members, Duration::from_secs(2)).await.as_deref(),
        Some("+a")
    );
}

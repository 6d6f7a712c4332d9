//! Several sources merged into one membership: flap damping shown as such, duplicate ids
//! resolved alike whatever the order, claims kept behind an admin member, weights capped.

use std::time::Duration;

use discovery::{Backend, FlapDamping, Member, MemberState, Membership, Origin, MAX_WEIGHT};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tower::discover::Change;
use tower_hashring::{NodeId, Ring};

/// A health-flapping member is held out and shows as `held_down`, not as unhealthy; the
/// ring saw its departures, and not its held return.
#[tokio::test(start_paused = true)]
async fn a_flapping_member_is_held_down_and_shown_so() {
    let (members, mut ring_changes) = Membership::new();
    let hold = Duration::from_secs(30);
    members.damp(FlapDamping::new(2, Duration::from_secs(60), hold));
    let (source, receiver) = mpsc::unbounded_channel();
    let source_stream = futures_util::stream::unfold(receiver, |mut r| async move {
        r.recv().await.map(|change| (change, r))
    });
    members.follow_checked(Origin::Redis, None, source_stream);
    let a = NodeId::from("a");
    let up = || {
        Ok(Change::Insert(
            a.clone(),
            Backend::new("a", "127.0.0.1:7100".parse().unwrap()),
        ))
    };
    for _ in 0..2 {
        source.send(up()).unwrap();
        source.send(Ok(Change::Remove(a.clone()))).unwrap();
    }
    source.send(up()).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let ring = Ring::builder().build().unwrap();
    assert_eq!(
        members.states(&ring),
        vec![(a.clone(), MemberState::HeldDown)]
    );
    assert_eq!(members.hold_downs(), 1);
    let mut seen = Vec::new();
    while let Some(Some(Ok(change))) = ring_changes.next().now_or_never() {
        seen.push(matches!(change, Change::Insert(..)));
    }
    assert_eq!(
        seen,
        [true, false, true, false],
        "two flaps reached the ring, not the third"
    );
    tokio::time::sleep(hold).await;
    assert!(matches!(
        ring_changes.next().await,
        Some(Ok(Change::Insert(..)))
    ));
    assert!(members
        .states(&ring)
        .iter()
        .all(|(_, state)| *state == MemberState::Joining));
}

/// Two sources claim one id: whatever order the claims come in, the same one holds it,
/// the other's is counted, and it takes over when the holder's claim goes.
#[tokio::test]
async fn a_duplicate_id_resolves_alike_whatever_the_order() {
    let backend = |port: u16| Backend::new("x", ([10, 0, 0, 1], port).into());
    let x = NodeId::from("x");
    let held = |members: &Membership| {
        let member = members.get(&x).unwrap();
        (member.origin, member.backend.address.port())
    };
    for docker_first in [true, false] {
        let (members, _changes) = Membership::new();
        let (docker, redis) = (
            Change::Insert(x.clone(), backend(1)),
            Change::Insert(x.clone(), backend(2)),
        );
        if docker_first {
            members.apply(Origin::Docker, docker);
            members.apply(Origin::Redis, redis);
        } else {
            members.apply(Origin::Redis, redis);
            members.apply(Origin::Docker, docker);
        }
        assert_eq!(
            held(&members),
            (Origin::Docker, 1),
            "docker first: {docker_first}"
        );
        assert_eq!(members.collisions()["redis"], 1);
        // The loser's claim going changes nothing; the holder's going hands over.
        members.apply(Origin::Redis, Change::Remove(x.clone()));
        assert_eq!(held(&members).0, Origin::Docker);
        members.apply(Origin::Redis, Change::Insert(x.clone(), backend(2)));
        members.apply(Origin::Docker, Change::Remove(x.clone()));
        assert_eq!(held(&members), (Origin::Redis, 2));
        members.apply(Origin::Redis, Change::Remove(x.clone()));
        assert!(members.members().is_empty());
    }
}

/// An admin API member holds its id against a source's claim; once it is removed through
/// the API, the kept claim becomes the member, as on gateways that never had it.
#[tokio::test]
async fn a_claim_kept_behind_an_api_member_takes_over_when_it_is_removed() {
    let (members, _changes) = Membership::new();
    let x = NodeId::from("x");
    let api = Backend::new("x", ([10, 0, 0, 9], 1).into());
    members.insert(x.clone(), Member::new(api, Origin::Api));
    let docker = Backend::new("x", ([10, 0, 0, 1], 7100).into());
    members.apply(Origin::Docker, Change::Insert(x.clone(), docker));
    assert_eq!(members.get(&x).unwrap().origin, Origin::Api);
    members.leave(&x);
    members.returned(&x);
    let held = members.get(&x).unwrap();
    assert_eq!(
        (held.origin, held.backend.address.port()),
        (Origin::Docker, 7100)
    );
    // A source's own member removed through the API does not come straight back.
    members.leave(&x);
    members.returned(&x);
    assert!(members.members().is_empty());
}

/// A weight above the cap is capped, whether a source announces it or an admin asks; an
/// admin's weight holds when the source announces the member again.
#[tokio::test]
async fn weights_are_capped_and_an_admin_weight_holds() {
    let (members, _changes) = Membership::new();
    let heavy = Backend::new("heavy", "127.0.0.1:7100".parse().unwrap()).weight(u32::MAX);
    let plain = Backend::new("plain", "127.0.0.1:7101".parse().unwrap()).weight(7);
    members.follow(
        Origin::Redis,
        futures_util::stream::iter([
            Ok(Change::Insert(NodeId::from("heavy"), heavy)),
            Ok(Change::Insert(NodeId::from("plain"), plain.clone())),
        ]),
    );
    assert_eq!(members.weight(&NodeId::from("heavy")), MAX_WEIGHT);
    assert_eq!(members.weight(&NodeId::from("plain")), 7);
    assert!(members.reweigh(&NodeId::from("plain"), 0));
    members.apply(Origin::Redis, Change::Insert(NodeId::from("plain"), plain));
    assert_eq!(
        members.weight(&NodeId::from("plain")),
        0,
        "the admin's weight holds"
    );
    assert!(members.reweigh(&NodeId::from("plain"), u32::MAX));
    assert_eq!(members.weight(&NodeId::from("plain")), MAX_WEIGHT);
    assert!(!members.reweigh(&NodeId::from("nobody"), 1));
}

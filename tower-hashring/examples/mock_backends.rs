//! Unit-testing a service behind the hash-ring balancer with `tower-test` mocks: every
//! backend is a mock, and the test answers requests from the mocks' handles, so it decides
//! each backend's readiness and replies. The tests here run with `cargo test -p
//! tower-hashring --example mock_backends`.
//!
//! The service under test is a chat front: `Deliver` requests for a user must reach the one
//! backend that owns the user, and keep reaching it.

fn main() {
    println!("run the tests: cargo test -p tower-hashring --example mock_backends");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Service, ServiceExt};
    use tower_test::assert_request_eq;

    use std::convert::Infallible;

    use futures_util::Stream;
    use tokio::sync::mpsc;
    use tower::discover::Change;
    use tower_hashring::{
        balance::RingDriver, error::BoxError, HashRingLayer, NodeId, SharedHashRing,
    };
    use tower_test::mock;

    /// The request the service under test sends to a backend.
    #[derive(Clone, Debug, PartialEq)]
    struct Deliver {
        user: u32,
        text: &'static str,
    }

    type Backend = mock::Mock<Deliver, &'static str>;
    type Handle = mock::Handle<Deliver, &'static str>;
    type Members =
        std::pin::Pin<Box<dyn Stream<Item = Result<Change<NodeId, Backend>, Infallible>> + Send>>;
    type ByUser = fn(&Deliver) -> Option<String>;

    fn by_user(request: &Deliver) -> Option<String> {
        Some(request.user.to_string())
    }

    type Ring = SharedHashRing<Backend, ByUser>;
    type Driver = RingDriver<Members, tower_hashring::balance::EqualWeight>;
    type Changes = mpsc::UnboundedSender<Result<Change<NodeId, Backend>, Infallible>>;

    /// A balancer over mock backends `names`; their handles; and the sender of later changes.
    fn balancer(names: &[&'static str]) -> (Ring, Driver, Vec<(&'static str, Handle)>, Changes) {
        let (changes, mut receiver) = mpsc::unbounded_channel();
        let mut handles = Vec::new();
        for &name in names {
            let (service, handle) = mock::pair();
            changes
                .send(Ok(Change::Insert(NodeId::from(name), service)))
                .unwrap();
            handles.push((name, handle));
        }
        let members: Members = Box::pin(futures_util::stream::poll_fn(move |cx| {
            receiver.poll_recv(cx)
        }));
        let (ring, driver) = HashRingLayer::new(by_user as ByUser).shared(members);
        (ring, driver, handles, changes)
    }

    /// Lets the driver publish the members sent so far.
    async fn settle(driver: &mut Driver) {
        let _ = tokio::time::timeout(Duration::from_millis(1), driver).await;
    }

    fn owner(ring: &Ring, user: u32) -> String {
        let snapshot = ring.snapshot();
        snapshot
            .ring()
            .route(user.to_string().as_bytes())
            .unwrap()
            .id()
            .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn a_users_requests_reach_the_mock_that_owns_the_user() {
        let (mut ring, mut driver, mut handles, _changes) = balancer(&["a", "b", "c"]);
        settle(&mut driver).await;
        for (_, handle) in &mut handles {
            handle.allow(10);
        }
        let owner = owner(&ring, 42);
        let request = Deliver {
            user: 42,
            text: "hello",
        };
        let response = tokio::spawn(ring.ready().await.unwrap().call(request.clone()));
        for (name, handle) in &mut handles {
            if *name == owner {
                assert_request_eq!(handle, request.clone()).send_response("delivered");
            }
        }
        assert_eq!(response.await.unwrap().unwrap(), "delivered");
        for (name, handle) in &mut handles {
            if *name != owner {
                let nothing =
                    tokio::time::timeout(Duration::from_millis(10), handle.next_request());
                assert!(nothing.await.is_err(), "{name} saw a request for user 42");
            }
        }
    }

    /// A backend that is not ready holds its users' requests (backpressure stays on the
    /// owner); one whose readiness fails sends them to the next backend on the ring.
    #[tokio::test(start_paused = true)]
    async fn readiness_decides_between_waiting_and_failing_over() {
        let (mut ring, mut driver, mut handles, _changes) = balancer(&["a", "b"]);
        settle(&mut driver).await;
        let owner = owner(&ring, 7);
        let (_, mut owner_handle) =
            handles.remove(handles.iter().position(|(n, _)| *n == owner).unwrap());
        let (_, mut other_handle) = handles.pop().unwrap();
        owner_handle.allow(0);
        other_handle.allow(10);

        let request = Deliver {
            user: 7,
            text: "wait",
        };
        let mut waiting = tokio::spawn(ring.ready().await.unwrap().call(request.clone()));
        let still = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
        assert!(still.is_err(), "held while its owner is not ready");
        owner_handle.allow(1);
        assert_request_eq!(owner_handle, request).send_response("late but right");
        assert_eq!(waiting.await.unwrap().unwrap(), "late but right");

        owner_handle.send_error(BoxError::from("owner is down"));
        let request = Deliver {
            user: 7,
            text: "fail over",
        };
        let failing_over = tokio::spawn(ring.ready().await.unwrap().call(request.clone()));
        assert_request_eq!(other_handle, request).send_response("from the successor");
        assert_eq!(failing_over.await.unwrap().unwrap(), "from the successor");
    }

    /// Removing a backend moves exactly its users: the test sends the change and checks
    /// where a user's request lands next.
    #[tokio::test(start_paused = true)]
    async fn a_removed_backend_hands_its_users_to_their_new_owner() {
        let (mut ring, mut driver, mut handles, changes) = balancer(&["a", "b"]);
        settle(&mut driver).await;
        for (_, handle) in &mut handles {
            handle.allow(10);
        }
        let user = (0..).find(|u| owner(&ring, *u) == "a").unwrap();
        changes.send(Ok(Change::Remove(NodeId::from("a")))).unwrap();
        settle(&mut driver).await;
        assert_eq!(owner(&ring, user), "b");
        let request = Deliver {
            user,
            text: "moved",
        };
        let response = tokio::spawn(ring.ready().await.unwrap().call(request.clone()));
        let (_, b) = handles.iter_mut().find(|(n, _)| *n == "b").unwrap();
        assert_request_eq!(b, request).send_response("b has it now");
        assert_eq!(response.await.unwrap().unwrap(), "b has it now");
    }
}

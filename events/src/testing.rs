//! Given / when / then for aggregates: `given(events).when(command).then(events)`.

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, Ctx};

/// Version `version` of `sample` (image `127.0.0.1:5000/sample/app:<version>`) launched on
/// `nodes`, with nothing else asked: the launch most tests start from.
pub fn launched(version: &str, nodes: &[&str]) -> crate::deployment::DeploymentEvent {
    crate::deployment::DeploymentEvent::Launched {
        application: "sample".into(),
        version: version.into(),
        image: format!("127.0.0.1:5000/sample/app:{version}"),
        nodes: nodes.iter().map(|n| n.to_string()).collect(),
        mode: Default::default(),
        selector: None,
        profile: None,
        overrides: Default::default(),
        env: Default::default(),
        services: Default::default(),
        rollout: Default::default(),
        secrets: Default::default(),
    }
}

/// The fixed time every decision in a test is made at.
pub fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").expect("a valid time").to_utc()
}

pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    Given { state: A::fold(&events), ctx: Ctx { now: now() } }
}

#[derive(Debug)]
pub struct Given<A: Aggregate> {
    state: A,
    ctx: Ctx,
}

impl<A: Aggregate> Given<A> {
    /// Decides at another time than [`now`].
    pub fn at(mut self, now: DateTime<Utc>) -> Self {
        self.ctx.now = now;
        self
    }

    pub fn when(self, command: A::Command) -> When<A> {
        let result = self.state.decide(&command, &self.ctx);
        When { state: self.state, command, result }
    }
}

#[derive(Debug)]
pub struct When<A: Aggregate> {
    state: A,
    command: A::Command,
    result: Result<Vec<A::Event>, A::Rejection>,
}

impl<A: Aggregate> When<A> {
    /// Asserts the events decided, and returns the state they lead to.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "events decided for {:?}", self.command);
                events.iter().fold(self.state, A::evolve)
            }
            Err(rejection) => panic!("{:?} was rejected: {rejection}", self.command),
        }
    }

    /// The events decided, for a test that looks at them itself.
    #[track_caller]
    pub fn events(self) -> Vec<A::Event> {
        match self.result {
            Ok(events) => events,
            Err(rejection) => panic!("{:?} was rejected: {rejection}", self.command),
        }
    }

    /// The rejection, for a test that looks at it itself.
    #[track_caller]
    pub fn rejection(self) -> A::Rejection {
        match self.result {
            Ok(events) => panic!("{:?} was accepted with {events:?}", self.command),
            Err(rejection) => rejection,
        }
    }

    #[track_caller]
    pub fn then_rejected(self, expected: A::Rejection) {
        match self.result {
            Ok(events) => panic!("{:?} was accepted with {events:?}, expected {expected}", self.command),
            Err(rejection) => assert_eq!(rejection, expected, "rejection of {:?}", self.command),
        }
    }
}

//! A tenant: every resource lives under one (`ev.<tenant>.…`). A tenant exists from its first
//! use; deleting it is final, and removes its deployments from every node. Its workload
//! policy (`events::policy`) says which host paths and registries its versions may use.
//!
//! The engine's `tenants` worker carries the deletion out (it uninstalls each deployment the
//! tenant has in the log); every read model forgets the tenant's keys on `tenant.deleted`, and
//! the API refuses the tenant's commands with 410.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{event_payload, Aggregate, Ctx};
use crate::policy::{Policy, Violation};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenant {
    pub deleted: bool,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    Delete,
    SetPolicy(Policy),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantEvent {
    Deleted { at: DateTime<Utc> },
    PolicySet { binds: Vec<String>, registries: Vec<String>, at: DateTime<Utc> },
}

event_payload!(TenantEvent, "tenant", {
    Deleted => "deleted",
    PolicySet => "policy_set",
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantRejection {
    #[error("the tenant is deleted")]
    Deleted,
    #[error("{0}")]
    InvalidPolicy(Violation),
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Rejection = TenantRejection;

    fn decide(&self, command: &TenantCommand, ctx: &Ctx) -> Result<Vec<TenantEvent>, TenantRejection> {
        match command {
            _ if self.deleted => Err(TenantRejection::Deleted),
            TenantCommand::Delete => Ok(vec![TenantEvent::Deleted { at: ctx.now }]),
            TenantCommand::SetPolicy(policy) => {
                policy.validate().map_err(TenantRejection::InvalidPolicy)?;
                let (binds, registries) = (policy.binds.clone(), policy.registries.clone());
                Ok(vec![TenantEvent::PolicySet { binds, registries, at: ctx.now }])
            }
        }
    }

    fn evolve(mut self, event: &TenantEvent) -> Tenant {
        match event {
            TenantEvent::Deleted { .. } => self.deleted = true,
            TenantEvent::PolicySet { binds, registries, .. } => {
                self.policy = Policy { binds: binds.clone(), registries: registries.clone() }
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given, now};

    #[test]
    fn delete() {
        given::<Tenant>([]).when(TenantCommand::Delete).then([TenantEvent::Deleted { at: now() }]);
    }

    #[test]
    fn a_policy_is_set_whole_and_refused_when_it_lets_everything_in() {
        let policy = Policy { binds: vec!["/srv/acme".into()], registries: vec!["127.0.0.1:5000".into()] };
        let tenant =
            given::<Tenant>([]).when(TenantCommand::SetPolicy(policy.clone())).then([TenantEvent::PolicySet {
                binds: policy.binds.clone(),
                registries: policy.registries.clone(),
                at: now(),
            }]);
        assert_eq!(tenant.policy, policy);
        let everything = Policy { binds: vec!["/".into()], ..Policy::default() };
        let refused = given::<Tenant>([]).when(TenantCommand::SetPolicy(everything)).rejection();
        assert!(matches!(&refused, TenantRejection::InvalidPolicy(v) if v.key == "binds[0]"), "{refused:?}");
        given::<Tenant>([TenantEvent::Deleted { at: now() }])
            .when(TenantCommand::SetPolicy(Policy::default()))
            .then_rejected(TenantRejection::Deleted);
    }

    #[test]
    fn delete_twice_is_rejected() {
        given::<Tenant>([TenantEvent::Deleted { at: now() }])
            .when(TenantCommand::Delete)
            .then_rejected(TenantRejection::Deleted);
    }
}

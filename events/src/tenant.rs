//! A tenant: every resource lives under one (`ev.<tenant>.…`). A tenant exists from its first
//! use; deleting it is final, and removes its deployments from every node.
//!
//! The engine's `tenants` worker carries the deletion out (it uninstalls each deployment the
//! tenant has in the log); every read model forgets the tenant's keys on `tenant.deleted`, and
//! the API refuses the tenant's commands with 410.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{event_payload, Aggregate, Ctx};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tenant {
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    Delete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantEvent {
    Deleted { at: DateTime<Utc> },
}

event_payload!(TenantEvent, "tenant", {
    Deleted => "deleted",
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantRejection {
    #[error("the tenant is deleted")]
    Deleted,
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Rejection = TenantRejection;

    fn decide(&self, command: &TenantCommand, ctx: &Ctx) -> Result<Vec<TenantEvent>, TenantRejection> {
        match command {
            TenantCommand::Delete if self.deleted => Err(TenantRejection::Deleted),
            TenantCommand::Delete => Ok(vec![TenantEvent::Deleted { at: ctx.now }]),
        }
    }

    fn evolve(mut self, event: &TenantEvent) -> Tenant {
        match event {
            TenantEvent::Deleted { .. } => self.deleted = true,
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
    fn delete_twice_is_rejected() {
        given::<Tenant>([TenantEvent::Deleted { at: now() }])
            .when(TenantCommand::Delete)
            .then_rejected(TenantRejection::Deleted);
    }
}

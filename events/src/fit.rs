//! Whether a message read from the `EVENTS` stream may be folded where it was found.
//!
//! Authentication narrows who may write, but a bug, an old writer or a stolen credential can
//! still put anything on a subject. Every reader of the log asks [`check`] the same question,
//! and sets aside what fails it (see `bus::dead`) rather than stopping on it: bytes that are
//! not an envelope, an envelope on a subject that is not its own, or a payload that is not an
//! event of the type its subject holds. `replay verify` reports each as a finding.

use crate::envelope::{DecodeError, Envelope};
use crate::{report, work};

/// Why a message is set aside.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    #[error("{0}")]
    NotAnEvent(DecodeError),
    #[error("its subject is outside the documented layout")]
    OutsideLayout,
    #[error("misplaced: its envelope says {claimed}")]
    Misplaced { claimed: String },
    #[error("no aggregate has the type `{0}`")]
    UnknownType(String),
    #[error("{0}")]
    Payload(DecodeError),
}

/// Decodes the bytes found on `subject` and [`check`]s them.
pub fn read(subject: &str, bytes: &[u8]) -> Result<Envelope, Unfit> {
    let envelope = Envelope::decode(bytes).map_err(Unfit::NotAnEvent)?;
    check(subject, &envelope)?;
    Ok(envelope)
}

/// [`read`] for a reader of one aggregate type alone (an edge node reads its work): the
/// message must be placed on its own subject, of `aggregate_type`, with a payload that decodes
/// as `E`. Nothing of the other types' events is needed, nor kept in the reader's binary.
pub fn read_only<E: crate::aggregate::EventPayload>(
    subject: &str,
    bytes: &[u8],
    aggregate_type: &str,
) -> Result<Envelope, Unfit> {
    let envelope = Envelope::decode(bytes).map_err(Unfit::NotAnEvent)?;
    placed(subject, &envelope)?;
    if envelope.aggregate_type != aggregate_type {
        return Err(Unfit::Misplaced {
            claimed: format!("{}/{}/{}", envelope.tenant, envelope.aggregate_type, envelope.aggregate_id),
        });
    }
    envelope.event::<E>().map_err(Unfit::Payload)?;
    Ok(envelope)
}

/// Checks that `envelope` belongs on `subject` ([`placed`]) and that its payload is an event
/// of the type the subject holds.
pub fn check(subject: &str, envelope: &Envelope) -> Result<(), Unfit> {
    placed(subject, envelope)?;
    payload(envelope)
}

/// Checks that `envelope` names the tenant, aggregate type and id its subject belongs to.
pub fn placed(subject: &str, envelope: &Envelope) -> Result<(), Unfit> {
    let owner = crate::subject::owner(subject).ok_or(Unfit::OutsideLayout)?;
    if envelope.tenant != owner.tenant
        || envelope.aggregate_type != owner.aggregate_type
        || envelope.aggregate_id != owner.id
    {
        let claimed = format!("{}/{}/{}", envelope.tenant, envelope.aggregate_type, envelope.aggregate_id);
        return Err(Unfit::Misplaced { claimed });
    }
    Ok(())
}

/// Checks that the payload decodes as an event of the envelope's aggregate type.
pub fn payload(envelope: &Envelope) -> Result<(), Unfit> {
    use crate::Aggregate;
    let decodes = match envelope.aggregate_type.as_str() {
        crate::application::Application::TYPE => envelope.event::<crate::application::ApplicationEvent>().map(drop),
        crate::deployment::Deployment::TYPE => envelope.event::<crate::deployment::DeploymentEvent>().map(drop),
        crate::deployment_node::TYPE => envelope.event::<crate::deployment_node::DeploymentNodeEvent>().map(drop),
        crate::node::Node::TYPE => envelope.event::<crate::node::NodeEvent>().map(drop),
        crate::tenant::Tenant::TYPE => envelope.event::<crate::tenant::TenantEvent>().map(drop),
        crate::token::Token::TYPE => envelope.event::<crate::token::TokenEvent>().map(drop),
        report::AGGREGATE_TYPE => envelope.event::<report::NodeReport>().map(drop),
        work::AGGREGATE_TYPE => envelope.event::<work::NodeWork>().map(drop),
        other => return Err(Unfit::UnknownType(other.to_owned())),
    };
    decodes.map_err(Unfit::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::tenant::TenantEvent;

    fn envelope(tenant: &str, aggregate_type: &str, id: &str) -> Envelope {
        let meta = Metadata {
            tenant: tenant.into(),
            actor: "a".into(),
            correlation_id: uuid::Uuid::nil(),
            causation_id: uuid::Uuid::nil(),
        };
        let event = TenantEvent::Deleted { at: chrono::DateTime::UNIX_EPOCH };
        Envelope::new(uuid::Uuid::nil(), chrono::DateTime::UNIX_EPOCH, aggregate_type, id, &meta, &event, None)
    }

    #[test]
    fn an_event_on_its_own_subject_fits() {
        let fitting = envelope("acme", "tenant", "acme");
        assert_eq!(read("ev.acme.tenant.acme", &fitting.encode()), Ok(fitting));
    }

    #[test]
    fn garbage_a_stranger_and_a_wrong_payload_are_each_named() {
        assert!(matches!(read("ev.acme.tenant.acme", b"\x01\x02garbage"), Err(Unfit::NotAnEvent(_))));
        let fitting = envelope("acme", "tenant", "acme");
        assert_eq!(
            check("ev.acme.tenant.other", &fitting),
            Err(Unfit::Misplaced { claimed: "acme/tenant/acme".into() })
        );
        assert_eq!(
            check("ev.other.tenant.acme", &fitting).unwrap_err().to_string(),
            "misplaced: its envelope says acme/tenant/acme"
        );
        assert_eq!(check("tm.acme.n1", &fitting), Err(Unfit::OutsideLayout));
        let deployment = Envelope { aggregate_type: "deployment".into(), ..envelope("acme", "deployment", "d1") };
        assert!(matches!(check("ev.acme.deployment.d1", &deployment), Err(Unfit::Payload(_))));
        let stranger = envelope("acme", "gadget", "g1");
        assert_eq!(check("ev.acme.gadget.g1", &stranger), Err(Unfit::UnknownType("gadget".into())));
    }

    #[test]
    fn a_reader_of_one_type_takes_its_own_and_names_the_rest() {
        use crate::tenant::TenantEvent;
        let fitting = envelope("acme", "tenant", "acme");
        assert_eq!(read_only::<TenantEvent>("ev.acme.tenant.acme", &fitting.encode(), "tenant"), Ok(fitting.clone()));
        assert_eq!(
            read_only::<TenantEvent>("ev.acme.tenant.acme", &fitting.encode(), crate::work::AGGREGATE_TYPE),
            Err(Unfit::Misplaced { claimed: "acme/tenant/acme".into() })
        );
        assert_eq!(
            read_only::<TenantEvent>("ev.acme.tenant.other", &fitting.encode(), "tenant"),
            Err(Unfit::Misplaced { claimed: "acme/tenant/acme".into() })
        );
        let work = Envelope { aggregate_type: "node_work".into(), ..envelope("acme", "node_work", "n1") };
        assert!(matches!(
            read_only::<crate::work::NodeWork>("ev.acme.node.n1.desired", &work.encode(), crate::work::AGGREGATE_TYPE),
            Err(Unfit::Payload(_))
        ));
        assert!(matches!(
            read_only::<TenantEvent>("ev.acme.tenant.acme", b"\x01", "tenant"),
            Err(Unfit::NotAnEvent(_))
        ));
    }
}

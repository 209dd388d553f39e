//! The shape every aggregate shares: `decide` a command against a state, `evolve` a state by
//! an event.

use chrono::{DateTime, Utc};

use crate::envelope::DecodeError;

/// What a decision may know about the world besides the state: the current time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub now: DateTime<Utc>,
}

/// An event type of one aggregate, with its stable name and schema version.
pub trait EventPayload: Sized {
    /// The dotted name stored in the envelope, e.g. `deployment.launched`.
    fn event_type(&self) -> &'static str;

    /// The schema version of this event type as written now.
    fn schema_version(&self) -> u16 {
        1
    }

    /// MessagePack with named fields.
    fn to_payload(&self) -> Vec<u8>;

    /// Reads a payload written under `event_type` at `schema_version`.
    fn from_payload(event_type: &str, schema_version: u16, bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// A consistency boundary: one subject in the log, one state folded from it.
pub trait Aggregate: Default + Clone + std::fmt::Debug {
    /// The aggregate type, also the subject token: `ev.<tenant>.<TYPE>.<id>`.
    const TYPE: &'static str;
    type Command: std::fmt::Debug;
    type Event: EventPayload + Clone + std::fmt::Debug + PartialEq;
    type Rejection: std::error::Error + Clone + PartialEq + Send + Sync + 'static;

    fn decide(&self, command: &Self::Command, ctx: &Ctx) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Events are facts: evolving never fails.
    fn evolve(self, event: &Self::Event) -> Self;

    fn fold<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}

/// Implements [`EventPayload`] for an externally tagged, snake_case event enum.
macro_rules! event_payload {
    ($ty:ty, $prefix:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $crate::aggregate::EventPayload for $ty {
            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => concat!($prefix, ".", $name),)+
                }
            }

            fn to_payload(&self) -> Vec<u8> {
                rmp_serde::to_vec_named(self).expect("an event always serializes")
            }

            fn from_payload(
                event_type: &str,
                schema_version: u16,
                bytes: &[u8],
            ) -> Result<Self, $crate::envelope::DecodeError> {
                if schema_version != 1 {
                    return Err($crate::envelope::DecodeError::UnknownVersion {
                        event_type: event_type.to_owned(),
                        schema_version,
                    });
                }
                let event: Self = rmp_serde::from_slice(bytes).map_err(|e| {
                    $crate::envelope::DecodeError::Payload {
                        event_type: event_type.to_owned(),
                        reason: e.to_string(),
                    }
                })?;
                if event.event_type() != event_type {
                    return Err($crate::envelope::DecodeError::TypeMismatch {
                        declared: event_type.to_owned(),
                        payload: event.event_type(),
                    });
                }
                Ok(event)
            }
        }
    };
}
pub(crate) use event_payload;

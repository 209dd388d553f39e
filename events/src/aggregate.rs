//! The shape every aggregate shares: `decide` a command against a state, `evolve` a state by
//! an event.
//!
//! # Schema evolution
//!
//! Every event type has a schema version (`event_payload!`: `Name => "name" @ 2`). A payload
//! is read directly at its type's current version; an older one is decoded to a value, lifted
//! a version at a time by the type's upcaster, then read. The engine and `replay` both read
//! through `Envelope::event`, so both see today's shape.
//!
//! `events/tests/golden.rs` keeps one stored payload of every event type at every version it
//! has had (`events/tests/fixtures/<type>@<v>.hex`): each must read as today's event, and
//! today's encoding must equal the current fixture. The first real second version:
//! `application.version_added` 2 splits version 1's `image` into `repository` and `tag`.

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
pub trait Aggregate: Default + Clone + std::fmt::Debug + Send + 'static {
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
///
/// A variant written at a version after the first says so (`Name => "name" @ 2`), and the
/// type names its upcaster (`upcast = path`): a function lifting the payload of one event
/// type, as a value, from one version to the next. Older payloads are lifted step by step when
/// read, in the engine and in replay alike; the current version is read directly.
macro_rules! event_payload {
    ($ty:ty, $prefix:literal, { $($variant:ident => $name:literal $(@ $version:literal)?),+ $(,)? } $(, upcast = $upcast:path)?) => {
        impl $crate::aggregate::EventPayload for $ty {
            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => concat!($prefix, ".", $name),)+
                }
            }
            fn schema_version(&self) -> u16 {
                match self {
                    $(Self::$variant { .. } => event_payload!(@version $($version)?),)+
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
                use $crate::envelope::DecodeError;
                let unreadable =
                    |e: &dyn std::fmt::Display| DecodeError::Payload { event_type: event_type.to_owned(), reason: e.to_string() };
                let current: Option<u16> = match event_type {
                    $(concat!($prefix, ".", $name) => Some(event_payload!(@version $($version)?)),)+
                    _ => None,
                };
                let event: Self = match current {
                    Some(current) if schema_version == current => {
                        rmp_serde::from_slice(bytes).map_err(|e| unreadable(&e))?
                    }
                    // Written by an earlier version: lifted a version at a time, as a value.
                    Some(current) if (1..current).contains(&schema_version) => {
                        let mut value: serde_json::Value = rmp_serde::from_slice(bytes).map_err(|e| unreadable(&e))?;
                        for from in schema_version..current {
                            value = event_payload!(@upcast $($upcast)?)(event_type, from, value)?;
                        }
                        serde_json::from_value(value).map_err(|e| unreadable(&e))?
                    }
                    // A type this enum does not have is refused below, for not matching.
                    None if schema_version == 1 => rmp_serde::from_slice(bytes).map_err(|e| unreadable(&e))?,
                    _ => {
                        return Err(DecodeError::UnknownVersion { event_type: event_type.to_owned(), schema_version })
                    }
                };
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
    (@version) => { 1 };
    (@version $version:literal) => { $version };
    (@upcast) => { $crate::aggregate::no_upcast };
    (@upcast $upcast:path) => { $upcast };
}
pub(crate) use event_payload;

/// For event types that never changed: there is no earlier version to lift.
pub(crate) fn no_upcast(event_type: &str, from: u16, _: serde_json::Value) -> Result<serde_json::Value, DecodeError> {
    Err(DecodeError::UnknownVersion { event_type: event_type.to_owned(), schema_version: from })
}

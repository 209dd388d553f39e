//! Read models as pure folds over the log, shared by the engine's live projectors and by
//! `replay`.

pub mod deployments;
pub mod nodes;
pub mod notifications;
pub mod summary;

//! Logs on request: the engine asks a node on `logs.<tenant>.<node>` (NATS request/reply, JSON)
//! for a page of a deployment's container logs; the node answers per container, so one
//! failing container does not spoil the page of the others. The engine turns the
//! per-container offsets into one opaque cursor ([`encode_cursor`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::status::Failure;

/// Lines a page holds.
pub const PAGE_LINES: usize = 200;

pub fn subject(tenant: &str, node: &str) -> String {
    format!("logs.{tenant}.{node}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub deployment: String,
    /// Per container, how many lines were read already.
    #[serde(default)]
    pub cursor: BTreeMap<String, u64>,
    pub limit: usize,
    /// Each line begins with when the container wrote it (RFC 3339, by the node's clock).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamps: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsReply {
    pub containers: Vec<ContainerLogs>,
    /// The deployment is not on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerLogs {
    pub container: String,
    pub lines: Vec<String>,
    /// Lines read so far once this page is read, when more follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

impl LogsReply {
    /// The cursor of the next page: each container that has more, with where it stopped.
    pub fn next_cursor(&self) -> BTreeMap<String, u64> {
        self.containers.iter().filter_map(|c| Some((c.container.clone(), c.next?))).collect()
    }
}

/// A cursor as one opaque text for an API: `name:offset` pairs joined by `,`.
pub fn encode_cursor(cursor: &BTreeMap<String, u64>) -> Option<String> {
    (!cursor.is_empty()).then(|| cursor.iter().map(|(c, n)| format!("{c}:{n}")).collect::<Vec<_>>().join(","))
}

pub fn decode_cursor(text: &str) -> Result<BTreeMap<String, u64>, String> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (container, offset) =
                part.rsplit_once(':').ok_or_else(|| format!("`{part}` is not container:offset"))?;
            let offset = offset.parse().map_err(|_| format!("`{offset}` is not a line count"))?;
            Ok((container.to_owned(), offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_bad_ones_are_named() {
        let cursor: BTreeMap<String, u64> = [("app-d1".to_owned(), 200), ("db-d1".to_owned(), 17)].into();
        let text = encode_cursor(&cursor).unwrap();
        assert_eq!(text, "app-d1:200,db-d1:17");
        assert_eq!(decode_cursor(&text).unwrap(), cursor);
        assert_eq!(decode_cursor("app-d1").unwrap_err(), "`app-d1` is not container:offset");
        assert_eq!(decode_cursor("app-d1:x").unwrap_err(), "`x` is not a line count");
        assert_eq!(encode_cursor(&BTreeMap::new()), None);
    }
}

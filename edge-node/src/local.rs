//! The node's own command line, for the edge terminal (Kelvin's `kelvin-provision workloads`):
//! list the workloads and apply a staged one, with or without a link to the engine. The
//! running agent listens on a unix socket in its data directory; each connection carries one
//! JSON request line and gets one JSON reply line.
//!
//! `edge-node workloads list | apply -n NAME` talks to it. An apply made here, with or without
//! a link, is kept in the work log and reaches the engine from the outbox as `applied_locally`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use events::{Containers, Status};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum LocalRequest {
    List,
    /// Apply the staged workload `name`: its deployment id, or its application when only one
    /// of that application waits.
    Apply {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalWorkload {
    pub deployment: String,
    pub application: String,
    pub version: String,
    pub status: Status,
    /// Downloaded and waiting for an apply.
    pub staged: bool,
    pub containers: Containers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalReply {
    Workloads(Vec<LocalWorkload>),
    Applied { deployment: String },
    Error(String),
}

/// Where the running agent listens, in its data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Asks the agent running on `data_dir` (blocking: this is the command line's side).
pub fn ask(data_dir: &Path, request: &LocalRequest) -> anyhow::Result<LocalReply> {
    use anyhow::Context;
    let path = socket_path(data_dir);
    let mut stream = std::os::unix::net::UnixStream::connect(&path)
        .with_context(|| format!("no edge node answers on {} (is it running with this --data-dir?)", path.display()))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).with_context(|| format!("a reply that does not read: {reply:?}"))
}

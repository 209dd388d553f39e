//! The `replay` binary: the auditors' tool. Not built yet.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("replay: not built yet (rebuild, point in time, audit trail and verify are planned)");
    ExitCode::FAILURE
}

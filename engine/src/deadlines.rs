//! Nothing in flight forever: the engine's own deadline on every in-flight status of every
//! node (`events::status::Deadlines`), beside the node's deadlines for its steps. A node that
//! went quiet, lost its work or hangs in a step leaves its status where it was; past the
//! status's deadline the engine records `deployment_node.overdue` on the pair, naming the
//! status and how long it waited, and the node view shows it beside the status. A later report
//! still counts, and ends it. Every engine looks; the pair records a status overdue once.

use std::time::Duration;

use chrono::Utc;

use events::deployment_node::{self, DeploymentNode, DeploymentNodeCommand};
use events::status::Deadlines;

use crate::command::{CommandError, CommandHandler, CommandMeta};
use crate::read_model::Deployments;

/// Looks for overdue statuses, forever.
pub async fn run(handler: CommandHandler, deployments: Deployments, deadlines: Deadlines) -> anyhow::Result<()> {
    let mut checks = tokio::time::interval(check_every(&deadlines));
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        checks.tick().await;
        let now = Utc::now();
        for view in deployments.all()? {
            for (node, entry) in &view.nodes {
                // A node held back by a phased rollout, or cut off, is not waited for.
                if !entry.released || !entry.active || entry.revoked || entry.overdue.is_some() {
                    continue;
                }
                let Some(deadline) = deadlines.of(entry.status).and_then(|d| chrono::Duration::from_std(d).ok()) else {
                    continue;
                };
                if entry.updated_at.checked_add_signed(deadline).is_none_or(|due| due > now) {
                    continue;
                }
                let command = DeploymentNodeCommand::MarkOverdue { status: entry.status, since: entry.updated_at };
                let meta = CommandMeta::new(&view.tenant, "engine:deadlines");
                let pair = deployment_node::id(&view.id, node);
                match handler.execute::<DeploymentNode>(&pair, &command, &meta).await {
                    Ok(committed) if !committed.events.is_empty() => {
                        let status = entry.status.as_str();
                        tracing::warn!(tenant = view.tenant, deployment = view.id, node, status, "overdue");
                    }
                    Ok(_) => {}
                    Err(CommandError::Rejected(rejection)) => {
                        tracing::debug!(deployment = view.id, node, %rejection, "overdue not recorded");
                    }
                    Err(e) => tracing::warn!(deployment = view.id, node, error = %e, "recording an overdue status"),
                }
            }
        }
    }
}

/// How often to look: a quarter of the shortest deadline, between 250 ms and 15 s.
fn check_every(deadlines: &Deadlines) -> Duration {
    let shortest = deadlines.pending.min(deadlines.download).min(deadlines.step);
    shortest.checked_div(4).unwrap_or_default().clamp(Duration::from_millis(250), Duration::from_secs(15))
}

//! The subjects of the `EVENTS` stream, and the ids that may appear in them.
//!
//! - `ev.<tenant>.<aggregate type>.<id>`: the events of one aggregate;
//! - `ev.<tenant>.deployment_node.<deployment>.<node>`: one deployment on one node, an
//!   aggregate whose id is `<deployment>.<node>`;
//! - `ev.<tenant>.node.<node>.desired`: work the engine addresses to one node;
//! - `ev.<tenant>.node.<node>.state`: reports one node sends back.

pub const STREAM: &str = "EVENTS";
pub const ALL: &str = "ev.>";
/// Every aggregate of every type (`ev.<tenant>.<type>.<id>`), not the node work and reports: one
/// filter, which keeps a consumer on JetStream's fast path.
pub const ALL_AGGREGATES: &str = "ev.*.*.*";
pub const ALL_APPLICATIONS: &str = "ev.*.application.*";
pub const ALL_DEPLOYMENTS: &str = "ev.*.deployment.*";
pub const ALL_TENANTS: &str = "ev.*.tenant.*";
/// The node aggregates only (their work and report subjects have a fifth token).
pub const ALL_NODES: &str = "ev.*.node.*";
pub const ALL_NODE_REPORTS: &str = "ev.*.node.*.state";
/// The work addressed to every node.
pub const ALL_NODE_WORK: &str = "ev.*.node.*.desired";
/// Every (deployment, node) pair: `ev.<tenant>.deployment_node.<deployment>.<node>`.
pub const ALL_DEPLOYMENT_NODES: &str = "ev.*.deployment_node.*.*";

/// Every pair of one deployment.
pub fn deployment_nodes(tenant: &str, deployment: &str) -> String {
    format!("ev.{tenant}.deployment_node.{deployment}.*")
}

/// Every event of one tenant.
pub fn tenant_events(tenant: &str) -> String {
    format!("ev.{tenant}.>")
}

pub fn aggregate(tenant: &str, aggregate_type: &str, id: &str) -> String {
    format!("ev.{tenant}.{aggregate_type}.{id}")
}

pub fn node_desired(tenant: &str, node: &str) -> String {
    format!("ev.{tenant}.node.{node}.desired")
}

pub fn node_reports(tenant: &str, node: &str) -> String {
    format!("ev.{tenant}.node.{node}.state")
}

/// The durable consumer through which a node reads its work. The tenant's length comes first:
/// tenants and nodes may hold `-`, and `node-a-b-c` alone would not say which is which.
pub fn node_consumer(tenant: &str, node: &str) -> String {
    format!("node-{}-{tenant}-{node}", tenant.len())
}

/// The prefix of a node's reply subjects: its credential lets it receive on these alone.
pub fn node_inbox(tenant: &str, node: &str) -> String {
    format!("_INBOX_node.{tenant}.{node}")
}

/// Whose a subject of the `EVENTS` stream is: the tenant, aggregate type and id an envelope
/// on it must carry. Reports count as the aggregate [`crate::report::AGGREGATE_TYPE`] of their
/// node, work as [`crate::work::AGGREGATE_TYPE`]; `None` for a subject outside the layout.
pub fn owner(subject: &str) -> Option<Owner<'_>> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let (tenant, aggregate_type, id): (&str, &str, std::borrow::Cow<'_, str>) = match tokens[..] {
        ["ev", tenant, crate::deployment_node::TYPE, deployment, node] => {
            (tenant, crate::deployment_node::TYPE, crate::deployment_node::id(deployment, node).into())
        }
        ["ev", tenant, "node", node, "state"] => (tenant, crate::report::AGGREGATE_TYPE, node.into()),
        ["ev", tenant, "node", node, "desired"] => (tenant, crate::work::AGGREGATE_TYPE, node.into()),
        ["ev", tenant, aggregate_type, id] => (tenant, aggregate_type, id.into()),
        _ => return None,
    };
    Some(Owner { tenant, aggregate_type, id })
}

/// What [`owner`] finds a subject belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner<'a> {
    pub tenant: &'a str,
    pub aggregate_type: &'a str,
    pub id: std::borrow::Cow<'a, str>,
}

/// Checks that `value` can be one token of a subject: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn check_token(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > 64 {
        return Err(format!("{what} `{value}` is longer than 64 characters"));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("{what} `{value}` has `{bad}`: use letters, digits, `-` and `_`"));
    }
    Ok(())
}

/// True when `subject` matches `pattern`, where `*` stands for one token and a final `>` for
/// one or more.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for wanted in pattern.split('.') {
        match (wanted, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (wanted, Some(token)) if wanted == token => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_refuse_what_would_change_the_subject() {
        assert!(check_token("node", "edge-1_a").is_ok());
        assert_eq!(check_token("node", "").unwrap_err(), "node must not be empty");
        assert_eq!(check_token("node", "a.b").unwrap_err(), "node `a.b` has `.`: use letters, digits, `-` and `_`");
        assert!(check_token("node", "a*").is_err());
        assert!(check_token("node", "a>").is_err());
        assert!(check_token("node", "a b").is_err());
        assert!(check_token("node", &"x".repeat(65)).is_err());
    }

    #[test]
    fn subjects_follow_the_documented_layout() {
        assert_eq!(aggregate("acme", "deployment", "d1"), "ev.acme.deployment.d1");
        assert_eq!(node_desired("acme", "n1"), "ev.acme.node.n1.desired");
        assert_eq!(node_reports("acme", "n1"), "ev.acme.node.n1.state");
        assert_ne!(node_consumer("a-b", "c"), node_consumer("a", "b-c"));
    }

    #[test]
    fn each_subject_names_its_owner() {
        let owner_of = |subject| owner(subject).map(|o| format!("{}/{}/{}", o.tenant, o.aggregate_type, o.id));
        assert_eq!(owner_of("ev.acme.deployment.d1").as_deref(), Some("acme/deployment/d1"));
        assert_eq!(owner_of("ev.acme.deployment_node.d1.n1").as_deref(), Some("acme/deployment_node/d1.n1"));
        assert_eq!(owner_of("ev.acme.node.n1.state").as_deref(), Some("acme/node_report/n1"));
        assert_eq!(owner_of("ev.acme.node.n1.desired").as_deref(), Some("acme/node_work/n1"));
        assert_eq!(owner_of("ev.acme.node.n1.other"), None);
        assert_eq!(owner_of("tm.acme.n1"), None);
    }

    #[test]
    fn a_pattern_matches_tokens_one_for_one_with_wildcards() {
        assert!(matches("ev.*.*.*", "ev.acme.deployment.d1"));
        assert!(!matches("ev.*.*.*", "ev.acme.node.n1.state"), "one token too many");
        assert!(!matches("ev.*.*.*", "ev.acme.node"), "one token short");
        assert!(matches("ev.>", "ev.acme.node.n1.state"));
        assert!(!matches("ev.>", "ev"), "> needs a token");
        assert!(matches("ev.acme.node.*.state", "ev.acme.node.n1.state"));
        assert!(!matches("ev.acme.node.*.state", "ev.other.node.n1.state"));
    }
}

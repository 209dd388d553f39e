//! Rebuild and check: the whole log folded, by the engine's own projection code, into fresh
//! read models; then compared with what a live engine shows.

use std::path::Path;
use std::time::{Duration, Instant};

use bus::store::EventStore;
use engine::projector::{self, ProjectorConfig};
use engine::read_model::{Deployments, Nodes};
use events::projection::deployments::DeploymentView;
use events::projection::nodes::NodeRecord;

/// Fresh read models, folded from the log.
#[derive(Debug)]
pub struct Rebuilt {
    pub deployments: Deployments,
    pub nodes: Nodes,
    /// Events read.
    pub events: u64,
    pub took: Duration,
}

/// Folds the log, up to its last sequence now, into new read models in `dir`.
pub async fn rebuild(store: &EventStore, dir: &Path) -> anyhow::Result<Rebuilt> {
    let started = Instant::now();
    // Written out once, at the end: a rebuild cut short starts again from what was written.
    let db = sled::Config::new().path(dir).flush_every_ms(None).open()?;
    let models = engine::read_model::open(&db)?;
    let (deployments, nodes) = (Deployments::new(models.clone()), Nodes::new(models.clone()));
    let until = store.last_sequence().await?;
    let config = ProjectorConfig { batch_size: 1000 };
    // On a terminal, how far the fold has come: its checkpoint, read as it moves.
    let progress = crate::progress_bar(until);
    let watched = (progress.clone(), models.clone());
    let follow = tokio::spawn(async move {
        loop {
            watched.0.set_position(projector::checkpoint(&watched.1).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let events = projector::rebuild(store, &models, &config, until).await;
    follow.abort();
    progress.finish_and_clear();
    let events = events?;
    db.flush_async().await?;
    Ok(Rebuilt { deployments, nodes, events, took: started.elapsed() })
}

/// Every difference between the rebuilt read models and a live engine's API, one per line.
/// `http` presents a token that reads every tenant.
pub async fn differences(rebuilt: &Rebuilt, api: &str, http: &reqwest::Client) -> anyhow::Result<Vec<String>> {
    let get = |tenant: String, path: String| {
        let request = http.get(format!("{api}{path}")).header("x-tenant", tenant);
        async move { anyhow::Ok((request.send().await?.error_for_status()?).json::<serde_json::Value>().await?) }
    };
    let mut found = Vec::new();
    let deployments: Vec<DeploymentView> = rebuilt.deployments.all()?;
    let mut tenants: Vec<String> = deployments.iter().map(|d| d.tenant.clone()).collect();
    let nodes: Vec<NodeRecord> = rebuilt.nodes.all()?;
    tenants.extend(nodes.iter().map(|n| n.tenant.clone()));
    tenants.sort();
    tenants.dedup();
    for view in &deployments {
        let live = get(view.tenant.clone(), format!("/v1/deployments/{}", view.id)).await;
        let rebuilt = serde_json::to_value(view)?;
        match live {
            Ok(live) if live == rebuilt => {}
            Ok(live) => found.push(format!("deployment {}: live {live}, rebuilt {rebuilt}", view.id)),
            Err(e) => found.push(format!("deployment {}: rebuilt, but live says {e}", view.id)),
        }
    }
    for tenant in &tenants {
        // Every item of a listing, page by page.
        let all = |path: &'static str| {
            let get = &get;
            async move {
                let mut items = Vec::new();
                let mut cursor: Option<String> = None;
                loop {
                    let query = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
                    let page = get(tenant.clone(), format!("{path}?limit=200{query}")).await?;
                    items.extend(page.get("items").and_then(|items| items.as_array()).into_iter().flatten().cloned());
                    match page.get("next_cursor").and_then(|next| next.as_str()) {
                        Some(next) => cursor = Some(next.to_owned()),
                        None => return anyhow::Ok(items),
                    }
                }
            }
        };
        let live = serde_json::Value::Array(all("/v1/nodes").await?);
        let rebuilt: Vec<&NodeRecord> = nodes.iter().filter(|n| &n.tenant == tenant).collect();
        if live != serde_json::to_value(&rebuilt)? {
            found.push(format!("nodes of {tenant}: live {live}, rebuilt {}", serde_json::to_value(&rebuilt)?));
        }
        // Deployments the live engine has and the log does not.
        for item in all("/v1/deployments").await? {
            let id = item.get("id").and_then(|id| id.as_str()).unwrap_or_default();
            if !deployments.iter().any(|d| d.id == id && &d.tenant == tenant) {
                found.push(format!("deployment {id}: live, but not in the log"));
            }
        }
    }
    Ok(found)
}

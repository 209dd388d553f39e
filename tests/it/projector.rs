//! The projector on a real nats-server: stopped mid-stream, it resumes from its
//! checkpoint and ends with the same read model as a fresh rebuild.

use std::time::Duration;

use engine::projector::{self, ProjectorConfig};
use engine::read_model::Deployments;
use events::deployment::{Deployment, DeploymentCommand, Launch};
use events::{Failure, Status};
use tests::NatsServer;

use crate::harness::{handler, meta, seed};

/// Launches `count` deployments and reports a few states for each: a history of `5 * count`
/// deployment events.
async fn history(nats: &NatsServer, count: usize) {
    let commands = handler(nats).await;
    seed(&commands, &["edge-1", "edge-2"]).await;
    let application: events::application::Application = commands.state("default", "sample").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..count {
        let commands = commands.clone();
        let launch = Launch::new("sample", application.clone(), "1.0.0", &["edge-1", "edge-2"]);
        tasks.spawn(async move {
            let id = uuid::Uuid::now_v7().to_string();
            commands.execute::<Deployment>(&id, &DeploymentCommand::Launch(launch), &meta()).await.unwrap();
            let last = if i % 7 == 0 { Status::Failed } else { Status::Running };
            for (node, status) in [
                ("edge-1", Status::Received),
                ("edge-1", Status::Running),
                ("edge-2", Status::Downloading),
                ("edge-2", last),
            ] {
                let error = (status == Status::Failed)
                    .then(|| Failure { code: "image_not_found".into(), message: "gone".into() });
                crate::harness::report(&commands, &id, node, status, error).await;
            }
        });
        if tasks.len() >= 32 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_stopped_mid_stream_resumes_to_the_same_model_as_a_rebuild() {
    let nats = NatsServer::start().await;
    history(&nats, 300).await;
    let commands = handler(&nats).await;
    let store = commands.store().clone();
    let last = store.last_sequence().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path().join("live")).unwrap();
    let live = Deployments::new(engine::read_model::open(&db).unwrap());
    let small_batches = ProjectorConfig { batch_size: 10 };
    // Stop it as soon as its first batch lands: the watcher sees the checkpoint key change.
    let mut first_commit = live.tree().watch_prefix(b"meta/checkpoint");
    let run = tokio::spawn(projector::run(store.clone(), live.tree().clone(), small_batches.clone()));
    tokio::time::timeout(Duration::from_secs(60), &mut first_commit).await.expect("a first batch is committed");
    run.abort();
    let _ = run.await;
    let stopped_at = projector::checkpoint(live.tree()).unwrap();
    assert!(stopped_at > 0 && stopped_at < last, "stopped at {stopped_at} of {last}: not mid-stream");

    let resumed = tokio::spawn(projector::run(store.clone(), live.tree().clone(), small_batches));
    assert!(
        projector::wait_for(live.tree(), last, Duration::from_secs(60)).await.unwrap(),
        "the resumed projector catches up"
    );
    resumed.abort();

    let fresh_db = sled::open(dir.path().join("fresh")).unwrap();
    let fresh = Deployments::new(engine::read_model::open(&fresh_db).unwrap());
    let rebuild = tokio::spawn(projector::run(store, fresh.tree().clone(), ProjectorConfig::default()));
    assert!(projector::wait_for(fresh.tree(), last, Duration::from_secs(60)).await.unwrap(), "the rebuild catches up");
    rebuild.abort();

    let (live, fresh) = (live.all().unwrap(), fresh.all().unwrap());
    assert_eq!(live.len(), 300);
    assert_eq!(live, fresh);
    let failed = live.iter().filter(|d| d.status == Status::Failed).count();
    assert_eq!(failed, 300usize.div_ceil(7));
}

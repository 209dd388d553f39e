//! A container runtime in memory, for fleet-scale simulation (benchmarks, the chaos test):
//! images are names, containers are records, every step takes `latency`. An image whose
//! reference contains `missing` is not in its registry.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::runtime::{
    ContainerRuntime, ContainerSpec, ContainerState, ErrorCode, Observed, ObservedContainer, RuntimeError, Sample,
};

#[derive(Debug, Clone, Default)]
pub struct SimRuntime {
    state: Arc<Mutex<SimState>>,
    latency: Duration,
}

#[derive(Debug, Default)]
struct SimState {
    images: BTreeSet<String>,
    /// By id.
    containers: BTreeMap<String, SimContainer>,
    made: u64,
}

/// A container as the simulated engine holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimContainer {
    pub id: String,
    pub name: String,
    pub image: String,
    pub env: Vec<String>,
    pub labels: std::collections::HashMap<String, String>,
    pub running: bool,
}

fn not_found(what: &str) -> RuntimeError {
    RuntimeError::new(ErrorCode::Runtime, format!("No such container: {what}"))
}

impl SimRuntime {
    pub fn new(latency: Duration) -> SimRuntime {
        SimRuntime { state: Arc::default(), latency }
    }

    /// Every container, as the truth the engine's status is compared with.
    pub fn containers(&self) -> Vec<SimContainer> {
        self.state.lock().unwrap().containers.values().cloned().collect()
    }

    /// Stops a container behind the node's back.
    pub fn stop_behind_its_back(&self, id: &str) {
        if let Some(c) = self.state.lock().unwrap().containers.get_mut(id) {
            c.running = false;
        }
    }

    async fn step(&self) {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    fn by_ref<'a>(state: &'a mut SimState, reference: &str) -> Option<&'a mut SimContainer> {
        let id = state.containers.values().find(|c| c.id == reference || c.name == reference)?.id.clone();
        state.containers.get_mut(&id)
    }
}

impl ContainerRuntime for SimRuntime {
    async fn sample(&self, id: &str) -> Result<Sample, RuntimeError> {
        let mut state = self.state.lock().unwrap();
        let c = SimRuntime::by_ref(&mut state, id).ok_or_else(|| not_found(id))?;
        let status = if c.running { "running" } else { "exited" };
        Ok(Sample { state: status.to_owned(), ..Sample::default() })
    }

    async fn observe(&self, name: &str, image: &str) -> Result<Observed, RuntimeError> {
        let state = self.state.lock().unwrap();
        let container = state.containers.values().find(|c| c.name == name).map(|c| ObservedContainer {
            id: c.id.clone(),
            running: c.running,
            image: c.image.clone(),
            image_id: format!("sim:{}", c.image),
            env: c.env.clone(),
        });
        Ok(Observed { container, image_present: state.images.contains(image) })
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        self.step().await;
        if image.contains("missing") {
            return Err(RuntimeError::new(ErrorCode::ImageNotFound, format!("manifest for {image} not found")));
        }
        self.state.lock().unwrap().images.insert(image.to_owned());
        Ok(())
    }

    async fn pull_again(&self, image: &str) -> Result<(), RuntimeError> {
        self.pull(image).await
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        Ok(self.state.lock().unwrap().images.contains(image).then(|| format!("sim:{image}")))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.step().await;
        let mut state = self.state.lock().unwrap();
        if let Some(existing) = state.containers.values().find(|c| c.name == spec.name) {
            return Ok(existing.id.clone());
        }
        if !state.images.contains(&spec.image) {
            return Err(RuntimeError::new(ErrorCode::ImageNotFound, format!("No such image: {}", spec.image)));
        }
        state.made = state.made.saturating_add(1);
        let id = format!("sim{:08}", state.made);
        let container = SimContainer {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            env: spec.env.clone(),
            labels: spec.labels.clone(),
            running: false,
        };
        state.containers.insert(id.clone(), container);
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        self.step().await;
        let mut state = self.state.lock().unwrap();
        let c = SimRuntime::by_ref(&mut state, id).ok_or_else(|| not_found(id))?;
        c.running = true;
        Ok(ContainerState { image_id: format!("sim:{}", c.image), running: true, exit_code: None, error: None })
    }

    async fn logs(
        &self,
        id: &str,
        _offset: u64,
        _limit: usize,
        _timestamps: bool,
    ) -> Result<(Vec<String>, bool), RuntimeError> {
        let mut state = self.state.lock().unwrap();
        SimRuntime::by_ref(&mut state, id).ok_or_else(|| not_found(id))?;
        Ok((Vec::new(), false))
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.step().await;
        let mut state = self.state.lock().unwrap();
        SimRuntime::by_ref(&mut state, id).ok_or_else(|| not_found(id))?.running = false;
        Ok(())
    }

    async fn remove(&self, id: &str, image: Option<&str>) -> Result<(), RuntimeError> {
        self.step().await;
        let mut state = self.state.lock().unwrap();
        if let Some(found) = SimRuntime::by_ref(&mut state, id).map(|c| c.id.clone()) {
            state.containers.remove(&found);
        }
        if let Some(image) = image {
            if !state.containers.values().any(|c| c.image == image) {
                state.images.remove(image);
            }
        }
        Ok(())
    }

    async fn remove_network(&self, _name: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
}

//! Secrets: values a deployment's containers get in their environment that the log, the read
//! models, the API and every log line must never hold in clear.
//!
//! - At launch the API seals each value under the tenant's key ([`bus::seal::TenantKey`]): the
//!   `deployment.launched` event holds only that.
//! - Each tenant's key lives in the key-value bucket [`BUCKET`], in the engine's account alone,
//!   never in the log. Deleting the tenant purges it ([`TenantKeys::shred`]): whatever the log
//!   holds under it can never be read again, by anyone.
//! - The router opens the values and seals each again for each target node alone
//!   ([`bus::seal::seal_for_node`], to the node's enrolled key), in the work it sends. The node
//!   keeps them sealed and opens them only as it makes a container.
//!
//! What the API and the read models show of a secret is its name, with the value `***`.

use std::collections::BTreeMap;

use anyhow::Context;
use async_nats::jetstream;

use bus::seal::TenantKey;
use events::node::Node;
use events::Aggregate;

/// The bucket of tenants' keys.
pub const BUCKET: &str = "TENANT_KEYS";

/// Where a secret is sealed: a tenant's deployment, by name. A value moved elsewhere does not
/// open.
pub fn place(tenant: &str, deployment: &str, name: &str) -> String {
    format!("{tenant}/{deployment}/{name}")
}

/// The tenants' keys, read from the bucket on each use so that a shredded key is gone for
/// every engine at once.
#[derive(Debug, Clone)]
pub struct TenantKeys {
    kv: jetstream::kv::Store,
}

impl TenantKeys {
    /// Opens the bucket, making it if it is missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> anyhow::Result<TenantKeys> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(jetstream::kv::Config {
                    bucket: BUCKET.to_owned(),
                    history: 1,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .context("making the bucket of tenants' keys")?,
        };
        Ok(TenantKeys { kv })
    }

    /// The tenant's key, if it has one.
    pub async fn get(&self, tenant: &str) -> anyhow::Result<Option<TenantKey>> {
        let stored = self.kv.get(tenant).await.with_context(|| format!("reading tenant `{tenant}`'s key"))?;
        match stored {
            None => Ok(None),
            Some(bytes) => {
                let key = TenantKey::from_bytes(&bytes);
                Ok(Some(key.with_context(|| format!("tenant `{tenant}`'s key is {} bytes, not 32", bytes.len()))?))
            }
        }
    }

    /// The tenant's key, made now if it has none (by this engine or another, whichever first).
    pub async fn get_or_make(&self, tenant: &str) -> anyhow::Result<TenantKey> {
        if let Some(key) = self.get(tenant).await? {
            return Ok(key);
        }
        let key = TenantKey::generate();
        match self.kv.create(tenant, key.as_bytes().to_vec().into()).await {
            Ok(_) => Ok(key),
            // Another engine made one first: that one is the tenant's.
            Err(e) => self.get(tenant).await?.with_context(|| format!("making tenant `{tenant}`'s key: {e}")),
        }
    }

    /// Every tenant's key, as the bucket holds it (a shredded one is gone): for a backup.
    pub async fn export(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        use futures::TryStreamExt;
        let tenants: Vec<String> = self.kv.keys().await.context("listing the tenants' keys")?.try_collect().await?;
        let mut keys = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            if let Some(bytes) =
                self.kv.get(&tenant).await.with_context(|| format!("reading tenant `{tenant}`'s key"))?
            {
                keys.push((tenant, bytes.to_vec()));
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Puts back a tenant's key a backup held; refused unless it is one.
    pub async fn import(&self, tenant: &str, bytes: &[u8]) -> anyhow::Result<()> {
        TenantKey::from_bytes(bytes)
            .with_context(|| format!("tenant `{tenant}`'s key is {} bytes, not 32", bytes.len()))?;
        self.kv.put(tenant, bytes.to_vec().into()).await.with_context(|| format!("storing tenant `{tenant}`'s key"))?;
        Ok(())
    }

    /// Destroys the tenant's key, and with it every value sealed under it.
    pub async fn shred(&self, tenant: &str) -> anyhow::Result<()> {
        self.kv.purge(tenant).await.with_context(|| format!("destroying tenant `{tenant}`'s key"))?;
        Ok(())
    }

    /// `values` sealed under the tenant's key, each at its place in `deployment`.
    pub async fn seal(
        &self,
        tenant: &str,
        deployment: &str,
        values: &BTreeMap<String, String>,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        if values.is_empty() {
            return Ok(BTreeMap::new());
        }
        let key = self.get_or_make(tenant).await?;
        Ok(values
            .iter()
            .map(|(name, value)| (name.clone(), key.seal(&place(tenant, deployment, name), value.as_bytes())))
            .collect())
    }

    /// `sealed` (under the tenant's key) sealed again for `node` alone, to the key it is
    /// enrolled with now.
    pub async fn reseal_for(
        &self,
        store: &bus::store::EventStore,
        tenant: &str,
        deployment: &str,
        sealed: &BTreeMap<String, String>,
        node: &str,
    ) -> anyhow::Result<BTreeMap<String, String>> {
        if sealed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let key =
            self.get(tenant).await?.with_context(|| format!("tenant `{tenant}` has no key: its secrets are gone"))?;
        let subject = events::subject::aggregate(tenant, Node::TYPE, node);
        let loaded = store.load(&subject).await?;
        let mut state = Node::default();
        for event in &loaded.events {
            state = state.evolve(&event.envelope.event()?);
        }
        let node_key = state.key.with_context(|| format!("node `{node}` is not enrolled: no key to seal for"))?;
        let mut resealed = BTreeMap::new();
        for (name, value) in sealed {
            let value = key
                .open(&place(tenant, deployment, name), value)
                .with_context(|| format!("secret `{name}` of deployment {deployment} does not open"))?;
            resealed.insert(name.clone(), bus::seal::seal_for_node(&node_key, &value)?);
        }
        Ok(resealed)
    }
}

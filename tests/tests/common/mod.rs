//! Factories for flowstate's own backends.

use std::sync::Arc;

use flowstate_api::{
    BackendCapabilities, KeyedBackendConfig, KeyedStateBackend, KeyedStateHandle, Result, StateReader,
};
use flowstate_conformance::{BackendFactory, TestKey};
use flowstate_heap::HeapBackend;

/// The heap backend.
pub struct HeapFactory;

impl BackendFactory for HeapFactory {
    type Backend<K: TestKey> = HeapBackend<K>;

    fn name(&self) -> &str {
        "heap"
    }

    fn capabilities(&self) -> BackendCapabilities {
        HeapBackend::<u64>::new(flowstate_conformance::full_config())
            .map(|b| b.capabilities())
            .unwrap_or_default()
    }

    fn create<K: TestKey>(&self, config: KeyedBackendConfig<K>) -> Result<HeapBackend<K>> {
        HeapBackend::new(config)
    }

    async fn restore<K: TestKey>(
        &self,
        config: KeyedBackendConfig<K>,
        handles: &[KeyedStateHandle],
        reader: Arc<dyn StateReader>,
    ) -> Result<HeapBackend<K>> {
        HeapBackend::restore(config, handles, &*reader).await
    }
}

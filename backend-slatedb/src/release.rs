//! Releasing SlateDB checkpoints when the checkpoint store no longer
//! retains the checkpoint that pinned them.

use std::sync::Arc;

use flowstate_api::checkpoint::{IncrementalStateHandle, NativeFormat};
use flowstate_api::lifecycle::NativeStateRelease;
use flowstate_api::{Error, ErrorKind, Result};
use futures::StreamExt;
use object_store::ObjectStore;
use slatedb::admin::AdminBuilder;

use crate::error::slate_err;
use crate::SlateDbOptions;

/// The name of the SlateDB checkpoint taken for flowstate checkpoint `id`.
pub(crate) fn checkpoint_name(id: u64) -> String {
    format!("flowstate:{id}")
}

/// Releases the SlateDB checkpoint a handle of the SlateDB backend pins:
/// the checkpoint named `flowstate:<checkpoint id>` of database
/// `<base path>/<backend id>`. See [`SlateDbOptions::release`].
#[derive(Debug, Clone)]
pub struct SlateDbRelease {
    object_store: Arc<dyn ObjectStore>,
    base_path: String,
}

impl SlateDbRelease {
    pub(crate) fn new(options: &SlateDbOptions) -> Self {
        SlateDbRelease {
            object_store: Arc::clone(&options.object_store),
            base_path: options.base_path.clone(),
        }
    }
}

/// True when the database at `path` has a manifest.
pub(crate) async fn exists(store: &Arc<dyn ObjectStore>, path: &str) -> Result<bool> {
    let manifests = object_store::path::Path::from(format!("{path}/manifest"));
    let first = store.list(Some(&manifests)).next().await.transpose().map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("listing the manifests of database {path}: {e}"),
        )
        .with_source(e)
    })?;
    Ok(first.is_some())
}

#[async_trait::async_trait]
impl NativeStateRelease for SlateDbRelease {
    fn format(&self) -> NativeFormat {
        NativeFormat::SlateDb
    }

    async fn release(&self, handle: &IncrementalStateHandle) -> Result<()> {
        let path = format!("{}/{}", self.base_path, handle.backend_id);
        if !exists(&self.object_store, &path).await? {
            return Ok(());
        }
        let admin = AdminBuilder::new(path.as_str(), Arc::clone(&self.object_store)).build();
        let name = checkpoint_name(handle.checkpoint_id);
        let listed = admin
            .list_checkpoints(Some(&name))
            .await
            .map_err(slate_err(|| format!("listing the checkpoints of database {path}")))?;
        for c in listed.iter().filter(|c| c.name.as_deref() == Some(name.as_str())) {
            admin.delete_checkpoint(c.id).await.map_err(slate_err(|| {
                format!(
                    "releasing SlateDB checkpoint {} (checkpoint {}) of database {path}",
                    c.id, handle.checkpoint_id
                )
            }))?;
        }
        Ok(())
    }
}

//! [`ObjectStoreBuilder`]: an [`ObjectBlobStore`] from a URL and options.

use std::fmt;
use std::sync::Arc;
#[cfg(feature = "http")]
use std::time::Duration;

use flowstate_api::{Error, Result};
#[cfg(feature = "aws")]
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
#[cfg(feature = "azure")]
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
#[cfg(feature = "http")]
use object_store::client::SpawnedReqwestConnector;
#[cfg(feature = "gcp")]
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::limit::LimitStore;
use object_store::memory::InMemory;
use object_store::ObjectStore;
#[cfg(feature = "http")]
use object_store::RetryConfig;
use tokio::runtime::Handle;

use crate::entropy::ENTROPY_MARKER;
use crate::local::LocalFiles;
use crate::store::ObjectBlobStore;

/// Hex digits of entropy when the URL holds [`ENTROPY_MARKER`] and no length
/// is given: 256 prefixes.
pub const DEFAULT_ENTROPY_LENGTH: usize = 2;

/// Option keys of flowstate's own, accepted next to the store's keys.
pub const FLOWSTATE_OPTION_KEYS: [&str; 6] = [
    "max_retries",
    "retry_timeout",
    "entropy_length",
    "part_size",
    "part_concurrency",
    "max_requests",
];

/// Builds an [`ObjectBlobStore`] from a URL and options.
///
/// URLs: `s3://bucket/prefix` (also `s3a://`), `gs://bucket/prefix`,
/// `az://container/prefix` (also `azure://`, `abfs://`, `abfss://`),
/// `file:///absolute/path`, `memory://name/prefix` (a fresh in-memory store).
///
/// Options are the store's configuration keys (`object_store`'s
/// `AmazonS3ConfigKey`, `GoogleConfigKey` and `AzureConfigKey`, with their
/// aliases, and `ClientConfigKey`: `endpoint`, `region`, `access_key_id`,
/// `allow_http`, `timeout`, …) and flowstate's own
/// ([`FLOWSTATE_OPTION_KEYS`]): `max_retries`, `retry_timeout` (`30s`,
/// `500ms`), `entropy_length`, `part_size`, `part_concurrency`,
/// `max_requests` (requests in flight over the whole store). A key that
/// neither knows is refused by name, never ignored. Credentials not given as
/// options come from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and
/// never appear in errors or `Debug` output.
///
/// ```
/// use flowstate_object::ObjectStoreBuilder;
///
/// let store = ObjectStoreBuilder::new("s3://bucket/checkpoints/job")
///     .with_option("region", "eu-west-1")
///     .with_option("max_retries", "5")
///     .build()?;
/// assert_eq!(flowstate_api::checkpoint::BlobStore::root(&store), "s3://bucket/checkpoints/job");
///
/// let e = ObjectStoreBuilder::new("s3://bucket/x").with_option("regoin", "eu-west-1").build().unwrap_err();
/// assert!(e.to_string().contains("regoin"));
/// # Ok::<(), flowstate_api::Error>(())
/// ```
#[derive(Clone)]
pub struct ObjectStoreBuilder {
    url: String,
    options: Vec<(String, String)>,
    #[cfg(feature = "http")]
    retry: RetryConfig,
    entropy: Option<usize>,
    parts: Option<(usize, usize)>,
    max_requests: Option<usize>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    from_env: bool,
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    io: Option<Handle>,
}

impl fmt::Debug for ObjectStoreBuilder {
    /// The URL and the option keys; never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreBuilder")
            .field("url", &self.url)
            .field("option_keys", &self.options.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("from_env", &self.from_env)
            .finish_non_exhaustive()
    }
}

impl ObjectStoreBuilder {
    /// A builder for the store at `url`, reading credentials from the
    /// environment, with `object_store`'s default retries (10, with
    /// exponential backoff, for at most 3 minutes).
    pub fn new(url: impl Into<String>) -> Self {
        ObjectStoreBuilder {
            url: url.into(),
            options: Vec::new(),
            #[cfg(feature = "http")]
            retry: RetryConfig::default(),
            entropy: None,
            parts: None,
            max_requests: None,
            from_env: true,
            io: None,
        }
    }

    /// With the option `key` set to `value`.
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// With every option of `options`.
    pub fn with_options<K: Into<String>, V: Into<String>>(mut self, options: impl IntoIterator<Item = (K, V)>) -> Self {
        self.options
            .extend(options.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// With these retries for throttling (429, 503 `SlowDown`), server
    /// errors and transient network errors (cloud stores).
    #[cfg(feature = "http")]
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// With entropy injection of `length` hex digits at the URL's
    /// [`ENTROPY_MARKER`] segment (see [`ObjectBlobStore::with_entropy`]).
    pub fn with_entropy(mut self, length: usize) -> Self {
        self.entropy = Some(length);
        self
    }

    /// With multipart parts of `bytes` and `concurrency` parts in flight per
    /// object (see [`ObjectBlobStore::with_parts`]).
    pub fn with_parts(mut self, bytes: usize, concurrency: usize) -> Self {
        self.parts = Some((bytes, concurrency));
        self
    }

    /// With at most `n` requests in flight over the whole store, however
    /// many uploads and reads run at once.
    pub fn with_max_requests(mut self, n: usize) -> Self {
        self.max_requests = Some(n.max(1));
        self
    }

    /// With the HTTP requests of cloud stores running on `runtime`. Without
    /// it they run on the Tokio runtime the store is built on, or, built
    /// outside one, on a small runtime of flowstate's own, so engines on any
    /// executor can use the store.
    pub fn with_io_runtime(mut self, runtime: Handle) -> Self {
        self.io = Some(runtime);
        self
    }

    /// Without reading credentials or settings from the environment.
    pub fn without_env(mut self) -> Self {
        self.from_env = false;
        self
    }

    /// The store.
    pub fn build(mut self) -> Result<ObjectBlobStore> {
        let url =
            url::Url::parse(&self.url).map_err(|e| Error::invalid(format!("object store URL {:?}: {e}", self.url)))?;
        let own: Vec<(String, String)> = {
            let (own, rest) = std::mem::take(&mut self.options)
                .into_iter()
                .partition(|(k, _)| FLOWSTATE_OPTION_KEYS.contains(&k.as_str()));
            self.options = rest;
            own
        };
        for (key, value) in &own {
            self.apply_own(key, value)?;
        }
        let scheme = url.scheme().to_string();
        let host = url.host_str().unwrap_or("").to_string();
        let path = url.path().trim_matches('/').to_string();
        let (store, base, prefix): (Arc<dyn ObjectStore>, String, String) = match scheme.as_str() {
            #[cfg(feature = "aws")]
            "s3" | "s3a" => {
                install_crypto_provider();
                let mut b = if self.from_env {
                    AmazonS3Builder::from_env()
                } else {
                    AmazonS3Builder::new()
                }
                .with_url(url.as_str())
                .with_retry(self.retry.clone());
                if let Some(io) = self.io_runtime() {
                    b = b.with_http_connector(SpawnedReqwestConnector::new(io));
                }
                for (k, v) in &self.options {
                    b = b.with_config(key::<AmazonS3ConfigKey>(&scheme, k)?, v);
                }
                let s = b.build().map_err(|e| build_err(&self.url, e))?;
                (Arc::new(s), format!("{scheme}://{host}"), path)
            }
            #[cfg(feature = "gcp")]
            "gs" => {
                install_crypto_provider();
                let mut b = if self.from_env {
                    GoogleCloudStorageBuilder::from_env()
                } else {
                    GoogleCloudStorageBuilder::new()
                }
                .with_url(url.as_str())
                .with_retry(self.retry.clone());
                if let Some(io) = self.io_runtime() {
                    b = b.with_http_connector(SpawnedReqwestConnector::new(io));
                }
                for (k, v) in &self.options {
                    b = b.with_config(key::<GoogleConfigKey>(&scheme, k)?, v);
                }
                let s = b.build().map_err(|e| build_err(&self.url, e))?;
                (Arc::new(s), format!("{scheme}://{host}"), path)
            }
            #[cfg(feature = "azure")]
            "az" | "azure" | "abfs" | "abfss" | "adl" => {
                install_crypto_provider();
                let mut b = if self.from_env {
                    MicrosoftAzureBuilder::from_env()
                } else {
                    MicrosoftAzureBuilder::new()
                }
                .with_url(url.as_str())
                .with_retry(self.retry.clone());
                if let Some(io) = self.io_runtime() {
                    b = b.with_http_connector(SpawnedReqwestConnector::new(io));
                }
                for (k, v) in &self.options {
                    b = b.with_config(key::<AzureConfigKey>(&scheme, k)?, v);
                }
                let s = b.build().map_err(|e| build_err(&self.url, e))?;
                // abfs URLs name the container before the `@`.
                let authority = match url.username() {
                    "" => host,
                    user => format!("{user}@{host}"),
                };
                (Arc::new(s), format!("{scheme}://{authority}"), path)
            }
            "file" => {
                self.refuse_options("file")?;
                if !host.is_empty() && host != "localhost" {
                    return Err(Error::invalid(format!(
                        "object store URL {:?}: a file URL names a local path (file:///path)",
                        self.url
                    )));
                }
                (Arc::new(LocalFiles::new()), "file://".to_string(), path)
            }
            "memory" => {
                self.refuse_options("memory")?;
                (Arc::new(InMemory::new()), format!("memory://{host}"), path)
            }
            #[cfg(not(feature = "aws"))]
            "s3" | "s3a" => return Err(without(&self.url, "aws")),
            #[cfg(not(feature = "gcp"))]
            "gs" => return Err(without(&self.url, "gcp")),
            #[cfg(not(feature = "azure"))]
            "az" | "azure" | "abfs" | "abfss" | "adl" => return Err(without(&self.url, "azure")),
            other => {
                return Err(Error::invalid(format!(
                "object store URL {:?}: unknown scheme {other:?} (s3, s3a, gs, az, azure, abfs, abfss, file, memory)",
                self.url
            )))
            }
        };
        let store: Arc<dyn ObjectStore> = match self.max_requests {
            Some(n) => Arc::new(LimitStore::new(store, n)),
            None => store,
        };
        let mut blob = ObjectBlobStore::new(store, &base, &prefix)?;
        if let Some((bytes, concurrency)) = self.parts {
            blob = blob.with_parts(bytes, concurrency)?;
        }
        let marked = prefix.split('/').any(|s| s == ENTROPY_MARKER);
        match (self.entropy, marked) {
            (Some(length), _) => blob = blob.with_entropy(length)?,
            (None, true) => blob = blob.with_entropy(DEFAULT_ENTROPY_LENGTH)?,
            (None, false) => {}
        }
        Ok(blob)
    }

    /// Where HTTP requests run, when not on the caller's runtime.
    #[cfg(feature = "http")]
    fn io_runtime(&self) -> Option<Handle> {
        match (&self.io, Handle::try_current()) {
            (Some(io), _) => Some(io.clone()),
            (None, Ok(_)) => None,
            (None, Err(_)) => flowstate_api::runtime::io_runtime(),
        }
    }

    fn apply_own(&mut self, key: &str, value: &str) -> Result<()> {
        let bad = |what: &str| Error::invalid(format!("object store option {key}: {value:?} is not {what}"));
        let number = |what: &str| value.parse::<usize>().map_err(|_| bad(what));
        match key {
            #[cfg(feature = "http")]
            "max_retries" => self.retry.max_retries = number("a number")?,
            #[cfg(feature = "http")]
            "retry_timeout" => {
                self.retry.retry_timeout = parse_duration(value).ok_or_else(|| bad("a duration such as 30s"))?
            }
            // Retries are the cloud stores' (`file://` and `memory://` take no options).
            #[cfg(not(feature = "http"))]
            "max_retries" | "retry_timeout" => {
                return Err(Error::unsupported(format!(
                    "object store option {key}: this build has no cloud store to retry for"
                )))
            }
            "entropy_length" => self.entropy = Some(number("a number")?),
            "part_size" => {
                let concurrency = self.parts.map_or(crate::DEFAULT_PART_CONCURRENCY, |p| p.1);
                self.parts = Some((number("a size in bytes")?, concurrency));
            }
            "part_concurrency" => {
                let size = self.parts.map_or(crate::DEFAULT_PART_SIZE, |p| p.0);
                self.parts = Some((size, number("a number")?));
            }
            "max_requests" => self.max_requests = Some(number("a number")?.max(1)),
            _ => return Err(Error::internal(format!("option {key} is not flowstate's"))),
        }
        Ok(())
    }

    fn refuse_options(&self, scheme: &str) -> Result<()> {
        match self.options.first() {
            Some((k, _)) => Err(Error::invalid(format!(
                "object store option {k:?} does not apply to {scheme}:// stores, which take none"
            ))),
            None => Ok(()),
        }
    }
}

/// The store's configuration key `k`, or an error naming it.
#[cfg(feature = "http")]
fn key<K: std::str::FromStr>(scheme: &str, k: &str) -> Result<K> {
    K::from_str(k).map_err(|_| {
        Error::invalid(format!(
            "unknown object store option {k:?} for {scheme}:// (see object_store's configuration keys for the \
             store, or flowstate's own: {})",
            FLOWSTATE_OPTION_KEYS.join(", ")
        ))
    })
}

/// A store that could not be configured. `object_store`'s build errors name
/// keys and URLs, not secret values.
#[cfg(feature = "http")]
fn build_err(url: &str, e: object_store::Error) -> Error {
    Error::invalid(format!("object store {url:?}: {e}")).with_source(e)
}

/// `30s`, `500ms`, `2m` or plain seconds.
#[cfg(feature = "http")]
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// The error for a cloud URL whose store this build left out.
#[cfg(not(all(feature = "aws", feature = "gcp", feature = "azure")))]
fn without(url: &str, feature: &str) -> Error {
    Error::unsupported(format!(
        "object store URL {url:?}: flowstate-object was built without its {feature:?} feature"
    ))
}

/// HTTPS goes through rustls with `ring`: the process-wide provider is
/// installed unless the engine installed one already.
#[cfg(feature = "http")]
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread's install is fine: one is in place.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("7h"), None);
        assert_eq!(parse_duration("s"), None);
    }
}

//! Object stores named on the command line.

use flowstate_api::{Error, Result};
use flowstate_object::ObjectStoreBuilder;

/// True when `location` is an object-store URL rather than a path.
pub(crate) fn is_url(location: &str) -> bool {
    location.contains("://")
}

/// The builder of the object store at `url`, with `options` (`KEY=VALUE`).
pub(crate) fn object_store_builder(url: &str, options: &[String]) -> Result<ObjectStoreBuilder> {
    let mut builder = ObjectStoreBuilder::new(url);
    for option in options {
        let Some((key, value)) = option.split_once('=') else {
            return Err(Error::invalid(format!("--storage-option {option:?} is not KEY=VALUE")));
        };
        builder = builder.with_option(key, value);
    }
    Ok(builder)
}

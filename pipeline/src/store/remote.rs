//! The seam for remote caches. A remote holds the same two maps as the
//! local store (action records by key, blobs by digest), like Bazel's remote
//! cache (`/ac/` and `/cas/`). The executor consults it after a local miss,
//! verifies every blob it fetches against its digest, and uploads what it
//! computes.

use std::path::Path;

use super::records::ActionRecord;
use super::StoreError;
use crate::digest::Digest;

pub trait RemoteCache: Send + Sync {
    /// A name for messages (URL or path).
    fn describe(&self) -> String;
    fn get_action(&self, key: &Digest) -> Result<Option<ActionRecord>, StoreError>;
    fn put_action(&self, rec: &ActionRecord) -> Result<(), StoreError>;
    fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError>;
    /// Writes the blob's bytes to `dest`; the caller verifies the digest.
    fn get_blob(&self, digest: &Digest, dest: &Path) -> Result<bool, StoreError>;
    fn put_blob(&self, digest: &Digest, src: &Path) -> Result<(), StoreError>;
}

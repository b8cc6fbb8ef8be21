//! `s3://bucket/prefix`: any S3-compatible store, through object_store's
//! S3 client (the version polars already builds). Credentials, region and
//! endpoint come from the standard AWS variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL` for MinIO, Garage, s3s-fs...). Blobs above 8 MiB go
//! up as multipart uploads streamed from the file; downloads are streamed
//! to the file.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use super::{RemoteCache, RemoteError, RemoteResult, MAX_RECORD_BYTES};
use crate::digest::Digest;

const MULTIPART_FROM: u64 = 8 << 20;

pub(crate) struct S3Remote {
    store: Arc<dyn ObjectStore>,
    url: String,
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl S3Remote {
    #[allow(clippy::disallowed_methods)] // an edge: ENV_EDGES in src/ambient.rs
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("s3://").expect("checked by the caller");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url:?}: no bucket (s3://bucket/prefix)"));
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(600)),
            )
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(20),
                ..RetryConfig::default()
            });
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            // A custom endpoint serves path-style requests, often over
            // plain HTTP on a private network.
            b = b
                .with_endpoint(endpoint.clone())
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = b.build().map_err(|e| format!("{url}: {e}"))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("{url}: starting the S3 client: {e}"))?;
        Ok(S3Remote {
            store: Arc::new(store),
            url: format!("s3://{bucket}/{}", prefix.trim_matches('/')),
            prefix: prefix.trim_matches('/').to_string(),
            rt,
        })
    }

    fn path(&self, map: &str, d: &Digest) -> ObjectPath {
        let rel = format!("{map}/{}", d.to_hex());
        if self.prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// GET `p`; `None` when the object does not exist.
    async fn get(&self, p: &ObjectPath) -> RemoteResult<Option<object_store::GetResult>> {
        match self.store.get(p).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(p, e)),
        }
    }

    fn err(&self, what: &ObjectPath, e: object_store::Error) -> RemoteError {
        let msg = format!(
            "{}/{what}: {e}",
            self.url.split('/').take(3).collect::<Vec<_>>().join("/")
        );
        match e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => RemoteError::Denied(msg),
            object_store::Error::InvalidPath { .. } => RemoteError::Rejected(msg),
            // The S3 client reports a refused signature or key as a
            // generic error carrying the service's code.
            _ if [
                "SignatureDoesNotMatch",
                "InvalidAccessKeyId",
                "AccessDenied",
                "403 Forbidden",
            ]
            .iter()
            .any(|c| msg.contains(c)) =>
            {
                RemoteError::Denied(msg)
            }
            _ => RemoteError::Unavailable(msg),
        }
    }
}

impl RemoteCache for S3Remote {
    fn describe(&self) -> String {
        self.url.clone()
    }

    fn get_action(&self, key: &Digest) -> RemoteResult<Option<Vec<u8>>> {
        let p = self.path("ac", key);
        self.rt.block_on(async {
            let Some(r) = self.get(&p).await? else {
                return Ok(None);
            };
            if r.meta.size > MAX_RECORD_BYTES {
                return Err(RemoteError::Rejected(format!(
                    "{p}: {} bytes; not an action record",
                    r.meta.size
                )));
            }
            let bytes = r.bytes().await.map_err(|e| self.err(&p, e))?;
            Ok(Some(bytes.to_vec()))
        })
    }

    fn put_action(&self, key: &Digest, bytes: &[u8]) -> RemoteResult<()> {
        let p = self.path("ac", key);
        self.rt.block_on(async {
            self.store
                .put(&p, PutPayload::from(bytes.to_vec()))
                .await
                .map(drop)
                .map_err(|e| self.err(&p, e))
        })
    }

    fn blob_size(&self, digest: &Digest) -> RemoteResult<Option<Option<u64>>> {
        let p = self.path("cas", digest);
        self.rt.block_on(async {
            match self.store.head(&p).await {
                Ok(meta) => Ok(Some(Some(meta.size))),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.err(&p, e)),
            }
        })
    }

    fn get_blob(&self, digest: &Digest, dest: &Path, max_bytes: u64) -> RemoteResult<bool> {
        use std::io::Write;
        let p = self.path("cas", digest);
        self.rt.block_on(async {
            let Some(r) = self.get(&p).await? else {
                return Ok(false);
            };
            if r.meta.size > max_bytes {
                return Err(RemoteError::Rejected(format!(
                    "{p}: {} bytes, more than the {max_bytes} its record declares",
                    r.meta.size
                )));
            }
            let local =
                |e: std::io::Error| RemoteError::Rejected(format!("{}: {e}", dest.display()));
            let mut file = std::fs::File::create(dest).map_err(local)?;
            let mut stream = r.into_stream();
            let mut total = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err(&p, e))?;
                total += chunk.len() as u64;
                if total > max_bytes {
                    return Err(RemoteError::Rejected(format!(
                        "{p}: longer than the {max_bytes} bytes its record declares"
                    )));
                }
                file.write_all(&chunk).map_err(local)?;
            }
            file.sync_all().map_err(local)?;
            Ok(true)
        })
    }

    fn put_blob(&self, digest: &Digest, src: &Path) -> RemoteResult<()> {
        use std::io::Read;
        let p = self.path("cas", digest);
        let local = |e: std::io::Error| RemoteError::Rejected(format!("{}: {e}", src.display()));
        let mut file = std::fs::File::open(src).map_err(local)?;
        let size = file.metadata().map_err(local)?.len();
        self.rt.block_on(async {
            if size < MULTIPART_FROM {
                let mut bytes = Vec::with_capacity(size as usize);
                file.read_to_end(&mut bytes).map_err(local)?;
                return self
                    .store
                    .put(&p, PutPayload::from(bytes))
                    .await
                    .map(drop)
                    .map_err(|e| self.err(&p, e));
            }
            let upload = self
                .store
                .put_multipart(&p)
                .await
                .map_err(|e| self.err(&p, e))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, MULTIPART_FROM as usize);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = file.read(&mut buf).map_err(local)?;
                if n == 0 {
                    break;
                }
                // At most 4 parts in flight: memory stays bounded.
                w.wait_for_capacity(4).await.map_err(|e| self.err(&p, e))?;
                w.write(&buf[..n]);
            }
            w.finish().await.map(drop).map_err(|e| self.err(&p, e))
        })
    }
}

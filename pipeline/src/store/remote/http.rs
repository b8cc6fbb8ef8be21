//! `http(s)://host/prefix`: Bazel's HTTP cache protocol. GET, PUT and HEAD
//! of `{prefix}/ac/<key>` and `{prefix}/cas/<sha256>`; 404 is a miss. Any
//! server that stores what is PUT serves: nginx with WebDAV
//! (`dav_methods PUT; create_full_put_path on;`), bazel-remote.
//!
//! Bodies are streamed from and to files, so a blob of any size moves
//! without being held in memory. Credentials come from the environment
//! (`BSCE_REMOTE_TOKEN` as a bearer token, or `BSCE_REMOTE_USER` and
//! `BSCE_REMOTE_PASSWORD` for basic auth) or from `user:password@` in the
//! URL; [`HttpRemote::describe`] never shows them.

use std::path::Path;
use std::time::Duration;

use super::{copy_limited, RemoteCache, RemoteError, RemoteResult, MAX_RECORD_BYTES};
use crate::digest::Digest;

pub(crate) struct HttpRemote {
    /// `scheme://host[:port]/prefix`, without credentials or a final `/`.
    base: String,
    auth: Option<String>,
    agent: ureq::Agent,
}

impl HttpRemote {
    #[allow(clippy::disallowed_methods)] // an edge: ENV_EDGES in src/ambient.rs
    pub(crate) fn new(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").expect("checked by the caller");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(format!("{}: no host", redact(url)));
        }
        let base = format!("{scheme}://{host}/{}", path.trim_end_matches('/'));
        let base = base.trim_end_matches('/').to_string();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let auth = if let Some(token) = env("BSCE_REMOTE_TOKEN") {
            Some(format!("Bearer {token}"))
        } else if let Some(user) = env("BSCE_REMOTE_USER") {
            let pass = env("BSCE_REMOTE_PASSWORD").unwrap_or_default();
            Some(basic(&user, &pass))
        } else {
            userinfo.map(|u| {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                basic(user, pass)
            })
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            // A stalled transfer, not a long one, is an error.
            .timeout_per_read(Some(Duration::from_secs(60)))
            .timeout_per_write(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(HttpRemote { base, auth, agent })
    }

    fn url(&self, map: &str, d: &Digest) -> String {
        format!("{}/{map}/{}", self.base, d.to_hex())
    }

    fn with_auth<B>(&self, r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.auth {
            Some(a) => r.header("Authorization", a),
            None => r,
        }
    }

    /// GET `url` as-is (no transparent decompression: the bytes must hash
    /// to their name); `None` on a 404.
    fn get(&self, url: &str) -> RemoteResult<Option<ureq::http::Response<ureq::Body>>> {
        let resp = self
            .with_auth(self.agent.get(url).header("Accept-Encoding", "identity"))
            .call()
            .map_err(|e| transport(url, e))?;
        Ok(self.status(url, resp.status().as_u16())?.map(|()| resp))
    }

    /// A response status as this layer's result: 2xx `Some`, 404 `None`.
    fn status(&self, url: &str, status: u16) -> RemoteResult<Option<()>> {
        match status {
            200..=299 => Ok(Some(())),
            404 => Ok(None),
            401 | 403 => Err(RemoteError::Denied(format!(
                "{url}: HTTP {status}: check the remote's credentials"
            ))),
            500..=599 | 408 | 429 => Err(RemoteError::Unavailable(format!("{url}: HTTP {status}"))),
            _ => Err(RemoteError::Rejected(format!("{url}: HTTP {status}"))),
        }
    }
}

fn transport(url: &str, e: ureq::Error) -> RemoteError {
    RemoteError::Unavailable(format!("{url}: {e}"))
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    let raw = format!("{user}:{pass}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

pub(crate) use crate::remote_url::redact;

impl RemoteCache for HttpRemote {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn get_action(&self, key: &Digest) -> RemoteResult<Option<Vec<u8>>> {
        let url = self.url("ac", key);
        let Some(mut resp) = self.get(&url)? else {
            return Ok(None);
        };
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_RECORD_BYTES)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => RemoteError::Rejected(format!(
                    "{url}: larger than {MAX_RECORD_BYTES} bytes; not an action record"
                )),
                e => transport(&url, e),
            })?;
        Ok(Some(bytes))
    }

    fn put_action(&self, key: &Digest, bytes: &[u8]) -> RemoteResult<()> {
        let url = self.url("ac", key);
        let resp = self
            .with_auth(self.agent.put(&url))
            .header("Content-Type", "application/json")
            .send(bytes)
            .map_err(|e| transport(&url, e))?;
        self.status(&url, resp.status().as_u16())?
            .ok_or_else(|| RemoteError::Rejected(format!("{url}: HTTP 404 on PUT")))
    }

    fn blob_size(&self, digest: &Digest) -> RemoteResult<Option<Option<u64>>> {
        let url = self.url("cas", digest);
        let resp = self
            .with_auth(self.agent.head(&url).header("Accept-Encoding", "identity"))
            .call()
            .map_err(|e| transport(&url, e))?;
        Ok(self.status(&url, resp.status().as_u16())?.map(|()| {
            resp.headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        }))
    }

    fn get_blob(&self, digest: &Digest, dest: &Path, max_bytes: u64) -> RemoteResult<bool> {
        let url = self.url("cas", digest);
        let Some(mut resp) = self.get(&url)? else {
            return Ok(false);
        };
        let mut reader = resp
            .body_mut()
            .with_config()
            .limit(max_bytes.saturating_add(1))
            .reader();
        copy_limited(&mut reader, dest, max_bytes, &url)?;
        Ok(true)
    }

    fn put_blob(&self, digest: &Digest, src: &Path) -> RemoteResult<()> {
        let url = self.url("cas", digest);
        let file = std::fs::File::open(src)
            .map_err(|e| RemoteError::Rejected(format!("{}: {e}", src.display())))?;
        let resp = self
            .with_auth(self.agent.put(&url))
            .header("Content-Type", "application/octet-stream")
            .send(&file)
            .map_err(|e| transport(&url, e))?;
        self.status(&url, resp.status().as_u16())?
            .ok_or_else(|| RemoteError::Rejected(format!("{url}: HTTP 404 on PUT")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show_in_descriptions() {
        let r = HttpRemote::new("https://alice:s3cret@cache.example:8080/bsce/").unwrap();
        assert_eq!(r.describe(), "https://cache.example:8080/bsce");
        assert_eq!(redact("https://alice:s3cret@h/p"), "https://h/p");
        assert_eq!(
            r.auth.as_deref(),
            Some("Basic YWxpY2U6czNjcmV0"),
            "basic auth from the URL"
        );
        assert_eq!(
            r.url("cas", &Digest::of_bytes(b"")).len(),
            "https://cache.example:8080/bsce/cas/".len() + 64
        );
    }
}

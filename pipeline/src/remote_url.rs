//! Remote cache URLs as text: whether one names a remote this build can
//! open, and how to show one without its credentials. A leaf, so the config
//! can check `store.remote` without reaching into the store.

/// `url` with any `user:password@` removed, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority
                .rsplit_once('@')
                .map(|(_, h)| h)
                .unwrap_or(authority);
            if path.is_empty() {
                format!("{scheme}://{host}")
            } else {
                format!("{scheme}://{host}/{path}")
            }
        }
        None => url.to_string(),
    }
}

/// Whether `url` names a remote this build can open (without opening it).
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let shown = redact(url);
    let (scheme, rest) = url.split_once("://").unwrap_or(("", ""));
    let ok = match scheme {
        "file" => rest.starts_with('/'),
        "http" | "https" | "s3" => !rest.split('/').next().unwrap_or("").is_empty(),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{shown:?} is not a remote cache URL; expected file:///absolute/path, \
             http(s)://host/prefix or s3://bucket/prefix"
        ))
    }
}

//! This machine, its clock and its resources: the host's name and the
//! time, for provenance and temp names, and which I/O errors are the
//! machine's fault rather than a stage's. A leaf: it uses no other module.

/// This machine's name (`gethostname`).
pub(crate) fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // when it fits.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A memory figure of a process (`/proc/PID/status`, `VmRSS` now or
/// `VmHWM` its peak), in KiB; `None`: this process. 0 when unknown.
pub fn proc_memory_kib(pid: Option<u32>, field: &str) -> u64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Whether an I/O error of this kind is the environment failing (a full
/// disk or quota, the network), not the data being read or written: a rerun
/// may succeed, so a failure of this kind never marks a stage's inputs as
/// failing. The one list, for stage errors and store errors alike.
pub fn io_is_environment(kind: std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        StorageFull
            | QuotaExceeded
            | ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

#[cfg(test)]
mod tests {
    use super::io_is_environment;
    use std::io::ErrorKind;

    #[test]
    fn a_full_disk_or_the_network_is_the_environment_and_a_bad_file_is_not() {
        for kind in [
            ErrorKind::StorageFull,
            ErrorKind::QuotaExceeded,
            ErrorKind::ConnectionReset,
        ] {
            assert!(io_is_environment(kind), "{kind:?}");
        }
        // ENOSPC as the OS reports it, not only as constructed.
        assert!(io_is_environment(
            std::io::Error::from_raw_os_error(libc::ENOSPC).kind()
        ));
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::PermissionDenied,
            ErrorKind::InvalidData,
        ] {
            assert!(!io_is_environment(kind), "{kind:?}");
        }
    }
}

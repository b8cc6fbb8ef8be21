//! Resumable, checksummed download of a source archive.
//!
//! Bytes go to `<dest>.part` beside `dest` and survive an interrupted
//! transfer or run: the next attempt asks for the rest with an HTTP Range
//! request (and starts over if the server ignores it). `dest` itself only
//! ever appears by renaming a `.part` whose sha256 matched, so a reader of
//! `dest` never sees a partial or wrong file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Result, StageError};

/// Attempts per call when a transfer breaks off after making progress.
const ATTEMPTS: usize = 3;

/// Downloads `url` to `dest` and checks it against `sha256` (hex), calling
/// `progress(bytes_so_far, total)` as bytes arrive. An existing `dest` is
/// replaced only by a verified file. On a checksum mismatch the `.part` is
/// deleted, since resuming it could never succeed.
pub fn download(
    url: &str,
    sha256: &str,
    dest: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<()> {
    let expected = sha256.to_ascii_lowercase();
    if !matches!(hex::decode(&expected), Ok(d) if d.len() == 32) {
        return Err(StageError::param(
            "sha256",
            format!("{sha256:?} is not a SHA-256 digest; expected 64 hex digits"),
        ));
    }
    let part = part_path(dest);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut attempt = 1;
    loop {
        match transfer(&agent, url, &part, progress)? {
            Transfer::Complete => break,
            Transfer::Interrupted {
                progressed: true, ..
            } if attempt < ATTEMPTS => attempt += 1,
            Transfer::Interrupted { error, .. } => {
                return Err(StageError::Unreachable(format!(
                    "{url}: the transfer broke off ({error}); {} keeps what arrived, run again \
                     to resume",
                    part.display()
                )))
            }
        }
    }
    let actual = file_sha256(&part)?;
    if actual != expected {
        fs::remove_file(&part).map_err(|e| StageError::io(&part, e))?;
        return Err(StageError::ChecksumMismatch {
            path: PathBuf::from(url),
            expected,
            actual,
        });
    }
    fs::rename(&part, dest).map_err(|e| StageError::io(dest, e))?;
    // The rename is only durable once the directory entry is.
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StageError::io(dir, e))
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

enum Transfer {
    Complete,
    /// The body broke off; `progressed` if bytes were saved first.
    Interrupted {
        error: String,
        progressed: bool,
    },
}

/// One request: brings `part` to the whole file, or as far as the
/// connection lasts.
fn transfer(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Transfer> {
    let have = match fs::metadata(part) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(StageError::io(part, e)),
    };
    // Identity encoding: a transparently decompressed body would not match
    // the byte ranges or the digest.
    let mut request = agent.get(url).header("Accept-Encoding", "identity");
    if have > 0 {
        request = request.header("Range", format!("bytes={have}-"));
    }
    let mut response = request
        .call()
        .map_err(|e| StageError::Unreachable(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let content_range = response
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let length = response.body().content_length();
    let (mut done, total, file) = match status {
        206 => {
            let (start, total) = content_range
                .as_deref()
                .and_then(parse_content_range)
                .ok_or_else(|| {
                    StageError::Other(format!(
                        "{url}: partial response with Content-Range {content_range:?}; expected \
                     bytes {have}-<end>/<total>"
                    ))
                })?;
            if start != Some(have) {
                return Err(StageError::Other(format!(
                    "{url}: asked for bytes from {have} but the server sent {content_range:?}"
                )));
            }
            let file = OpenOptions::new().append(true).open(part);
            (have, total.or(length.map(|l| have + l)), file)
        }
        // No Range, or a server that ignores it: the body is the whole file.
        200 => (0, length, File::create(part)),
        416 => {
            let total = content_range.as_deref().and_then(parse_content_range);
            if total == Some((None, Some(have))) {
                // The part already reaches the end; the digest decides if
                // it is right.
                return Ok(Transfer::Complete);
            }
            // Longer than the file: it cannot be a prefix of it. Without a
            // part the next request has no Range, so this recurses once.
            fs::remove_file(part).map_err(|e| StageError::io(part, e))?;
            return transfer(agent, url, part, progress);
        }
        _ => {
            return Err(StageError::Other(format!(
                "{url}: the server answered HTTP {status}; expected 200, or 206 for a resumed \
                 download"
            )))
        }
    };
    let mut out = BufWriter::new(file.map_err(|e| StageError::io(part, e))?);
    progress(done, total);
    let mut body = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    let started = done;
    let outcome = loop {
        match body.read(&mut buf) {
            Ok(0) => break Transfer::Complete,
            Ok(n) => {
                out.write_all(&buf[..n])
                    .map_err(|e| StageError::io(part, e))?;
                done += n as u64;
                progress(done, total);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                break Transfer::Interrupted {
                    error: e.to_string(),
                    progressed: done > started,
                }
            }
        }
    };
    // Saved even when interrupted, so the next attempt resumes after it.
    let file = out
        .into_inner()
        .map_err(|e| StageError::io(part, e.into_error()))?;
    file.sync_all().map_err(|e| StageError::io(part, e))?;
    Ok(outcome)
}

/// `bytes START-END/TOTAL` or `bytes */TOTAL`, as (start, total); `*` is
/// None.
fn parse_content_range(value: &str) -> Option<(Option<u64>, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let start = match range {
        "*" => None,
        r => Some(r.split_once('-')?.0.parse().ok()?),
    };
    Some((start, total))
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| StageError::io(path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| StageError::io(path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    /// How the test server answers its `n`th connection (from 0).
    #[derive(Clone, Copy)]
    enum Behaviour {
        Normal,
        /// Closes after this many body bytes on the first connection.
        CutFirst(usize),
        /// Closes after this many body bytes every time.
        CutAlways(usize),
        IgnoreRange,
    }

    /// A one-file HTTP/1.1 server with Range support; records the Range
    /// start of each request (None without one).
    struct Server {
        url: String,
        ranges: Arc<Mutex<Vec<Option<u64>>>>,
    }

    impl Server {
        fn start(body: Vec<u8>, behaviour: Behaviour) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!(
                "http://{}/cifar-100-python.tar.gz",
                listener.local_addr().unwrap()
            );
            let ranges = Arc::new(Mutex::new(Vec::new()));
            let seen = ranges.clone();
            std::thread::spawn(move || {
                for (n, stream) in listener.incoming().enumerate() {
                    serve(stream.unwrap(), &body, behaviour, n, &seen);
                }
            });
            Server { url, ranges }
        }

        fn ranges(&self) -> Vec<Option<u64>> {
            self.ranges.lock().unwrap().clone()
        }
    }

    fn serve(
        mut stream: TcpStream,
        body: &[u8],
        behaviour: Behaviour,
        n: usize,
        seen: &Mutex<Vec<Option<u64>>>,
    ) {
        let mut reader = io::BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut range = None;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            if name.eq_ignore_ascii_case("range") {
                let start = value
                    .trim()
                    .strip_prefix("bytes=")
                    .unwrap()
                    .trim_end_matches('-');
                range = Some(start.parse::<u64>().unwrap());
            }
        }
        seen.lock().unwrap().push(range);
        if request_line.contains("/missing") {
            write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            return;
        }
        let len = body.len() as u64;
        let (head, sent) = match (range, behaviour) {
            (Some(start), b) if !matches!(b, Behaviour::IgnoreRange) && start >= len => {
                (format!("416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0"), &body[..0])
            }
            (Some(start), b) if !matches!(b, Behaviour::IgnoreRange) => (
                format!(
                    "206 Partial Content\r\nContent-Range: bytes {start}-{}/{len}\r\nContent-Length: {}",
                    len - 1,
                    len - start
                ),
                &body[start as usize..],
            ),
            _ => (format!("200 OK\r\nContent-Length: {len}"), body),
        };
        let cut = match behaviour {
            Behaviour::CutFirst(at) if n == 0 => at,
            Behaviour::CutAlways(at) => at,
            _ => sent.len(),
        };
        let _ = write!(stream, "HTTP/1.1 {head}\r\nConnection: close\r\n\r\n");
        let _ = stream.write_all(&sent[..cut.min(sent.len())]);
    }

    fn body() -> Vec<u8> {
        (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect()
    }

    fn digest(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn get(server: &Server, dest: &Path, sha: &str) -> (Result<()>, Vec<(u64, Option<u64>)>) {
        let mut calls = Vec::new();
        let result = download(&server.url, sha, dest, &mut |done, total| {
            calls.push((done, total))
        });
        (result, calls)
    }

    #[test]
    fn downloads_verifies_and_renames() {
        let server = Server::start(body(), Behaviour::Normal);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        let (result, calls) = get(&server, &dest, &digest(&body()).to_uppercase());
        result.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), body());
        assert!(!part_path(&dest).exists());
        assert_eq!(server.ranges(), vec![None]);
        assert_eq!(calls.first(), Some(&(0, Some(100_000))));
        assert_eq!(calls.last(), Some(&(100_000, Some(100_000))));
    }

    #[test]
    fn resumes_a_transfer_cut_off_mid_body() {
        let server = Server::start(body(), Behaviour::CutFirst(30_000));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        let (result, calls) = get(&server, &dest, &digest(&body()));
        result.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), body());
        assert_eq!(server.ranges(), vec![None, Some(30_000)]);
        assert!(calls.contains(&(30_000, Some(100_000))), "{calls:?}");
    }

    #[test]
    fn resumes_a_part_left_by_an_earlier_run() {
        let server = Server::start(body(), Behaviour::Normal);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        fs::write(part_path(&dest), &body()[..5_000]).unwrap();
        get(&server, &dest, &digest(&body())).0.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), body());
        assert_eq!(server.ranges(), vec![Some(5_000)]);
    }

    #[test]
    fn restarts_when_the_server_ignores_range() {
        let server = Server::start(body(), Behaviour::IgnoreRange);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        fs::write(part_path(&dest), b"stale bytes from another file").unwrap();
        get(&server, &dest, &digest(&body())).0.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), body());
        assert_eq!(server.ranges(), vec![Some(29)]);
    }

    #[test]
    fn a_complete_part_is_verified_without_refetching() {
        let server = Server::start(body(), Behaviour::Normal);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        fs::write(part_path(&dest), body()).unwrap();
        get(&server, &dest, &digest(&body())).0.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), body());
        assert_eq!(server.ranges(), vec![Some(100_000)]);
    }

    #[test]
    fn a_part_longer_than_the_file_is_discarded() {
        let server = Server::start(body(), Behaviour::Normal);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        fs::write(part_path(&dest), [body(), b"extra".to_vec()].concat()).unwrap();
        get(&server, &dest, &digest(&body())).0.unwrap();
        assert_eq!(fs::read(&dest).unwrap(), body());
        assert_eq!(server.ranges(), vec![Some(100_005), None]);
    }

    #[test]
    fn checksum_mismatch_leaves_no_file() {
        let server = Server::start(body(), Behaviour::Normal);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        let wrong = digest(b"another file");
        let err = get(&server, &dest, &wrong).0.unwrap_err();
        match &err {
            StageError::ChecksumMismatch {
                expected, actual, ..
            } => {
                assert_eq!(expected, &wrong);
                assert_eq!(actual, &digest(&body()));
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().starts_with(&server.url), "{err}");
        assert!(!dest.exists());
        assert!(!part_path(&dest).exists());
    }

    #[test]
    fn repeated_breaks_keep_the_part_and_never_write_dest() {
        let server = Server::start(body(), Behaviour::CutAlways(10_000));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        let err = get(&server, &dest, &digest(&body()))
            .0
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the transfer broke off") && err.contains("run again to resume"),
            "{err}"
        );
        assert_eq!(server.ranges(), vec![None, Some(10_000), Some(20_000)]);
        assert!(!dest.exists());
        assert_eq!(fs::read(part_path(&dest)).unwrap(), &body()[..30_000]);
    }

    #[test]
    fn http_errors_and_bad_digests_are_reported() {
        let server = Server::start(body(), Behaviour::Normal);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("cifar.tar.gz");
        let missing = server.url.replace("cifar-100-python.tar.gz", "missing");
        let err = download(&missing, &digest(&body()), &dest, &mut |_, _| {}).unwrap_err();
        assert!(err.to_string().contains("answered HTTP 404"), "{err}");
        let err = download(&server.url, "abc", &dest, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(err, StageError::InvalidParam { ref key, .. } if key == "sha256"),
            "{err}"
        );
        assert!(!dest.exists());
    }
}

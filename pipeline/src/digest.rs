//! Content digests: sha256, spelled as 64 lowercase hex digits everywhere
//! (file names in the store, records, keys).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// A sha256 digest of some bytes: an artefact's content, a key record, a
/// source archive.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Streams a file through sha256. The buffer is large because the cost
    /// per call of the SHA-NI compression is tiny and syscalls dominate
    /// otherwise (see bench/hash_throughput).
    pub fn of_file(path: &Path) -> io::Result<(Digest, u64)> {
        let mut f = File::open(path)?;
        Self::of_reader(&mut f)
    }

    pub(crate) fn of_reader(r: &mut dyn Read) -> io::Result<(Digest, u64)> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        Ok((Digest(hasher.finalize().into()), total))
    }

    pub fn to_hex(&self) -> String {
        let mut buf = [0u8; 64];
        String::from_utf8(self.hex_bytes(&mut buf).to_vec()).expect("hex is ASCII")
    }

    /// The 64 lowercase hex digits, written into `buf` without allocating
    /// (keys and blob paths are made per stage, 100,000 times a run).
    pub(crate) fn hex_bytes<'a>(&self, buf: &'a mut [u8; 64]) -> &'a [u8] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = DIGITS[(b >> 4) as usize];
            buf[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        &buf[..]
    }

    pub fn parse(s: &str) -> Option<Digest> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Digest(out))
    }

    /// The first 12 hex digits: enough to tell keys apart in a terminal.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }

    /// 64 bits taken from the digest, for seeding stage RNGs from the key.
    pub(crate) fn seed64(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes"))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 64];
        s.serialize_str(std::str::from_utf8(self.hex_bytes(&mut buf)).expect("hex is ASCII"))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so a record's digests are parsed without a String each.
        struct Hex;
        impl serde::de::Visitor<'_> for Hex {
            type Value = Digest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sha256 digest (64 hex digits)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Digest, E> {
                Digest::parse(s).ok_or_else(|| {
                    E::custom(format!("{s:?} is not a sha256 digest (64 hex digits)"))
                })
            }
        }
        d.deserialize_str(Hex)
    }
}

/// JSON with object keys sorted at every level and no insignificant
/// whitespace. Independent of serde_json's `preserve_order` feature, which
/// another crate in the tree could switch on.
pub(crate) fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"z":0,"y":1}],"c":2}}"#).unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":2,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }

    #[test]
    fn known_vector() {
        assert_eq!(
            Digest::of_bytes(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trips_through_serde() {
        let d = Digest::of_bytes(b"abc");
        assert_eq!(d.to_hex(), hex::encode(d.0));
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", hex::encode(d.0)));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let bad = serde_json::from_str::<Digest>("\"abc\"").unwrap_err();
        assert!(bad.to_string().contains("is not a sha256 digest"), "{bad}");
    }

    #[test]
    fn parse_rejects_non_digests() {
        assert!(Digest::parse("abc").is_none());
        assert!(Digest::parse(&"G".repeat(64)).is_none());
        let d = Digest::of_bytes(b"x");
        assert_eq!(Digest::parse(&d.to_hex()), Some(d));
        assert_eq!(Digest::parse(&format!("sha256:{d}")), Some(d));
    }

    #[test]
    fn file_and_bytes_agree() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (d, n) = Digest::of_file(&p).unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(d, Digest::of_bytes(&data));
    }
}

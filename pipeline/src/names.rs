//! Names of the config (experiments, settings, methods, tables, the
//! config file's stem) as file and folder names, one-to-one: the report's
//! files and the TensorBoard run folders (live, in the store, and in the
//! report) are named through [`file_name`] and [`crate::plan::RunRef::path`].

use std::fmt::Write as _;

/// A config name (experiment, setting, table, config file stem) as one
/// file or folder name, one-to-one: ASCII letters, digits, `-`, `_` and
/// `.` stay (but a leading `.`), every other byte of the name's UTF-8 is
/// `~` and two lowercase hex digits, and the empty name is `~`. Two
/// different names never share a file (`b2%` is `b2~25`, `b2&` is
/// `b2~26`, `b50 s10` is `b50~20s10`), no name is hidden or `..`, and `~`
/// needs no escaping in a Markdown link.
pub fn file_name(s: &str) -> String {
    if s.is_empty() {
        return "~".into();
    }
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            let _ = write!(out, "~{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn file_names_are_one_to_one_safe_and_readable() {
        let names = [
            "b2%",
            "b2&",
            "b2_",
            "b2~25",
            "b50 s10",
            "b50_s10",
            "b50-s10",
            "",
            "~",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "ε=0.1",
            "e=0.1",
            "cifar100.b50",
        ];
        let mut seen = std::collections::BTreeMap::new();
        for n in names {
            let f = file_name(n);
            assert!(!f.is_empty() && !f.starts_with('.'), "{n:?} -> {f:?}");
            assert!(
                f.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)),
                "{n:?} -> {f:?}"
            );
            if let Some(other) = seen.insert(f.clone(), n) {
                panic!("{other:?} and {n:?} both map to {f:?}");
            }
        }
        assert_eq!(file_name("b4_s3"), "b4_s3");
        assert_eq!(file_name("cifar100-b50.s10"), "cifar100-b50.s10");
        assert_eq!(file_name("b2%"), "b2~25");
        assert_eq!(file_name("b50 s10"), "b50~20s10");
        assert_eq!(file_name(".."), "~2e.");
    }
}

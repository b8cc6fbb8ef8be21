//! Computes each stage kind's code digest from the sources reachable from
//! the entry points the registry names for it (pipeline/src/registry.rs),
//! fails the build on a source file no kind reaches and no exemption names, and
//! records the locked versions of the libraries that change each kind's
//! numerics.
//!
//! The workspace is the one being built: its path is read from cargo's
//! environment when this script runs, never baked in when it is compiled,
//! so every checkout sharing a target dir digests its own sources.
#![allow(clippy::disallowed_methods)] // cargo's variables: a build script's input

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[path = "src/code_digest.rs"]
mod code_digest;
#[path = "../pipeline/src/registry.rs"]
mod registry;

/// `__version__` of the torch package the python on PATH finds (the venv's
/// PyPI wheel, whose libtorch the training stages link), read from its
/// version.py without importing torch; "unknown" when there is none.
fn libtorch_version() -> String {
    println!("cargo:rerun-if-env-changed=PATH");
    let origin = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('torch'); print(s.origin if s else '')",
        ])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if origin.is_empty() {
        return "unknown".into();
    }
    let text = std::fs::read_to_string(Path::new(&origin).with_file_name("version.py"))
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let ws = crate_dir.parent().expect("stages/ is inside the workspace");
    let lock_path = ws.join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    println!("cargo:rerun-if-changed={}", lock_path.display());
    // Folders: cargo rescans them for any change (and for new files).
    for root in registry::SOURCE_ROOTS {
        println!("cargo:rerun-if-changed={}", ws.join(root).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        ws.join("pipeline/src/registry.rs").display()
    );

    // One digest per kind, and one per kind:variant.
    let kinds: Vec<code_digest::KindSpec> = registry::code_kinds()
        .into_iter()
        .map(|(name, entries, stop)| code_digest::KindSpec {
            name,
            entries,
            stop,
        })
        .collect();
    let exempt: Vec<&str> = registry::NO_OUTPUT_EFFECT.iter().map(|(p, _)| *p).collect();
    let digests = match code_digest::kind_digests(ws, registry::SOURCE_ROOTS, &kinds, &exempt) {
        Ok(d) => d,
        Err(e) => {
            // A plain panic message is what cargo shows of a failed build script.
            eprintln!("error: {e}");
            panic!("{e}");
        }
    };
    let mut out = String::from(
        "/// Per kind (and kind:variant): its code digest and (file, token-stream sha256) of each source in it.\n\
         pub const CODE_DIGESTS: &[(&str, &str, &[(&str, &str)])] = &[\n",
    );
    for (kind, code) in &digests {
        let files: Vec<String> = code
            .files
            .iter()
            .map(|(f, d)| format!("({f:?}, {d:?})"))
            .collect();
        writeln!(
            out,
            "    ({kind:?}, {:?}, &[{}]),",
            code.digest,
            files.join(", ")
        )
        .unwrap();
    }
    out.push_str("];\npub const LIBRARIES: &[(&str, &[(&str, &str)])] = &[\n");
    let torch = libtorch_version();
    for spec in registry::STAGES {
        let mut versions = code_digest::locked_versions(&lock, spec.libraries);
        if spec.libraries.contains(&"tch") {
            versions.push(("libtorch".into(), torch.clone()));
        }
        let list: Vec<String> = versions
            .iter()
            .map(|(n, v)| format!("({n:?}, {v:?})"))
            .collect();
        writeln!(out, "    ({:?}, &[{}]),", spec.name, list.join(", ")).unwrap();
    }
    out.push_str("];\n");
    writeln!(out, "pub const LIBTORCH_VERSION: &str = {torch:?};").unwrap();
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("code_digests.rs");
    std::fs::write(dest, out).unwrap();
}

//! Computes each stage kind's code digest from its own source files and
//! records the locked versions of the libraries that change its numerics.

use std::fmt::Write as _;
use std::path::Path;

#[path = "src/code_digest.rs"]
mod code_digest;

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
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lock_path = crate_dir.join("../Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let mut out = String::from("pub const CODE_DIGESTS: &[(&str, &str)] = &[\n");
    for (kind, roots) in code_digest::STAGE_SOURCES {
        for r in *roots {
            println!("cargo:rerun-if-changed={}", crate_dir.join(r).display());
        }
        let digest = code_digest::digest_sources(crate_dir, roots).expect("stage sources readable");
        writeln!(out, "    ({kind:?}, {digest:?}),").unwrap();
    }
    out.push_str("];\npub const LIBRARIES: &[(&str, &[(&str, &str)])] = &[\n");
    for (kind, names) in code_digest::STAGE_LIBRARIES {
        let mut versions = code_digest::locked_versions(&lock, names);
        if names.contains(&"tch") {
            versions.push(("libtorch".into(), libtorch_version()));
        }
        let list: Vec<String> = versions
            .iter()
            .map(|(n, v)| format!("({n:?}, {v:?})"))
            .collect();
        writeln!(out, "    ({kind:?}, &[{}]),", list.join(", ")).unwrap();
    }
    out.push_str("];\n");
    writeln!(
        out,
        "pub const LIBTORCH_VERSION: &str = {:?};",
        libtorch_version()
    )
    .unwrap();
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("code_digests.rs");
    std::fs::write(dest, out).unwrap();
}

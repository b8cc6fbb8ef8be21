//! Computes each stage kind's code digest from its own source files and
//! records the locked versions of the libraries that change its numerics.

use std::fmt::Write as _;
use std::path::Path;

#[path = "src/code_digest.rs"]
mod code_digest;

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
        let versions = code_digest::locked_versions(&lock, names);
        let list: Vec<String> = versions
            .iter()
            .map(|(n, v)| format!("({n:?}, {v:?})"))
            .collect();
        writeln!(out, "    ({kind:?}, &[{}]),", list.join(", ")).unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("code_digests.rs");
    std::fs::write(dest, out).unwrap();
}

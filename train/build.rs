//! Binaries and tests of this crate find libtorch through an rpath (no
//! LD_LIBRARY_PATH), and libtorch_cuda stays linked although no symbol of it
//! is referenced: with the default --as-needed the linker would drop it and
//! CUDA would look unavailable on GPU hosts.
#![allow(clippy::disallowed_methods)] // cargo's variables: a build script's input

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        if Path::new(&lib).join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}

//! Link details that make or break a tch binary (see docs/development.md, "Linking libtorch"):
//! - an rpath to torch's lib folder, so the binary runs without LD_LIBRARY_PATH;
//! - `libtorch_cuda.so` kept as NEEDED when it exists: the linker's `--as-needed` would drop it,
//!   since no symbol of ours refers to it, and then libtorch never registers its CUDA backend.

fn main() {
    // Set by torch-sys (links = "tch") for its direct dependents.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set: no rpath to libtorch");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    println!("cargo:rustc-env=SUGGESTIVE_LIBTORCH_LIB={lib}");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}

//! Lets the `dma` binary find libtorch at run time and keeps CUDA usable.
//!
//! torch-sys links libtorch but leaves the run-time search path to the user; we bake the folder it linked
//! against into an rpath, so `target/release/dma` runs without LD_LIBRARY_PATH. The linker drops
//! libtorch_cuda (nothing references it by symbol), which would make `--device cuda` report no GPU, so it is
//! linked with --no-as-needed when the libtorch in use ships it.
//!
//! It also lists the embedded model's files for `include_bytes!` (src/pipelines/embedded.rs), so the binary carries
//! them and runs wherever it is installed.
use std::path::{Path, PathBuf};
use std::process::Command;

fn torch_lib_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return Some(PathBuf::from(dir).join("lib"));
    }
    let out = Command::new("python3")
        .args(["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
        .output()
        .ok()?;
    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// The embedded model's folder (the UNet model, its CLIP in `clip/` and the DiT in `dit/`), of which the binary
/// carries every file but the training logs (`training/` folders).
const EMBEDDED: &str = "models/embedded";
const NOT_EMBEDDED: &str = "training";

fn files_under(dir: &Path, into: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())).map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files_under(&path, into);
        } else {
            into.push(path);
        }
    }
}

/// Writes `$OUT_DIR/embedded_files.rs`: `FILES`, each embedded file's path inside the folder and its bytes.
fn list_embedded_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(EMBEDDED);
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    files_under(&root, &mut files);
    let mut code = String::from("pub const FILES: &[(&str, &[u8])] = &[\n");
    for file in files {
        let relative = file.strip_prefix(&root).unwrap();
        if relative.components().any(|c| c.as_os_str() == NOT_EMBEDDED) {
            continue;
        }
        println!("cargo:rerun-if-changed={}", file.display());
        code.push_str(&format!("    ({:?}, include_bytes!({:?})),\n", relative.to_str().unwrap(), file.to_str().unwrap()));
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded_files.rs");
    std::fs::write(out, code).unwrap();
}

fn main() {
    list_embedded_files();
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    if let Some(dir) = torch_lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        if dir.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}

//! `export --web DIR`: a static folder that segments a NIfTI volume in the browser. The page
//! (web/index.html, web/relkd.js, compiled in) reads the preprocessing from the model's metadata
//! and repeats relkd-core's arithmetic, so its mask is `infer`'s; ONNX Runtime Web's WebAssembly
//! build comes from the npm package (`bash ci/setup-ort-web.sh`), copied in, so nothing is
//! fetched from elsewhere when the page runs.

use std::path::{Path, PathBuf};

/// The page and its script.
const PAGE: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/relkd.js");

/// The files of onnxruntime-web the page loads.
pub const ORT_WEB_FILES: [&str; 3] = ["ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];

/// The model's name inside the folder (the page loads it by this name).
pub const MODEL_FILE: &str = "model.onnx";

const VENDOR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vendor/onnxruntime-web");

#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error(
        "onnxruntime-web not found; tried:\n{tried}\nprovision it with: bash ci/setup-ort-web.sh \
         (or point RELKD_ORT_WEB at a folder holding {})",
        ORT_WEB_FILES.join(", ")
    )]
    RuntimeMissing { tried: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// The folder holding onnxruntime-web's files: `RELKD_ORT_WEB`, an `onnxruntime-web` folder
/// beside the executable, or the repository's `vendor/onnxruntime-web`.
pub fn ort_web_dir() -> Result<PathBuf, WebError> {
    let beside_exe = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("onnxruntime-web")));
    let candidates: Vec<PathBuf> = std::env::var_os("RELKD_ORT_WEB")
        .map(PathBuf::from)
        .into_iter()
        .chain(beside_exe)
        .chain([PathBuf::from(VENDOR_DIR)])
        .collect();
    candidates.iter().find(|dir| ORT_WEB_FILES.iter().all(|f| dir.join(f).is_file())).cloned().ok_or_else(|| {
        WebError::RuntimeMissing {
            tried: candidates.iter().map(|d| format!("  {}", d.display())).collect::<Vec<_>>().join("\n"),
        }
    })
}

/// Writes the page, its script and ONNX Runtime Web into `dir` (which must exist); the model
/// goes in as [`MODEL_FILE`], written by the export itself.
pub fn write_site(dir: &Path, runtime: &Path) -> Result<(), WebError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WebError::Io { path, source }
    };
    for (name, text) in [("index.html", PAGE), ("relkd.js", SCRIPT)] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    for name in ORT_WEB_FILES {
        let (from, to) = (runtime.join(name), dir.join(name));
        std::fs::copy(&from, &to).map_err(io(&from))?;
    }
    Ok(())
}

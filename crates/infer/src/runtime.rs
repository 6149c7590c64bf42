//! Finding and loading ONNX Runtime, and opening sessions on an execution provider.
//!
//! The shared library is loaded at run time (`ort`'s `load-dynamic`), from the first of:
//! `ORT_DYLIB_PATH`, the executable's own folder, the repository's `vendor/onnxruntime`
//! (written by `ci/setup-ort.sh`). ONNX Runtime allows one environment per process, so it lives
//! in a `OnceLock` and every session shares it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use ort::environment::Environment;
use ort::ep;
use ort::logging::LogLevel;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

/// The library file name inside each candidate folder.
const LIBRARY: &str = "libonnxruntime.so.1.31.1";

/// Where `ci/setup-ort.sh` puts the library, fixed at compile time.
const VENDOR_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../vendor/onnxruntime");

/// The command that provisions the library, quoted in errors.
pub const SETUP_COMMAND: &str = "bash ci/setup-ort.sh";

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found; tried:\n{}\nprovision it with: {SETUP_COMMAND} (add --gpu for the CUDA provider)\nor point ORT_DYLIB_PATH at a libonnxruntime.so",
        tried.iter().map(|p| format!("  {}", p.display())).collect::<Vec<_>>().join("\n")
    )]
    NotFound { tried: Vec<PathBuf> },
    #[error("{path}: could not load ONNX Runtime: {message}")]
    Load { path: PathBuf, message: String },
    #[error(
        "CUDA execution provider unavailable: {message}\nit needs an NVIDIA GPU with its driver, CUDA 13 and cuDNN 9 libraries, and the GPU build of ONNX Runtime ({SETUP_COMMAND} --gpu); \
         use --provider cpu to run on the CPU, or --provider auto to fall back to it"
    )]
    CudaUnavailable { message: String },
    #[error("{path}: {message}")]
    Session { path: PathBuf, message: String },
}

/// Which execution provider runs a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Cpu,
    /// Strict: an error if CUDA cannot be used.
    Cuda,
    /// CUDA when it works, else the CPU (and the caller is told which).
    Auto,
}

/// The loaded library and its single environment.
pub struct Runtime {
    pub library: PathBuf,
    environment: Environment,
}

/// Candidate library paths in search order.
pub fn candidates() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        out.push(PathBuf::from(path));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|exe| exe.parent().map(Path::to_path_buf)) {
        out.push(dir.join(LIBRARY));
    }
    out.push(Path::new(VENDOR_DIR).join(LIBRARY));
    out
}

/// How much of ONNX Runtime's own log to print: 0 (default) only its fatal messages, 1 also
/// warnings and errors, 2 also information, 3 everything. An error ONNX Runtime returns
/// reaches the user once, in relkd's own message; its logger would print it a second time,
/// with terminal colour codes, so by default it stays quiet.
static LOG_VERBOSITY: AtomicU8 = AtomicU8::new(0);

/// Sets how much of ONNX Runtime's log to print (`-v` counts); takes effect at once, also on
/// a runtime already loaded.
pub fn set_log_verbosity(verbosity: u8) {
    LOG_VERBOSITY.store(verbosity, Ordering::Relaxed);
    if let Some(Ok(runtime)) = RUNTIME.get() {
        runtime.environment.set_log_level(log_level());
    }
}

fn log_level() -> LogLevel {
    match LOG_VERBOSITY.load(Ordering::Relaxed) {
        0 => LogLevel::Fatal,
        1 => LogLevel::Warning,
        2 => LogLevel::Info,
        _ => LogLevel::Verbose,
    }
}

/// ONNX Runtime's log lines as plain text on stderr (its own sink adds colour codes even when
/// stderr is a file). Filtered here too: the environment is created logging everything and
/// only then lowered to the chosen level.
fn print_log_line(level: LogLevel, _category: &str, _id: &str, location: &str, message: &str) {
    if level < log_level() {
        return;
    }
    let level = format!("{level:?}").to_lowercase();
    eprintln!("onnxruntime {level}: {message} [{location}]");
}

static RUNTIME: OnceLock<Result<Runtime, RuntimeError>> = OnceLock::new();

/// The process-wide runtime, loading the library on first use.
pub fn runtime() -> Result<&'static Runtime, RuntimeError> {
    RUNTIME.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// The first existing file among `candidates`, canonicalised so messages show the real path.
pub fn find_library(candidates: &[PathBuf]) -> Result<PathBuf, RuntimeError> {
    let found =
        candidates.iter().find(|p| p.is_file()).ok_or_else(|| RuntimeError::NotFound { tried: candidates.to_vec() })?;
    Ok(found.canonicalize().unwrap_or_else(|_| found.clone()))
}

fn load() -> Result<Runtime, RuntimeError> {
    let library = find_library(&candidates())?;
    let load_error = |message: String| RuntimeError::Load { path: library.clone(), message };
    let environment = ort::init_from(&library)
        .map_err(|e| load_error(e.to_string()))?
        .with_name("relkd")
        .with_logger(Arc::new(print_log_line))
        .build()
        .map_err(|e| load_error(e.to_string()))?;
    environment.set_log_level(log_level());
    Ok(Runtime { library, environment })
}

impl Runtime {
    /// Opens `model` on `provider` with `threads` intra-op threads (0 = ONNX Runtime's choice).
    /// Returns the session and the provider that actually runs it: with [`Provider::Auto`] that
    /// is CUDA or, when CUDA fails to register, the CPU. Never a silent fallback for
    /// [`Provider::Cuda`].
    pub fn session(
        &self,
        model: &Path,
        provider: Provider,
        threads: usize,
    ) -> Result<(Session, Provider), RuntimeError> {
        let session_error = |e: ort::Error| RuntimeError::Session { path: model.into(), message: e.to_string() };
        let builder = || -> Result<_, RuntimeError> {
            // Every graph optimisation, as ONNX Runtime's Python API defaults to (the Rust
            // crate's default stops at the layout level).
            let mut b = Session::builder(&self.environment)
                .map_err(session_error)?
                .with_optimization_level(GraphOptimizationLevel::All)
                .map_err(|e| RuntimeError::Session { path: model.into(), message: e.to_string() })?;
            if threads > 0 {
                b = b
                    .with_intra_threads(threads)
                    .map_err(|e| RuntimeError::Session { path: model.into(), message: e.to_string() })?;
            }
            Ok(b)
        };
        let with_cuda = || -> Result<Session, RuntimeError> {
            // error_on_failure: without it ONNX Runtime quietly runs the graph on the CPU.
            let cuda = ep::CUDA::default().build().error_on_failure();
            builder()?
                .with_execution_providers([cuda])
                .map_err(|e| RuntimeError::CudaUnavailable { message: e.to_string() })?
                .commit_from_file(model)
                .map_err(session_error)
        };
        let cpu = || builder()?.commit_from_file(model).map_err(session_error);
        match provider {
            Provider::Cpu => Ok((cpu()?, Provider::Cpu)),
            Provider::Cuda => Ok((with_cuda()?, Provider::Cuda)),
            Provider::Auto => match with_cuda() {
                Ok(session) => Ok((session, Provider::Cuda)),
                Err(RuntimeError::CudaUnavailable { .. }) => Ok((cpu()?, Provider::Cpu)),
                Err(other) => Err(other),
            },
        }
    }
}

//! What the `infer` CLI tests share: the checked-in tiny model, running the binary, and a
//! small phantom site.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use relkd_core::phantom::{CaseCount, Extras, Matrix, PhantomConfig, generate};

pub fn tiny_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny_conv.onnx")
}

pub fn infer(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infer")).args(args).current_dir(dir).output().unwrap()
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn phantom(dir: &Path) -> PathBuf {
    let root = dir.join("phantom");
    generate(
        &PhantomConfig { sites: 1, cases: CaseCount::Each(2), size: Matrix::Pixels(32), seed: 3, eval_cases: 0 },
        &root,
        &Extras::default(),
        &|_, _| {},
    )
    .unwrap();
    root.join("RUNMC")
}

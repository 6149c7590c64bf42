//! Where the data comes from (the configured folder, or the phantom generated once into the
//! cache) and how its cases are split: test cases of the evaluation sites, then training and
//! validation cases of each training site.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use relkd_core::dataset::{Case, CaseFiles, Dataset, load_case, split_cases};
use relkd_core::phantom;

use crate::config::{DataConfig, ExperimentConfig};
use crate::progress::progress_bar;

/// The folder for caches shared by runs (the phantom, trained teachers): `$RELKD_CACHE`, else
/// `$XDG_CACHE_HOME/relkd`, else `~/.cache/relkd`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("RELKD_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("relkd")))
        .or_else(|| env("HOME").map(|d| d.join(".cache/relkd")))
        .unwrap_or_else(|| PathBuf::from(".cache/relkd"))
}

/// Cases of one experiment, split by role.
pub struct Cases {
    pub teacher_train: Vec<Case>,
    pub teacher_val: Vec<Case>,
    pub student_train: Vec<Case>,
    pub student_val: Vec<Case>,
    /// Held-out cases of the evaluation sites: what every model is scored on.
    pub test: Vec<Case>,
}

/// Finds the data (generating the phantom on first use), resolves the target site's name and
/// the site plan into `config`, and reads and splits the cases. Returns the data root.
pub fn prepare(config: &mut ExperimentConfig) -> anyhow::Result<(PathBuf, Cases)> {
    let root = data_root(&config.data)?;
    let dataset = Dataset::discover(&root)?;
    config.target = dataset.site(&config.target)?.name.clone();
    let plan = match &config.sites {
        Some(plan) => plan.clone(),
        None => config.protocol.plan(&dataset, &config.target)?,
    };
    for name in plan.teacher_sites.iter().chain(&plan.student_sites).chain(&plan.eval_sites) {
        dataset.site(name)?;
    }
    config.sites = Some(plan);
    let cases = load_cases(&dataset, config)?;
    Ok((root, cases))
}

/// Puts `--data` (when given) into the configuration and makes the root absolute, so a run
/// folder's config.yaml names its data wherever it is resumed from.
pub fn set_data_root(data: &mut DataConfig, given: Option<&Path>) -> anyhow::Result<()> {
    if let Some(dir) = given {
        data.root = Some(dir.to_path_buf());
    }
    if let Some(root) = &data.root {
        data.root = Some(root.canonicalize().with_context(|| format!("data folder {}", root.display()))?);
    }
    Ok(())
}

/// The dataset root: the configured folder, or the phantom, generated once into the cache.
pub fn data_root(data: &DataConfig) -> anyhow::Result<PathBuf> {
    if let Some(root) = &data.root {
        return Ok(root.clone());
    }
    let p = &data.phantom;
    let dir = cache_dir().join(p.cache_name());
    if dir.join(phantom::MANIFEST).exists() {
        return Ok(dir);
    }
    let parent = dir.parent().expect("cache subfolder");
    fs::create_dir_all(parent).with_context(|| format!("creating the cache folder {}", parent.display()))?;
    // Generated beside its final name and renamed, so an interrupted generation is never used.
    let staging = relkd_core::files::partial_path(&dir);
    let bar = progress_bar((p.sites * p.cases) as u64, "phantom");
    phantom::generate(p, &staging, &phantom::Extras::default(), &|done, _| bar.set_position(done as u64))
        .with_context(|| format!("generating the phantom into {}", staging.display()))?;
    bar.finish_and_clear();
    if let Err(e) = fs::rename(&staging, &dir) {
        // Another process finished first; its copy is identical (same seed).
        let _ = fs::remove_dir_all(&staging);
        ensure!(dir.join(phantom::MANIFEST).exists(), "moving the phantom into {}: {e}", dir.display());
    }
    println!("phantom data: {}", dir.display());
    Ok(dir)
}

/// Reads every case the plan needs and splits them: the test cases of each evaluation site
/// (a share when the site is also trained on, else all), then validation cases of each
/// training site for choosing checkpoints.
fn load_cases(dataset: &Dataset, config: &ExperimentConfig) -> anyhow::Result<Cases> {
    let plan = config.sites.as_ref().expect("planned");
    let seed = config.split_seed;
    let mut names: Vec<&String> =
        plan.teacher_sites.iter().chain(&plan.student_sites).chain(&plan.eval_sites).collect();
    names.sort();
    names.dedup();
    let mut cases =
        Cases { teacher_train: vec![], teacher_val: vec![], student_train: vec![], student_val: vec![], test: vec![] };
    let total: usize = names.iter().map(|n| dataset.site(n).map_or(0, |s| s.cases.len())).sum();
    let bar = progress_bar(total as u64, "reading");
    let mut problems = Vec::new();
    for name in names {
        let site = dataset.site(name)?;
        problems.extend(site.problems.iter().map(|p| p.to_string()));
        let trained = plan.teacher_sites.contains(name) || plan.student_sites.contains(name);
        let (rest, test) = match (plan.eval_sites.contains(name), trained) {
            (true, true) => split_cases(&site.cases, config.test_fraction, seed),
            (true, false) => (vec![], site.cases.clone()),
            (false, _) => (site.cases.clone(), vec![]),
        };
        let (train, val) = split_cases(&rest, config.val_fraction, seed + 1);
        let mut read = |files: &[CaseFiles]| -> Vec<Case> {
            files
                .iter()
                .filter_map(|f| {
                    bar.inc(1);
                    load_case(name, f).map_err(|p| problems.push(p.to_string())).ok()
                })
                .collect()
        };
        let (train, val, test) = (read(&train), read(&val), read(&test));
        if plan.teacher_sites.contains(name) {
            cases.teacher_train.extend(train.iter().cloned());
            cases.teacher_val.extend(val.iter().cloned());
        }
        if plan.student_sites.contains(name) {
            cases.student_train.extend(train);
            cases.student_val.extend(val);
        }
        cases.test.extend(test);
    }
    bar.finish_and_clear();
    if !problems.is_empty() {
        bail!(
            "{} problem(s) in {}:\n  {}\n(`train data --root {}` lists every problem)",
            problems.len(),
            dataset.root.display(),
            problems.join("\n  "),
            dataset.root.display()
        );
    }
    ensure!(
        !cases.test.is_empty(),
        "no test cases on {}: the evaluation sites need at least two cases each",
        plan.eval_sites.join(", ")
    );
    ensure!(
        !cases.teacher_train.is_empty(),
        "no training cases on the teacher's sites {}",
        plan.teacher_sites.join(", ")
    );
    ensure!(
        !cases.student_train.is_empty(),
        "no training cases on the students' sites {}",
        plan.student_sites.join(", ")
    );
    Ok(cases)
}

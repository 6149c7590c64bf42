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
    /// Held-out cases of the evaluation sites: what every model is scored on. With the
    /// phantom's evaluation pool, the pool's cases (ids `PoolNN`), and nothing else.
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
    let pool = match (&config.data.root, config.data.phantom.eval_cases) {
        (None, 1..) => Some(Dataset::discover(&root.join(phantom::EVAL_POOL))?),
        _ => None,
    };
    let cases = load_cases(&dataset, pool.as_ref(), config)?;
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
    let staging = relkd_core::files::Pending::beside(&dir);
    let bar = progress_bar(p.total_cases() as u64, "phantom");
    phantom::generate(p, &staging, &phantom::Extras::default(), &|done, _| bar.set_position(done as u64))
        .with_context(|| format!("generating the phantom into {}", staging.display()))?;
    bar.finish_and_clear();
    if let Err(e) = fs::rename(&staging, &dir) {
        // Another process finished first; its copy is identical (same seed). Dropping
        // `staging` removes ours.
        ensure!(dir.join(phantom::MANIFEST).exists(), "moving the phantom into {}: {e}", dir.display());
    }
    println!("phantom data: {}", dir.display());
    Ok(dir)
}

/// Reads every case the plan needs and splits them: the test cases of each evaluation site
/// (its evaluation pool when there is one; else a share when the site is also trained on, else
/// all), then validation cases of each training site for choosing checkpoints.
fn load_cases(dataset: &Dataset, pool: Option<&Dataset>, config: &ExperimentConfig) -> anyhow::Result<Cases> {
    let plan = config.sites.as_ref().expect("planned");
    let seed = config.split_seed;
    let mut names: Vec<&String> =
        plan.teacher_sites.iter().chain(&plan.student_sites).chain(&plan.eval_sites).collect();
    names.sort();
    names.dedup();
    let mut cases =
        Cases { teacher_train: vec![], teacher_val: vec![], student_train: vec![], student_val: vec![], test: vec![] };
    let pool_size = |n: &str| pool.and_then(|p| p.site(n).ok()).map_or(0, |s| s.cases.len());
    let total: usize = names.iter().map(|n| dataset.site(n).map_or(0, |s| s.cases.len()) + pool_size(n)).sum();
    let bar = progress_bar(total as u64, "reading");
    let mut problems = Vec::new();
    for name in names {
        let site = dataset.site(name)?;
        problems.extend(site.problems.iter().map(|p| p.to_string()));
        let trained = plan.teacher_sites.contains(name) || plan.student_sites.contains(name);
        let evaluated = plan.eval_sites.contains(name);
        let (rest, test) = match (evaluated, trained, pool) {
            (true, true, Some(pool)) => (site.cases.clone(), pool_cases(pool, name)?),
            (true, false, Some(pool)) => (vec![], pool_cases(pool, name)?),
            (true, true, None) => split_cases(&site.cases, config.test_fraction, seed),
            (true, false, None) => (vec![], site.cases.clone()),
            (false, _, _) => (site.cases.clone(), vec![]),
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
        let (train, val, mut test) = (read(&train), read(&val), read(&test));
        if pool.is_some() {
            // The pool's files are named as a site's; its cases are told apart in every score.
            for case in &mut test {
                case.id = case.id.replacen("Case", "Pool", 1);
            }
        }
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

/// The evaluation pool's cases of site `name` (the pool is written for every site).
fn pool_cases(pool: &Dataset, name: &str) -> anyhow::Result<Vec<CaseFiles>> {
    let site = pool.site(name).with_context(|| format!("the evaluation pool in {}", pool.root.display()))?;
    ensure!(site.problems.is_empty(), "the evaluation pool's {name}: {}", site.problems[0]);
    Ok(site.cases.clone())
}

#[cfg(test)]
mod tests {
    use relkd_core::phantom::{CaseCount, Extras, Matrix, PhantomConfig, generate};

    use super::*;
    use crate::protocol::Protocol;

    /// The quick configuration on a small phantom with a pool of 3 cases a site.
    fn setup(protocol: Protocol) -> (tempfile::TempDir, Dataset, Dataset, ExperimentConfig) {
        let dir = tempfile::tempdir().unwrap();
        let phantom =
            PhantomConfig { sites: 3, cases: CaseCount::Each(4), size: Matrix::Pixels(24), seed: 7, eval_cases: 3 };
        generate(&phantom, dir.path(), &Extras::default(), &|_, _| {}).unwrap();
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/quick.yaml")).unwrap();
        let mut config = ExperimentConfig::parse(&text, Path::new("quick.yaml")).unwrap();
        config.data.phantom = phantom;
        config.protocol = protocol;
        let dataset = Dataset::discover(dir.path()).unwrap();
        config.target = "HCRUDB".into();
        config.sites = Some(protocol.plan(&dataset, "HCRUDB").unwrap());
        let pool = Dataset::discover(&dir.path().join(phantom::EVAL_POOL)).unwrap();
        (dir, dataset, pool, config)
    }

    #[test]
    fn the_evaluation_pool_is_scored_on_and_used_for_nothing_else() {
        for protocol in [Protocol::Cross, Protocol::Loso] {
            let (_dir, dataset, pool, config) = setup(protocol);
            // The pool is not a site of the dataset.
            assert_eq!(dataset.sites.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["RUNMC", "BMC", "HCRUDB"]);
            let cases = load_cases(&dataset, Some(&pool), &config).unwrap();
            let ids = |c: &[Case]| c.iter().map(|c| format!("{}/{}", c.site, c.id)).collect::<Vec<_>>();
            assert_eq!(ids(&cases.test), ["HCRUDB/Pool00", "HCRUDB/Pool01", "HCRUDB/Pool02"], "{protocol:?}");
            let used = [&cases.teacher_train, &cases.teacher_val, &cases.student_train, &cases.student_val];
            for (role, set) in used.iter().enumerate() {
                assert!(set.iter().all(|c| c.id.starts_with("Case")), "{protocol:?}, role {role}: {:?}", ids(set));
                // No image of the pool is any training or validation image (its own stream).
                for case in set.iter() {
                    assert!(cases.test.iter().all(|t| t.image.data != case.image.data));
                }
            }
            // Under cross the teacher trains and validates on all of the target's own cases.
            let target_cases = cases.teacher_train.len() + cases.teacher_val.len();
            let expected = if protocol == Protocol::Cross { 4 } else { 8 };
            assert_eq!(target_cases, expected, "{protocol:?}");
            // Without the pool the target's own cases are the test set, as before.
            let own = load_cases(&dataset, None, &config).unwrap();
            assert!(own.test.iter().all(|c| c.site == "HCRUDB" && c.id.starts_with("Case")));
        }
    }

    #[test]
    fn saml_counts_give_each_site_its_real_count() {
        let dir = tempfile::tempdir().unwrap();
        let phantom =
            PhantomConfig { sites: 6, cases: CaseCount::Saml, size: Matrix::Pixels(16), seed: 1, eval_cases: 2 };
        assert_eq!(phantom.total_cases(), 30 + 30 + 19 + 13 + 12 + 12 + 6 * 2);
        generate(&phantom, dir.path(), &Extras::default(), &|_, _| {}).unwrap();
        let counts: Vec<(String, usize)> =
            Dataset::discover(dir.path()).unwrap().sites.iter().map(|s| (s.name.clone(), s.cases.len())).collect();
        let expected = [("RUNMC", 30), ("BMC", 30), ("HCRUDB", 19), ("UCL", 13), ("BIDMC", 12), ("HK", 12)];
        assert_eq!(counts, expected.map(|(n, c)| (n.to_string(), c)));
        let config: PhantomConfig = serde_yaml::from_str("{ cases: saml, eval_cases: 2 }").unwrap();
        assert_eq!((config.cases, config.eval_cases), (CaseCount::Saml, 2));
        assert_eq!(config.manifest(), "relkd phantom v4 sites=6 cases=saml size=128 seed=0 eval_cases=2\n");
    }
}

//! What every score rests on: the target site's test cases are never trained or validated on,
//! no student trains on the target site, and the training seed never moves a case between
//! training, validation and test (so runs over seeds pair up).

use std::collections::BTreeSet;
use std::path::Path;

use relkd_core::dataset::Case;
use relkd_train::config::ExperimentConfig;
use relkd_train::protocol::Protocol;
use relkd_train::run::prepare;

const TINY: &str = include_str!("../../../tests/fixtures/tiny-run.yaml");

fn ids(cases: &[Case]) -> BTreeSet<String> {
    cases.iter().map(|c| format!("{}/{}", c.site, c.id)).collect()
}

#[test]
fn test_cases_are_held_out_under_every_protocol_and_seed() {
    let cache = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary, before any other thread reads the environment.
    unsafe { std::env::set_var("RELKD_CACHE", cache.path()) };
    let base = ExperimentConfig::parse(TINY, Path::new("tiny-run.yaml")).unwrap();
    for protocol in [Protocol::Cross, Protocol::Loso] {
        let mut splits = Vec::new();
        for seed in [0, 7] {
            let mut config = base.clone();
            config.protocol = protocol;
            config.training.seed = seed;
            let (_, cases) = prepare(&mut config).unwrap();
            let plan = config.sites.clone().unwrap();
            let target = config.target.clone();
            assert!(!plan.student_sites.contains(&target), "{protocol:?}: a student trains on {target}");
            assert_eq!(plan.eval_sites, std::slice::from_ref(&target), "{protocol:?}");
            let test = ids(&cases.test);
            assert!(!test.is_empty() && cases.test.iter().all(|c| c.site == target), "{protocol:?}: {test:?}");
            for (role, seen) in [
                ("teacher training", &cases.teacher_train),
                ("teacher validation", &cases.teacher_val),
                ("student training", &cases.student_train),
                ("student validation", &cases.student_val),
            ] {
                let overlap: Vec<_> = test.intersection(&ids(seen)).cloned().collect();
                assert!(overlap.is_empty(), "{protocol:?}: test cases in the {role} set: {overlap:?}");
            }
            assert!(cases.student_train.iter().chain(&cases.student_val).all(|c| c.site != target));
            splits.push([cases.test, cases.teacher_train, cases.student_train, cases.student_val].map(|c| ids(&c)));
        }
        assert_eq!(splits[0], splits[1], "{protocol:?}: the training seed moved a case");
    }
    // The split seed, on the other hand, does move them (else the test above proves nothing).
    let mut moved = base.clone();
    moved.split_seed = 3;
    let (_, a) = prepare(&mut base.clone()).unwrap();
    let (_, b) = prepare(&mut moved).unwrap();
    assert_ne!(
        [ids(&a.test), ids(&a.student_val)],
        [ids(&b.test), ids(&b.student_val)],
        "split_seed changes nothing on this data"
    );
}

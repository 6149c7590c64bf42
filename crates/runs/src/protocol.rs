//! Which sites each model sees (SPEC §5). Site lists are configuration; the presets fill them
//! from a target site.

use relkd_core::dataset::{Dataset, DatasetError};
use serde::{Deserialize, Serialize};

/// The protocols of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Table 2: the teacher trains on the target site, the student on every other site with
    /// the teacher's guidance, and the student is evaluated on the target, which it never saw.
    Cross,
    /// Table 4, leave-one-site-out: teacher and student train on the other sites and are
    /// evaluated on the target.
    Loso,
}

/// Site folder names for each role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePlan {
    pub teacher_sites: Vec<String>,
    pub student_sites: Vec<String>,
    pub eval_sites: Vec<String>,
}

impl Protocol {
    /// The plan for `target` (a folder name, canonical name or paper id such as `S3`).
    pub fn plan(self, dataset: &Dataset, target: &str) -> Result<SitePlan, DatasetError> {
        let target = dataset.site(target)?.name.clone();
        let others: Vec<String> = dataset.sites.iter().map(|s| s.name.clone()).filter(|n| *n != target).collect();
        Ok(match self {
            Protocol::Cross => {
                SitePlan { teacher_sites: vec![target.clone()], student_sites: others, eval_sites: vec![target] }
            }
            Protocol::Loso => {
                SitePlan { teacher_sites: others.clone(), student_sites: others, eval_sites: vec![target] }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relkd_core::dataset::Site;

    fn dataset(names: &[&str]) -> Dataset {
        let site =
            |n: &&str| Site { name: n.to_string(), dir: n.into(), cases: vec![], problems: vec![], ignored: vec![] };
        Dataset { root: "/data".into(), sites: names.iter().map(site).collect() }
    }

    #[test]
    fn cross_and_loso_plans() {
        let data = dataset(&["RUNMC", "BMC", "I2CVB", "UCL"]);
        let cross = Protocol::Cross.plan(&data, "S3").unwrap();
        assert_eq!(cross.teacher_sites, vec!["I2CVB"]);
        assert_eq!(cross.student_sites, vec!["RUNMC", "BMC", "UCL"]);
        assert_eq!(cross.eval_sites, vec!["I2CVB"]);
        let loso = Protocol::Loso.plan(&data, "ucl").unwrap();
        assert_eq!(loso.teacher_sites, vec!["RUNMC", "BMC", "I2CVB"]);
        assert_eq!(loso.student_sites, loso.teacher_sites);
        assert_eq!(loso.eval_sites, vec!["UCL"]);
    }

    #[test]
    fn an_unknown_target_names_the_sites_there_are() {
        let err = Protocol::Cross.plan(&dataset(&["RUNMC", "BMC"]), "Elsewhere").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("Elsewhere") && msg.contains("RUNMC, BMC"), "{msg}");
    }
}

//! The kinds `bsce-torch exec-stage` runs (registry runner `torch`). On the
//! registry's NO_OUTPUT_EFFECT list: routing never changes what a stage
//! computes.

use bsce_pipeline::catalog::StageKind;
use bsce_stages::stage::StageFn;

use crate::stage::{evaluate, train};

pub const TORCH_STAGES: &[(StageKind, StageFn)] = &[
    (StageKind::Train, train::run),
    (StageKind::Evaluate, evaluate::run),
];

#[cfg(test)]
mod tests {
    use super::*;
    use bsce_pipeline::catalog::Runner;
    use bsce_reports::RESULT_STAGES;
    use bsce_stages::stage::PIPE_STAGES;

    /// Together the binaries' tables (bsce-pipe: the stages crate's and the
    /// result stages'; bsce-torch: this one) run every registered kind
    /// exactly once, each in the binary the registry names.
    #[test]
    fn every_kind_is_routed_once_to_its_runner() {
        for kind in StageKind::ALL {
            let pipe = PIPE_STAGES
                .iter()
                .chain(RESULT_STAGES)
                .filter(|(k, _)| *k == kind)
                .count();
            let torch = TORCH_STAGES.iter().filter(|(k, _)| *k == kind).count();
            let expected = match kind.spec().runner {
                Runner::Pipe => (1, 0),
                Runner::Torch => (0, 1),
            };
            assert_eq!((pipe, torch), expected, "{kind}");
        }
    }
}

//! GPU slots. With `--gpus`, a stage kind that needs a GPU waits for room on
//! one; CPU kinds never take GPU room. `stages_per_gpu` lets N stages of a
//! kind share one GPU (a ResNet-32 uses a small part of a large card): each
//! takes 1/N of a GPU's capacity, so kinds with different sharing mix.

use std::collections::BTreeMap;

use crate::registry::StageKind;

/// A GPU's capacity in units: divisible by every N up to 16 (and many more),
/// so 1/N is exact.
const CAPACITY: u32 = 720_720;

#[derive(Clone, Debug)]
pub(crate) struct GpuPool {
    /// (GPU index, free units).
    gpus: Vec<(u32, u32)>,
    default_share: u32,
    per_kind: BTreeMap<StageKind, u32>,
}

/// A GPU slot held by a running stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GpuSlot {
    pub gpu: u32,
    units: u32,
}

impl GpuSlot {
    pub(crate) fn device(&self) -> String {
        format!("cuda:{}", self.gpu)
    }
}

impl GpuPool {
    /// `stages_per_gpu`: the default sharing (at least 1); `per_kind`
    /// overrides it for some kinds.
    pub(crate) fn new(
        gpus: &[u32],
        stages_per_gpu: u32,
        per_kind: BTreeMap<StageKind, u32>,
    ) -> GpuPool {
        GpuPool {
            gpus: gpus.iter().map(|&g| (g, CAPACITY)).collect(),
            default_share: stages_per_gpu.max(1),
            per_kind,
        }
    }

    /// Whether GPU stages run on GPUs at all (else they run on the CPU).
    pub(crate) fn enabled(&self) -> bool {
        !self.gpus.is_empty()
    }

    fn units(&self, kind: StageKind) -> u32 {
        let n = self
            .per_kind
            .get(&kind)
            .copied()
            .unwrap_or(self.default_share)
            .clamp(1, 720);
        CAPACITY / n
    }

    /// Room for one stage of `kind` on the GPU with the most free room, or
    /// None: the stage waits.
    pub(crate) fn acquire(&mut self, kind: StageKind) -> Option<GpuSlot> {
        let units = self.units(kind);
        let (gpu, free) = self
            .gpus
            .iter_mut()
            .filter(|(_, free)| *free >= units)
            .max_by_key(|(g, free)| (*free, std::cmp::Reverse(*g)))?;
        *free -= units;
        Some(GpuSlot { gpu: *gpu, units })
    }

    /// Whether [`GpuPool::acquire`] would succeed now.
    pub(crate) fn peek(&self, kind: StageKind) -> bool {
        let units = self.units(kind);
        self.gpus.iter().any(|(_, free)| *free >= units)
    }

    pub(crate) fn release(&mut self, slot: GpuSlot) {
        if let Some((_, free)) = self.gpus.iter_mut().find(|(g, _)| *g == slot.gpu) {
            *free = (*free + slot.units).min(CAPACITY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stage_per_gpu_by_default_and_then_wait() {
        let mut p = GpuPool::new(&[0, 1], 1, BTreeMap::new());
        let a = p.acquire(StageKind::Train).unwrap();
        let b = p.acquire(StageKind::Train).unwrap();
        assert_ne!(a.gpu, b.gpu);
        assert_eq!(p.acquire(StageKind::Train), None, "a third waits");
        p.release(a);
        assert_eq!(p.acquire(StageKind::Train).unwrap().gpu, a.gpu);
    }

    #[test]
    fn n_stages_share_a_gpu_and_kinds_mix() {
        let mut p = GpuPool::new(&[3], 4, BTreeMap::from([(StageKind::Evaluate, 8)]));
        let trains: Vec<_> = (0..4)
            .map(|_| p.acquire(StageKind::Train).unwrap())
            .collect();
        assert!(trains.iter().all(|s| s.device() == "cuda:3"));
        assert_eq!(p.acquire(StageKind::Train), None);
        assert_eq!(p.acquire(StageKind::Evaluate), None);
        p.release(trains[0]);
        // A quarter of the GPU holds two evaluations (1/8 each), not a third.
        assert!(p.acquire(StageKind::Evaluate).is_some());
        assert!(p.acquire(StageKind::Evaluate).is_some());
        assert_eq!(p.acquire(StageKind::Evaluate), None);
    }

    #[test]
    fn stages_spread_over_the_freest_gpu() {
        let mut p = GpuPool::new(&[0, 1], 2, BTreeMap::new());
        let a = p.acquire(StageKind::Train).unwrap();
        let b = p.acquire(StageKind::Train).unwrap();
        assert_ne!(a.gpu, b.gpu, "the second goes to the idle GPU");
    }
}

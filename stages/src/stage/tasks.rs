//! The `tasks` stage: dataset + class order + incremental setting -> the
//! classes of every task, with the training-image counts BSCE needs.

use std::path::Path;

use bsce_pipeline::exec::job::{ChildReporter, StageJob};
use bsce_pipeline::params::{max_steps, TasksParams};
use serde::{Deserialize, Serialize};

use crate::dataset::artefact::read_meta;
use crate::error::{Result, StageError};
use crate::order::read_order;

pub const TASKS_FILE: &str = bsce_pipeline::registry::files::TASKS;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskPlan {
    pub base: u32,
    pub increment: u32,
    /// Dataset class ids in learning order (the order's first classes).
    pub class_order: Vec<u32>,
    pub tasks: Vec<Task>,
    /// Classes of the order that no task reaches.
    pub unused_classes: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub index: u32,
    /// Dataset class ids new in this task.
    pub classes: Vec<u32>,
    /// Training images of each new class, in the same order.
    pub train_counts: Vec<u64>,
}

pub fn run(job: &StageJob, _reporter: &ChildReporter) -> Result<()> {
    let p: TasksParams = serde_json::from_value(job.params.clone())
        .map_err(|e| StageError::param("setting", format!("not a setting: {e}")))?;
    let input = |name: &str| {
        job.input(name)
            .ok_or_else(|| StageError::Other(format!("tasks stage has no {name} input")))
    };
    let meta = read_meta(input("dataset")?)?;
    let order = read_order(input("order")?)?;
    let plan = split(
        &order.classes,
        &meta.train_class_counts,
        p.base,
        p.increment,
        p.steps,
    )?;
    write_tasks(&job.out_dir, &plan)
}

/// Cuts an order into a base task and `steps` increments.
pub fn split(
    order: &[u32],
    train_counts: &[u64],
    base: u32,
    increment: u32,
    steps: Option<u32>,
) -> Result<TaskPlan> {
    let n = order.len() as u32;
    if base == 0 || increment == 0 {
        return Err(StageError::param(
            "setting",
            "base and increment must be at least 1",
        ));
    }
    if base > n {
        return Err(StageError::param(
            "setting.base",
            format!("{base} base classes, but the dataset has {n}"),
        ));
    }
    let max_steps = max_steps(n, base, increment);
    let steps = steps.unwrap_or(max_steps);
    if steps > max_steps {
        return Err(StageError::param(
            "setting.steps",
            format!(
                "{steps} steps of {increment} after {base} base classes need {} classes, but the dataset has {n}",
                base + steps * increment
            ),
        ));
    }
    let mut tasks = Vec::new();
    let mut start = 0u32;
    for index in 0..=steps {
        let size = if index == 0 { base } else { increment };
        let classes = order[start as usize..(start + size) as usize].to_vec();
        let counts = classes
            .iter()
            .map(|&c| train_counts.get(c as usize).copied().unwrap_or(0))
            .collect();
        tasks.push(Task {
            index,
            classes,
            train_counts: counts,
        });
        start += size;
    }
    Ok(TaskPlan {
        base,
        increment,
        class_order: order[..start as usize].to_vec(),
        tasks,
        unused_classes: n - start,
    })
}

fn write_tasks(dir: &Path, plan: &TaskPlan) -> Result<()> {
    let path = dir.join(TASKS_FILE);
    let mut bytes = serde_json::to_vec_pretty(plan).expect("serialises");
    bytes.push(b'\n');
    std::fs::write(&path, bytes).map_err(|e| StageError::io(&path, e))
}

pub fn read_tasks(dir: &Path) -> Result<TaskPlan> {
    let path = dir.join(TASKS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| StageError::io(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StageError::invalid(&path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_base_and_increments() {
        let order = [3, 1, 4, 0, 2, 5];
        let counts = [10, 11, 12, 13, 14, 15];
        let p = split(&order, &counts, 2, 2, None).unwrap();
        assert_eq!(p.tasks.len(), 3);
        assert_eq!(p.tasks[0].classes, vec![3, 1]);
        assert_eq!(p.tasks[0].train_counts, vec![13, 11]);
        assert_eq!(p.tasks[2].classes, vec![2, 5]);
        assert_eq!(p.unused_classes, 0);
        let p = split(&order, &counts, 3, 2, Some(1)).unwrap();
        assert_eq!(p.class_order, vec![3, 1, 4, 0, 2]);
        assert_eq!(p.unused_classes, 1);
    }

    #[test]
    fn too_many_base_classes_is_an_error_naming_the_value() {
        let err = split(&[0, 1, 2], &[1, 1, 1], 5, 1, None)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "setting.base: 5 base classes, but the dataset has 3");
        let err = split(&[0, 1, 2], &[1, 1, 1], 1, 1, Some(3))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("setting.steps: 3 steps of 1 after 1 base classes need 4"),
            "{err}"
        );
    }
}

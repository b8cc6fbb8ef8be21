//! How a config asks for a class order ([`OrderSpec`]), and the resolved,
//! validated order with a record of where it came from ([`ClassOrder`]).

use serde::{Deserialize, Serialize};

use super::icarl::icarl_order;
use super::named::{named_order, named_order_names};
use super::numpy::numpy_shuffled_range;
use crate::error::{Result, StageError};

/// A class order as written in a config: one declaration, shared with
/// the planner.
pub use bsce_pipeline::params::OrderSpec;

/// What produced an order's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OrderGenerator {
    /// Taken as written (a config's list, or a list published in a paper's code).
    Explicit,
    /// numpy's legacy `RandomState(seed).shuffle` (MT19937) of `arange(n)`.
    NumpyLegacyShuffle { seed: u32 },
    /// numpy seed, after the original iCaRL loader's shuffles.
    Icarl { seed: u32 },
    Named {
        name: String,
        underlying: Box<OrderGenerator>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderProvenance {
    pub generator: OrderGenerator,
    pub class_count: usize,
}

/// A permutation of `0..provenance.class_count`: `classes[k]` is the
/// dataset class learned k-th.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassOrder {
    pub classes: Vec<u32>,
    pub provenance: OrderProvenance,
}

/// Builds the order `spec` describes for a dataset of `num_classes` classes
/// and checks that it is a permutation of `0..num_classes`.
///
/// Error keys follow the spec's serialised shape (`order.explicit.classes`,
/// `order.named.name`); the config layer may re-anchor them to its own path.
pub fn resolve_order(spec: &OrderSpec, num_classes: usize) -> Result<ClassOrder> {
    if num_classes == 0 {
        return Err(StageError::param(
            "order",
            "the dataset has no classes to order",
        ));
    }
    if num_classes as u64 > 1 << 32 {
        return Err(StageError::param(
            "order",
            format!("the dataset has {num_classes} classes; class ids are limited to u32"),
        ));
    }
    let (classes, generator, key) = match spec {
        OrderSpec::Explicit { classes } => (
            classes.clone(),
            OrderGenerator::Explicit,
            "order.explicit.classes",
        ),
        OrderSpec::NumpySeed { seed } => (
            numpy_shuffled_range(*seed, num_classes),
            OrderGenerator::NumpyLegacyShuffle { seed: *seed },
            "order.numpy_seed.seed",
        ),
        OrderSpec::Icarl { seed } => (
            icarl_order(*seed, num_classes),
            OrderGenerator::Icarl { seed: *seed },
            "order.icarl.seed",
        ),
        OrderSpec::Named { name } => {
            let key = "order.named.name";
            let named = named_order(name).ok_or_else(|| {
                StageError::param(
                    key,
                    format!(
                        "unknown order {name:?}; known orders: {}",
                        named_order_names().join(", ")
                    ),
                )
            })?;
            if named.classes.len() != num_classes {
                return Err(StageError::param(
                    key,
                    format!(
                        "order {name} has {} classes; the dataset has {num_classes}",
                        named.classes.len()
                    ),
                ));
            }
            let generator = OrderGenerator::Named {
                name: named.name.to_string(),
                underlying: Box::new(named.generator),
            };
            (named.classes, generator, key)
        }
    };
    check_permutation(&classes, num_classes).map_err(|message| StageError::param(key, message))?;
    Ok(ClassOrder {
        classes,
        provenance: OrderProvenance {
            generator,
            class_count: num_classes,
        },
    })
}

/// At most this many ids are named per problem, so a wrong 1000-class list
/// gives a readable message.
const IDS_SHOWN: usize = 10;

/// `Ok` if `classes` is a permutation of `0..n`; otherwise one message that
/// names every kind of problem: wrong length, out-of-range, repeated and
/// missing ids.
pub(crate) fn check_permutation(classes: &[u32], n: usize) -> Result<(), String> {
    let mut occurrences = vec![0usize; n];
    let mut out_of_range = Vec::new();
    for &class in classes {
        match occurrences.get_mut(class as usize) {
            Some(count) => *count += 1,
            None => out_of_range.push(class),
        }
    }
    out_of_range.sort_unstable();
    out_of_range.dedup();

    let mut problems = Vec::new();
    if classes.len() != n {
        problems.push(format!(
            "order lists {} classes; the dataset has {n}",
            classes.len()
        ));
    }
    if !out_of_range.is_empty() {
        let (subject, verb) = ids_subject(&out_of_range);
        problems.push(format!("{subject} {verb} out of range 0..{n}"));
    }
    let repeated: Vec<(usize, usize)> = occurrences
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count > 1)
        .map(|(class, &count)| (class, count))
        .collect();
    if !repeated.is_empty() {
        let mut parts: Vec<String> = repeated
            .iter()
            .take(IDS_SHOWN)
            .map(|&(class, count)| match count {
                2 => format!("class {class} appears twice"),
                _ => format!("class {class} appears {count} times"),
            })
            .collect();
        if repeated.len() > IDS_SHOWN {
            parts.push(format!(
                "{} more classes repeat",
                repeated.len() - IDS_SHOWN
            ));
        }
        problems.push(parts.join(", "));
    }
    let missing: Vec<u32> = occurrences
        .iter()
        .enumerate()
        .filter(|&(_, &count)| count == 0)
        .map(|(class, _)| class as u32)
        .collect();
    if !missing.is_empty() {
        let (subject, verb) = ids_subject(&missing);
        problems.push(format!("{subject} {verb} missing"));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// "class 7" / "classes 3, 7" (with a count of the rest beyond
/// [`IDS_SHOWN`]), and the verb agreeing with it.
fn ids_subject(ids: &[u32]) -> (String, &'static str) {
    if let [id] = ids {
        return (format!("class {id}"), "is");
    }
    let shown: Vec<String> = ids.iter().take(IDS_SHOWN).map(u32::to_string).collect();
    let mut subject = format!("classes {}", shown.join(", "));
    if ids.len() > IDS_SHOWN {
        subject.push_str(&format!(" and {} more", ids.len() - IDS_SHOWN));
    }
    (subject, "are")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::named::PODNET_CIFAR100_ORDERS;

    fn param_error(spec: &OrderSpec, n: usize) -> (String, String) {
        match resolve_order(spec, n) {
            Err(StageError::InvalidParam { key, message }) => (key, message),
            other => panic!("expected a parameter error, got {other:?}"),
        }
    }

    fn explicit(classes: Vec<u32>) -> OrderSpec {
        OrderSpec::Explicit { classes }
    }

    #[test]
    fn explicit_permutation_resolves_as_written() {
        let order = resolve_order(&explicit(vec![2, 0, 1]), 3).unwrap();
        assert_eq!(order.classes, [2, 0, 1]);
        assert_eq!(
            order.provenance,
            OrderProvenance {
                generator: OrderGenerator::Explicit,
                class_count: 3
            }
        );
    }

    #[test]
    fn short_list_names_count_and_missing_class() {
        let mut classes: Vec<u32> = (0..100).collect();
        classes.remove(42);
        let (key, message) = param_error(&explicit(classes), 100);
        assert_eq!(key, "order.explicit.classes");
        assert_eq!(
            message,
            "order lists 99 classes; the dataset has 100; class 42 is missing"
        );
    }

    #[test]
    fn out_of_range_class_is_named() {
        let mut classes: Vec<u32> = (0..100).collect();
        classes[0] = 101;
        let (_, message) = param_error(&explicit(classes), 100);
        assert_eq!(
            message,
            "class 101 is out of range 0..100; class 0 is missing"
        );
    }

    #[test]
    fn repeated_class_is_named_with_its_count() {
        let (_, message) = param_error(&explicit(vec![3, 1, 3, 0]), 4);
        assert_eq!(message, "class 3 appears twice; class 2 is missing");
        let (_, message) = param_error(&explicit(vec![1, 1, 1]), 3);
        assert_eq!(message, "class 1 appears 3 times; classes 0, 2 are missing");
    }

    #[test]
    fn long_listings_are_truncated() {
        let (_, message) = param_error(&explicit((100..120).collect()), 20);
        assert_eq!(
            message,
            "classes 100, 101, 102, 103, 104, 105, 106, 107, 108, 109 and 10 more are out \
             of range 0..20; classes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 10 more are missing"
        );
        let doubled: Vec<u32> = (0..12).chain(0..12).collect();
        let (_, message) = param_error(&explicit(doubled), 12);
        assert!(
            message
                .starts_with("order lists 24 classes; the dataset has 12; class 0 appears twice,"),
            "{message}"
        );
        assert!(
            message.ends_with("class 9 appears twice, 2 more classes repeat"),
            "{message}"
        );
    }

    #[test]
    fn named_order_records_its_underlying_generator() {
        let order = resolve_order(
            &OrderSpec::Named {
                name: "icarl_cifar100".into(),
            },
            100,
        )
        .unwrap();
        assert_eq!(order.classes, PODNET_CIFAR100_ORDERS[0]);
        assert_eq!(
            order.provenance.generator,
            OrderGenerator::Named {
                name: "icarl_cifar100".into(),
                underlying: Box::new(OrderGenerator::Icarl { seed: 1993 }),
            }
        );
    }

    #[test]
    fn named_order_of_another_size_is_refused() {
        let spec = OrderSpec::Named {
            name: "podnet_cifar100_1".into(),
        };
        let (key, message) = param_error(&spec, 10);
        assert_eq!(key, "order.named.name");
        assert_eq!(
            message,
            "order podnet_cifar100_1 has 100 classes; the dataset has 10"
        );
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let spec = OrderSpec::Named {
            name: "podnet_cifar100".into(),
        };
        let (key, message) = param_error(&spec, 100);
        assert_eq!(key, "order.named.name");
        assert_eq!(
            message,
            format!(
                "unknown order \"podnet_cifar100\"; known orders: {}",
                named_order_names().join(", ")
            )
        );
    }

    #[test]
    fn seeded_specs_generate_for_the_dataset_size() {
        let numpy = resolve_order(&OrderSpec::NumpySeed { seed: 1993 }, 100).unwrap();
        assert_eq!(numpy.classes[..5], [68, 56, 78, 8, 23]);
        assert_eq!(
            numpy.provenance.generator,
            OrderGenerator::NumpyLegacyShuffle { seed: 1993 }
        );
        let icarl = resolve_order(&OrderSpec::Icarl { seed: 1993 }, 100).unwrap();
        assert_eq!(icarl.classes, PODNET_CIFAR100_ORDERS[0]);
        let small = resolve_order(&OrderSpec::NumpySeed { seed: 1993 }, 10).unwrap();
        assert_eq!(small.classes, [4, 2, 7, 6, 0, 3, 5, 8, 9, 1]);
        assert_eq!(small.provenance.class_count, 10);
    }

    #[test]
    fn empty_dataset_is_refused() {
        let (key, message) = param_error(&OrderSpec::NumpySeed { seed: 0 }, 0);
        assert_eq!(key, "order");
        assert_eq!(message, "the dataset has no classes to order");
    }

    #[test]
    fn spec_serialises_externally_tagged_in_snake_case() {
        let cases = [
            (explicit(vec![1, 0]), r#"{"explicit":{"classes":[1,0]}}"#),
            (
                OrderSpec::NumpySeed { seed: 1993 },
                r#"{"numpy_seed":{"seed":1993}}"#,
            ),
            (
                OrderSpec::Named {
                    name: "icarl_cifar100".into(),
                },
                r#"{"named":{"name":"icarl_cifar100"}}"#,
            ),
            (OrderSpec::Icarl { seed: 7 }, r#"{"icarl":{"seed":7}}"#),
        ];
        for (spec, json) in cases {
            assert_eq!(serde_json::to_string(&spec).unwrap(), json);
            assert_eq!(serde_json::from_str::<OrderSpec>(json).unwrap(), spec);
        }
    }

    #[test]
    fn spec_rejects_unknown_fields_and_variants() {
        let extra = serde_json::from_str::<OrderSpec>(r#"{"numpy_seed":{"seed":1,"sed":2}}"#);
        assert!(extra
            .unwrap_err()
            .to_string()
            .contains("unknown field `sed`"));
        let variant = serde_json::from_str::<OrderSpec>(r#"{"numpy":{"seed":1}}"#);
        assert!(variant
            .unwrap_err()
            .to_string()
            .contains("unknown variant `numpy`"));
        let negative = serde_json::from_str::<OrderSpec>(r#"{"numpy_seed":{"seed":-1}}"#);
        assert!(negative.is_err());
    }
}

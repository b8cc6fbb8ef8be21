//! Orders known by name: the published lists, and the generated orders that
//! papers cite by seed, so that a config can say which one it means.

use super::icarl::icarl_order;
use super::numpy::numpy_shuffled_range;
use super::spec::OrderGenerator;

/// PODNet's three CIFAR-100 orders (arthurdouillard/incremental_learning.pytorch,
/// `options/data/cifar100_3orders.yaml`); PODNet and the papers that compare
/// with it report mean and std over these.
pub(crate) const PODNET_CIFAR100_ORDERS: [[u32; 100]; 3] = [
    [
        87, 0, 52, 58, 44, 91, 68, 97, 51, 15, 94, 92, 10, 72, 49, 78, 61, 14, 8, 86, 84, 96, 18,
        24, 32, 45, 88, 11, 4, 67, 69, 66, 77, 47, 79, 93, 29, 50, 57, 83, 17, 81, 41, 12, 37, 59,
        25, 20, 80, 73, 1, 28, 6, 46, 62, 82, 53, 9, 31, 75, 38, 63, 33, 74, 27, 22, 36, 3, 16, 21,
        60, 19, 70, 90, 89, 43, 5, 42, 65, 76, 40, 30, 23, 85, 2, 95, 56, 48, 71, 64, 98, 13, 99,
        7, 34, 55, 54, 26, 35, 39,
    ],
    [
        58, 30, 93, 69, 21, 77, 3, 78, 12, 71, 65, 40, 16, 49, 89, 46, 24, 66, 19, 41, 5, 29, 15,
        73, 11, 70, 90, 63, 67, 25, 59, 72, 80, 94, 54, 33, 18, 96, 2, 10, 43, 9, 57, 81, 76, 50,
        32, 6, 37, 7, 68, 91, 88, 95, 85, 4, 60, 36, 22, 27, 39, 42, 34, 51, 55, 28, 53, 48, 38,
        17, 83, 86, 56, 35, 45, 79, 99, 84, 97, 82, 98, 26, 47, 44, 62, 13, 31, 0, 75, 14, 52, 74,
        8, 20, 1, 92, 87, 23, 64, 61,
    ],
    [
        71, 54, 45, 32, 4, 8, 48, 66, 1, 91, 28, 82, 29, 22, 80, 27, 86, 23, 37, 47, 55, 9, 14, 68,
        25, 96, 36, 90, 58, 21, 57, 81, 12, 26, 16, 89, 79, 49, 31, 38, 46, 20, 92, 88, 40, 39, 98,
        94, 19, 95, 72, 24, 64, 18, 60, 50, 63, 61, 83, 76, 69, 35, 0, 52, 7, 65, 42, 73, 74, 30,
        41, 3, 6, 53, 13, 56, 70, 77, 34, 97, 75, 2, 17, 93, 33, 84, 99, 51, 62, 87, 5, 15, 10, 78,
        67, 44, 59, 85, 43, 11,
    ],
];

/// A named order, resolved to its list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedOrder {
    pub name: &'static str,
    /// One line saying where the list comes from, for listings and reports.
    pub description: &'static str,
    pub classes: Vec<u32>,
    /// How `classes` is produced, recorded in the order's provenance.
    pub generator: OrderGenerator,
}

enum Source {
    Listed(&'static [u32]),
    NumpySeed { seed: u32, classes: usize },
    Icarl { seed: u32, classes: usize },
}

struct Entry {
    name: &'static str,
    description: &'static str,
    source: Source,
}

const ENTRIES: [Entry; 5] = [
    Entry {
        name: "podnet_cifar100_0",
        description: "PODNet's first CIFAR-100 order (options/data/cifar100_3orders.yaml); \
                      the same list as icarl_cifar100",
        source: Source::Listed(&PODNET_CIFAR100_ORDERS[0]),
    },
    Entry {
        name: "podnet_cifar100_1",
        description: "PODNet's second CIFAR-100 order (options/data/cifar100_3orders.yaml)",
        source: Source::Listed(&PODNET_CIFAR100_ORDERS[1]),
    },
    Entry {
        name: "podnet_cifar100_2",
        description: "PODNet's third CIFAR-100 order (options/data/cifar100_3orders.yaml)",
        source: Source::Listed(&PODNET_CIFAR100_ORDERS[2]),
    },
    Entry {
        name: "icarl_cifar100",
        description: "original iCaRL CIFAR-100 order: numpy seed 1993 after its loader's 100 \
                      shuffles of 500 image indices (srebuffi/iCaRL)",
        source: Source::Icarl {
            seed: 1993,
            classes: 100,
        },
    },
    Entry {
        name: "numpy1993_cifar100",
        description: "np.random.seed(1993); np.random.shuffle(np.arange(100)), as in LUCIR, \
                      PyCIL and FACIL (which calls it cifar100_icarl)",
        source: Source::NumpySeed {
            seed: 1993,
            classes: 100,
        },
    },
];

const NAMES: [&str; ENTRIES.len()] = {
    let mut names = [""; ENTRIES.len()];
    let mut i = 0;
    while i < ENTRIES.len() {
        names[i] = ENTRIES[i].name;
        i += 1;
    }
    names
};

/// Every name [`named_order`] accepts, for error messages and suggestions.
pub fn named_order_names() -> &'static [&'static str] {
    &NAMES
}

pub fn named_order(name: &str) -> Option<NamedOrder> {
    let entry = ENTRIES.iter().find(|e| e.name == name)?;
    let (classes, generator) = match entry.source {
        Source::Listed(list) => (list.to_vec(), OrderGenerator::Explicit),
        Source::NumpySeed { seed, classes } => (
            numpy_shuffled_range(seed, classes),
            OrderGenerator::NumpyLegacyShuffle { seed },
        ),
        Source::Icarl { seed, classes } => {
            (icarl_order(seed, classes), OrderGenerator::Icarl { seed })
        }
    };
    Some(NamedOrder {
        name: entry.name,
        description: entry.description,
        classes,
        generator,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::spec::check_permutation;
    use sha2::{Digest, Sha256};

    #[test]
    fn every_name_resolves_to_a_permutation_with_a_description() {
        for name in named_order_names() {
            let order = named_order(name).unwrap();
            assert_eq!(order.name, *name);
            assert!(!order.description.is_empty());
            assert_eq!(check_permutation(&order.classes, 100), Ok(()), "{name}");
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names = named_order_names().to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), named_order_names().len());
    }

    #[test]
    fn icarl_and_podnet_0_are_the_same_list() {
        assert_eq!(
            named_order("icarl_cifar100").unwrap().classes,
            named_order("podnet_cifar100_0").unwrap().classes
        );
    }

    #[test]
    fn numpy1993_is_the_lucir_order() {
        let order = named_order("numpy1993_cifar100").unwrap();
        assert_eq!(order.classes[..10], [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]);
        assert_eq!(
            order.generator,
            OrderGenerator::NumpyLegacyShuffle { seed: 1993 }
        );
    }

    #[test]
    fn podnet_lists_are_verbatim() {
        // sha256 of each compact JSON list, computed from the lines of
        // shared/reference/cil-protocols.md section 3, not from this file.
        let expected = [
            "85f229750c8c32e3cdc7d36f450279814fb7129ebb98101cc2b35f38b1f33d99",
            "1929a44aa28112f65e41bdd57e28df8c81e2dc021139e8a9340b4b050ce63ee9",
            "a73ab40b245809ee3b61018e2e06c6aabc492c5a5cce4d264338045423a30b8d",
        ];
        for (list, sha) in PODNET_CIFAR100_ORDERS.iter().zip(expected) {
            let json = serde_json::to_vec(&list[..]).unwrap();
            assert_eq!(hex::encode(Sha256::digest(json)), sha);
        }
    }

    #[test]
    fn unknown_name_is_none() {
        assert_eq!(named_order("podnet_cifar100_3"), None);
    }
}

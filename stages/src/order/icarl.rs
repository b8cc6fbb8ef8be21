//! The class order of the original iCaRL code (srebuffi/iCaRL,
//! `iCaRL-TheanoLasagne`), which PODNet adopted as its first CIFAR-100 order.
//!
//! `main_cifar_100_theano.py` seeds numpy with 1993, then calls
//! `utils_cifar100.load_data`, which for each of the 100 classes shuffles
//! that class's 500 training-image indices (`np.random.shuffle(index_y)`)
//! to split off validation images, even with no validation images. Only
//! then is `np.arange(100)` shuffled into the order. Those 100 shuffles are
//! why "iCaRL seed 1993" and "numpy seed 1993" are different lists.
//!
//! Only the first of iCaRL's runs is reproducible this way: the later runs'
//! orders are drawn after training has consumed the stream.

use super::mt19937::Mt19937;
use super::numpy::{identity_order, legacy_shuffle};

/// Fixed by iCaRL's CIFAR-100 loader whatever the number of classes ordered:
/// one shuffle per CIFAR-100 class, of that class's training images.
const LOADER_SHUFFLES: usize = 100;
const LOADER_SHUFFLE_LEN: usize = 500;

/// The order iCaRL's CIFAR-100 script would draw with `np.random.seed(seed)`
/// for `n` classes (n = 100 in the original).
///
/// Panics if `n` exceeds 2^32 (class ids are `u32`).
pub fn icarl_order(seed: u32, n: usize) -> Vec<u32> {
    let mut rng = Mt19937::new(seed);
    // Only the length of the loader's index arrays affects the stream.
    let mut image_indices = vec![0u32; LOADER_SHUFFLE_LEN];
    for _ in 0..LOADER_SHUFFLES {
        legacy_shuffle(&mut rng, &mut image_indices);
    }
    let mut order = identity_order(n);
    legacy_shuffle(&mut rng, &mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::named::PODNET_CIFAR100_ORDERS;
    use crate::order::numpy_shuffled_range;

    #[test]
    fn seed_1993_is_podnets_first_cifar100_order() {
        assert_eq!(icarl_order(1993, 100), PODNET_CIFAR100_ORDERS[0]);
    }

    #[test]
    fn differs_from_the_plain_numpy_order_of_the_same_seed() {
        assert_ne!(icarl_order(1993, 100), numpy_shuffled_range(1993, 100));
        assert_eq!(icarl_order(1993, 100)[..5], [87, 0, 52, 58, 44]);
    }
}

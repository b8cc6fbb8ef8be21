//! numpy's legacy `RandomState.shuffle`, draw for draw.
//!
//! LUCIR, PyCIL, FACIL and PODNet (ImageNet) all build their class order
//! with `np.random.seed(s); np.random.shuffle(np.arange(n))`. numpy freezes
//! the legacy stream (it must match numpy 1.16 forever), so reproducing it
//! once is enough to regenerate those orders for any seed and size.

use super::mt19937::Mt19937;

/// numpy's `random_interval` for `max >= 1` (a shuffle never asks for 0): a
/// uniform integer in `0..=max` by masked rejection. The bound picks the
/// draw width, and with it how much of the stream each index consumes:
/// 32-bit words up to `u32::MAX`, 64-bit words above.
fn random_interval(rng: &mut Mt19937, max: u64) -> u64 {
    let mask = u64::MAX >> max.leading_zeros();
    loop {
        let value = if max <= u64::from(u32::MAX) {
            u64::from(rng.next_u32()) & mask
        } else {
            rng.next_u64() & mask
        };
        if value <= max {
            return value;
        }
    }
}

/// `RandomState.shuffle` of a 1-d array: Fisher-Yates from the
/// last element down, swapping element `i` with one drawn from `0..=i`.
/// numpy takes the same draws for every dtype, so `T` does not matter.
pub(crate) fn legacy_shuffle<T>(rng: &mut Mt19937, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = random_interval(rng, i as u64) as usize;
        items.swap(i, j);
    }
}

/// `0, 1, .., n-1` as class ids. Ids are `u32`, so `n` may not exceed 2^32.
pub(crate) fn identity_order(n: usize) -> Vec<u32> {
    assert!(n as u64 <= 1 << 32, "{n} classes cannot all have u32 ids");
    (0..n).map(|i| i as u32).collect()
}

/// `np.random.seed(seed); a = np.arange(n); np.random.shuffle(a)`.
///
/// Panics if `n` exceeds 2^32 (class ids are `u32`).
pub fn numpy_shuffled_range(seed: u32, n: usize) -> Vec<u32> {
    let mut order = identity_order(n);
    legacy_shuffle(&mut Mt19937::new(seed), &mut order);
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::path::PathBuf;
    use std::process::Command;

    enum Expected {
        Full(&'static [u32]),
        /// sha256 of the compact JSON list (`json.dumps(l, separators=(',', ':'))`,
        /// byte-identical to `serde_json::to_vec`), and its first ten values.
        Hashed(&'static str, [u32; 10]),
    }
    use Expected::{Full, Hashed};

    /// Generated once with numpy 2.4.6 from
    /// `np.random.seed(seed); a = np.arange(n); np.random.shuffle(a)`.
    #[rustfmt::skip]
    const NUMPY_SHUFFLES: &[(u32, usize, Expected)] = &[
        (0, 1, Full(&[0])),
        (0, 2, Full(&[1, 0])),
        (0, 10, Full(&[2, 8, 4, 9, 1, 6, 7, 3, 0, 5])),
        (0, 100, Hashed("28ead403682915604eb5b0c08cfbc9fb190a644362029beea4e082dad80e31b2", [26, 86, 2, 55, 75, 93, 16, 73, 54, 95])),
        (0, 1000, Hashed("9c83f922597e04af5befd2d78980e642866f0f4f98fe9aa64e0bd33fe2d89409", [993, 859, 298, 553, 672, 971, 27, 231, 306, 706])),
        (0, 5000, Hashed("b080bce4cea3dc18d0cd9c2b0af3d2155b376a26ec10d2b9569a940a8b6f4646", [398, 3833, 4836, 4572, 636, 2545, 1161, 2230, 148, 2530])),
        (1, 1, Full(&[0])),
        (1, 2, Full(&[0, 1])),
        (1, 10, Full(&[2, 9, 6, 4, 0, 3, 1, 7, 8, 5])),
        (1, 100, Hashed("1bd30342660a71506f862bcc2c3adc42f0c16a505778c56f556238a1e2873a65", [80, 84, 33, 81, 93, 17, 36, 82, 69, 65])),
        (1, 1000, Hashed("731c2b14a1a8435afb0257e9a630fc27c98f03f009d922efae2b3c4efdbbb288", [507, 818, 452, 368, 242, 929, 262, 810, 318, 49])),
        (1, 5000, Hashed("723b496c21f673f82472c4f2b8d9c89091e3cc82a0c37c6fb8f6d288f042448b", [2764, 4767, 3814, 3499, 2735, 3922, 2701, 1179, 932, 792])),
        (42, 1, Full(&[0])),
        (42, 2, Full(&[1, 0])),
        (42, 10, Full(&[8, 1, 5, 0, 7, 2, 9, 4, 3, 6])),
        (42, 100, Hashed("04b000b56a91f35b971f5297eaab4279245789dfee40b74a026b0381d5f11fe7", [83, 53, 70, 45, 44, 39, 22, 80, 10, 0])),
        (42, 1000, Hashed("9b80ae9f7ebe58d6591a8058bf21e9c129a5ddaa75646ce2097be0704da94187", [521, 737, 740, 660, 411, 678, 626, 513, 859, 136])),
        (42, 5000, Hashed("63406957ffc760a36c42a43fe311d0f3b97cb4092fdafd42cfa9875d195ad68b", [1501, 2586, 2653, 1055, 705, 106, 589, 2468, 2413, 1600])),
        (1993, 1, Full(&[0])),
        (1993, 2, Full(&[0, 1])),
        (1993, 10, Full(&[4, 2, 7, 6, 0, 3, 5, 8, 9, 1])),
        (1993, 100, Hashed("88fdb256f51cc112808cfccd27366a30619edd365cab0a582a93801dcddbd6e4", [68, 56, 78, 8, 23, 84, 90, 65, 74, 76])),
        (1993, 1000, Hashed("bae3be47b917b042c8908063d955792ab008966b7c2a5d33fe15b13b2685271c", [54, 7, 894, 512, 126, 337, 988, 11, 284, 493])),
        (1993, 5000, Hashed("56c81c7026d1f759ac0b08fe00bf62d0b4765dd45a97ee3c300fc3363c481be8", [3223, 1725, 1804, 4289, 3642, 2581, 388, 4534, 4961, 284])),
        (u32::MAX, 1, Full(&[0])),
        (u32::MAX, 2, Full(&[0, 1])),
        (u32::MAX, 10, Full(&[6, 9, 5, 1, 8, 0, 7, 4, 2, 3])),
        (u32::MAX, 100, Hashed("3781d7b41d551e216874a0717be1545ab2dc0a49ad6be1a09bc17ea1cc5748a5", [92, 36, 80, 77, 31, 6, 69, 20, 21, 81])),
        (u32::MAX, 1000, Hashed("550afeebaf303f0c88d1b5922dd9d180592998b5924e0cbdd734189804f84af3", [94, 405, 819, 632, 217, 169, 449, 275, 165, 828])),
        (u32::MAX, 5000, Hashed("abe914a5f354e98ec6b2fa023bfc0474fb150bc21f99824b220818945839337e", [330, 4899, 4415, 3208, 3186, 2841, 2419, 2840, 288, 4171])),
    ];

    #[test]
    fn matches_stored_numpy_shuffles() {
        for (seed, n, expected) in NUMPY_SHUFFLES {
            let got = numpy_shuffled_range(*seed, *n);
            match expected {
                Full(list) => assert_eq!(got, *list, "seed {seed}, n {n}"),
                Hashed(sha, first) => {
                    assert_eq!(got[..10], first[..], "seed {seed}, n {n}");
                    let digest = hex::encode(Sha256::digest(serde_json::to_vec(&got).unwrap()));
                    assert_eq!(digest, *sha, "seed {seed}, n {n}");
                }
            }
        }
    }

    #[test]
    fn seed_1993_starts_like_lucir_and_pycil() {
        assert_eq!(
            numpy_shuffled_range(1993, 100)[..10],
            [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
        );
    }

    #[test]
    fn empty_range_is_empty() {
        assert!(numpy_shuffled_range(7, 0).is_empty());
    }

    /// `RandomState(seed).randint(0, 2**40 + 12345, dtype=np.uint64)` uses the
    /// same masked rejection with 64-bit draws, so it pins the wide branch
    /// (reached by shuffles of more than 2^32 elements) without such an array.
    #[test]
    fn wide_bounds_draw_64_bits_like_numpy() {
        let max = (1u64 << 40) + 12345 - 1;
        let cases: [(u32, [u64; 5]); 2] = [
            (
                7,
                [
                    752595690692,
                    108744157686,
                    291964244179,
                    309610205529,
                    936371205000,
                ],
            ),
            (
                1993,
                [
                    534925808378,
                    1042543086441,
                    947912145087,
                    938031794629,
                    819048700206,
                ],
            ),
        ];
        for (seed, expected) in cases {
            let mut rng = Mt19937::new(seed);
            let got: Vec<u64> = (0..5).map(|_| random_interval(&mut rng, max)).collect();
            assert_eq!(got, expected, "seed {seed}");
        }
    }

    /// Prints, for each `[seed, n]` in the JSON of argv[1], numpy's shuffle.
    const LIVE_SCRIPT: &str = r#"
import json, sys
import numpy as np
out = []
for seed, n in json.loads(sys.argv[1]):
    np.random.seed(seed)
    a = np.arange(n)
    np.random.shuffle(a)
    out.append([int(x) for x in a])
print(json.dumps(out))
"#;

    fn venv_python() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
    }

    /// Cases differ on every run (printed, to replay a failure), so over
    /// time the comparison covers far more than the stored table.
    #[test]
    fn numpy_matches_live() {
        let python = venv_python();
        assert!(
            python.exists(),
            "{} not found: run the repository's set-up script to create the \
             virtual environment with numpy (this test never passes without it)",
            python.display()
        );
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let mut picker = Mt19937::new(clock);
        let mut cases: Vec<(u32, usize)> = (0..6)
            .map(|_| (picker.next_u32(), 1 + (picker.next_u32() % 3000) as usize))
            .collect();
        // Past one 624-word block many times over, where an error in the
        // state regeneration would show.
        cases.push((picker.next_u32(), 20_000));
        eprintln!("numpy_matches_live cases (seed, n): {cases:?}");

        let output = Command::new(&python)
            .arg("-c")
            .arg(LIVE_SCRIPT)
            .arg(serde_json::to_string(&cases).unwrap())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        assert!(
            output.status.success(),
            "{} failed ({}); is numpy installed in the venv? stderr:\n{}",
            python.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let expected: Vec<Vec<u32>> = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(expected.len(), cases.len());
        for ((seed, n), numpy) in cases.iter().zip(&expected) {
            assert_eq!(
                &numpy_shuffled_range(*seed, *n),
                numpy,
                "seed {seed}, n {n} differs from numpy"
            );
        }
    }
}

"""Prints a config with 1 + 3*N stages: one synthetic dataset, N numpy-seeded
orders, two settings (N order stages + 2N task splits)."""
import sys

n = int(sys.argv[1])
print("datasets:\n  synth:\n    synthetic: {classes: 10, train_per_class: 2, test_per_class: 1, image_size: 4}")
print("orders:")
for i in range(n):
    print(f"  o{i}: {{numpy_seed: {i}}}")
print("settings:\n  a: {base: 4, increment: 2}\n  b: {base: 2, increment: 4}")
print("experiments:\n  e:\n    dataset: synth\n    settings: [a, b]\n    orders: [" + ", ".join(f"o{i}" for i in range(n)) + "]")

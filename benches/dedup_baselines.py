"""Side-by-side baselines for `normgate-train bench dedup` (docs/PERFORMANCE.md).

At one size, in one run: the seed's method (a dense numpy product of the
normalised weight matrices, then a Python double loop over every entry),
numpy's dense product alone (BLAS: the practical limit of that approach),
and `normgate-train bench dedup` on random unit rows of the same size.

    python3 benches/dedup_baselines.py [ROWS_A ROWS_B DIM]

Needs numpy and `cargo build --release -p normgate-train`.
"""
import json
import subprocess
import sys
import time

import numpy as np


def unit_rows(rows, dim, seed):
    x = np.random.default_rng(seed).standard_normal((rows, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main():
    rows_a, rows_b, dim = (int(v) for v in (sys.argv[1:4] or (2000, 8000, 512)))
    a, b = unit_rows(rows_a, dim, 1), unit_rows(rows_b, dim, 2)

    start = time.perf_counter()
    sim = a @ b.T
    dense = time.perf_counter() - start

    start = time.perf_counter()
    sim = a @ b.T
    pairs = []
    for i in range(rows_a):
        for j in range(rows_b):
            if sim[i, j] > 0.5:
                pairs.append((i, j, sim[i, j]))
    seed_method = time.perf_counter() - start

    out = subprocess.run(
        ["target/release/normgate-train", "bench", "dedup", "--rows-a", str(rows_a),
         "--rows-b", str(rows_b), "--dim", str(dim), "--json"],
        check=True, capture_output=True, text=True,
    )
    dedup = json.loads(out.stdout)["seconds"]
    print(json.dumps({
        "rows_a": rows_a, "rows_b": rows_b, "dim": dim,
        "seed_method_s": seed_method, "numpy_dense_product_s": dense, "dedup_s": dedup,
        "dedup_over_numpy_dense": dedup / dense, "seed_method_over_dedup": seed_method / dedup,
    }))


if __name__ == "__main__":
    main()

"""A fixed small scan and the stored values of its score columns.

``data/score_fingerprint.npz`` holds, for every reference mode of :data:`MODES`, every ``*_score``
column (float64) and every ``*_rank`` column (int16) of a fixed scan of :func:`fixed_data`, under
the key ``"<mode>/<column>"`` (100 columns of 800 rows, about 0.3 MB). ``test_score_fingerprint.py``
recomputes them and :func:`compare` checks them, so a refactoring that changes any score or rank
fails. Regenerate only for an intended change of the numbers::

    python tests/detect/score_fingerprint.py --write

(without ``--write`` it prints the problems of the current code against the store).

Why values and a tolerance rather than hashes: the fingerprint used to be a SHA-256 per column,
which holds on one kind of CPU only. The modes ``"global"`` and ``"batch"`` (torch kNN) hash the
same on every machine seen, but ``"reference"``, ``"multi_reference"`` and ``"ivf"`` search the
reference with FAISS, whose kernels are picked at run time by the CPU's SIMD level (faiss-cpu
>= 1.13 dispatches dynamically): on an AVX-512 machine (AMD EPYC) 18 of their 60 columns hashed
differently from the stored ones with identical code (faiss-cpu 1.13.2-1.15.1 and numpy
2.3.5/2.4.6 alike), while ``faiss.SIMDConfig.set_level(faiss.SIMDLevel_AVX2)`` reproduced all 100
stored hashes bit for bit.
The stored values were written that way (``set_level(AVX2)``, then ``--write``), so they are the
numbers the old hashes certified. Measured on this scan, FAISS at AVX-512 vs AVX2 vs scalar
(``SIMDLevel_NONE``) moves k-distances by about one float32 ulp (1.2e-7), which the detectors
amplify: LID up to 1.7e-5 relative, DAO (distance ratios raised to the power LID, ~30) up to
3.2e-4, the two-sided k-distance z (``density_anomaly``) up to 2.5e-5 absolute next to zero
(2.3e-3 relative), and ``fused`` (Fisher's combination of component RANKS) by up to 1.2e-3 on
the 2-4 rows where a near-tie of a component swaps; ranks swap only among near-ties (stored scores
within 8e-4 relative). Most rows stay within 1e-5 relative (at least 81% of every column).

So :func:`compare` checks each score column on two levels, with NaN in the same rows:

* the bulk: at least :data:`MIN_SHARE` of its rows within ``RTOL``/``ATOL`` (1e-5 relative): any
  change of the maths (another k, formula, normalisation or seed; or every value scaled by
  1 + 1e-3) moves nearly every row by more and fails;
* every row within ``LOOSE_RTOL``/``ATOL`` (1e-2 relative): no single row may move far;

and each rank column with :func:`ranks_agree`: equal, except rows swapped among stored scores tied
within that per-row bound.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

import numpy as np

from clipguard.detect import Scan, ScanConfig

STORE = Path(__file__).parent / "data" / "score_fingerprint.npz"
K = 8
MODES = {
    "global": dict(reference="global"),
    "batch": dict(reference="batch", batch_size=200),
    "reference": dict(reference="reference", reference_size=300, index="flat"),
    "multi_reference": dict(reference="multi_reference", reference_size=256, n_references=3,
                            index="flat"),
    "ivf": dict(reference="reference", reference_size=500, index="ivf", nlist=8, nprobe=2),
}
RTOL = 1e-5
"""Relative tolerance of the bulk of a score column."""
ATOL = 1e-6
"""Absolute tolerance of both levels (scores near zero)."""
MIN_SHARE = 0.5
"""Share of the rows of a score column that must lie within ``RTOL`` (measured: >= 0.81)."""
LOOSE_RTOL = 1e-2
"""Relative tolerance of every row of a score column, and of the ties that may swap ranks."""


def fixed_data(n: int = 800, d: int = 24, n_poison: int = 24, seed: int = 0):
    """Clustered image/caption embeddings with a tight poisoned cluster and templated captions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d))
    cls = rng.integers(0, 8, n)
    image = centres[cls] + 0.6 * rng.normal(size=(n, d))
    text = centres[cls] + 0.4 * rng.normal(size=(n, d))
    poisoned = np.zeros(n, dtype=bool)
    poisoned[rng.choice(n, n_poison, replace=False)] = True
    trigger = rng.normal(size=d)
    image[poisoned] = 0.3 * image[poisoned] + 2.0 * trigger + 0.1 * rng.normal(size=(n_poison, d))
    text[poisoned] = centres[0] + 0.2 * rng.normal(size=(n_poison, d))
    words = ["circle", "square", "star", "ring", "cross", "heart", "moon", "arrow"]
    templates = ["a photo of a {}", "a drawing of a {}", "a {} on a background", "the {}"]
    captions = [templates[rng.integers(0, 4)].format(words[c]) + f" {rng.integers(0, 50)}"
                for c in cls]
    for i in np.flatnonzero(poisoned):
        captions[i] = "a photo of a circle"
    return image.astype(np.float32), text.astype(np.float32), captions, poisoned


def values(modes: Mapping[str, dict] = MODES, k: int = K) -> dict[str, np.ndarray]:
    """``{"<mode>/<column>": (N,) values}``: every ``*_score`` (float64) and ``*_rank`` (int64)
    column of the fixed scan in each mode."""
    image, text, captions, poisoned = fixed_data()
    out: dict[str, np.ndarray] = {}
    for mode, options in modes.items():
        scan = Scan(image, text, captions=captions, ground_truth=poisoned)
        scan.find_suspects(config=ScanConfig(k=k, seed=3, device="cpu", **options))
        table = scan.scores
        for c in sorted(table.columns):
            if c.endswith("_score"):
                out[f"{mode}/{c}"] = table[c].to_numpy(np.float64)
            elif c.endswith("_rank"):
                out[f"{mode}/{c}"] = table[c].to_numpy(np.int64)
    return out


def write(vals: Mapping[str, np.ndarray], path: Path = STORE) -> int:
    """Store ``vals`` compressed (ranks as int16); returns the file size in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    packed = {key: (v.astype(np.int16) if key.endswith("_rank") else v) for key, v in vals.items()}
    assert all(np.array_equal(packed[key], v) for key, v in vals.items())
    np.savez_compressed(path, **packed)
    return path.stat().st_size


def load(path: Path = STORE) -> dict[str, np.ndarray]:
    """The stored values (ranks back as int64)."""
    with np.load(path) as z:
        return {key: (z[key].astype(np.int64) if key.endswith("_rank") else z[key])
                for key in z.files}


def ranks_agree(now_rank: np.ndarray, stored_rank: np.ndarray, stored_score: np.ndarray,
                rtol: float, atol: float) -> np.ndarray:
    """(N,) bool: row i agrees when its rank is unchanged, or when the row that held its new rank
    had a stored score equal to its own within ``rtol``/``atol`` (a swap among near-ties).

    Ranks are 1..N (1 = highest score). All False when ``now_rank`` is not such a permutation.
    """
    now_rank, stored_rank = np.asarray(now_rank), np.asarray(stored_rank)
    stored_score = np.asarray(stored_score, dtype=np.float64)
    n = len(stored_rank)
    if now_rank.shape != (n,) or not np.array_equal(np.sort(now_rank), np.arange(1, n + 1)):
        return np.zeros(n, dtype=bool)
    by_rank = np.empty(n)
    by_rank[stored_rank - 1] = stored_score
    held = by_rank[now_rank - 1]  # stored score of the row that held each row's new rank
    return (now_rank == stored_rank) | np.isclose(held, stored_score, rtol=rtol, atol=atol,
                                                  equal_nan=True)


def score_problems(name: str, now: np.ndarray, stored: np.ndarray) -> list[str]:
    """Why the score column ``name`` (``"mode:column"``) differs from the stored one, or []."""
    if now.shape != stored.shape:
        return [f"{name}: shape {now.shape}, stored {stored.shape}"]
    nan = np.isnan(stored)
    if not np.array_equal(np.isnan(now), nan):
        return [f"{name}: NaN in rows {np.flatnonzero(np.isnan(now) != nan)[:5].tolist()} "
                "(now or stored, not both)"]
    diff = np.abs(now[~nan] - stored[~nan])
    if diff.size == 0 or diff.max() == 0:
        return []
    size = np.abs(stored[~nan])
    i = int(np.argmax(diff / (ATOL + size)))
    worst = (f"max |diff| {diff.max():.3g}; max relative {diff[i] / (ATOL + size[i]):.3g} "
             f"(now {now[~nan][i]:.9g}, stored {stored[~nan][i]:.9g})")
    problems = []
    share = float(np.mean(diff <= ATOL + RTOL * size))
    if share < MIN_SHARE:
        problems.append(f"{name}: only {share:.0%} of the rows within rtol={RTOL:g} "
                        f"(need {MIN_SHARE:.0%}); {worst}")
    if (diff > ATOL + LOOSE_RTOL * size).any():
        problems.append(f"{name}: {int((diff > ATOL + LOOSE_RTOL * size).sum())} rows beyond "
                        f"rtol={LOOSE_RTOL:g}; {worst}")
    return problems


def compare(now: Mapping[str, np.ndarray], stored: Mapping[str, np.ndarray]) -> list[str]:
    """Problems (one line each, naming ``mode:column``) of ``now`` against ``stored``; [] = agree.

    Every stored column must be in ``now`` (new columns are allowed); scores as the module says;
    ranks by :func:`ranks_agree` with the per-row bound ``LOOSE_RTOL``/``ATOL``.
    """
    problems = []
    for key in sorted(stored):
        name = key.replace("/", ":", 1)
        if key not in now:
            problems.append(f"{name}: missing")
        elif key.endswith("_score"):
            problems += score_problems(name, np.asarray(now[key], np.float64), stored[key])
        else:
            score = stored.get(key[: -len("_rank")] + "_score")
            if np.array_equal(now[key], stored[key]):
                continue
            if score is None:
                problems.append(f"{name}: ranks changed (no stored score to tell ties)")
                continue
            bad = ~ranks_agree(now[key], stored[key], score, LOOSE_RTOL, ATOL)
            if bad.any():
                rows = np.flatnonzero(bad)
                problems.append(f"{name}: {len(rows)} rows ranked differently beyond near-ties, "
                                f"e.g. row {rows[0]} rank {now[key][rows[0]]} "
                                f"(stored {stored[key][rows[0]]})")
    return problems


if __name__ == "__main__":
    vals = values()
    if "--write" in sys.argv:
        size = write(vals)
        print(f"wrote {STORE} ({size} bytes, {len(vals)} columns)")
    else:
        problems = compare(vals, load())
        print("\n".join(problems) or "the scores agree with the stored ones")

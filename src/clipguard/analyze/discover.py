"""Group the top-scored samples of a scan into clusters and say what each cluster is (issue 12).

The DAO paper read its top-ranked samples by eye and found two things: natural backdoors (hundreds of
near-identical images under one caption) and noisy pairs (placeholder images of expired URLs under
unrelated captions). :func:`discover_clusters` does the reading:

1. take the ``top`` most suspicious samples of one score column (higher = more suspicious);
2. cluster their L2-normalised image embeddings by average-linkage agglomeration with a cosine-similarity
   threshold (deterministic; above ``max_points`` a seeded subsample is clustered and the rest joins the
   cluster of its most similar clustered sample);
3. merge the image clusters that share their dominant caption (:func:`merge_by_caption`): a motif the
   image threshold split apart becomes one cluster again;
3b. look over the WHOLE dataset, whatever the scores, for captions repeated on near-identical images
   (:func:`repeated_captions`: image tightness >= ``image_threshold``, at least ``min_size`` samples); such a
   group is a ``backdoor`` candidate when its size is an outlier among them (``size_index`` >
   ``repeat_index``) or when it covers a top cluster judged a backdoor, else ``duplicates``. A
   natural backdoor is exactly that, and a scan's scores need not put it at the top: on the embedded world a
   model trained with a planted motif ranked none of its 100 copies in the fused top 2 %. A cluster of the
   top samples that is mostly inside such a group is replaced by the group (``by = "caption"``);
4. describe each cluster -- size, share of the dataset, mean score, image tightness (mean cosine to the
   centroid), text tightness, the share holding the most common caption, mean image-text cosine -- and
   give it a kind:

   * ``backdoor`` -- at least ``min_size`` members whose captions agree (same caption for at least
     ``caption_agreement`` of them, or caption embeddings within ``text_tightness`` of their centroid): a
     repeated motif tied to one caption, natural or planted;
   * ``noisy pairs`` -- near-identical images (tightness >= ``image_threshold``) under captions that do not
     agree: one picture, many descriptions (placeholders, stock images);
   * ``duplicates`` -- fewer than ``min_size`` members whose captions agree (copies of one pair);
   * ``mixed`` -- the rest.

   Clusters are ranked by kind in that order, then by size, then by mean score.

Shapes: ``image`` (N, D) and ``text`` (N, D) or None, ``scores`` (N,), ``captions`` and ``ids`` length N.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from clipguard.errors import ConfigError
from clipguard.utils.seeding import rng
from clipguard.utils.validate import check_int, check_real

__all__ = ["KINDS", "DiscoverConfig", "cluster_images", "discover_clusters", "merge_by_caption", "normalise_caption",
           "repeated_captions"]

KINDS = ("backdoor", "noisy pairs", "duplicates", "mixed")
"""Cluster kinds, in ranking order."""


@dataclass(frozen=True)
class DiscoverConfig:
    """Settings of :func:`discover_clusters` (see the module doc for their roles).

    Attributes:
        top: how many of the most suspicious samples to cluster: a share of the dataset in (0, 1) or a count.
        image_threshold: cosine similarity to which average linkage merges image clusters.
        min_size: members a cluster needs to be a ``backdoor`` candidate.
        caption_agreement: captions agree when more than this share holds the most common one.
        text_tightness: mean cosine of caption embeddings to their centroid above which captions agree.
        max_points: most samples clustered exactly (a seeded subsample beyond).
        repeated_captions: also look over the whole dataset for repeated captions on near-identical images
            (:func:`repeated_captions`), whatever their scores.
        repeat_index: a repeated caption whose size index exceeds this is a ``backdoor`` candidate, otherwise
            ``duplicates`` (Neural Cleanse's anomaly threshold, as the audit's verdict).
        seed: draws that subsample.
    """

    top: float = 0.02
    image_threshold: float = 0.9
    min_size: int = 5
    caption_agreement: float = 0.5
    text_tightness: float = 0.95
    max_points: int = 4000
    repeated_captions: bool = True
    repeat_index: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_real("top", self.top, low=0.0, low_open=True)
        if self.top >= 1 and float(self.top) != int(self.top):
            raise ConfigError(f"top={self.top}: give a share in (0, 1) or a whole number of samples")
        check_real("image_threshold", self.image_threshold, low=-1.0, high=1.0)
        check_int("min_size", self.min_size, minimum=2)
        check_real("caption_agreement", self.caption_agreement, low=0.0, high=1.0)
        check_real("text_tightness", self.text_tightness, low=-1.0, high=1.0)
        check_int("max_points", self.max_points, minimum=2)
        check_real("repeat_index", self.repeat_index)

    def n_top(self, n: int) -> int:
        """Samples taken from a dataset of ``n``."""
        return min(n, max(2, int(round(self.top * n)) if self.top < 1 else int(self.top)))


def normalise_caption(caption: str) -> str:
    """Lower case, punctuation removed, runs of spaces collapsed: 'A  Cake!' -> 'a cake'."""
    return " ".join(re.sub(r"[^\w\s]", " ", str(caption).lower()).split())


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_images(image: np.ndarray, *, threshold: float, max_points: int = 4000, seed: int = 0) -> np.ndarray:
    """(N,) int cluster labels, 0..K-1 numbered by first appearance: average linkage on cosine distance, cut
    where the mean similarity between two clusters falls below ``threshold``.

    Above ``max_points`` rows, a seeded subsample of ``max_points`` is clustered and every other row takes the
    label of its most similar subsampled row. Deterministic for a given ``seed``.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    x = _unit(image)
    n = len(x)
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    core = np.sort(rng(seed, "discover-subsample").choice(n, max_points, replace=False)) if n > max_points \
        else np.arange(n)
    dist = np.clip(1.0 - x[core] @ x[core].T, 0.0, 2.0)
    condensed = dist[np.triu_indices(len(core), k=1)]
    raw = fcluster(linkage(condensed, method="average"), t=1.0 - threshold, criterion="distance")
    labels = np.empty(n, dtype=np.int64)
    labels[core] = raw
    if len(core) < n:
        rest = np.setdiff1d(np.arange(n), core)
        labels[rest] = raw[np.argmax(x[rest] @ x[core].T, axis=1)]
    _, first = np.unique(labels, return_index=True)
    order = {lab: k for k, lab in enumerate(labels[np.sort(first)])}
    return np.array([order[lab] for lab in labels], dtype=np.int64)


def _tightness(x: np.ndarray | None) -> float:
    """Mean cosine of the rows of ``x`` to their normalised centroid (NaN without rows or ``x``)."""
    if x is None or len(x) == 0:
        return float("nan")
    u = _unit(x)
    c = u.mean(0)
    return float((u @ (c / max(np.linalg.norm(c), 1e-12))).mean())


def _mean_score(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _kind(size: int, agree: bool, img_tight: float, cfg: DiscoverConfig) -> str:
    if agree:
        return "backdoor" if size >= cfg.min_size else "duplicates"
    return "noisy pairs" if img_tight >= cfg.image_threshold else "mixed"


def _describe(rows: np.ndarray, by: str, image: np.ndarray, text: np.ndarray | None, captions: np.ndarray,
              ids: np.ndarray, scores: np.ndarray, cfg: DiscoverConfig) -> dict:
    """One table row for the members ``rows`` (indices into the whole dataset)."""
    caps = pd.Series([normalise_caption(c) for c in captions[rows]])
    counts = caps.value_counts()
    top_norm = counts.index[0]
    name = next(str(c) for c, k in zip(captions[rows], caps) if k == top_norm)
    agreement = float(counts.iloc[0] / len(rows))
    t_tight = _tightness(None if text is None else text[rows])
    i_tight = _tightness(image[rows])
    pair = float("nan") if text is None else float((_unit(image[rows]) * _unit(text[rows])).sum(1).mean())
    agree = agreement > cfg.caption_agreement or (not np.isnan(t_tight) and t_tight >= cfg.text_tightness)
    return {"kind": _kind(len(rows), agree, i_tight, cfg), "by": by, "name": name, "size": int(len(rows)),
            "share": len(rows) / len(image), "mean_score": _mean_score(scores[rows]),
            "image_tightness": i_tight, "text_tightness": t_tight, "caption_agreement": agreement,
            "n_captions": int(len(counts)), "pair_cosine": pair, "member_ids": [str(i) for i in ids[rows]]}


def repeated_captions(image: np.ndarray, captions: Sequence[str], *, min_size: int,
                      threshold: float) -> list[tuple[np.ndarray, float]]:
    """Captions repeated on near-identical images over the WHOLE dataset: ``(members, size_index)`` for every
    normalised caption held by at least ``min_size`` samples whose images have a mean cosine to their centroid
    >= ``threshold``. ``size_index`` is the group's anomaly index of size: the robust z-score of its log size
    among all such groups of two or more (median and 1.4826 x MAD, as :mod:`~clipguard.analyze.verdict`).

    A repeated motif under one caption is what a natural backdoor is; a precise caption ("an amber circle
    shape") also sits on near-identical images, but on a handful of them, hence the size index.
    O(N): a group-by and one centroid per group. Sorted by size, largest first (ties by caption)."""
    norm = pd.Series([normalise_caption(c) for c in captions])
    tight = [(len(idx), cap, np.asarray(idx)) for cap, idx in sorted(norm.groupby(norm).indices.items())
             if len(idx) >= 2 and _tightness(image[idx]) >= threshold]
    if not tight:
        return []
    logs = np.log([size for size, _, _ in tight])
    med = float(np.median(logs))
    mad = 1.4826 * float(np.median(np.abs(logs - med)))
    index = (logs - med) / mad if mad > 0 else np.where(logs > med, np.inf, 0.0)
    order = sorted(range(len(tight)), key=lambda i: (-tight[i][0], tight[i][1]))
    return [(tight[i][2], float(index[i])) for i in order if tight[i][0] >= min_size]


def merge_by_caption(labels: np.ndarray, captions: Sequence[str], agreement: float) -> np.ndarray:
    """Merge the image clusters (two or more members) whose most common normalised caption is the same and
    held by more than ``agreement`` of their members: one motif split by the image threshold, or one caption
    over several near-duplicate groups. Returns new (N,) labels numbered by first appearance."""
    norm = np.array([normalise_caption(c) for c in captions], dtype=object)
    key = {}
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if len(idx) > 1:
            caps, counts = np.unique(norm[idx], return_counts=True)
            if counts.max() > agreement * len(idx):
                key[k] = caps[np.argmax(counts)]
    first: dict[object, int] = {}
    merged = np.array([first.setdefault(("caption", key[k]) if k in key else ("image", k), len(first))
                       for k in labels], dtype=np.int64)
    return merged


def discover_clusters(image: np.ndarray, scores: np.ndarray, captions: Sequence[str], ids: Sequence[str], *,
                      text: np.ndarray | None = None, config: DiscoverConfig = DiscoverConfig()) -> pd.DataFrame:
    """Clusters of the most suspicious samples, ranked (see the module doc).

    Args:
        image: (N, D) image embeddings of the whole dataset.
        scores: (N,) suspicion scores, higher = more suspicious (NaN = least suspicious).
        captions, ids: length N.
        text: (N, D) caption embeddings, or None (text tightness and pair cosine are then NaN).

    Returns:
        One row per cluster of two or more samples, columns ``rank`` (1 = first), ``kind``, ``by`` ("image",
        "image+caption" when merged, "caption" for a repeated caption), ``name`` (the most common caption),
        ``size``, ``share`` (of the whole dataset), ``mean_score``, ``image_tightness``, ``text_tightness``,
        ``caption_agreement``, ``n_captions``, ``pair_cosine``, ``size_index`` (repeated captions only, else
        NaN), ``member_ids``. ``attrs`` counts the samples taken (``n_top``), those left alone
        (``n_singletons``) and the repeated captions (``n_repeated_captions``).

    Raises:
        ConfigError: inputs of different lengths, or an empty dataset.
    """
    n = len(image)
    if n == 0:
        raise ConfigError("discover needs a scanned dataset with at least one sample; the scan is empty")
    if not (len(scores) == len(captions) == len(ids) == n) or (text is not None and len(text) != n):
        raise ConfigError(f"discover: image ({n}), scores ({len(scores)}), captions ({len(captions)}), ids "
                          f"({len(ids)}) and text must have one row per sample")
    raw = np.asarray(scores, dtype=np.float64)
    top = np.argsort(-np.nan_to_num(raw, nan=-np.inf), kind="stable")[: config.n_top(n)]
    image, caps = np.asarray(image), np.asarray(captions, dtype=object)
    text, idv = None if text is None else np.asarray(text), np.asarray(ids, dtype=object)
    by_image = cluster_images(image[top], threshold=config.image_threshold, max_points=config.max_points,
                              seed=config.seed)
    labels = merge_by_caption(by_image, caps[top], config.caption_agreement)
    members = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    found = [(top[m], "image" if len(np.unique(by_image[m])) == 1 else "image+caption") for m in members if len(m) > 1]
    groups = repeated_captions(image, caps, min_size=config.min_size, threshold=config.image_threshold) \
        if config.repeated_captions else []
    covered = np.zeros(n, dtype=bool)
    for g, _ in groups:
        covered[g] = True
    top_rows = [(m, _describe(m, by, image, text, caps, idv, raw, config)) for m, by in found]
    rows = [row for m, row in top_rows if covered[m].mean() < 0.5]
    flagged = np.zeros(n, dtype=bool)  # members of top clusters judged backdoor that a repeated caption covers
    for m, row in top_rows:
        if covered[m].mean() >= 0.5 and row["kind"] == "backdoor":
            flagged[m] = True
    for g, index in groups:
        row = _describe(g, "caption", image, text, caps, idv, raw, config)
        backdoor = index > config.repeat_index or flagged[g].any()
        rows.append({**row, "kind": "backdoor" if backdoor else "duplicates", "size_index": index})
    table = pd.DataFrame(rows, columns=["kind", "by", "name", "size", "share", "mean_score", "image_tightness",
                                        "text_tightness", "caption_agreement", "n_captions", "pair_cosine",
                                        "size_index", "member_ids"])
    if len(table):
        table["_k"] = table["kind"].map(KINDS.index)
        table = table.sort_values(["_k", "size", "mean_score"], ascending=[True, False, False], kind="stable")
        table = table.drop(columns="_k").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    table.attrs.update({"n_top": int(len(top)), "n_singletons": int(sum(len(m) == 1 for m in members)),
                        "n_repeated_captions": len(groups),
                        "config": asdict(config)})
    return table

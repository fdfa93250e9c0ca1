"""Which photos of an image set to use: one face per photo, and the photos to drop (with reasons).

Pure functions on descriptors and residuals, used by ``image_set.reconstruct_identity``:
``select_faces`` (one face per photo, the one most consistent with the other photos; photos of
another person) and ``outlier_reasons`` (failed landmarks; photos the shared identity cannot explain).
"""
from __future__ import annotations

import numpy as np
import torch


def select_faces(descriptors: list[list[np.ndarray | None]], sizes: list[list[float]],
                 threshold: float) -> tuple[dict[int, int], dict[int, str]]:
    """Pick one face per photo and find the photos of another person.

    descriptors[p][f]: face f of photo p (None without a descriptor); sizes[p][f]: its size.
    Returns ({photo: chosen face}, {photo: reason it is dropped}).  A face's support is the number
    of other photos holding a face within ``threshold`` of it; each photo keeps its best-supported
    face (then the smallest median distance, then the largest).  The kept faces are linked when
    within ``threshold``; photos outside the largest linked group (ties: the group of the earliest
    photo) show someone else."""
    count = len(descriptors)
    if count == 0:
        return {}, {}
    if any(d is None for faces in descriptors for d in faces):
        return {p: int(np.argmax(sizes[p])) for p in range(count)}, {}
    flat = [(p, f) for p in range(count) for f in range(len(descriptors[p]))]
    vectors = np.stack([descriptors[p][f] for p, f in flat])
    distance = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1)
    owner = np.array([p for p, _ in flat])
    chosen = {}
    for p in range(count):
        best = None
        for i in np.flatnonzero(owner == p):
            nearest = [distance[i, owner == q].min() for q in range(count) if q != p]
            support = sum(d < threshold for d in nearest)
            median = float(np.median(nearest)) if nearest else 0.0
            key = (-support, median, -sizes[p][flat[i][1]])
            if best is None or key < best[0]:
                best = (key, flat[i][1], i)
        chosen[p] = best
    index = np.array([chosen[p][2] for p in range(count)])
    linked = distance[np.ix_(index, index)] < threshold
    component = _components(linked)
    sizes_of = np.bincount(component)
    keep = int(np.argmax(sizes_of))  # argmax takes the first maximum: the group of the earliest photo
    members = component == keep
    rejected = {}
    for p in np.flatnonzero(~members):
        gap = float(np.median(distance[index[p], index[members]]))
        rejected[int(p)] = (f"another person: face descriptor distance {gap:.2f} to the set "
                            f"(same person below {threshold})")
    return {p: chosen[p][1] for p in range(count) if members[p]}, rejected


def _components(linked: np.ndarray) -> np.ndarray:
    """Connected-component labels of a symmetric boolean adjacency matrix, numbered in order."""
    label = -np.ones(len(linked), dtype=int)
    current = 0
    for start in range(len(linked)):
        if label[start] >= 0:
            continue
        stack = [start]
        label[start] = current
        while stack:
            node = stack.pop()
            for other in np.flatnonzero(linked[node] & (label < 0)):
                label[other] = current
                stack.append(other)
        current += 1
    return label


def outlier_reasons(single_rms: torch.Tensor, excess: torch.Tensor, max_rms: float, max_excess: float) -> dict[int, str]:
    """Photos whose landmarks failed (their own fit is bad) or that the shared identity cannot
    explain (their excess residual beyond ``max_excess`` and beyond 4 robust deviations of the set)."""
    reasons = {}
    median = float(excess.median())
    spread = 1.4826 * float((excess - median).abs().median())
    limit = max(max_excess, median + 4 * spread)
    for i, (own, extra) in enumerate(zip(single_rms.tolist(), excess.tolist())):
        if own > max_rms:
            reasons[i] = f"landmark fit failed: RMS residual {own:.1f} crop px > {max_rms}"
        elif len(excess) > 2 and extra > limit:
            reasons[i] = (f"inconsistent with the shared identity: {extra:.1f} crop px worse than its own fit "
                          f"(limit {limit:.1f})")
    return reasons

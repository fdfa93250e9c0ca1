"""Greedy non-maximum suppression with torchvision's semantics, vectorised (CPU and CUDA).

Boxes are (N, 4) ``x0, y0, x1, y1`` with x0 <= x1, y0 <= y1; area = (x1 - x0) * (y1 - y0), with no
"+1" (continuous coordinates).  ``nms`` keeps the highest-scoring box, drops every remaining box
whose overlap with it is strictly greater than the threshold, and repeats; it returns the kept
indices as int64 sorted by decreasing score, like ``torchvision.ops.nms``.

Overlap is intersection over union by default; ``overlap="min"`` divides by the smaller of the two
areas instead (MTCNN's final stage uses it so that a box nested inside a larger one is dropped).

Why no Python loop over boxes: greedy NMS is the unique solution of
``keep[i] = not any(keep[j] and overlap[j, i] > t for j ranked before i)``, so iterating that
equation from "keep all" reaches it exactly; each sweep is one matrix-vector product and the number
of sweeps is the length of the longest suppression chain (at most 6 on MTCNN's proposals for our
photos), not the number of boxes.  Boxes are processed in blocks of ``BLOCK`` by rank, so the
overlap matrices stay small however many boxes there are.

Degenerate boxes (zero area) give 0/0 = NaN overlaps, which compare False: they never suppress or
get suppressed, as in torchvision.

On CPU, float64 boxes (MTCNN's) take a plain greedy loop compiled with numba instead: the same
comparisons in the same float64 arithmetic, so the same boxes are kept, without the (N, N)
temporaries (8x faster on 600 proposals in 10 pyramid levels, MTCNN's first NMS).
"""
from __future__ import annotations

import numba
import numpy as np
import torch

OVERLAPS = ("iou", "min")


def _overlap_between(a: torch.Tensor, b: torch.Tensor, overlap: str) -> torch.Tensor:
    """(len(a), len(b)) IoU, or intersection over the smaller area, of every pair (a_i, b_j)."""
    area_a, area_b, inter = _areas_and_intersections(a, b, overlap)
    if overlap == "iou":
        return inter / (area_a[:, None] + area_b[None, :] - inter)
    return inter / torch.minimum(area_a[:, None], area_b[None, :])


def pairwise_overlap(boxes: torch.Tensor, overlap: str = "iou") -> torch.Tensor:
    """(N, N) IoU (or intersection over the smaller area) of every pair of boxes."""
    return _overlap_between(boxes, boxes, overlap)


def _areas_and_intersections(a: torch.Tensor, b: torch.Tensor, overlap: str):
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    iw = torch.minimum(a[:, None, 2], b[None, :, 2]).sub_(torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    ih = torch.minimum(a[:, None, 3], b[None, :, 3]).sub_(torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    return area_a, area_b, iw.mul_(ih)


def _suppresses(a: torch.Tensor, b: torch.Tensor, threshold: float, overlap: str) -> torch.Tensor:
    """(len(a), len(b)) bool: overlap(a_i, b_j) > threshold, without the division.

    inter / union > t  <=>  inter (1 + t) > t (area_a + area_b) for union > 0; degenerate pairs
    (0 / 0 in the quotient) compare False either way."""
    area_a, area_b, inter = _areas_and_intersections(a, b, overlap)
    if overlap == "iou":
        return inter.mul_(1 + threshold) > (area_a[:, None] + area_b[None, :]).mul_(threshold)
    return inter > torch.minimum(area_a[:, None], area_b[None, :]).mul_(threshold)


def _greedy_keep(suppresses: torch.Tensor) -> torch.Tensor:
    """Solve keep[i] = not any(keep[j] & suppresses[j, i]) for a strictly upper-triangular relation."""
    keep = torch.ones(suppresses.shape[0], dtype=torch.bool, device=suppresses.device)
    weights = suppresses.to(torch.float32)
    while True:
        new_keep = (keep.to(torch.float32) @ weights) == 0
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep


#: Boxes per block: the overlap matrices are at most (kept + BLOCK) x BLOCK, so memory stays bounded
#: for the many thousands of proposals a large photo can give.
BLOCK = 2048


@numba.njit(cache=True)
def _greedy_nb(ranked, threshold, use_min):  # pragma: no cover - compiled
    """keep (N,) bool for boxes ranked by score: ``_suppresses``'s test, box by box."""
    n = ranked.shape[0]
    keep = np.zeros(n, np.bool_)
    suppressed = np.zeros(n, np.bool_)
    area = (ranked[:, 2] - ranked[:, 0]) * (ranked[:, 3] - ranked[:, 1])
    for i in range(n):
        if suppressed[i]:
            continue
        keep[i] = True
        for j in range(i + 1, n):
            if suppressed[j]:
                continue
            iw = max(min(ranked[i, 2], ranked[j, 2]) - max(ranked[i, 0], ranked[j, 0]), 0.0)
            ih = max(min(ranked[i, 3], ranked[j, 3]) - max(ranked[i, 1], ranked[j, 1]), 0.0)
            inter = iw * ih
            if use_min:
                suppressed[j] = inter > min(area[i], area[j]) * threshold
            else:
                suppressed[j] = inter * (1 + threshold) > (area[i] + area[j]) * threshold
    return keep


def _use_numba(boxes: torch.Tensor) -> bool:
    return boxes.device.type == "cpu" and boxes.dtype == torch.float64


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, overlap: str = "iou") -> torch.Tensor:
    """Indices (int64) of the boxes greedy NMS keeps, by decreasing score."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"expected boxes (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap must be one of {OVERLAPS}, got {overlap!r}")
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = boxes[order]
    if _use_numba(boxes):
        keep = _greedy_nb(ranked.contiguous().numpy(), float(iou_threshold), overlap == "min")
        return order[torch.from_numpy(keep)]
    kept_parts, kept_boxes = [], ranked[:0]
    for start in range(0, ranked.shape[0], BLOCK):
        block = ranked[start:start + BLOCK]
        # boxes already suppressed by a kept box of an earlier block can no longer suppress anyone
        alive = ~_suppresses(kept_boxes, block, iou_threshold, overlap).any(dim=0)
        over = torch.triu(_suppresses(block, block, iou_threshold, overlap), diagonal=1) & alive[:, None]
        keep = _greedy_keep(over) & alive
        kept_parts.append(order[start:start + BLOCK][keep])
        kept_boxes = torch.cat([kept_boxes, block[keep]])
    if not kept_parts:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    return torch.cat(kept_parts)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float,
                overlap: str = "iou") -> torch.Tensor:
    """NMS within each category of ``idxs`` (boxes of different categories never suppress each other).

    Returns int64 indices by decreasing score.  Whole categories are gathered into groups of about
    ``BLOCK`` boxes, and each group runs one NMS with torchvision's offset trick: category k's boxes
    are shifted by k x (coordinate span + 1), so that boxes of different categories cannot overlap.
    Grouping keeps the cost near the sum of the squared category sizes rather than the square of
    the total (MTCNN's first stage has a category per pyramid level and image).
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    groups = _category_groups(idxs)
    parts = [subset[_offset_nms(boxes[subset], scores[subset], idxs[subset], iou_threshold, overlap)]
             for subset in groups]
    keep = torch.cat(parts)
    if len(parts) > 1:
        keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    return keep


def _offset_nms(boxes, scores, idxs, iou_threshold, overlap) -> torch.Tensor:
    span = boxes.max() - torch.clamp(boxes.min(), max=0) + 1
    return nms(boxes + (idxs.to(boxes.dtype) * span)[:, None], scores, iou_threshold, overlap)


def _category_groups(idxs: torch.Tensor) -> list[torch.Tensor]:
    """Indices of the boxes, split into groups of whole categories with about BLOCK boxes each."""
    if idxs.shape[0] <= BLOCK:
        return [torch.arange(idxs.shape[0], device=idxs.device)]
    order = torch.argsort(idxs, stable=True)
    counts = torch.unique_consecutive(idxs[order], return_counts=True)[1].tolist()
    groups, start, size = [], 0, 0
    for count in counts:
        if size and size + count > BLOCK:
            groups.append(order[start:start + size])
            start, size = start + size, 0
        size += count
    groups.append(order[start:start + size])
    return groups

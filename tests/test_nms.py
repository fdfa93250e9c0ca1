"""NMS against a naive greedy oracle (plain Python loops), torchvision semantics."""
from __future__ import annotations

import pytest
import torch

from deep3dface.detect import nms as nms_module
from deep3dface.detect.nms import batched_nms, nms, pairwise_overlap


def _overlap(a, b, kind):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
    denom = area_a + area_b - inter if kind == "iou" else min(area_a, area_b)
    return inter / denom if denom > 0 else float("nan")


def naive_nms(boxes, scores, threshold, kind="iou", categories=None):
    """Greedy NMS, one box at a time, in order of decreasing score (ties: lower index first)."""
    boxes, scores = boxes.tolist(), scores.tolist()
    categories = [0] * len(boxes) if categories is None else categories.tolist()
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(categories[i] != categories[j] or not _overlap(boxes[i], boxes[j], kind) > threshold for j in kept):
            kept.append(i)
    return kept


def random_boxes(n, generator, dtype=torch.float64, spread=100.0, offset=0.0):
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * spread + offset
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 30 + 0.5
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("kind", ["iou", "min"])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_nms_matches_naive_oracle(kind, threshold, dtype):
    generator = torch.Generator().manual_seed(7)
    for n in (1, 2, 17, 250):
        boxes = random_boxes(n, generator, dtype)
        scores = torch.rand(n, generator=generator, dtype=dtype)
        keep = nms(boxes, scores, threshold, overlap=kind)
        assert keep.dtype == torch.int64
        assert keep.tolist() == naive_nms(boxes, scores, threshold, kind)


def test_blocks_give_the_same_answer(monkeypatch):
    generator = torch.Generator().manual_seed(3)
    boxes = random_boxes(300, generator, spread=60.0)
    scores = torch.rand(300, generator=generator)
    expected = naive_nms(boxes, scores, 0.4)
    monkeypatch.setattr(nms_module, "_use_numba", lambda boxes: False)  # the torch path has the blocks
    for block in (1, 7, 64, 4096):
        monkeypatch.setattr(nms_module, "BLOCK", block)
        assert nms(boxes, scores, 0.4).tolist() == expected


@pytest.mark.parametrize("kind", ["iou", "min"])
def test_numba_loop_keeps_what_the_torch_path_keeps(monkeypatch, kind):
    """Same boxes, exactly: integer-valued boxes (MTCNN's) with ties, duplicates and empty boxes."""
    generator = torch.Generator().manual_seed(11)
    boxes = torch.cat([random_boxes(400, generator, spread=80.0).round(), torch.tensor([[5.0, 5, 5, 9]] * 3)])
    boxes = torch.cat([boxes, boxes[:20]])
    scores = torch.rand(boxes.shape[0], generator=generator).round(decimals=2)
    categories = torch.randint(0, 4, (boxes.shape[0],), generator=generator)
    fast = [nms(boxes, scores, t, kind) for t in (0.0, 0.5, 0.7)], batched_nms(boxes, scores, categories, 0.5, kind)
    monkeypatch.setattr(nms_module, "_use_numba", lambda boxes: False)
    slow = [nms(boxes, scores, t, kind) for t in (0.0, 0.5, 0.7)], batched_nms(boxes, scores, categories, 0.5, kind)
    assert [k.tolist() for k in fast[0]] == [k.tolist() for k in slow[0]]
    assert fast[1].tolist() == slow[1].tolist()


def test_kept_indices_are_sorted_by_decreasing_score_and_ties_are_stable():
    boxes = torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 0, 210, 10], [0, 1, 10, 11]])
    scores = torch.tensor([0.5, 0.9, 0.5, 0.7])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]  # box 0 overlaps box 3 (IoU 0.82)
    assert nms(boxes, scores, 0.9).tolist() == [1, 3, 0, 2]


def test_overlap_definitions():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [2.0, 2.0, 4.0, 4.0]])
    iou = pairwise_overlap(a)
    assert iou[0, 1].item() == pytest.approx(50 / 150)  # no "+1": areas are (x1-x0)(y1-y0)
    assert pairwise_overlap(a, "min")[0, 2].item() == pytest.approx(1.0)  # nested box
    with pytest.raises(ValueError):
        pairwise_overlap(a, "dice")


def test_empty_and_bad_input():
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    assert batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)
    with pytest.raises(ValueError):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)


@pytest.mark.parametrize("block", [4096, 40])
def test_batched_nms_never_mixes_categories(monkeypatch, block):
    monkeypatch.setattr(nms_module, "BLOCK", block)  # small blocks exercise the category grouping
    generator = torch.Generator().manual_seed(11)
    boxes = random_boxes(200, generator, spread=40.0, offset=-30.0)  # negative coordinates too
    scores = torch.rand(200, generator=generator)
    categories = torch.randint(0, 6, (200,), generator=generator)
    keep = batched_nms(boxes, scores, categories, 0.3)
    expected = naive_nms(boxes, scores, 0.3, categories=categories)
    assert keep.tolist() == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(5)
    boxes = random_boxes(500, generator)
    scores = torch.rand(500, generator=generator)
    categories = torch.randint(0, 3, (500,), generator=generator)
    cpu = batched_nms(boxes, scores, categories, 0.5)
    gpu = batched_nms(boxes.cuda(), scores.cuda(), categories.cuda(), 0.5)
    assert gpu.device.type == "cuda" and gpu.cpu().tolist() == cpu.tolist()

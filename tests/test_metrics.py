"""Confusion-matrix metrics: golden values from hand-computed matrices, ignore/absent-class
handling, logits vs ids, accumulation, DDP reduction over 2 gloo processes, the PNG plot."""

from __future__ import annotations

import datetime
import math

import cv2
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lix.metrics import ConfusionMatrix, plot_confusion, scores_from_confusion
from pipeline.atomic import json_safe

# --------------------------------------------------------------------------- hand-made case
# 4 classes, rows = ground truth, columns = prediction:
#   class 0: TP 3, FP 1 (a gt-1 pixel), FN 1 (predicted 1)
#   class 1: TP 2, FP 1 (a gt-0 pixel), FN 2 (one predicted 0, one predicted 2)
#   class 2: never in the ground truth, predicted once       -> IoU 0, F1 0, counts in the means
#   class 3: neither in the ground truth nor predicted       -> NaN, excluded from the means
HAND = [[3, 1, 0, 0],
        [1, 2, 1, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0]]
HAND_IOU = [3 / 5, 2 / 5, 0.0, math.nan]                 # TP / (TP + FP + FN)
HAND_F1 = [6 / 8, 4 / 7, 0.0, math.nan]                  # 2TP / (2TP + FP + FN)
HAND_MIOU = (3 / 5 + 2 / 5 + 0.0) / 3                    # = 1/3, over the 3 defined classes
HAND_MFSC = (6 / 8 + 4 / 7 + 0.0) / 3                    # = 37/84
HAND_FWIOU = 4 / 8 * 3 / 5 + 4 / 8 * 2 / 5               # weights: gt pixels 4, 4, 0, 0 of 8
HAND_FWFSC = 4 / 8 * 6 / 8 + 4 / 8 * 4 / 7               # = 37/56
HAND_ACC = 5 / 8
# The same matrix as (target, prediction) pixel pairs.
HAND_PIXELS = [(0, 0)] * 3 + [(0, 1)] + [(1, 0)] + [(1, 1)] * 2 + [(1, 2)]


def assert_scores(s: dict, iou, f1, miou, mfsc, fwiou, fwfsc, acc, n_pixels) -> None:
    np.testing.assert_allclose(s["per_class_iou"], iou, rtol=0, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(s["per_class_f1"], f1, rtol=0, atol=1e-12, equal_nan=True)
    for key, want in dict(miou=miou, mfsc=mfsc, fwiou=fwiou, fwfsc=fwfsc, pixel_acc=acc).items():
        assert s[key] == pytest.approx(want, abs=1e-12, nan_ok=True), key
    assert s["n_pixels"] == n_pixels


def pixels_to_tensors(pairs, shape=None):
    t = torch.tensor([a for a, _ in pairs], dtype=torch.int64)
    p = torch.tensor([b for _, b in pairs], dtype=torch.int64)
    shape = shape or (1, 1, len(pairs))
    return p.reshape(shape), t.reshape(shape)


def loop_confusion(pred: np.ndarray, target: np.ndarray, n: int, ignore: int = 255) -> np.ndarray:
    """Reference: one pixel at a time."""
    m = np.zeros((n, n), np.int64)
    for t, p in zip(target.ravel().tolist(), pred.ravel().tolist()):
        if t != ignore:
            m[t, p] += 1
    return m


def loop_scores(m: np.ndarray) -> dict:
    """Reference scores with explicit loops over classes (no vectorised helper)."""
    n = m.shape[0]
    total = sum(int(m[i, j]) for i in range(n) for j in range(n))
    iou, f1, gt = [], [], []
    for c in range(n):
        tp = int(m[c, c])
        fn = sum(int(m[c, j]) for j in range(n)) - tp
        fp = sum(int(m[i, c]) for i in range(n)) - tp
        gt.append(tp + fn)
        if tp + fp + fn == 0:
            iou.append(math.nan)
            f1.append(math.nan)
        else:
            iou.append(tp / (tp + fp + fn))
            f1.append(2 * tp / (2 * tp + fp + fn))
    defined = [c for c in range(n) if not math.isnan(iou[c])]
    return dict(
        iou=iou, f1=f1,
        miou=sum(iou[c] for c in defined) / len(defined) if defined else math.nan,
        mfsc=sum(f1[c] for c in defined) / len(defined) if defined else math.nan,
        fwiou=sum(gt[c] / total * iou[c] for c in range(n) if gt[c]) if total else math.nan,
        fwfsc=sum(gt[c] / total * f1[c] for c in range(n) if gt[c]) if total else math.nan,
        acc=sum(int(m[c, c]) for c in range(n)) / total if total else math.nan,
        n_pixels=total,
    )


def random_batch(seed: int, n_img=4, n_classes=5, h=6, w=7, ignore_share=0.2):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, n_classes, (n_img, h, w), generator=g)
    target[torch.rand((n_img, h, w), generator=g) < ignore_share] = 255
    logits = torch.randn((n_img, n_classes, h, w), generator=g)
    return logits, target


# --------------------------------------------------------------------------- golden values

def test_golden_values_from_hand_matrix():
    s = scores_from_confusion(np.array(HAND))
    assert_scores(s, HAND_IOU, HAND_F1, HAND_MIOU, HAND_MFSC, HAND_FWIOU, HAND_FWFSC, HAND_ACC, 8)
    assert HAND_MIOU == pytest.approx(1 / 3) and HAND_MFSC == pytest.approx(37 / 84)
    assert HAND_FWFSC == pytest.approx(37 / 56)
    assert s["support"] == [4, 4, 0, 0]
    assert s["n_classes_scored"] == 3
    assert s["matrix"] == HAND


def test_golden_values_three_classes_every_class_present():
    # gt 0: 4 px (3 right, 1 -> 2); gt 1: 2 px (both right); gt 2: 4 px (2 right, 1 -> 0, 1 -> 1)
    m = [[3, 0, 1],
         [0, 2, 0],
         [1, 1, 2]]
    # class 0: TP 3 FP 1 FN 1; class 1: TP 2 FP 1 FN 0; class 2: TP 2 FP 1 FN 2
    iou = [3 / 5, 2 / 3, 2 / 5]
    f1 = [6 / 8, 4 / 5, 4 / 7]
    assert_scores(scores_from_confusion(m), iou, f1,
                  miou=(3 / 5 + 2 / 3 + 2 / 5) / 3, mfsc=(6 / 8 + 4 / 5 + 4 / 7) / 3,
                  fwiou=0.4 * 3 / 5 + 0.2 * 2 / 3 + 0.4 * 2 / 5,
                  fwfsc=0.4 * 6 / 8 + 0.2 * 4 / 5 + 0.4 * 4 / 7,
                  acc=7 / 10, n_pixels=10)


def test_update_from_pixels_builds_the_hand_matrix():
    cm = ConfusionMatrix(4)
    cm.update(*pixels_to_tensors(HAND_PIXELS, shape=(2, 2, 2)))
    assert cm.matrix.dtype == torch.int64
    assert cm.matrix.tolist() == HAND
    assert_scores(cm.compute(), HAND_IOU, HAND_F1, HAND_MIOU, HAND_MFSC, HAND_FWIOU, HAND_FWFSC, HAND_ACC, 8)


def test_perfect_prediction_scores_one():
    target = torch.tensor([[[0, 1], [2, 2]]])
    s = ConfusionMatrix(3)
    s.update(target.clone(), target)
    assert_scores(s.compute(), [1, 1, 1], [1, 1, 1], 1, 1, 1, 1, 1, 4)


def test_random_batches_match_explicit_loops():
    for seed in range(5):
        logits, target = random_batch(seed, n_classes=6)
        pred = logits.argmax(1)
        # Make a class missing from both the ground truth and the predictions, and another
        # missing only from the ground truth, so both paths are exercised.
        pred[pred == 5] = 4
        target[target == 5] = 255
        target[target == 4] = 3
        cm = ConfusionMatrix(6)
        cm.update(pred, target)
        ref_m = loop_confusion(pred.numpy(), target.numpy(), 6)
        assert cm.matrix.tolist() == ref_m.tolist()
        r = loop_scores(ref_m)
        assert_scores(cm.compute(), r["iou"], r["f1"], r["miou"], r["mfsc"], r["fwiou"], r["fwfsc"], r["acc"],
                      r["n_pixels"])
        assert math.isnan(cm.compute()["per_class_iou"][5])
        assert cm.compute()["per_class_iou"][4] == 0.0


# --------------------------------------------------------------------------- ignore / absent

def test_ignore_pixels_contribute_nothing():
    pairs = HAND_PIXELS + [(255, 0), (255, 3), (255, 2)]
    p, t = pixels_to_tensors(pairs)
    p_other = p.clone()
    p_other[t == 255] = 1
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p, t)
    b.update(p_other, t)
    assert a.matrix.tolist() == HAND == b.matrix.tolist()
    # Predictions on ignored pixels are never looked at, not even out-of-range ones.
    p_bad = p.clone()
    p_bad[t == 255] = 200
    c = ConfusionMatrix(4)
    c.update(p_bad, t)
    assert c.matrix.tolist() == HAND


def test_only_ignore_pixels_gives_nan_scores():
    cm = ConfusionMatrix(3)
    cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    s = cm.compute()
    assert s["n_pixels"] == 0 and s["matrix"] == [[0] * 3] * 3
    for key in ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc"):
        assert math.isnan(s[key]), key
    assert all(math.isnan(v) for v in s["per_class_iou"] + s["per_class_f1"])


def test_custom_ignore_index():
    cm = ConfusionMatrix(3, ignore_index=-1)
    cm.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, -1, 2]]))
    assert cm.matrix.tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_class_absent_everywhere_is_nan_and_left_out_of_the_means():
    # Same data scored with 3 classes and with 6: the 3 extra classes never appear, so per class
    # they are NaN and every mean is unchanged.
    m3 = [[3, 0, 1], [0, 2, 0], [1, 1, 2]]
    m6 = np.zeros((6, 6), np.int64)
    m6[:3, :3] = m3
    s3, s6 = scores_from_confusion(m3), scores_from_confusion(m6)
    assert all(math.isnan(v) for v in s6["per_class_iou"][3:] + s6["per_class_f1"][3:])
    for key in ("miou", "mfsc", "fwiou", "fwfsc", "pixel_acc"):
        assert s6[key] == pytest.approx(s3[key], abs=1e-12), key
    assert s6["n_classes_scored"] == 3


def test_class_predicted_but_absent_from_ground_truth_scores_zero_and_counts():
    # gt: 2 px of class 0; predictions: one right, one class 1 (absent from the ground truth).
    s = scores_from_confusion([[1, 1], [0, 0]])
    assert s["per_class_iou"] == [0.5, 0.0]
    assert s["per_class_f1"] == [2 / 3, 0.0]
    assert s["miou"] == pytest.approx(0.25)            # (0.5 + 0) / 2: the false alarm counts
    assert s["mfsc"] == pytest.approx(1 / 3)
    assert s["fwiou"] == pytest.approx(0.5)            # weight of class 1 is 0
    assert s["fwfsc"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- inputs

def test_logits_and_ids_give_the_same_matrix():
    logits, target = random_batch(11)
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(logits, target)
    b.update(logits.argmax(1), target)
    assert torch.equal(a.matrix, b.matrix)
    assert a.matrix.sum() == (target != 255).sum()
    # Probabilities (softmax) and int32/uint8 ids agree too.
    c, d = ConfusionMatrix(5), ConfusionMatrix(5)
    c.update(logits.softmax(1), target.to(torch.int32))
    d.update(logits.argmax(1).to(torch.uint8), target)
    assert torch.equal(a.matrix, c.matrix) and torch.equal(a.matrix, d.matrix)


def test_accumulation_over_updates_equals_one_update_on_the_concatenation():
    batches = [random_batch(seed, n_img=k) for seed, k in ((1, 1), (2, 3), (3, 2), (4, 1))]
    acc = ConfusionMatrix(5)
    for logits, target in batches:
        acc.update(logits, target)
    once = ConfusionMatrix(5)
    once.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    assert torch.equal(acc.matrix, once.matrix)
    assert _same_scores(acc.compute(), once.compute())
    acc.reset()
    assert int(acc.matrix.sum()) == 0


def _same_scores(a: dict, b: dict) -> bool:
    return json_safe(a) == json_safe(b)


def test_scores_accept_numpy_torch_and_lists():
    a = scores_from_confusion(HAND)
    b = scores_from_confusion(np.array(HAND, dtype=np.int32))
    c = scores_from_confusion(torch.tensor(HAND))
    d = scores_from_confusion(np.array(HAND, dtype=np.float64))
    assert _same_scores(a, b) and _same_scores(a, c) and _same_scores(a, d)


@pytest.mark.parametrize("bad", [
    [[1, 2, 3]],                    # not square
    [[1, -1], [0, 2]],              # negative count
    [[1.5, 0], [0, 1]],             # fractional count
])
def test_scores_reject_non_matrices(bad):
    with pytest.raises(ValueError):
        scores_from_confusion(np.array(bad))


def test_update_rejects_bad_inputs():
    cm = ConfusionMatrix(3)
    t = torch.tensor([[0, 1, 2]])
    with pytest.raises(ValueError, match="out of range"):
        cm.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, 3, 2]]))      # target 3 >= n_classes
    with pytest.raises(ValueError, match="out of range"):
        cm.update(torch.tensor([[0, 1, 3]]), t)                               # prediction 3
    with pytest.raises(ValueError, match="out of range"):
        cm.update(torch.tensor([[0, -1, 2]]), t)
    with pytest.raises(TypeError):
        cm.update(torch.tensor([[0.0, 1.0, 2.0]]), t)                         # float ids
    with pytest.raises(TypeError):
        cm.update(torch.tensor([[0, 1, 2]]), t.float())
    with pytest.raises(ValueError, match="channels"):
        cm.update(torch.randn(1, 4, 3), t)                                    # 4 logits for 3 classes
    with pytest.raises(ValueError):
        cm.update(torch.tensor([[0, 1]]), t)                                  # shape mismatch
    assert int(cm.matrix.sum()) == 0, "a rejected batch must not be half-counted"
    with pytest.raises(ValueError):
        ConfusionMatrix(300, ignore_index=255)                                # ignore collides with a class


# --------------------------------------------------------------------------- DDP

def test_reduce_is_a_noop_without_a_process_group():
    assert not (dist.is_available() and dist.is_initialized())
    cm = ConfusionMatrix(4)
    cm.update(*pixels_to_tensors(HAND_PIXELS))
    out = cm.reduce()
    assert out.tolist() == HAND and cm.matrix.tolist() == HAND


def _ddp_worker(rank: int, world_size: int, init_file: str, out_dir: str, logits, target) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        half = logits.shape[0] // world_size
        mine = slice(rank * half, (rank + 1) * half)
        cm = ConfusionMatrix(logits.shape[1])
        # Two updates per rank (one image each) to mix accumulation and reduction.
        for i in range(mine.start, mine.stop):
            cm.update(logits[i:i + 1], target[i:i + 1])
        local = cm.local.clone()
        reduced = cm.reduce().clone()
        twice = cm.reduce().clone()             # a second reduce must not double-count
        torch.save({"local": local, "reduced": reduced, "twice": twice, "scores": json_safe(cm.compute())},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_reduce_over_two_gloo_processes_equals_single_process(tmp_path):
    logits, target = random_batch(21, n_img=4)
    single = ConfusionMatrix(5)
    single.update(logits, target)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), logits, target), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for r in results:
        assert r["reduced"].dtype == torch.int64
        assert torch.equal(r["reduced"], single.matrix)
        assert torch.equal(r["twice"], single.matrix)
        assert r["scores"] == json_safe(single.compute())
    # Each rank really held only its half.
    assert torch.equal(results[0]["local"] + results[1]["local"], single.matrix)
    assert not torch.equal(results[0]["local"], single.matrix)


def test_update_after_reduce_falls_back_to_local_counts():
    cm = ConfusionMatrix(4)
    p, t = pixels_to_tensors(HAND_PIXELS)
    cm.update(p, t)
    cm.reduce()
    cm.update(p, t)
    assert cm.matrix.tolist() == (2 * np.array(HAND)).tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_counts_equal_cpu_counts():
    logits, target = random_batch(5, n_img=3)
    cpu = ConfusionMatrix(5)
    cpu.update(logits, target)
    on_cpu_matrix = ConfusionMatrix(5)                       # counts on the GPU, matrix on the CPU
    on_cpu_matrix.update(logits.cuda(), target.cuda())
    on_gpu = ConfusionMatrix(5, device="cuda")
    on_gpu.update(logits.cuda(), target.cuda())
    assert on_gpu.matrix.is_cuda and not on_cpu_matrix.matrix.is_cuda
    assert torch.equal(on_cpu_matrix.matrix, cpu.matrix)
    assert torch.equal(on_gpu.matrix.cpu(), cpu.matrix)
    assert _same_scores(on_gpu.compute(), cpu.compute())


# --------------------------------------------------------------------------- JSON / plot

def test_json_safe_replaces_nan_with_none():
    s = json_safe(scores_from_confusion(HAND))
    assert s["per_class_iou"][3] is None and s["per_class_iou"][0] == pytest.approx(0.6)
    import json
    json.loads(json.dumps(s, allow_nan=False))


def _viridis(level: int) -> np.ndarray:
    return cv2.applyColorMap(np.array([[level]], np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0]


def test_plot_writes_a_png_of_the_expected_size(tmp_path):
    m = np.array([[5, 0, 0],
                  [0, 7, 0],
                  [0, 0, 0]])   # class 2 has no ground truth: its row is grey
    path = tmp_path / "plots" / "confusion.png"
    layout = plot_confusion(m, ["road", "car", "pedestrian"], path, cell=24)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None and img.dtype == np.uint8
    h, w = layout["shape"]
    assert img.shape == (h, w, 3)
    y0, x0 = layout["grid"]
    cell = layout["cell"]
    assert cell == 24 and y0 + 3 * cell <= h and x0 + 3 * cell <= w
    # The labels sit outside the grid: the left and top margins are at least a label wide.
    assert x0 > cv2.getTextSize("pedestrian", cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]
    assert y0 > cv2.getTextSize("pedestrian", cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0]

    def corner(r, c):  # a pixel inside cell (r, c), away from grid lines and the number
        return img[y0 + r * cell + 2, x0 + c * cell + 2].astype(int)

    np.testing.assert_allclose(corner(0, 0), _viridis(255), atol=2)   # row-normalised 100%
    np.testing.assert_allclose(corner(1, 1), _viridis(255), atol=2)
    np.testing.assert_allclose(corner(0, 1), _viridis(0), atol=2)     # 0%
    np.testing.assert_allclose(corner(2, 2), [160, 160, 160], atol=2)  # no ground truth
    assert [p.name for p in path.parent.iterdir()] == ["confusion.png"], "no temporary left behind"
    # Longer names -> a wider left margin, same grid.
    layout2 = plot_confusion(m, ["road", "car", "a much longer class name"], tmp_path / "b.png", cell=24)
    assert layout2["grid"][1] > x0 and layout2["cell"] == cell


def test_plot_row_normalisation(tmp_path):
    m = np.array([[1, 3], [2, 2]])   # rows -> [0.25, 0.75], [0.5, 0.5]
    layout = plot_confusion(m, ["a", "b"], tmp_path / "c.png", cell=30)
    img = cv2.imread(str(tmp_path / "c.png"))
    y0, x0 = layout["grid"]
    for (r, c), share in {(0, 0): 0.25, (0, 1): 0.75, (1, 0): 0.5, (1, 1): 0.5}.items():
        px = img[y0 + r * 30 + 2, x0 + c * 30 + 2].astype(int)
        np.testing.assert_allclose(px, _viridis(round(share * 255)), atol=2)
    with pytest.raises(ValueError):
        plot_confusion(m, ["only one"], tmp_path / "d.png")

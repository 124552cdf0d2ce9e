"""How much of a feature map ARFD's recalibration keeps, per tap and bandwidth rule (issue 17).

On real features: a trained teacher and student (MFNet runs), a few val images. Per tap of the
family's default taps, the teacher's map as ARFD sees it (``teacher_norm``: standardised per
channel, ReLU) and the student's map through a fresh aligner (Conv1×1 → BN → ReLU, as at the
start of distillation), both pooled to ``max_pixels``; for each bandwidth rule (``rms`` the
former default, ``median``, ``knn`` the current one): the share of the maps' variance that
recalibration keeps, and the consistency losses (1 − CKA, cosine, Euclidean, Pearson) between
each image's student and teacher maps (matched) and between mismatched images (the student's
image i against the teacher's image i+1: unrelated maps), without and with recalibration.

    python benchmarks/arfd_recalibration.py --teacher data/runs/vkitti2/mfnet/teacher/seed0/best.pt \\
        --student data/runs/vkitti2/mfnet/student/seed0/best.pt --shards data/shards/vkitti2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main(argv=None) -> int:
    from lix.checkpoint import load_checkpoint
    from lix.data import ShardDataset
    from lix.losses import arfd as A
    from lix.losses.cka import CONSISTENCY, consistency_loss
    from lix.models.taps import FeatureTaps
    from lix.report.networks import load_net as _load_net  # the report's loader of a run's network

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--shards", required=True)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, default=1024)
    ap.add_argument("--json", default=None, help="write the table as JSON too")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    ds = ShardDataset(a.shards, "val", augment=None)
    names = list(ds.class_names)
    nets = {}
    for role, path in (("teacher", a.teacher), ("student", a.student)):
        nets[role] = _load_net(load_checkpoint(path, required=("model", "config")), Path(path), names, "cpu")[:2]
    family = type(nets["teacher"][0]).__name__
    taps = type(nets["teacher"][0]).default_taps
    items = [ds[i] for i in range(min(a.images, len(ds)))]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("rgb", "depth", "depth_valid", "normals",
                                                                  "normal_valid", "label")}
    from lix.data import to_device

    batch = to_device(batch, "cpu")
    feats = {}
    with torch.no_grad():
        for role, (net, inputs) in nets.items():
            with FeatureTaps(net, taps, detach=True) as t:
                net(*inputs(batch))
            feats[role] = dict(t.features)
    rows = []
    for tap in taps:
        ft, fs = feats["teacher"][tap].float(), feats["student"][tap].float()
        head = A.ARFDHead({tap: (fs.shape[1], ft.shape[1])}).train()
        with torch.no_grad():
            s_map = head.aligners[tap](fs)
            t_map = head.teacher_map(tap, ft)
            s_map, t_map = A.match_sizes(s_map, t_map, a.max_pixels)
            ps, pt = A._pixels(s_map), A._pixels(t_map)
            shifted = torch.roll(pt, 1, dims=0)  # the teacher's map of another image
            raw = {m: (consistency_loss(ps, pt, m).mean().item(), consistency_loss(ps, shifted, m).mean().item())
                   for m in CONSISTENCY}
            rows.append({"tap": tap, "rule": "none", "pixels": ps.shape[1], "kept_teacher": 1.0, "kept_student": 1.0,
                         **{f"{m}_matched": v[0] for m, v in raw.items()},
                         **{f"{m}_unrelated": v[1] for m, v in raw.items()}})
            for rule in A.BANDWIDTH_RULES:
                rs = A.recalibrate(ps, bandwidth_rule=rule)
                rt = A.recalibrate(pt, bandwidth_rule=rule)
                row = {"tap": tap, "rule": rule, "pixels": ps.shape[1],
                       "kept_teacher": A.variance_kept(pt, rt).mean().item(),
                       "kept_student": A.variance_kept(ps, rs).mean().item()}
                for m in CONSISTENCY:
                    row[f"{m}_matched"] = consistency_loss(rs, rt, m).mean().item()
                    row[f"{m}_unrelated"] = consistency_loss(rs, torch.roll(rt, 1, dims=0), m).mean().item()
                rows.append(row)
    machine = platform.processor() or platform.machine()
    print(f"# ARFD recalibration on {family} taps, {len(items)} val images of {a.shards}; {machine}, "
          f"torch {torch.__version__}")
    print("| tap | rule | pixels | variance kept (teacher) | (student) | " +
          " | ".join(f"{m} matched / unrelated" for m in CONSISTENCY) + " |")
    print("|---|---|---|---|---|" + "---|" * len(CONSISTENCY))
    for r in rows:
        print(f"| {r['tap']} | {r['rule']} | {r['pixels']} | {100 * r['kept_teacher']:.1f} % | "
              f"{100 * r['kept_student']:.1f} % | " +
              " | ".join(f"{r[f'{m}_matched']:.3f} / {r[f'{m}_unrelated']:.3f}" for m in CONSISTENCY) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""lix report on fake run directories with known metrics: the table cells (mean ± sample std in
percent over the finished seeds), failed and missing runs, bold best, per-class IoU, paired seed
comparisons, ablations, overhead, summary.json, and the CLI. No training."""

from __future__ import annotations

import json
import math
import re
import zlib

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from lix.cli.report import report_app
from lix.report.build import write_report
from lix.report.names import parse_method

METRICS = ("mfsc", "fwfsc", "miou", "fwiou")
LABEL = {"mfsc": "mFsc", "fwfsc": "fwFsc", "miou": "mIoU", "fwiou": "fwIoU"}
CLASSES = ["road", "car", "sky"]
STUDENT_SIDE = ("Student (RGB)", "KD", "DKD", "FitNet", "LIX")

# dataset -> model -> method -> base mIoU; every seed adds its own offsets.
PLAN = {
    "kitti": {"mfnet": {"teacher": 0.70, "student": 0.50, "kd": 0.54, "dkd": 0.56, "lix": 0.60},
              "sne_roadseg": {"teacher": 0.75, "student": 0.55, "kd": 0.58, "lix": 0.62}},
    "vkitti2": {"mfnet": {"teacher": 0.72, "student": 0.52, "kd": 0.64, "lix": 0.58}},
}
SEEDS = (0, 1, 2)
FAILED = {("kitti", "mfnet", "dkd", 1), ("vkitti2", "mfnet", "dkd", 0), ("vkitti2", "mfnet", "dkd", 1)}
UNFINISHED = {("kitti", "mfnet", "kd", 2), ("vkitti2", "mfnet", "dkd", 2), ("vkitti2", "mfnet", "fitnet", 0)}
ONLY_SEED0 = {("kitti", "sne_roadseg", "kd")}  # seeds 1 and 2 never started: no directory


def _metrics(ds: str, model: str, method: str, seed: int, base: float) -> dict:
    rng = np.random.default_rng(zlib.crc32(f"{ds}/{model}/{method}/{seed}".encode()))
    m = {"miou": base + rng.uniform(-0.03, 0.03)}
    for k in ("mfsc", "fwfsc", "fwiou", "pixel_acc"):
        m[k] = float(np.clip(base + rng.uniform(-0.1, 0.15), 0, 1))
    pc = {c: float(rng.uniform(0.2, 0.9)) for c in CLASSES}
    pc["sky"] = None if method == "student" and seed == 0 else pc["sky"]  # NaN written as null
    return {**m, "per_class_iou": pc, "per_class_f1": dict.fromkeys(CLASSES, 0.5), "dataset": ds,
            "role": "teacher" if method == "teacher" else "student", "model": model, "x": "depth",
            "matrix": [[1, 0], [0, 1]]}


def _write(root, ds, model, method, seed, metrics=None, failed=None, hyper=None):
    d = root / ds / model / method / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    if failed is not None:
        (d / "failed.json").write_text(json.dumps({"error": failed}))
    if hyper is not None:
        (d / "config.json").write_text(json.dumps({"distill": {"hyper": hyper}}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The fake runs and the finished metrics: {(ds, model, method): {seed: metrics}}."""
    root = tmp_path_factory.mktemp("runs")
    known: dict[tuple, dict[int, dict]] = {}
    for ds, models in PLAN.items():
        for model, methods in models.items():
            for method, base in methods.items():
                for seed in SEEDS:
                    if ((ds, model, method) in ONLY_SEED0 and seed) or (ds, model, method, seed) in FAILED | UNFINISHED:
                        continue
                    m = _metrics(ds, model, method, seed, base)
                    _write(root, ds, model, method, seed, m)
                    known.setdefault((ds, model, method), {})[seed] = m
    for ds, model, method, seed in FAILED:
        _write(root, ds, model, method, seed, failed="CUDA out of memory\nTraceback ...")
    for ds, model, method, seed in UNFINISHED:
        (root / ds / model / method / f"seed{seed}").mkdir(parents=True, exist_ok=True)
    # ablations: the fixed-beta sweep and one DWC-input variant (kitti, mfnet)
    for beta, base in ((2, 0.55), (8, 0.57)):
        for seed in (0, 1):
            m = _metrics("kitti", "mfnet", f"b{beta}", seed, base)
            _write(root, "kitti", "mfnet", f"lix~controller=fixed,beta={beta}", seed, m)
            known.setdefault(("kitti", "mfnet", f"lix~controller=fixed,beta={beta}"), {})[seed] = m
    _write(root, "kitti", "mfnet", "dwld~dwc_inputs=softmax", 0, _metrics("kitti", "mfnet", "dw", 0, 0.5),
           hyper={"dwc_inputs": "softmax"})
    (root / "overhead.json").write_text(json.dumps({"mfnet": {"kd": {"time_ratio": 1.07, "memory_ratio": 1.02},
                                                              "lix": {"time_ratio": 1.234, "memory_ratio": 1.5}}}))
    return root, known


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    root, _ = runs
    out = tmp_path_factory.mktemp("report")
    summary = write_report(root, out)
    return out, summary, (out / "README.md").read_text(encoding="utf-8")


def _section_table(md: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table after the heading line that starts with ``heading``."""
    lines = md.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(heading))
    while not lines[i].startswith("|"):
        i += 1
    rows = []
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip())[1:-1]])
        i += 1
    return rows[0], rows[2:]


def _main_table(md: str, ds_display: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    head, rows = _section_table(md, f"### {ds_display}: student-side methods")
    return head, {r[1]: dict(zip(head, r)) for r in rows}


def _expected(values: list[float]) -> str:
    a = np.array(values) * 100
    std = "–" if len(a) == 1 else f"{np.std(a, ddof=1):.2f}"
    return f"{np.mean(a):.2f} ± {std}"


DISPLAY = {"teacher": "Teacher (RGB + X)", "student": "Student (RGB)", "kd": "KD", "dkd": "DKD", "lix": "LIX",
           "fitnet": "FitNet"}
MODEL = {"mfnet": "MFNet", "sne_roadseg": "SNE-RoadSeg"}
DS = {"kitti": "KITTI", "vkitti2": "vKITTI2"}


def test_parse_method():
    assert parse_method("lix") == ("lix", {})
    assert parse_method("lix~controller=fixed,beta=2") == ("lix", {"controller": "fixed", "beta": "2"})
    for bad in ("lix~", "lix~beta", "~beta=2", "lix~beta=2,beta=3"):
        with pytest.raises(ValueError):
            parse_method(bad)


def test_main_table_cells_reproduce_the_runs(runs, report):
    _, known = runs
    _, summary, md = report
    for ds, models in PLAN.items():
        head, rows = _main_table(md, DS[ds])
        assert head[:2] == ["KD type", "algorithm"]
        # the last-epoch mIoU right after the best-on-val one it qualifies
        assert head[2:8] == ["MFNet mFsc", "MFNet fwFsc", "MFNet mIoU", "MFNet mIoU (last epoch)", "MFNet fwIoU",
                             "MFNet n"]
        srows = {r["method"]: r for r in summary["datasets"][ds]["main"]}
        for (d, model, method), seeds in known.items():
            if d != ds or "~" in method or not seeds:
                continue
            row = rows[DISPLAY[method]]
            for k in METRICS:
                vals = [seeds[s][k] for s in sorted(seeds)]
                assert row[f"{MODEL[model]} {LABEL[k]}"].replace("**", "") == _expected(vals), (ds, model, method, k)
                cell = srows[method]["cells"][model]["metrics"][k]
                assert cell["mean"] == pytest.approx(np.mean(np.array(vals) * 100), abs=1e-9)
                if len(vals) > 1:
                    assert cell["std"] == pytest.approx(np.std(np.array(vals) * 100, ddof=1), abs=1e-9)
                else:
                    assert cell["std"] is None
    # kinds grouped in the paper's order, KD type written once per group
    kinds = [r[0] for r in _section_table(md, "### KITTI: student-side")[1]]
    assert kinds == ["—", "", "logit", "", "ours"]


def test_seed_counts_failed_and_missing(report):
    _, summary, md = report
    _, kitti = _main_table(md, "KITTI")
    assert kitti["DKD"]["MFNet n"] == "2/3 (1 failed)"
    assert kitti["KD"]["MFNet n"] == "2/3 (1 missing)"
    assert kitti["LIX"]["MFNet n"] == "3/3"
    # one seed only: "± –", the two seeds without a directory counted as missing
    assert kitti["KD"]["SNE-RoadSeg n"] == "1/3 (2 missing)"
    assert kitti["KD"]["SNE-RoadSeg mIoU"].endswith(" ± –")
    # DKD never ran on SNE-RoadSeg: "–", not 0
    assert all(kitti["DKD"][f"SNE-RoadSeg {LABEL[k]}"] == "–" for k in METRICS)
    _, vk = _main_table(md, "vKITTI2")
    assert all(vk["DKD"][f"MFNet {LABEL[k]}"] == "failed (2 of 3)" for k in METRICS)
    assert vk["DKD"]["MFNet n"] == "0/3 (2 failed, 1 missing)"
    assert all(vk["FitNet"][f"MFNet {LABEL[k]}"] == "–" for k in METRICS)
    for row in (vk["DKD"], vk["FitNet"]):
        assert not any(re.fullmatch(r"[*]*0(\.0+)?[*]*( ±.*)?", v) for v in row.values())
    cell = next(r for r in summary["datasets"]["vkitti2"]["main"] if r["method"] == "dkd")["cells"]["mfnet"]
    assert cell["status"] == "failed" and cell["metrics"]["miou"]["mean"] is None
    assert "CUDA out of memory" in cell["errors"]["0"]
    assert "`vkitti2/mfnet/dkd/seed0` failed: CUDA out of memory" in md
    assert "`kitti/mfnet/kd/seed2` missing (unfinished" in md
    # 15 + 10 KITTI main, 16 vKITTI2 main, 5 ablation seed directories
    assert summary["counts"] == {"run_dirs": 46, "finished": 40, "failed": 3, "missing": 3}


def test_bold_marks_the_best_student_side_mean(runs, report):
    _, known = runs
    _, _, md = report
    for ds, models in PLAN.items():
        _, rows = _main_table(md, DS[ds])
        for model in models:
            for k in METRICS:
                col = f"{MODEL[model]} {LABEL[k]}"
                means = {DISPLAY[me]: round(float(np.mean([m[k] * 100 for m in seeds.values()])), 2)
                         for (d, mo, me), seeds in known.items()
                         if d == ds and mo == model and "~" not in me and me != "teacher" and seeds}
                best = max(means.values())
                for name, row in rows.items():
                    bold = row[col].startswith("**")
                    assert bold == (name in means and means[name] == best), (ds, model, k, name, row[col])
                assert not rows["Teacher (RGB + X)"][col].startswith("**")


def test_per_class_iou(runs, report):
    _, known = runs
    _, _, md = report
    head, rows = _section_table(md, "### KITTI, MFNet: per-class IoU")
    assert head[1:4] == ["Student (RGB) (n=3)", "LIX (n=3)", "Teacher (RGB + X) (n=3)"]
    by = {r[0]: r for r in rows}
    assert list(by) == CLASSES
    for cls in CLASSES:
        for j, method in enumerate(("student", "lix", "teacher"), start=1):
            vals = [m["per_class_iou"][cls] for m in known[("kitti", "mfnet", method)].values()
                    if m["per_class_iou"][cls] is not None]
            assert by[cls][j] == f"{np.mean(vals) * 100:.2f}"
        s = np.mean([m["per_class_iou"][cls] for m in known[("kitti", "mfnet", "student")].values()
                     if m["per_class_iou"][cls] is not None]) * 100
        lix = np.mean([m["per_class_iou"][cls] for m in known[("kitti", "mfnet", "lix")].values()]) * 100
        assert by[cls][4] == f"{lix - s:+.2f}"


def test_paired_comparison_and_honest_line(runs, report):
    _, known = runs
    _, summary, md = report
    head, rows = _section_table(md, "### KITTI: paired comparison")
    table = {(r[0], r[1]): dict(zip(head, r)) for r in rows}
    for model in PLAN["kitti"]:
        lix = known[("kitti", model, "lix")]
        baselines = {me: np.mean([m["miou"] for m in seeds.values()]) for (d, mo, me), seeds in known.items()
                     if d == "kitti" and mo == model and me in ("kd", "dkd") and seeds}
        best = max(baselines, key=baselines.get)
        for other, label in (("student", "LIX vs Student (RGB)"),
                             (best, f"LIX vs the best baseline ({DISPLAY[best]})")):
            o = known[("kitti", model, other)]
            common = sorted(set(lix) & set(o))
            diffs = [(lix[s]["miou"] - o[s]["miou"]) * 100 for s in common]
            row = table[(MODEL[model], label)]
            assert row["per seed"] == ", ".join(f"seed{s}: {d:+.2f}" for s, d in zip(common, diffs))
            assert row["mean Δ"] == f"{np.mean(diffs):+.2f}"
            assert row["std Δ"] == ("–" if len(diffs) < 2 else f"{np.std(diffs, ddof=1):.2f}")
            assert row["agreement"] == f"{sum(d > 0 for d in diffs)} of {len(diffs)} seeds agree"
        p = summary["datasets"]["kitti"]["paired"][model]
        assert p["best_baseline"] == best
    # the LIX-is-best line is computed: true on KITTI (LIX's base is highest), false on vKITTI2 (KD's is)
    for ds in PLAN:
        for model in PLAN[ds]:
            means = {me: np.mean([m["miou"] for m in seeds.values()]) for (d, mo, me), seeds in known.items()
                     if d == ds and mo == model and "~" not in me and me != "teacher" and seeds}
            is_best = max(means, key=means.get) == "lix"
            line = next(ln for ln in md.splitlines() if ln.startswith(f"* **{DS[ds]}, {MODEL[model]}**"))
            assert ("LIX has the best mean mIoU" in line) == is_best
            assert ("does **not** have the best mean mIoU" in line) == (not is_best)
            assert summary["datasets"][ds]["lix_best"][model]["lix_is_best"] == is_best
    assert summary["datasets"]["kitti"]["lix_best"]["mfnet"]["lix_is_best"] is True
    assert summary["datasets"]["vkitti2"]["lix_best"]["mfnet"]["lix_is_best"] is False


def test_ablations_overhead_and_paper_note(runs, report):
    _, known = runs
    out, summary, md = report
    # ablation runs stay out of the main table
    _, rows = _main_table(md, "KITTI")
    assert not any("~" in name or "β" in name for name in rows)
    head, rows = _section_table(md, "### KITTI: fixed β vs the dynamic weight controller")
    by = {r[1]: dict(zip(head, r)) for r in rows}
    assert list(by) == ["2 (fixed)", "8 (fixed)", "DWC (main run)"]
    for beta in (2, 8):
        vals = [m["miou"] for m in known[("kitti", "mfnet", f"lix~controller=fixed,beta={beta}")].values()]
        assert by[f"{beta} (fixed)"]["MFNet mIoU"].replace("**", "") == _expected(vals)
    lix = [m["miou"] for m in known[("kitti", "mfnet", "lix")].values()]
    assert by["DWC (main run)"]["MFNet mIoU"].replace("**", "") == _expected(lix)
    assert (out / "beta_sweep_kitti.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "](beta_sweep_kitti.png)" in md and not (out / "beta_sweep_vkitti2.png").exists()
    head, rows = _section_table(md, "### KITTI: DWC inputs")
    assert [r[:2] for r in rows] == [["DWLD", "softmax"]]
    assert rows[0][-1] == "1/1" and rows[0][4].endswith("± –")
    assert "kernel × consistency" not in md
    head, rows = _section_table(md, "## Training overhead")
    assert {r[1]: r[2:] for r in rows} == {"KD": ["1.07×", "1.02×"], "LIX": ["1.23×", "1.50×"]}
    assert summary["overhead"]["mfnet"]["lix"] == {"time_ratio": 1.234, "memory_ratio": 1.5}
    # by default the shipped Tables I–III are quoted beside ours, with the two scale-free comparisons
    assert "Tables I–III" in md and "Guo, Long, Wu" in md
    for ds in ("KITTI", "vKITTI2"):
        assert f"### {ds}: the paper's published figures beside ours" in md
        assert f"### {ds}: share of the teacher–student gap closed, ours beside the paper's" in md
    assert "Kendall's τ (mIoU) between our ranking and the paper's" in md
    saved = json.loads((out / "summary.json").read_text())
    assert saved["datasets"]["kitti"]["main"][0]["method"] == "teacher"
    # the fake runs carry no dvclive logs or checkpoints: the β sweep and (empty) training curves only
    assert saved["plots"] == sorted(["beta_sweep_kitti.png"] + [f"curves_{ds}_{m}.png" for ds, d in
                                                                 saved["datasets"].items() for m in d["models"]])
    assert all("figure was not drawn" not in n for n in saved["notes"])


def _cli():
    app = typer.Typer()

    @app.callback()
    def main():
        """lix (test mount)."""

    app.add_typer(report_app)
    return app


def test_cli(runs, tmp_path):
    root, _ = runs
    res = CliRunner().invoke(_cli(), ["report", "--runs", str(root), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rep" / "README.md").is_file() and (tmp_path / "rep" / "summary.json").is_file()
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "nope"):
        res = CliRunner().invoke(_cli(), ["report", "--runs", str(bad), "--out", str(tmp_path / "rep2")])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error" in lines[0] and str(bad) in lines[0], res.output
        assert not (tmp_path / "rep2").exists()


def test_kernel_grid_beta_by_config_and_plots(tmp_path):
    root = tmp_path / "runs"
    mfsc = {"arfd": [0.50, 0.52], "arfd~kernel=gaussian": [0.61], "arfd~consistency=cosine": [0.55],
            "arfd~kernel=gaussian,consistency=cosine": [0.58], "student": [0.45, 0.47]}
    for method, vals in mfsc.items():
        for seed, v in enumerate(vals):  # the grid shows mFsc, the metric of the paper's Table V
            m = {**_metrics("nuimages", "mfnet", method, seed, v), "mfsc": v}
            _write(root, "nuimages", "mfnet", method, seed, m)
    _write(root, "nuimages", "mfnet", "lix~beta=4", 0, _metrics("nuimages", "mfnet", "b4", 0, 0.5),
           hyper={"controller": "fixed"})
    _write(root, "nuimages", "mfnet", "lix~beta=6", 0, _metrics("nuimages", "mfnet", "b6", 0, 0.5))
    _write(root, "nuimages", "mfnet", "student", 2, _metrics("nuimages", "mfnet", "student", 2, 0.46),
           failed="an earlier attempt")  # metrics.json wins over a stale failed.json
    out = tmp_path / "out"
    out.mkdir()
    (out / "beta_sweep_kitti.png").write_bytes(b"old")  # a plot no longer backed by runs
    summary = write_report(root, out, plots=False)
    md = (out / "README.md").read_text(encoding="utf-8")
    head, rows = _section_table(md, "ARFD, MFNet (rows: kernel, columns: consistency)")
    assert head == ["kernel \\ consistency", "cka", "cosine"]
    grid = {r[0]: dict(zip(head, r)) for r in rows}
    # the main run (its default laplace × cka); its seeds are the main table's: the student has a seed2
    assert grid["laplace"]["cka"] == "51.00 ± 1.41 (n=2/3) †"
    assert grid["laplace"]["cosine"] == "55.00 ± – (n=1/1)"
    assert grid["gaussian"]["cka"] == "**61.00** ± – (n=1/1)"
    assert grid["gaussian"]["cosine"] == "58.00 ± – (n=1/1)"
    head, rows = _section_table(md, "### nuImages: fixed β")
    assert [r[1] for r in rows] == ["4 (fixed)"]  # controller=fixed from config.json
    head, rows = _section_table(md, "### nuImages: other ablations")
    assert [r[0] for r in rows] == ["`lix~beta=6`"]  # beta under the DWC: not a fixed-β run
    _, main = _main_table(md, "nuImages")
    assert main["Student (RGB)"]["MFNet n"] == "3/3"
    assert summary["counts"]["failed"] == 0
    assert "LIX has no finished run" in md
    assert not list(out.glob("*.png")) and "beta_sweep" not in md


def test_cross_dataset_table_from_known_metrics(tmp_path):
    """<cross>/<source>-to-<target>/<model>/<method>/seed<k>/metrics.json -> one table per pair:
    mean ± sample std over the finished seeds, a failed seed shown as such, the common classes."""
    runs, cross = tmp_path / "runs", tmp_path / "cross"
    _write(runs, "vkitti2", "mfnet", "student", 0, _metrics("vkitti2", "mfnet", "student", 0, 0.5))
    known = {"student": [0.30, 0.34], "lix": [0.40, 0.41]}
    for method, values in known.items():
        for seed, v in enumerate(values):
            m = {"miou": v, "mfsc": v + 0.1, "common_classes": ["road", "car", "truck"]}
            _write(cross, "vkitti2-to-nuimages", "mfnet", method, seed, m)
    _write(cross, "vkitti2-to-nuimages", "mfnet", "lix", 2, failed="boom")
    s = write_report(runs, tmp_path / "out", plots=False, cross_root=cross)
    rows = {r["method"]: r["cells"] for r in s["cross"]["vkitti2-to-nuimages"]["rows"]}
    for method, values in known.items():
        cell = rows[method]["metrics"]["miou"]
        assert cell["mean"] == pytest.approx(100 * np.mean(values))
        assert cell["std"] == pytest.approx(100 * np.std(values, ddof=1))
    assert rows["lix"]["seeds"]["failed"] == [2] and rows["lix"]["n_ok"] == 2
    md = (tmp_path / "out" / "README.md").read_text()
    assert "### vKITTI2 → nuImages" in md and "Common classes (3): road, car, truck." in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| LIX | MFNet"))
    assert f"**{100 * np.mean(known['lix']):.2f}** ± {100 * np.std(known['lix'], ddof=1):.2f}" in line
    assert "1 failed" in line or "failed" in line


def test_no_paper_quotes_nothing(runs, tmp_path):
    root, _ = runs
    summary = write_report(root, tmp_path / "rep", plots=False, paper=None)
    md = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert "published figures beside ours" not in md and "--no-paper" in md
    assert all("paper_comparison" not in d for d in summary["datasets"].values())


# Made-up numbers standing in for a paper file given with --paper: the test is about putting each
# published figure beside the matching one of ours, not about the values.
PAPER = {"source": "Test citation, Table I", "datasets": {
    "kitti": {"table": "I", "setting": "a stated setting",
              "rows": {"teacher": {"mfnet": {"mfsc": 71.5, "fwfsc": 80.0, "miou": 61.25, "fwiou": 70.0}},
                       "lix": {"mfnet": {"miou": 58.5}},
                       "dist": {"mfnet": {"miou": 55.0}}}},
    "nuimages": {"table": "III", "setting": "another", "rows": {"lix": {"mfnet": {"miou": 40.0}}}}}}


def test_paper_figures_beside_ours(runs, tmp_path):
    root, known = runs
    (tmp_path / "paper").mkdir()
    assert write_report(root, tmp_path / "none", plots=False, paper=tmp_path / "paper")["paper"] is None
    (tmp_path / "paper" / "tables.json").write_text(json.dumps(PAPER))
    summary = write_report(root, tmp_path / "rep", plots=False, paper=tmp_path / "paper")
    md = (tmp_path / "rep" / "README.md").read_text(encoding="utf-8")
    assert "Test citation, Table I" in md and "a stated setting" in md
    assert "quoted beside ours for KITTI; given for nuImages too, which has no runs here." in md
    head, rows = _section_table(md, "### KITTI: the paper's published figures beside ours")
    by = {r[0]: dict(zip(head, r)) for r in rows}
    # only the architecture the paper prints; every method of ours or the paper's, in table order
    assert head[1:3] == ["MFNet mFsc paper", "MFNet mFsc ours"] and len(head) == 9
    assert list(by) == ["Teacher (RGB + X)", "Student (RGB)", "KD", "DKD", "DIST", "LIX"]
    assert by["Teacher (RGB + X)"]["MFNet mIoU paper"] == "61.25"
    assert by["Teacher (RGB + X)"]["MFNet mFsc paper"] == "71.5"  # quoted as written, not reformatted
    lix = [m["miou"] for m in known[("kitti", "mfnet", "lix")].values()]
    assert by["LIX"]["MFNet mIoU paper"] == "58.5" and by["LIX"]["MFNet mIoU ours"] == _expected(lix)
    assert by["LIX"]["MFNet mFsc paper"] == "–"  # not printed: not 0
    assert by["DIST"]["MFNet mIoU ours"] == "–" and by["DIST"]["MFNet mIoU paper"] == "55.0"
    assert "KITTI: the paper" in md and "vKITTI2: the paper" not in md
    assert summary["paper"]["datasets"]["kitti"]["rows"]["lix"] == {"mfnet": {"miou": "58.5"}}
    # the gap closed, computed here from the known seeds' values: (method − student) / (teacher − student)
    comp = summary["datasets"]["kitti"]["paper_comparison"]["mfnet"]
    mean = {m: 100 * np.mean([v["miou"] for v in known[("kitti", "mfnet", m)].values()])
            for m in ("teacher", "student", "lix", "kd")}
    ours_lix = (mean["lix"] - mean["student"]) / (mean["teacher"] - mean["student"]) \
        if mean["teacher"] > mean["student"] else None
    assert comp["gap"]["lix"]["ours"] == (pytest.approx(ours_lix) if ours_lix is not None else None)
    assert comp["gap"]["lix"]["paper"] is None  # the made-up table has no student row
    assert comp["methods"] == ["lix"] and comp["n"] == 1 and comp["tau"] is None  # DIST: no run of ours


def test_gap_closed_and_kendall_tau_golden():
    from lix.report.paper import compare_with_paper, gap_closed, kendall_tau

    assert gap_closed(55.0, 50.0, 60.0) == pytest.approx(0.5)
    assert gap_closed(45.0, 50.0, 60.0) == pytest.approx(-0.5)
    assert gap_closed(55.0, 60.0, 50.0) is None and gap_closed(None, 1.0, 2.0) is None

    def tau_by_pairs(a, b):  # τ-b from the pair counts, written out
        n = len(a)
        pairs = [(a[i] - a[j], b[i] - b[j]) for i in range(n) for j in range(i + 1, n)]
        c = sum(1 for x, y in pairs if x * y > 0)
        d = sum(1 for x, y in pairs if x * y < 0)
        ta = sum(1 for x, y in pairs if x == 0 and y != 0)
        tb = sum(1 for x, y in pairs if y == 0 and x != 0)
        return (c - d) / math.sqrt((c + d + ta) * (c + d + tb))

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    a, b = [3.0, 1.0, 2.0, 5.0, 2.0], [1.0, 0.0, 2.0, 2.0, 3.0]
    assert kendall_tau(a, b) == pytest.approx(tau_by_pairs(a, b))
    assert kendall_tau([1.0], [2.0]) is None and kendall_tau([1.0, 1.0], [1.0, 2.0]) is None

    paper = {"teacher": {"mfnet": {"miou": "60"}}, "student": {"mfnet": {"miou": "50"}},
             "kd": {"mfnet": {"miou": "52"}}, "dkd": {"mfnet": {"miou": "55"}}, "lix": {"mfnet": {"miou": "58"}}}
    ours = {"teacher": {"mfnet": 40.0}, "student": {"mfnet": 30.0}, "kd": {"mfnet": 35.0},
            "dkd": {"mfnet": 31.0}, "lix": {"mfnet": 33.0}}
    c = compare_with_paper(ours, paper)["mfnet"]
    assert c["gap"]["kd"] == {"ours": pytest.approx(0.5), "paper": pytest.approx(0.2)}
    assert c["gap"]["lix"] == {"ours": pytest.approx(0.3), "paper": pytest.approx(0.8)}
    assert c["n"] == 3 and c["tau"] == pytest.approx(tau_by_pairs([35.0, 31.0, 33.0], [52.0, 55.0, 58.0]))


def test_the_shipped_paper_tables():
    """lix/paper_tables.json against cells read off the paper by hand, and the paper's own
    consistency: Table IV's third row is DWLD of Table I, Table V's Laplace + CKA cell is ARFD's
    mFsc of Table I (MFNet, vKITTI2)."""
    from lix.report.paper import SHIPPED, load_paper_figures

    p = load_paper_figures(SHIPPED)
    ds = p["datasets"]
    assert [ds[k]["table"] for k in ("vkitti2", "kitti", "nuimages")] == ["I", "II", "III"]
    assert all(len(ds[k]["rows"]) == 21 for k in ds)  # teacher, student, 17 baselines, DWLD... IntRA-KD is not a row
    assert "intra_kd" not in ds["vkitti2"]["rows"]
    assert ds["vkitti2"]["rows"]["lix"]["mfnet"] == {"mfsc": "92.50", "fwfsc": "97.32", "miou": "86.88",
                                                     "fwiou": "95.10"}
    assert ds["vkitti2"]["rows"]["teacher"]["mfnet"]["mfsc"] == "92.65"
    assert ds["kitti"]["rows"]["lix"]["sne_roadseg"]["miou"] == "54.65"
    assert ds["kitti"]["rows"]["teacher"]["sne_roadseg"]["miou"] == "61.34"
    assert ds["kitti"]["rows"]["nst"]["mfnet"] == {"mfsc": "40.53", "fwfsc": "88.08", "miou": "34.05",
                                                   "fwiou": "81.06"}
    assert ds["nuimages"]["rows"]["student"]["sne_roadseg"]["mfsc"] == "60.83"
    assert ds["nuimages"]["rows"]["lix"]["sne_roadseg"]["mfsc"] == "72.90"
    assert ds["nuimages"]["rows"]["afdcd"]["mfnet"]["fwfsc"] == "93.31"
    t4, t5 = p["ablations"]["dwc_inputs"], p["ablations"]["kernel_consistency"]
    assert t4["table"] == "IV" and t5["table"] == "V" and t5["metric"] == "mfsc"
    dwld = ds["vkitti2"]["rows"]["dwld"]["mfnet"]
    assert {k: v for k, v in t4["rows"][2].items() if k != "label"} == dwld
    assert t5["rows"]["laplace"]["cka"] == ds["vkitti2"]["rows"]["arfd"]["mfnet"]["mfsc"] == "92.46"
    assert t5["rows"]["none"] == {"cosine": "86.39", "euclidean": "89.81", "pearson": "88.51", "cka": "90.02"}
    # the prose: LIX on nuImages (SNE-RoadSeg) is about 12 points of mFsc above the student
    assert float(ds["nuimages"]["rows"]["lix"]["sne_roadseg"]["mfsc"]) - \
        float(ds["nuimages"]["rows"]["student"]["sne_roadseg"]["mfsc"]) == pytest.approx(12.07)


@pytest.mark.parametrize("edit, key", [
    (lambda p: p.pop("source"), "source"),
    (lambda p: p["datasets"]["kitti"]["rows"].update(nosuch={"mfnet": {"miou": 1.0}}), "rows.nosuch"),
    (lambda p: p["datasets"]["kitti"]["rows"]["lix"].update(resnet={"miou": 1.0}), "rows.lix.resnet"),
    (lambda p: p["datasets"]["kitti"]["rows"]["lix"]["mfnet"].update(acc=1.0), "rows.lix.mfnet.acc"),
    (lambda p: p["datasets"]["kitti"]["rows"]["lix"]["mfnet"].update(miou=0.585e3), "rows.lix.mfnet.miou"),
    (lambda p: p["datasets"]["kitti"].pop("setting"), "kitti.setting"),
    (lambda p: p["datasets"].update(vkitti={}), "datasets.vkitti"),
    (lambda p: p["datasets"]["kitti"].update(table=None), "kitti.table"),
    (lambda p: p["datasets"]["kitti"]["rows"]["lix"]["mfnet"].update(miou=10**400), "rows.lix.mfnet.miou"),
])
def test_paper_figures_refused_naming_the_key(tmp_path, edit, key):
    from lix.report.paper import load_paper_figures
    from pipeline.errors import ConfigError, DataError

    bad = json.loads(json.dumps(PAPER))
    edit(bad)
    f = tmp_path / "tables.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match=re.escape(key)) as e:
        load_paper_figures(f)
    assert str(f) in str(e.value)
    f.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_paper_figures(f)
    with pytest.raises(DataError, match="not found"):
        load_paper_figures(tmp_path / "missing.json")

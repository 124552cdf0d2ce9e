"""The verdict from a profile's ledger alone (lix/verdict/figures.py, markdown.py): the
figures checked against values computed here independently (numpy, scipy's t and Kendall's τ)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from lix.report.paper import SHIPPED, load_paper_figures
from lix.sweep.profile_run import write_ledger_report
from lix.verdict.figures import t975, verdict

SEEDS = [0, 1, 2, 3, 4]
MIOU = {  # method -> per-seed val mIoU (fraction)
    "teacher": [0.70, 0.71, 0.69, 0.72, 0.70], "student": [0.60, 0.62, 0.59, 0.61, 0.60],
    "kd": [0.62, 0.63, 0.60, 0.62, 0.61], "dkd": [0.61, 0.64, 0.61, 0.63, 0.62],
    "lix": [0.63, 0.62, 0.62, 0.64, 0.60],
}


def _lines() -> list[dict]:
    out = []
    for m, vals in MIOU.items():
        for s, v in zip(SEEDS, vals):
            last = {"train/diag.dwc.w_mean": 4.0 + s, "train/diag.dwc.w_at_bound": 0.0} if m == "lix" else {}
            out.append({"digest": f"{m}{s}", "profile": "testbed", "dataset": "vkitti2", "model": "mfnet",
                        "method": m, "seed": s, "metrics": {"miou": v, "mfsc": v + 0.1, "fwiou": 0.8, "fwfsc": 0.9,
                                                            "per_class_iou": {"Road": 0.9, "Car": v}},
                        "best_epoch": 10 + s, "epochs": 20 + s, "stopped": "max_epochs" if s == 4 else "early_stopping",
                        "curve": [v / 2, v], "last": last, "seconds": 60.0, "threads": 1, "machine": "cpu, 2 cores",
                        "commit": "abc", "code_digest": "def", "date": f"2026-12-0{s + 1}"})
    return out


def test_the_verdicts_figures_equal_an_independent_computation():
    paper = load_paper_figures(SHIPPED)
    r = verdict(_lines(), paper)["vkitti2"]["mfnet"]
    pct = {m: 100 * np.array(v) for m, v in MIOU.items()}
    # premise: teacher - student, paired over seeds, with Student's t interval
    d = pct["teacher"] - pct["student"]
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert r["premise"]["mean"] == pytest.approx(d.mean()) and r["premise"]["holds"]
    assert r["premise"]["ci95"] == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-3)
    # LIX against the plain student, DKD and the best other baseline (by mean mIoU: DKD here)
    assert r["best_baseline"] == "dkd"
    assert set(r["comparisons"]) == {"lix vs student", "lix vs dkd"}
    dd = pct["lix"] - pct["dkd"]
    c = r["comparisons"]["lix vs dkd"]
    assert c["mean"] == pytest.approx(dd.mean()) and c["agree"] == int((dd > 0).sum()) and c["n"] == 5
    # the share of the gap closed, ours and the paper's
    ours = (pct["lix"].mean() - pct["student"].mean()) / (pct["teacher"].mean() - pct["student"].mean())
    assert r["gap"]["lix"]["ours"] == pytest.approx(ours)
    rows = paper["datasets"]["vkitti2"]["rows"]
    p = {m: float(rows[m]["mfnet"]["miou"]) for m in ("teacher", "student", "kd", "dkd", "lix")}
    assert r["gap"]["kd"]["paper"] == pytest.approx((p["kd"] - p["student"]) / (p["teacher"] - p["student"]))
    # rank agreement over the distillation methods both have
    tau = stats.kendalltau([pct[m].mean() for m in ("kd", "dkd", "lix")], [p[m] for m in ("kd", "dkd", "lix")])[0]
    assert r["rank"]["tau"] == pytest.approx(tau) and r["rank"]["n"] == 3
    lix = r["cells"]["lix"]
    assert lix["best_epoch_median"] == 12 and lix["hit_cap"] == 1 and lix["stopped"] == {"max_epochs": 1,
                                                                                           "early_stopping": 4}
    assert lix["dwc"]["w_mean"][0] == pytest.approx(6.0)
    assert lix["per_class_iou"]["Car"] == pytest.approx(pct["lix"].mean())
    assert [t975(df) for df in (1, 4, 30)] == pytest.approx([stats.t.ppf(0.975, df) for df in (1, 4, 30)], abs=1e-3)


def test_the_report_is_built_from_the_ledger_file_alone(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps(ln) + "\n" for ln in _lines()))
    s = write_ledger_report(ledger, tmp_path / "report", paper=SHIPPED)
    text = (tmp_path / "report" / "README.md").read_text()
    assert s["totals"]["runs"] == 25 and s["totals"]["cpu_hours"] == pytest.approx(25 * 60 / 3600)
    assert "training-code digests: `def` (25)." in text and "rekeyed" not in text
    for needle in ("Premise", "lix vs dkd", "Kendall", "gap closed (paper)", "DWC weights", "vkitti2-mfnet-miou.png"):
        assert needle in text, needle
    rows = [ln for ln in text.splitlines() if ln.startswith("| ")]
    methods = [ln.split("|")[1].strip() for ln in rows[1:6]]
    assert methods == ["teacher", "student", "kd", "dkd", "lix"]  # the profile's order
    assert (tmp_path / "report" / "vkitti2-mfnet-miou.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "verdict.json").read_text())["totals"]["runs"] == 25


def test_the_header_names_the_code_digests_lines_were_rekeyed_to(tmp_path):
    lines = _lines()
    for ln in lines[:3]:
        ln["rekeyed"] = {"from": "x", "code_digest": "f6bd19ccbfaf0000", "commit": "h", "proof": "p", "date": "d"}
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    s = write_ledger_report(ledger, tmp_path / "report", paper=SHIPPED, plots=False)
    assert s["totals"]["rekeyed"] == {"f6bd19ccbfaf0000": 3}
    assert "training-code digests: `def` (25); rekeyed (`lix sweep --rekey`: proven the same training code) to " \
           "`f6bd19ccbfaf` (3)." in (tmp_path / "report" / "README.md").read_text()


def test_a_missing_or_empty_ledger_is_named(tmp_path):
    from pipeline.errors import DataError

    with pytest.raises(DataError, match="ledger not found") as e:
        write_ledger_report(tmp_path / "typo.jsonl", tmp_path / "report")
    assert "typo.jsonl" in str(e.value)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no runs in the ledger yet"):
        write_ledger_report(tmp_path / "empty.jsonl", tmp_path / "report")
    assert not (tmp_path / "report").exists()  # nothing written for either


def test_curves_are_placed_at_their_epochs_and_the_mean_splits_where_the_first_seed_stopped():
    from lix.verdict.figures import curve_points
    from lix.verdict.markdown import mean_curve

    # a line with its evaluations' epochs; an older one without (evaluated every 2nd epoch, 6 epochs)
    assert curve_points({"curve": [0.1, 0.2], "curve_epochs": [3, 6], "epochs": 6}) == [(3, 0.1), (6, 0.2)]
    assert curve_points({"curve": [0.1, 0.2, 0.3], "epochs": 6}) == [(2, 0.1), (4, 0.2), (6, 0.3)]
    assert curve_points({"curve": [0.1, 0.2], "epochs": 5}) == [(1, 0.1), (2, 0.2)]  # no even spacing: indices
    assert curve_points({"curve": [], "epochs": 5}) == []
    a, b = [(2, 0.2), (4, 0.4)], [(2, 0.4), (4, 0.6), (6, 0.8), (8, 1.0)]
    full, tail = mean_curve([a, b])
    np.testing.assert_allclose(full, [(2, 0.3), (4, 0.5)])
    np.testing.assert_allclose(tail, [(6, 0.8), (8, 1.0)])
    assert mean_curve([b]) == ([*b], [])


def test_the_gap_closed_uses_the_seeds_the_method_the_teacher_and_the_student_share():
    lines = [ln for ln in _lines() if not (ln["method"] == "lix" and ln["seed"] >= 3)]  # LIX: seeds 0-2 only
    r = verdict(lines)["vkitti2"]["mfnet"]
    pct = {m: 100 * np.array(v[:3]) for m, v in MIOU.items()}
    expected = (pct["lix"].mean() - pct["student"].mean()) / (pct["teacher"].mean() - pct["student"].mean())
    assert r["gap"]["lix"]["ours"] == pytest.approx(expected)
    assert r["cells"]["lix"]["best_epoch_median"] == 11  # seeds 0-2: best epochs 10, 11, 12


def test_a_median_epoch_prints_whole_or_to_the_half(tmp_path):
    from lix.verdict.markdown import _epoch

    assert [_epoch(81.0), _epoch(80.5), _epoch(12), _epoch(None)] == ["81", "80.5", "12", "–"]
    lines = [ln for ln in _lines() if ln["seed"] < 4]  # 4 seeds: LIX's best epochs 10..13, median 11.5
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    write_ledger_report(ledger, tmp_path / "report", paper=SHIPPED)
    row = next(ln for ln in (tmp_path / "report" / "README.md").read_text().splitlines() if ln.startswith("| lix |"))
    assert "| 11.5 |" in row and "| 11.5.0" not in row

"""The diagnostics beside the verdict (lix/sweep/diagnostics.py): loss terms, CKA at the chosen
checkpoint and per tap, checked against values computed here with numpy from the same lines;
the lines the verdict would not count (a seed's older line), evaluations that cannot be paired,
comparisons paired by seed, and a report that fails halfway leaving the previous one whole."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lix.sweep.diagnostics as diagnostics_module
from lix.report.paper import SHIPPED
from lix.sweep.diagnostics import chosen_cka, chosen_index, diagnostics, reading
from lix.sweep.profile_run import write_ledger_report

SEEDS = [0, 1, 2]
CURVES = {0: [0.30, 0.50, 0.45], 1: [0.40, 0.40, 0.60], 2: [0.55, 0.50, 0.55]}  # ties: the first maximum
CKA = {0: [0.60, 0.70, 0.90], 1: [0.50, 0.65, 0.80], 2: [0.72, 0.74, 0.76]}


def _lines() -> list[dict]:
    out = []
    for m in ("teacher", "student", "lix"):
        for s in SEEDS:
            last = {"train/ce": 0.3 + 0.1 * s, "train/loss": 1.0 + s, "train/samples_per_s": 15.0,
                    "train/seconds": 30.0, "train/diag.dwc.w_mean": 8.0}
            if m == "lix":
                last |= {"train/dwld": 1.5 + s, "train/arfd": 0.05 * (s + 1)}
            if m != "teacher":
                last |= {"val/cka/rgb4": 0.6 + 0.01 * s, "val/cka/decoder": 0.8, "val/cka/mean": 0.7}
            out.append({"digest": f"{m}{s}", "profile": "testbed", "dataset": "vkitti2", "model": "mfnet",
                        "method": m, "seed": s, "metrics": {"miou": max(CURVES[s]), "per_class_iou": {}},
                        "best_epoch": 2 * (int(np.argmax(CURVES[s])) + 1),
                        "epochs": 6, "stopped": "early_stopping", "curve": CURVES[s],
                        "cka": [] if m == "teacher" else CKA[s], "last": last, "seconds": 60.0, "threads": 1,
                        "machine": "cpu", "commit": "abc", "code_digest": "def", "date": "2026-12-05"})
    return out


def test_the_chosen_evaluation_is_the_first_maximum_of_the_curve():
    assert [chosen_index(CURVES[s]) for s in SEEDS] == [1, 2, 0]
    assert chosen_index([]) is None


def test_the_diagnostics_equal_an_independent_computation():
    d = diagnostics(_lines(), ["teacher", "student", "lix"])["vkitti2"]["mfnet"]
    assert list(d) == ["student", "lix"]  # the teacher is the reference, not a row
    lix = d["lix"]
    assert list(lix["terms"]) == ["ce", "arfd", "dwld"]  # ce first, then by name; diag.* and timings left out
    assert lix["terms"]["ce"] == pytest.approx(np.mean([0.3 + 0.1 * s for s in SEEDS]))
    assert lix["terms"]["dwld"] == pytest.approx(np.mean([1.5 + s for s in SEEDS]))
    assert lix["total"] == pytest.approx(np.mean([1.0 + s for s in SEEDS]))
    chosen = [CKA[s][int(np.argmax(CURVES[s]))] for s in SEEDS]  # numpy's argmax: the first maximum too
    assert lix["cka_chosen"] == pytest.approx(np.mean(chosen))
    assert lix["cka_last"]["rgb4"] == pytest.approx(np.mean([0.6 + 0.01 * s for s in SEEDS]))
    assert set(lix["cka_last"]) == {"rgb4", "decoder", "mean"} and lix["n"] == 3
    assert d["student"]["terms"] == {"ce": pytest.approx(0.4)}


def test_the_verdicts_readme_and_json_carry_the_diagnostics(tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps(ln) + "\n" for ln in _lines()))
    s = write_ledger_report(ledger, tmp_path / "report", paper=SHIPPED)
    text = (tmp_path / "report" / "README.md").read_text()
    assert text.index("## vKITTI2") < text.index("## Diagnostics")
    diag = text[text.index("## Diagnostics"):].splitlines()
    row = next(ln for ln in diag if ln.startswith("| lix |"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[3] == f"{np.mean([0.3 + 0.1 * s for s in SEEDS]):.3f}"  # train ce
    arfd, dwld = np.mean([0.05 * (s + 1) for s in SEEDS]), np.mean([1.5 + s for s in SEEDS])
    assert cells[4] == f"arfd {arfd:.3f}, dwld {dwld:.3f}"  # the distillation terms, by name
    assert (tmp_path / "report" / "vkitti2-mfnet-cka.png").stat().st_size > 0
    saved = json.loads((tmp_path / "report" / "verdict.json").read_text())
    assert saved["diagnostics"]["vkitti2"]["mfnet"]["lix"]["cka_chosen"] == pytest.approx(
        s["diagnostics"]["vkitti2"]["mfnet"]["lix"]["cka_chosen"])


def test_a_seeds_older_line_and_unpairable_evaluations_are_left_out():
    lines = _lines()
    stale = json.loads(json.dumps(next(ln for ln in lines if ln["method"] == "lix" and ln["seed"] == 0)))
    stale["metrics"]["miou"], stale["last"]["train/ce"] = 0.1, 9.0
    lines.insert(0, stale)  # an older line of the same seed (another digest): the verdict counts the last one
    lix = diagnostics(lines)["vkitti2"]["mfnet"]["lix"]
    assert lix["n"] == 3 and lix["terms"]["ce"] == pytest.approx(0.4)
    assert lix["miou"] == pytest.approx(100 * np.mean([max(CURVES[s]) for s in SEEDS]))
    line = next(ln for ln in lines[1:] if ln["method"] == "lix" and ln["seed"] == 0)
    assert chosen_cka(line) == CKA[0][1]
    assert chosen_cka({**line, "cka": CKA[0][:2]}) is None  # one evaluation's CKA missing: positions shifted
    assert chosen_cka({**line, "metrics": {"miou": 0.45}}) is None  # the curve's best is not the run's
    assert chosen_cka({**line, "curve": []}) is None


def _cell(seeds: dict[int, tuple[float, float, float]], dwc=None) -> dict:
    """A method's diagnostics from seed -> (mIoU, CKA chosen, CE)."""
    per = {s: {"miou": m, "cka_chosen": c, "ce": ce} for s, (m, c, ce) in seeds.items()}
    return {"seeds": per, "n": len(per), "dwc": dwc or {}}


def test_the_reading_states_the_differences_paired_by_seed():
    one = {"w_mean": 8.0, "w_std_class": 0.1, "w_std_pixel": 0.01}
    cells = {"student": _cell({0: (50.0, 0.60, 0.30), 1: (52.0, 0.62, 0.28)}),
             # seed 2 has no plain student: it is left out of the paired differences
             "lix": _cell({0: (49.0, 0.70, 0.35), 1: (51.0, 0.72, 0.31), 2: (70.0, 0.10, 0.0)}, one),
             "dwld": _cell({0: (51.5, 0.55, 0.28)}, {"w_mean": 4.0, "w_std_class": 1.5, "w_std_pixel": 0.2}),
             "arfd": _cell({0: (52.0, 0.65, 0.31), 1: (53.0, None, 0.30)})}
    text = reading(cells)
    assert text[0] == ("lix − plain student, paired over 2 seeds: mIoU -1.00 points, val CKA with the teacher at "
                       "the chosen checkpoint +0.100, last-epoch train CE +0.040: closer to the teacher's features "
                       "without gaining accuracy.")
    assert text[1] == ("dwld − plain student, paired over 1 seed: mIoU +1.50 points, val CKA with the teacher at the "
                       "chosen checkpoint -0.050, last-epoch train CE -0.020: more accurate without moving toward "
                       "the teacher's features.")
    assert text[2].startswith("arfd − plain student, paired over 2 seeds (1 for the CKA): mIoU +1.50 points")
    assert text[2].endswith("closer to the teacher's features and more accurate.")
    # 0.1 and 0.01 are under 5 % of 8: one weight; 1.5 is not under 5 % of 4
    assert text[3] == ("lix's DWC weights at the last epoch (mean over 3 seeds): mean 8.00, std across classes 0.10 "
                       "and across pixels 0.010: nearly one weight everywhere, so its NCLD is close to DKD's with "
                       "β ≈ 8.0.")
    assert text[4].endswith("std across classes 1.50 and across pixels 0.200.")
    assert reading({"lix": cells["lix"]}) == [text[3]]  # no plain student: no comparison


def test_a_report_that_fails_halfway_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps(ln) + "\n" for ln in _lines()))
    write_ledger_report(ledger, tmp_path / "report", paper=SHIPPED, plots=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()}
    with ledger.open("a") as f:
        f.write(json.dumps({**_lines()[-1], "digest": "new", "seed": 7}) + "\n")

    def broken(*_a, **_k):
        raise RuntimeError("a picture could not be drawn")

    monkeypatch.setattr(diagnostics_module, "diagnostics_markdown", broken)
    with pytest.raises(RuntimeError):
        write_ledger_report(ledger, tmp_path / "report", paper=SHIPPED, plots=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "report").iterdir()} == before

"""benchmarks/distill_step.py's testbed presets: ``testbed`` is params.yaml's default crops,
``profile`` the crops `lix sweep --profile testbed` trains on, read from the profile itself."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import distill_step  # noqa: E402


def test_profile_preset_reads_the_profiles_crops():
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "lix/sweep/profiles/testbed.yaml").read_text())
    got = distill_step.configurations("profile", ["mfnet"])
    assert set(got) == {"mfnet-vkitti2", "mfnet-nuimages"}
    for label, (model, xc, batch, h, w, kw, dataset) in got.items():
        assert [h, w] == spec["set"][f"train.{dataset}.crop"], label
        assert (model, xc, batch, kw) == distill_step.TESTBED[label][:3] + (distill_step.TESTBED[label][5],)
    only = distill_step.configurations("profile", ["mfnet"], ["nuimages"])
    assert list(only) == ["mfnet-nuimages"]


def test_testbed_preset_is_the_default_crops():
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    for label, (_m, _xc, batch, h, w, _kw, dataset) in distill_step.configurations("testbed", ["mfnet"]).items():
        assert [h, w] == params["train"][dataset]["crop"], label
        assert batch == params["train"][dataset]["batch_size"], label


def test_profile_resolutions_are_the_profiles():
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "lix/sweep/profiles/testbed.yaml").read_text())
    got = distill_step.profile_resolutions()
    assert got == {d: spec["set"][f"train.{d}.resolution"] for d in ("vkitti2", "nuimages")}


def test_a_variant_gets_typed_hyper_parameters():
    """``lix~lookahead_every=4`` is the integer 4, as the sweep and ``lix distill`` read it
    (lix.config.variant_hyper), not the string '4' that the config check rejects."""
    model, xc, _batch, _h, _w, kw, _d = next(iter(distill_step.configurations("testbed", ["mfnet"]).values()))
    cfg = dict(model=model, xc=xc, batch=2, h=32, w=48, kw=kw, device="cpu", steps=1, warmup=0, threads=1,
               ignored_rows=0.0, method="lix~lookahead_every=4,dwc_training=adversarial")
    distiller = distill_step._build(cfg)[4]
    assert distiller.dwld.lookahead_every == 4 and distiller.dwld.dwc_training == "adversarial"

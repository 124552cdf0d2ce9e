"""``lix distill``: thin over lix/distill/ (parse, call, report); ``--list`` prints the methods."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from lix import layout
from lix.cli.common import (
    Dataset,
    EvaluateOpt,
    FreshIfChangedOpt,
    MetricsOpt,
    ParamsOpt,
    ProgressOpt,
    ResumeOpt,
    SeedOpt,
    VerifyOpt,
    command,
    out,
    run_outcome,
)

distill_app = typer.Typer(help="Distillation of the teacher into the RGB-only student.")


def print_methods() -> None:
    from rich.table import Table

    from lix.distill import method_table

    table = Table(title="Distillation methods (lix distill --method NAME); taps: the feature maps read "
                        "(family default: MFNet rgb4, fused, decoder; SNE-RoadSeg layer1-4, decoder)", show_lines=False)
    for col in ("method", "kind", "reference", "loss terms (weight)", "taps", "hyper-parameters (default)"):
        table.add_column(col, overflow="fold")
    for row in method_table():
        terms = ", ".join(f"{k} ({v:g})" for k, v in row["terms"].items())
        hyper = ", ".join(f"{k}={v!r}" for k, v in row["hyper"].items() if not k.startswith("w_"))
        if row["pretrain"]:
            hyper += " [pre-training phase, cached]"
        table.add_row(row["name"], row["kind"], row["reference"], terms, row["taps"], hyper)
    out.print(table)


@command(distill_app, "distill")
def distill_cmd(
    dataset: Dataset = typer.Option(None, "--dataset", "-d", help="Which dataset (its shards and teacher)."),
    method: str = typer.Option(None, "--method", "-m", help="A registered method (see --list), 'student' (the CE "
                                                            "alone, the teacher only monitored), or a variant "
                                                            "<method>~<key>=<value>[,...] (e.g. lix~beta=4)."),
    out_dir: Path = typer.Option(None, "--out", help="Run directory (default data/runs/<dataset>/<model>/<method>/"
                                                     "seed<k>)."),
    teacher: Path = typer.Option(None, "--teacher", help="The teacher's checkpoint (default "
                                 "data/runs/<dataset>/<model>/teacher/seed<k>/<distill.teacher>.pt)."),
    model: str = typer.Option(None, "--model", help="Student family; must match the teacher's "
                                                    "(default train.<dataset>.model). arch.<model> applies."),
    seed: int = SeedOpt,
    hyper: str = typer.Option(None, "--hyper", help='JSON overrides of the method\'s hyper-parameters, on top '
                                                    'of distill.hyper.<method>, e.g. \'{"temperature": 2}\'.'),
    shards: Path = typer.Option(None, "--shards", help="Shard directory (default data/shards/<dataset>)."),
    params: Path = ParamsOpt,
    resume: bool = ResumeOpt,
    fresh_if_changed: bool = FreshIfChangedOpt,
    metrics: Path = MetricsOpt,
    verify: str = VerifyOpt,
    evaluate: bool = EvaluateOpt,
    list_methods: bool = typer.Option(False, "--list", help="Print every method with its reference, loss terms "
                                                            "and hyper-parameters, and exit."),
    progress: bool = ProgressOpt,
):
    """Train an RGB-only student from a trained teacher with a distillation method."""
    if list_methods:
        print_methods()
        return
    from lix.cli.train import finish_run
    from lix.config import PLAIN_STUDENT, load_params
    from lix.distill.registry import validate_hyper
    from lix.distill.train import distill_fit
    from lix.validate import check_method_name, check_model_name, check_params
    from pipeline.errors import ConfigError

    if dataset is None or method is None:
        raise ConfigError("--dataset/--method", "both are required (or --list)")
    p = check_params(load_params(params))
    d = dataset.value
    if model is not None:
        check_model_name(model, "--model")
    cfg = p.train_config(d, model, seed)
    if p.distill.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=p.distill.epochs)
    base, pairs = check_method_name(method, "--method")
    kw = dict(p.distill.hyper.get(base) or {}) if base != PLAIN_STUDENT else {}
    kw |= pairs
    if hyper:
        try:
            extra = json.loads(hyper)
        except json.JSONDecodeError as e:
            raise ConfigError("--hyper", f"not valid JSON ({e.msg}): {hyper!r}") from None
        if not isinstance(extra, dict):
            raise ConfigError("--hyper", f"expected a JSON object, got {hyper!r}")
        if base == PLAIN_STUDENT and extra:
            raise ConfigError("--hyper", "the plain student takes no hyper-parameters")
        kw |= extra
    if base != PLAIN_STUDENT:
        kw = validate_hyper(base, kw, prefix="--hyper" if hyper else None)
    teacher = teacher or layout.teacher_checkpoint(d, cfg.model, cfg.seed, p.distill.teacher)
    out_dir = out_dir or layout.run_dir(d, cfg.model, method, cfg.seed)
    shard_dir = shards or layout.shards(d)
    if verify not in ("size", "sha256"):
        raise ConfigError("--verify", f"expected size or sha256, got {verify!r}")
    with run_outcome(out_dir):
        summary = distill_fit(shard_dir, out_dir, cfg, dataset=d, method=base, teacher_checkpoint=teacher,
                              hyper=kw, progress=progress, verify=verify,
                              resume="if_same" if fresh_if_changed and resume else resume)
        out.print(f"[green]{d}[/] {method} ({cfg.model}, seed {cfg.seed}): {summary['epochs']} epochs, stopped: "
                  f"{summary['stopped']}, best val mIoU {100 * summary['best_miou']:.2f} % at epoch "
                  f"{summary['best_epoch']} -> {out_dir}")
        finish_run(out_dir, shard_dir, summary, evaluate, metrics, progress)

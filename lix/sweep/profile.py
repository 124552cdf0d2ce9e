"""Named experiment profiles (``lix sweep --profile <name>``): a matrix of runs trained to a
stopping rule, recorded run by run in a tracked ledger (:mod:`lix.sweep.ledger`) so that the
matrix can be built in parts, over sessions and machines.

A profile (``lix/sweep/profiles/<name>.yaml``, or any YAML file) names its datasets, models,
methods and seeds, the ``params.yaml`` keys it sets for every run (``set``: the stopping rule,
above all), and its folder (``data/<name>`` by default). The folder holds

* ``ledger.jsonl`` (tracked): one line per finished run (:mod:`lix.sweep.ledger`);
* ``teachers/<dataset>-<model>-seed<k>.safetensors`` (tracked, ~3 MB each for MFNet): the teachers
  the students distil from, so that a student run on another machine distils from the very
  teacher the ledger recorded (retraining a teacher on another CPU would not give the same
  bits, and so not the same students);
* ``params.yaml`` (tracked): this checkout's params.yaml with the profile's keys set, which the runs read;
* ``runs/`` (not tracked): the full run directories (checkpoints, logs, curves).

The runs are ``lix train`` / ``lix distill`` commands scheduled by the sweep's runner (the same
dependency waves, failure isolation, executors and stopping as the DVC stages); the data they
read is the DVC pipeline's shards (``dvc repro shards@<dataset>``, a stage of the plan too).
A run whose digest (:func:`run_digest`: its resolved config, its method's hyper-parameters,
the training code, the data's recipe, its teacher) is in the ledger is not run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lix import layout
from lix.config import PLAIN_STUDENT, Params
from lix.sweep.params import set_params
from lix.sweep.plan import Plan
from pipeline.errors import ConfigError, DataError

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
PREP_SECTIONS = ("synthetic", "download", "reader", "splits", "depth", "normals", "shards")
TEACHER = "teacher"


@dataclass(frozen=True)
class Profile:
    name: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    methods: tuple[str, ...]  # `student` (CE only) or a distillation method / variant
    seeds: tuple[int, ...]
    set: dict[str, Any]  # params.yaml keys -> values, for every run
    folder: Path
    description: str = ""

    @property
    def ledger(self) -> Path:
        return self.folder / "ledger.jsonl"

    @property
    def params(self) -> Path:
        return self.folder / "params.yaml"

    def teacher_file(self, dataset: str, model: str, seed: int) -> Path:
        return self.folder / "teachers" / f"{dataset}-{model}-seed{seed}.safetensors"

    def run_dir(self, dataset: str, model: str, method: str, seed: int) -> Path:
        return layout.run_dir(dataset, model, method, seed, root=self.folder / "runs")


def load_profile(name: str | Path) -> Profile:
    """The profile ``name`` (a file of lix/sweep/profiles/) or the YAML file at that path."""
    path = Path(name)
    if not path.suffix:
        path = PROFILES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError("--profile", f"no profile {name!r} ({path}); known: {known}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(path, f"not valid YAML: {e}") from None
    keys = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    unknown = sorted(set(data) - keys)
    if unknown:
        raise ConfigError(f"{path.name}: {unknown[0]}", f"unknown key; allowed: {sorted(keys)}")
    for key in ("datasets", "models", "methods", "seeds"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise ConfigError(f"{path.name}: {key}", "expected a non-empty list")
    sets = data.get("set") or {}
    prep = sorted(k for k in sets if k.split(".")[0] in PREP_SECTIONS or k == "datasets")
    if prep:  # the runs read the DVC pipeline's shards: a profile of other data would need its own
        raise ConfigError(f"{path.name}: set.{prep[0]}", "a profile may not change the data's preparation "
                                                         "(the runs read the pipeline's shards)")
    return Profile(name=path.stem, datasets=tuple(data["datasets"]), models=tuple(data["models"]),
                   methods=tuple(data["methods"]), seeds=tuple(int(s) for s in data["seeds"]), set=dict(sets),
                   folder=Path(data.get("folder") or f"data/{path.stem}"), description=data.get("description", ""))


def write_params(profile: Profile, base: str | Path = "params.yaml", write: bool = True) -> Params:
    """``profile.params``: ``base`` with the profile's keys set (validated as a whole, comments
    kept), and the matrix's models, methods and seeds under ``sweep`` so that the registries check
    their names (``write=False``: only the result). Returns the parsed result."""
    from pipeline.atomic import write_text

    profile.params.parent.mkdir(parents=True, exist_ok=True)
    tmp = profile.params.with_name("params.yaml.tmp")
    tmp.write_text(Path(base).read_text())
    matrix = {"datasets": list(profile.datasets), "sweep.models": list(profile.models),
              "sweep.methods": [m for m in profile.methods if "~" not in m],
              "sweep.ablations": [m for m in profile.methods if "~" in m], "sweep.seeds": list(profile.seeds)}
    assignments = [f"{k}={json.dumps(v)}" for k, v in {**matrix, **profile.set}.items()]
    try:
        set_params(tmp, assignments)
        text = tmp.read_text()
    finally:
        tmp.unlink(missing_ok=True)
    if write and (not profile.params.is_file() or profile.params.read_text() != text):
        write_text(profile.params, text)
    from lix.config import params_from_dict

    return params_from_dict(yaml.safe_load(text))


@dataclass(frozen=True)
class Run:
    """One run of a profile: a teacher (``method == "teacher"``) or a student."""

    dataset: str
    model: str
    method: str
    seed: int

    @property
    def stage(self) -> str:
        return f"{self.method if self.method == TEACHER else 'student'}@{self.dataset}-{self.model}-" + (
            f"{self.seed}" if self.method == TEACHER else f"{self.method}-{self.seed}")

    @property
    def teacher(self) -> "Run":
        return Run(self.dataset, self.model, TEACHER, self.seed)


def prep_stage(dataset: str) -> str:
    return f"shards@{dataset}"


def runs(profile: Profile) -> list[Run]:
    """Every run of the matrix, seed by seed (a matrix built in parts has whole seeds first),
    within a seed the teachers first."""
    out = []
    for seed in profile.seeds:
        for ds in profile.datasets:
            for model in profile.models:
                out.append(Run(ds, model, TEACHER, seed))
        for ds in profile.datasets:
            for model in profile.models:
                out += [Run(ds, model, m, seed) for m in profile.methods]
    return out


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def data_recipe(params: Params, dataset: str) -> str:
    """The digest of what makes a dataset's shards: its preparation sections and the
    preparation code (every ``.py`` of ``pipeline``). A recipe, not the bytes: HDF5 files carry
    timestamps, and the same recipe on another machine is the same testbed."""
    import pipeline

    sections = {s: dataclasses.asdict(getattr(params, s)[dataset]) for s in PREP_SECTIONS}
    code = hashlib.sha256()
    root = Path(pipeline.__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        code.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return _sha({"sections": sections, "code": code.hexdigest()})


def method_hyper(params: Params, method: str) -> dict:
    """The resolved hyper-parameters of ``method`` (a variant's pairs on distill.hyper.<base>)."""
    from lix.config import variant_hyper
    from lix.distill.registry import validate_hyper

    if method in (TEACHER, PLAIN_STUDENT):
        return {}
    base, pairs = variant_hyper(method)
    return validate_hyper(base, {**(params.distill.hyper.get(base) or {}), **pairs})


def run_digest(run: Run, params: Params, code: str, teacher_digest: str | None) -> str:
    """sha256 of everything that determines ``run``: its resolved training config (the
    profile's keys included), its method and resolved hyper-parameters, the training code
    (``code``: lix.provenance.code_digest), the data's recipe and, for a student, its teacher's digest."""
    cfg = params.train_config(run.dataset, run.model, run.seed)
    if run.method != TEACHER and params.distill.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=params.distill.epochs)
    return _sha({"run": dataclasses.asdict(run), "train": dataclasses.asdict(cfg),
                 "hyper": method_hyper(params, run.method),
                 "distill_teacher": params.distill.teacher if run.method != TEACHER else None,
                 "code": code, "data": data_recipe(params, run.dataset), "teacher": teacher_digest})


def digests(profile: Profile, params: Params, code: str) -> dict[Run, str]:
    out: dict[Run, str] = {}
    for r in runs(profile):  # teachers first, so that a student finds its teacher's digest
        out[r] = run_digest(r, params, code, None if r.method == TEACHER else out[r.teacher])
    return out


def command(profile: Profile, run: Run, python: str = sys.executable) -> list[str]:
    """The ``lix train`` / ``lix distill`` command of ``run`` (resumes its run directory exactly,
    starts afresh when the directory belongs to another config or code)."""
    common = ["--dataset", run.dataset, "--model", run.model, "--seed", str(run.seed), "--params", str(profile.params),
              "--shards", str(layout.shards(run.dataset)), "--out", str(profile.run_dir(*_key(run))),
              "--fresh-if-changed", "--no-progress"]
    if run.method == TEACHER:
        return [python, "-m", "lix.cli", "train", "--role", "teacher", *common]
    return [python, "-m", "lix.cli", "distill", "--method", run.method,
            "--teacher", str(profile.teacher_file(run.dataset, run.model, run.seed)), *common]


def _key(run: Run) -> tuple[str, str, str, int]:
    return run.dataset, run.model, run.method, run.seed


def plan_profile(profile: Profile, params: Params, done: set[str], code: str, dvc: list[str] | None = None
                 ) -> tuple[Plan, dict[str, Run], dict[str, list[str]], dict[Run, str]]:
    """(the plan, stage -> run, stage -> argv, run -> digest): every run whose digest is not in
    ``done`` (the ledger's), its teacher's run when the teacher's file is missing, and the
    shards of each dataset (``dvc repro shards@<ds>``, a no-op when up to date) before them."""
    dig = digests(profile, params, code)
    todo_runs = [r for r in runs(profile) if dig[r] not in done]
    for r in list(todo_runs):
        t = r.teacher
        weights = profile.teacher_file(t.dataset, t.model, t.seed)
        if r.method != TEACHER and t not in todo_runs and not weights.is_file():
            raise DataError(weights,
                            f"the ledger has teacher {t.stage} but its weights are missing; restore the file "
                            f"(git checkout) or remove that ledger line to retrain it")
    stage_run = {r.stage: r for r in todo_runs}
    argv = {s: command(profile, r) for s, r in stage_run.items()}
    upstream: dict[str, set[str]] = {}
    for ds in {r.dataset for r in todo_runs}:
        s = prep_stage(ds)
        upstream[s] = set()
        argv[s] = [*(dvc or [sys.executable, "-m", "dvc"]), "repro", s]
    for s, r in stage_run.items():
        up = {prep_stage(r.dataset)}
        if r.method != TEACHER and r.teacher.stage in stage_run:
            up.add(r.teacher.stage)
        upstream[s] = up
    order = [*(prep_stage(ds) for ds in profile.datasets if prep_stage(ds) in upstream), *stage_run]
    return Plan(order, upstream, set(order)), stage_run, argv, dig

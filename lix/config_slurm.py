"""``sweep.slurm`` of params.yaml: what ``lix sweep --executor slurm`` asks Slurm for, per job
(one job per DVC stage). No stage reads this section, so changing it reruns nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipeline.errors import ConfigError

_OPTION = re.compile(r"[a-z][a-z0-9-]*")  # an sbatch long option without its dashes


@dataclass(frozen=True)
class SlurmConfig:
    """Resources of one stage's job; empty strings leave the cluster's defaults.

    ``gpus_per_job`` GPUs for every stage but those matching a glob of ``cpu_only`` (data
    preparation without a network, the report); ``time_min`` the job's time limit: a job that
    reaches it is requeued (``requeue`` times at most) and its run resumes from ``last.pt``;
    ``setup`` shell lines run before the job (``module load ...``, ``source venv/bin/activate``);
    ``extra`` further sbatch options by long name (``{mail-type: FAIL}``)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 32
    time_min: int = 24 * 60
    requeue: int = 3
    cpu_only: tuple[str, ...] = ("download@*", "splits@*", "normals@*", "shards@*", "report")
    setup: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        for key, low in (("gpus_per_job", 0), ("cpus_per_job", 1), ("mem_gb", 1), ("time_min", 1), ("requeue", 0)):
            if getattr(self, key) < low:
                raise ConfigError(key, f"must be >= {low}, got {getattr(self, key)}")
        for k in self.extra:
            if not _OPTION.fullmatch(k):
                raise ConfigError(f"extra.{k}", "expected an sbatch long option without dashes, e.g. mail-type")

"""One run on several GPUs (and nodes) under Slurm: the batch script of ``lix sbatch``.

Slurm starts one task per node (``srun --ntasks-per-node=1``); each task is a ``torchrun``
that starts one process per GPU of its node, and the torchrun agents of all nodes meet at a
c10d rendezvous on the job's first node (``scontrol show hostnames``), keyed by the job id. So
the trainer sees what it sees under a plain ``torchrun`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``: :func:`lix.runtime.init_distributed`), ``train.<dataset>.batch_size`` stays the
global batch, and the same script serves one node or many. This is PyTorch's documented
multi-node launch (torchrun's ``--rdzv-backend=c10d``), with Slurm supplying the host list.
"""

from __future__ import annotations

import shlex

from lix.config_slurm import SlurmConfig


def torchrun_line(args: list[str], gpus_per_node: int, *, module: str = "lix.cli", port: int = 29500) -> str:
    """The ``srun ... torchrun ...`` line that runs ``python -m <module> <args>`` on every GPU of
    every node of the job (shell variables are Slurm's, expanded when the script runs)."""
    rdzv = f'"$head_node:{port}"'
    return " ".join([
        # the step's CPUs named again: srun no longer inherits --cpus-per-task from sbatch (Slurm 22.05)
        'srun --ntasks-per-node=1 --kill-on-bad-exit=1 --cpus-per-task="$SLURM_CPUS_PER_TASK"',
        "torchrun", '--nnodes="$SLURM_JOB_NUM_NODES"', f"--nproc-per-node={gpus_per_node}",
        '--rdzv-id="$SLURM_JOB_ID"', "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv}",
        "-m", module, *(shlex.quote(a) for a in args)])


def sbatch_script(args: list[str], cfg: SlurmConfig, *, nodes: int = 1, gpus_per_node: int | None = None,
                  name: str = "lix", log: str = "data/logs/slurm/%x-%j.out", module: str = "lix.cli",
                  port: int = 29500) -> str:
    """A batch script (``sbatch <file>``) that runs ``lix <args>`` on ``nodes`` nodes x
    ``gpus_per_node`` GPUs (default ``cfg.gpus_per_job``) with ``cfg``'s partition, account,
    CPUs, memory, time limit, setup lines and extra options. ``cpus_per_job`` is per node and is
    shared among its processes (``OMP_NUM_THREADS``)."""
    gpus = cfg.gpus_per_job if gpus_per_node is None else gpus_per_node
    if nodes < 1 or gpus < 1:
        from pipeline.errors import ConfigError

        raise ConfigError("--nodes" if nodes < 1 else "--gpus", "a torchrun job needs at least one node and one GPU")
    opts = {"job-name": name, "nodes": nodes, "ntasks-per-node": 1, "gpus-per-node": gpus,
            "cpus-per-task": cfg.cpus_per_job, "mem": f"{cfg.mem_gb}G", "time": cfg.time_min, "output": log}
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cfg, key):
            opts[key] = getattr(cfg, key)
    opts.update(cfg.extra)
    lines = ["#!/bin/bash", *(f"#SBATCH --{k}={v}" for k, v in opts.items()), "",
             "# written by `lix sbatch`: one torchrun per node, one process per GPU (README: Slurm)",
             "set -euo pipefail", *cfg.setup,
             'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
             f"export OMP_NUM_THREADS=$(( ${{SLURM_CPUS_PER_TASK:-{cfg.cpus_per_job}}} / {gpus} > 0 ? "
             f"${{SLURM_CPUS_PER_TASK:-{cfg.cpus_per_job}}} / {gpus} : 1 ))",
             torchrun_line(args, gpus, module=module, port=port), ""]
    return "\n".join(lines)

"""``lix report``: whatever runs of the experiment matrix exist, as a report in the paper's layout.

Input layout (the contract the experiment matrix writes; lix.layout.run_dir)
------------------------------------------------------------------------------
::

    <runs_root>/<dataset>/<model>/<method>/seed<k>/metrics.json   a finished run
    <runs_root>/<dataset>/<model>/<method>/seed<k>/failed.json    a failed run: {"error": "..."}
    <runs_root>/<dataset>/<model>/<method>/seed<k>/config.json    optional: the resolved run config
                                                                  (lix.provenance.run_config: "train", "role",
                                                                  "world_size"; "distill": {"hyper": {...},
                                                                  "resolved_hyper": {...}})
    <runs_root>/<dataset>/<model>/<method>/seed<k>/summary.json   optional: lix train's summary ("epochs",
                                                                  "best_epoch", "stopped", "last": the last
                                                                  epoch's record, "provenance", "samples")
    <runs_root>/overhead.json                                     optional: {model: {method:
                                                                  {"time_ratio": float, "memory_ratio": float}}}

* ``metrics.json`` is the output of ``lix.evaluate.evaluate_checkpoint``: ``miou``, ``mfsc``,
  ``fwiou``, ``fwfsc``, ``pixel_acc`` as fractions in [0, 1], ``per_class_iou`` /
  ``per_class_f1`` (class name -> value, null where undefined), ``dataset``, ``role``, ``model``,
  ``x`` (the teacher's geometry), ``matrix``.
* ``<method>`` is ``teacher``, ``student``, a registered distillation method (``lix distill
  --list``), or an ablation of one: ``<method>~<key>=<value>[,<key>=<value>...]`` (e.g.
  ``lix~beta=4``, ``dwld~dwc_inputs=softmax``, ``arfd~kernel=gaussian,consistency=cosine``,
  ``lix~controller=fixed,beta=2``). The directory name carries the ablation; the run's
  hyper-parameters are ``config.json``'s ``distill.resolved_hyper`` (every value the distiller used;
  a key it lacks is unknown) with the name's pairs on top (lix.report.ablations.run_hyper).
* ``seed<k>``: k a non-negative integer (lix.layout.SEED_DIR). A seed directory with ``metrics.json``
  is finished (it wins over a ``failed.json`` left by an earlier attempt); with only ``failed.json``
  it failed; with neither it is missing (not run, or not finished). A ``metrics.json`` that is
  empty, ``{}``, not valid JSON, without a finite ``miou`` or with fields of the wrong type
  counts as failed, its reason shown (lix.report.scan.read_metrics).
* The seeds of a main-table cell are the union of the ``seed<k>`` directories over the
  student-side methods (everything but the teacher, no ablations) of that dataset and model, so a
  seed that one method lacks entirely counts as missing for it; the teacher and ablation cells
  count their own seed directories.
* ``overhead.json`` is benchmarks/distill_step.py's ratios of a distillation step to the plain
  student step (time and peak memory), per model and method.
* The tables score each run's ``best.pt``: the epoch with the best val mIoU, evaluated on that
  same val split (an optimistic estimate, the report's "Protocol" says so); beside each mIoU
  the main tables give the last epoch's val mIoU from ``summary.json``. With ``--shards`` the
  depth source of each dataset is read from its shards (per-sample ``depth_backend``).

Output
------
``<out_dir>/README.md`` (markdown: a Protocol section first, then per dataset the tables, and a
setup table of every run at the end), ``<out_dir>/summary.json`` (the same numbers, machine-readable:
percent, means over the finished seeds, sample standard deviations (ddof=1; null with one seed),
per-seed values) and the pictures (PNG). The markdown is rendered from the summary alone. Missing
numbers are never written as 0: a cell with no finished seed reads ``failed (k of n)`` when k of its
n seeds failed, else ``–``.

Modules, in the order the data flows: ``names`` (display names, row order), ``scan`` (the run
directories), ``stats`` (cells: means, stds, paired differences), ``ablations`` (settings and
families of the variants), ``depth`` (the X's depth source), ``summary`` (every number), ``cells``,
``markdown*`` (README.md), ``logs``, ``plot``, ``figures``, ``networks``, ``grid``, ``dwc`` (the
pictures), ``paper`` (the paper's published figures, ``paper_tables.json``), ``curves`` (DVC plot
data, template ``plots/val_curves.json``) and ``build`` (``write_report``, what ``lix report`` calls).
"""

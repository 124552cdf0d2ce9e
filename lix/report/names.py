"""How the report names things: methods, models, datasets and metrics, in the paper's words and order.

The one ``display_name`` of the report and its pictures ("lix" -> "LIX", "lix~beta=4" -> "LIX (beta=4)"),
the method order of every table, and the registry's view of the methods (their kind: logit, feature, ours).
"""

from __future__ import annotations

import functools

from lix.config import VARIANT_SEP, parse_variant

METRICS = ("mfsc", "fwfsc", "miou", "fwiou")  # the paper's column order

ALL_METRICS = (*METRICS, "pixel_acc")

METRIC_LABEL = {"mfsc": "mFsc", "fwfsc": "fwFsc", "miou": "mIoU", "fwiou": "fwIoU", "pixel_acc": "pixel acc",
                "n": "n"}

DISPLAY = {  # the paper's names, in the paper's row order
    "teacher": "Teacher (RGB + X)", "student": "Student (RGB)",
    "kd": "KD", "cwkd": "CWKD", "dkd": "DKD", "dist": "DIST", "wsld": "WSLD",
    "at": "AT", "fitnet": "FitNet", "ft": "FT", "nst": "NST", "rkd": "RKD", "sp": "SP", "vid": "VID",
    "maskd": "MasKD", "diffkd": "DiffKD", "afdcd": "Af-DCD", "pad": "PAD", "intra_kd": "IntRA-KD",
    "dwld": "DWLD", "arfd": "ARFD", "lix": "LIX",
}

KIND_ORDER = ("—", "logit", "feature", "ours", "other")

DATASET_DISPLAY = {"vkitti2": "vKITTI2", "kitti": "KITTI", "nuimages": "nuImages"}

MODEL_DISPLAY = {"mfnet": "MFNet", "sne_roadseg": "SNE-RoadSeg"}

ROLES = ("teacher", "student")


def parse_method(name: str) -> tuple[str, dict[str, str]]:
    """``"lix~controller=fixed,beta=2"`` -> ``("lix", {"controller": "fixed", "beta": "2"})``;
    a name without ``~`` has no pairs. Raises ValueError on a malformed name
    (lix.config.parse_variant: the one parser the CLI, the sweep and the report share)."""
    base, pairs = parse_variant(name)
    if not pairs and VARIANT_SEP in name:
        raise ValueError(name)
    return base, pairs


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, dict]:
    """Registered distillation methods: name -> {"kind", "hyper" (defaults)} (lix.distill).
    Imported on first use: lix.distill brings torch, which the tables do not need otherwise."""
    from lix.distill import method_table

    return {r["name"]: {"kind": r["kind"], "hyper": dict(r["hyper"])} for r in method_table()}



def legacy_hyper(base: str) -> dict:
    """The registry's defaults of ``base`` (lix.distill.method_table), assumed for runs that predate
    config.json's ``distill.resolved_hyper``; {} for a method the registry does not know."""
    return dict(registry().get(base, {}).get("hyper", {}))

def kind_of(method: str) -> str:
    """The method's kind as the registry states it ("logit", "feature", "ours"); "—" for the
    teacher and the plain student, "other" for a name the registry does not know."""
    if method in ROLES:
        return "—"
    row = registry().get(method)
    return row["kind"] if row else "other"


def display_name(method: str) -> str:
    """The paper's name of a method ("lix" -> "LIX", "lix~beta=4" -> "LIX (beta=4)"); a name that
    does not parse is shown as it is. The one display name of the tables and the pictures."""
    try:
        base, pairs = parse_method(method)
    except ValueError:
        return method
    name = DISPLAY.get(base, base)
    return name if not pairs else f"{name} ({', '.join(f'{k}={v}' for k, v in pairs.items())})"


def display_model(model: str) -> str:
    """"mfnet" -> "MFNet", "sne_roadseg_x" -> "SNE-RoadSeg-x"; unknown names as they are."""
    for key, nice in MODEL_DISPLAY.items():
        if model == key or model.startswith(key + "-") or model.startswith(key + "_"):
            return nice + model[len(key):].replace("_", "-")
    return model


def display_dataset(ds: str) -> str:
    """"kitti" -> "KITTI"; unknown names as they are."""
    return DATASET_DISPLAY.get(ds, ds)


def method_order(method: str) -> tuple:
    """Sort key of the tables' rows: by kind (KIND_ORDER), then the paper's row order (DISPLAY)."""
    order = list(DISPLAY)
    return (KIND_ORDER.index(kind_of(method)), order.index(method) if method in order else len(order), method)

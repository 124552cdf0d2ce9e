"""``lix sweep -S``: edit params.yaml in place, validated as a whole first."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError


def set_params(params_path: str | Path, assignments: list[str], write: bool = True) -> dict[str, object]:
    """Apply ``key.path=value`` assignments (value read as YAML, as ``dvc exp run -S``) to
    params.yaml in place, keeping its comments and layout (a ruamel round-trip at ruamel's
    default width, as DVC's own ``-S`` writes: params.yaml is laid out so that the round-trip
    changes only the assigned values; new lists and mappings in flow style like the file's own;
    written atomically). The result is validated as a whole first (lix.config and the
    registries, lix.validate), so a typo or a bad value changes nothing and raises ConfigError
    naming the key. ``write=False`` validates only (``lix sweep --dry``). Returns {key: new value}."""
    import copy
    import io

    import yaml
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    from lix.config import params_from_dict
    from lix.validate import check_params
    from pipeline.atomic import write_text

    parsed: dict[str, object] = {}
    for a in assignments:
        key, eq, value = a.partition("=")
        if not eq or not key.strip():
            raise ConfigError("-S", f"expected <key.path>=<value>, got {a!r}")
        parsed[key.strip()] = yaml.safe_load(value)

    def apply(tree: dict) -> None:
        for key, value in parsed.items():
            node, parts = tree, key.split(".")
            for i, part in enumerate(parts[:-1]):
                if not isinstance(node.get(part), dict):
                    raise ConfigError(key, f"{'.'.join(parts[:i + 1])} is not a section of {params_path}")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(key, f"no such key in {params_path}")
            node[parts[-1]] = value

    path = Path(params_path)
    if not path.is_file():
        from pipeline.errors import DataError

        raise DataError(path, "parameter file not found")
    trial = copy.deepcopy(yaml.safe_load(path.read_text()) or {})
    apply(trial)
    check_params(params_from_dict(trial))  # validate everything before touching the file
    if not write:
        return parsed

    def flow(v):
        if isinstance(v, list):
            seq = CommentedSeq(flow(x) for x in v)
            seq.fa.set_flow_style()
            return seq
        if isinstance(v, dict):
            m = CommentedMap((k, flow(x)) for k, x in v.items())
            m.fa.set_flow_style()
            return m
        return v

    rt = YAML()
    rt.preserve_quotes = True
    data = rt.load(path.read_text())
    parsed_flow = {k: flow(v) for k, v in parsed.items()}
    saved, parsed = parsed, parsed_flow
    apply(data)
    parsed = saved
    buf = io.StringIO()
    rt.dump(data, buf)
    write_text(path, buf.getvalue())
    return parsed

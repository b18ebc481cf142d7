"""Named size profiles: partial params files in `profiles/` merged over `params.yaml`.

`params.yaml` itself is the demo profile (CPU, minutes). `tiny` is what the tests run, `gpu` a
real run. Applying a profile rewrites `params.yaml` in place, comments kept (ruamel round trip),
and validates the result before writing, so a typo in a profile never reaches a stage.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from stages import params

PROFILES_DIR = "profiles"


def available(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


def read(root: Path, name: str) -> dict[str, Any]:
    path = root / PROFILES_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(available(root))
        raise params.ParamsError(f"unknown profile {name!r}; profiles: {known}")
    return params.load_yaml(path.read_text()) or {}


def merge(base: Any, extra: dict[str, Any]) -> Any:
    """Deep-merge `extra` into the mapping `base` in place (lists and scalars are replaced)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def apply(root: Path, name: str) -> None:
    """Merge profile `name` into root/params.yaml, keeping its comments."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.width = 100
    rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    path = root / params.PARAMS_FILE
    doc = rt.load(path.read_text())
    merge(doc, read(root, name))
    buf = io.StringIO()
    rt.dump(doc, buf)
    params.validate(params.load_yaml(buf.getvalue()) or {})
    path.write_text(buf.getvalue())

"""`dvc.lock` as YAML, fast, in DVC's format byte for byte.

DVC rewrites `dvc.lock` on every commit with ruamel's round-trip mode (pure Python): parse the
whole file, set one entry, emit the whole file: ~0.6 s for a 17-stage lock, most of an executed
asset's orchestration cost. The lock is machine-written (no comments to preserve), so here:

- load: PyYAML's C loader with ruamel's YAML 1.2 implicit resolvers (what DVC parses with; PyYAML's
  own YAML 1.1 rules read `1e-08` as a string and `yes` as a boolean): 4x ruamel's safe load;
- write: the stages that did not change keep their text; a changed stage's block is emitted alone
  by ruamel's Python emitter with DVC's settings (round-trip mode's empty nulls), new stages are
  appended as DVC appends them; the result is read back and must equal the intended data.

tests/test_lock_yaml.py checks the text is byte-identical to DVC's writer.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.resolver import implicit_resolvers

YAML_12 = (1, 2)
TYPED = ("bool", "float", "int", "null", "timestamp", "merge")


class Lock12Loader(yaml.CSafeLoader):
    """libyaml parser + YAML 1.2 implicit typing exactly as ruamel resolves it."""

    yaml_implicit_resolvers: dict = {}

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """YAML 1.2 integers: `012` is twelve (1.1 read it as octal)."""
        text = self.construct_scalar(node).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
        return sign * int(digits[2:] if base != 10 else digits, base)


Lock12Loader.add_constructor("tag:yaml.org,2002:int", Lock12Loader.construct_yaml_int)
for _versions, _tag, _regexp, _first in implicit_resolvers:
    if YAML_12 in _versions and _tag.rsplit(":", 1)[1] in TYPED:
        Lock12Loader.add_implicit_resolver(_tag, _regexp, _first)


def loads(text: str) -> Any:
    return yaml.load(text, Loader=Lock12Loader)


def _emitter() -> YAML:
    out = YAML(typ="safe", pure=True)  # the emitter DVC's round-trip dump uses
    out.default_flow_style = False  # DVC's settings
    out.sort_base_mapping_type_on_output = False
    rep = out.representer
    rep.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", ""))
    rep.add_representer(OrderedDict, rep.__class__.represent_dict)  # DVC's entries; as DVC does
    return out


def dumps(data: Any) -> str:
    buf = io.StringIO()
    _emitter().dump(data, buf)
    return buf.getvalue()


STAGES_KEY = "\nstages:\n"
_BLOCK_START = re.compile(r"^  \S", re.M)  # a stage's key line; everything inside is indented more


def _stage_blocks(text: str, data: dict[str, Any]) -> tuple[str, dict[str, str]] | None:
    """(header, stage name -> its text) of a lock in DVC's layout, else None."""
    head, sep, body = text.partition(STAGES_KEY)
    names = list(data.get("stages") or {})
    starts = [m.start() for m in _BLOCK_START.finditer(body)]
    if set(data) != {"schema", "stages"} or not sep or "\n" in head or len(starts) != len(names):
        return None
    bounds = [*starts, len(body)]
    blocks = {n: body[a:b] for n, a, b in zip(names, bounds, bounds[1:], strict=False)}
    if not all(block.startswith(f"  {name}:") for name, block in blocks.items()):
        return None
    return head + sep, blocks


def with_entries(text: str, data: dict[str, Any], entries: dict[str, Any]) -> str:
    """The lock `text` (parsed: `data`) with these stages' entries set, as DVC writes it."""
    stages = {**(data.get("stages") or {}), **entries}
    new = {**(data or {"schema": "2.0"}), "stages": stages}
    parts = _stage_blocks(text, data) if text else None
    if parts is not None:
        head, blocks = parts
        for name, entry in entries.items():
            blocks[name] = dumps({"stages": {name: entry}}).removeprefix(STAGES_KEY[1:])
        out = head + "".join(blocks.values())
        if loads(out) == new:
            return out
    return dumps(new)  # whole file (the first entry, or a layout this does not recognise)

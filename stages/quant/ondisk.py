"""What a quantized checkpoint really stores: read from its safetensors, not from its config.

- compressed-tensors `pack-quantized` (ptq): `<linear>.weight_packed` int32 words, each holding
  32 / bits values, with `weight_shape` giving the unpacked shape: storage bits per weight.
- torchao `IntxUnpackedToInt8Tensor` (qat): `<linear>._weight_qdata` int8 holding values in the
  target range (int4: [-8, 7]): storage 8 bits, value range checked on the stored tensor.
"""

from __future__ import annotations

from pathlib import Path


def int_weights(directory: Path) -> dict:
    """Quantized linears found on disk, their storage bits per weight, the integer values' range
    and the checkpoint's size in bytes."""
    from safetensors import safe_open

    tensors, weights, bits, lo, hi = 0, 0, 0, None, None
    files = sorted(directory.glob("*.safetensors"))
    for path in files:
        with safe_open(path, "pt") as f:
            keys = set(f.keys())
            for key in sorted(keys):
                if key.endswith(".weight_packed"):
                    shape = f.get_tensor(key.replace("_packed", "_shape")).tolist()
                    packed = f.get_tensor(key)
                    n, stored = shape[0] * shape[1], packed.numel() * packed.element_size() * 8
                elif key.endswith("._weight_qdata"):
                    q = f.get_tensor(key)
                    n, stored = q.numel(), q.numel() * q.element_size() * 8
                    lo = int(q.min()) if lo is None else min(lo, int(q.min()))
                    hi = int(q.max()) if hi is None else max(hi, int(q.max()))
                else:
                    continue
                tensors, weights, bits = tensors + 1, weights + n, bits + stored
    return {"quantized_tensors": tensors,
            "storage_bits_per_weight": bits / weights if weights else None,
            "value_range": None if lo is None else [lo, hi],
            "bytes": sum(p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file())}


def sort_metadata(directory: Path) -> None:
    """Rewrite each safetensors header of `directory` with its `__metadata__` in sorted key order.
    safetensors serialises that map in hash order, which changes from one process to the next:
    torchao tensors put one entry per weight there, so the same weights gave other bytes. Sorted,
    they give the same bytes (DVC's early cutoff, byte-identical resume). Tensor data is kept."""
    import json
    import struct

    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            data = f.read()
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        tmp.replace(path)

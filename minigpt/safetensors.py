"""The safetensors file format, read and written with NumPy: tensors and nothing that can run.

    8 bytes    N, the header's length (unsigned little-endian)
    N bytes    a JSON header: {name: {"dtype": "F32", "shape": [768, 2304], "data_offsets": [a, b]}, ...,
               "__metadata__": {str: str}} (optional)
    the rest   every tensor's bytes, row-major little-endian, tensor `name` at [8 + N + a, 8 + N + b)

Hugging Face's model files use it because, unlike PyTorch's pickled ``.bin`` files, loading one
executes nothing: it is a table of numbers. minigpt reads and writes only this format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy

from minigpt.files import atomic_write_bytes

# safetensors' dtype names -> NumPy's (little-endian). BF16 has no NumPy type: read as uint16, widened below.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4", "I16": "<i2",
          "I8": "i1", "U8": "u1", "BOOL": "?"}
NAMES = {numpy.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}
MAX_HEADER = 100 << 20  # bytes; safetensors' own readers refuse larger headers too


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file; the message says what is wrong."""


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """The JSON header (tensor name -> dtype, shape, data_offsets; and ``__metadata__``) and the
    byte offset where the tensors' data begins."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(raw, "little")
            if n > MAX_HEADER or n > path.stat().st_size - 8:
                raise SafetensorsError(f"{path} is not a safetensors file (a header of {n} bytes)")
            header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"{path} is not a safetensors file (its header is not JSON: {e})") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path} is not a safetensors file (its header is not a JSON object)")
    return header, 8 + n


def _entries(path: Path) -> tuple[list[tuple[str, str, list[int], int, int]], int, int]:
    """Every tensor's (name, dtype, shape, start, end), checked against the file; the data's
    offset and length in the file."""
    header, start = read_header(path)
    size = path.stat().st_size - start
    entries = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (a, b) = spec["dtype"], [int(d) for d in spec["shape"]], spec["data_offsets"]
            itemsize = numpy.dtype(DTYPES[dtype]).itemsize
        except (KeyError, TypeError, ValueError) as e:
            raise SafetensorsError(f"{path}: tensor {name!r} has a malformed entry {spec!r}") from e
        count = int(numpy.prod(shape, dtype=numpy.int64))
        if min(shape, default=0) < 0 or not 0 <= a <= b <= size or b - a != count * itemsize:
            raise SafetensorsError(f"{path}: tensor {name!r} ({dtype} {shape}) has offsets [{a}, {b}] that do "
                                   f"not fit it or the file ({size} bytes of data)")
        entries.append((name, dtype, shape, a, b))
    return entries, start, size


def check(path: str | os.PathLike) -> None:
    """Raise SafetensorsError unless every tensor's offsets fit its dtype, its shape and the file
    (reads the header alone)."""
    _entries(Path(path))


def load(path: str | os.PathLike) -> dict[str, numpy.ndarray]:
    """Every tensor of a safetensors file, as NumPy arrays (BF16 widened to float32, exactly).

    Each tensor's offsets must lie inside the file and fit its dtype and shape; anything else is a
    ``SafetensorsError`` naming the tensor. The arrays are copies, so the file can be replaced.
    """
    path = Path(path)
    entries, start, size = _entries(path)
    data = numpy.memmap(path, dtype=numpy.uint8, mode="r", offset=start, shape=(size,)) if size else numpy.empty(0, "u1")
    out: dict[str, numpy.ndarray] = {}
    for name, dtype, shape, a, b in entries:
        array = numpy.frombuffer(data[a:b], dtype=DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":  # bfloat16 is the top half of a float32
            array = (array.astype(numpy.uint32) << 16).view(numpy.float32)
        out[name] = numpy.array(array)  # a copy: nothing keeps the file open
    del data
    return out


def save(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> array) as a safetensors file, atomically. Tensors are laid out in
    name order, each at an offset aligned to 8 bytes, as Hugging Face's writer does."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name in sorted(tensors):
        array = numpy.ascontiguousarray(tensors[name])
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in NAMES:
            raise TypeError(f"tensor {name!r}: safetensors has no dtype for {array.dtype}")
        blob = array.astype(dtype, copy=False).tobytes()
        header[name] = {"dtype": NAMES[dtype], "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % 8)  # the data starts 8-byte aligned
    atomic_write_bytes(path, len(raw).to_bytes(8, "little") + raw + b"".join(blobs))

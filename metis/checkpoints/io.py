"""Checkpoint files: atomic safetensors writes and strict loads that name every mismatch
(finding a file on disk or on the Hub is `metis.checkpoints.sources`).

The reference loads its checkpoints non-strictly and overwrites adapter tensors without shape
checks (docs/reference.md Q12), so a wrong or truncated file loads "successfully". Everything here
fails loudly instead, naming the file and the keys.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from metis.atomic import atomic_write


class CheckpointMismatchError(RuntimeError):
    """A checkpoint's keys or shapes differ from what the model expects.

    Attributes:
        source: the file (or description) the tensors came from.
        missing: keys the model needs that the file lacks.
        unexpected: keys in the file that the model does not have.
        mismatched: {key: (shape in file, shape in model)}.
    """

    def __init__(self, source: str, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 mismatched: Mapping[str, tuple[tuple[int, ...], tuple[int, ...]]] | None = None,
                 note: str = ""):
        self.source = str(source)
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = dict(sorted((mismatched or {}).items()))
        counts = (f" ({len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped)"
                  if self.missing or self.unexpected or self.mismatched else "")
        lines = [f"checkpoint {self.source} does not match the model{counts}"]
        if note:
            lines.append(note)
        lines += [f"  missing:     {k}" for k in self.missing]
        lines += [f"  unexpected:  {k}" for k in self.unexpected]
        lines += [f"  mis-shaped:  {k}: file {list(f)} vs model {list(m)}" for k, (f, m) in self.mismatched.items()]
        super().__init__("\n".join(lines))


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint file could not be found locally, in the Hugging Face cache, or on the Hub."""


class CheckpointFormatError(ValueError):
    """A file given where safetensors are expected is not a complete safetensors file."""


# ---------------------------------------------------------------------------------------- saving


def _to_saveable(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, each owning its storage.

    safetensors refuses tensors that share storage (tied weights, views of one buffer); the
    published files store every key separately, so shared ones are cloned.
    """
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[torch.device, int]] = set()
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict keys must be str, got {type(key).__name__} {key!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state_dict[{key!r}] is a {type(value).__name__}, not a tensor")
        if value.device.type == "meta":
            raise ValueError(f"state_dict[{key!r}] is on the meta device and has no data to save")
        t = value.detach().to("cpu").contiguous()
        if t.numel():
            storage_id = (t.device, t.untyped_storage().data_ptr())
            if storage_id in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
                t = t.clone()
            seen.add((t.device, t.untyped_storage().data_ptr()))
        out[key] = t
    return out


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write `state_dict` to `path` atomically.

    The tensors go to a temporary file in the same folder, which is flushed to disk and then
    renamed over `path`: a crash or error mid-write leaves any previous file at `path` intact.

    Args:
        state_dict: key -> tensor (any device; shared-storage tensors are stored separately).
        path: destination `.safetensors` file; its folder is created if needed.
        metadata: optional str -> str header metadata.
    Returns:
        The destination path.
    """
    path = Path(path)
    if metadata is not None:
        bad = {k: v for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))}
        if bad:
            raise TypeError(f"safetensors metadata must map str to str; offending entries: {bad}")
        metadata = dict(metadata)
    tensors = _to_saveable(state_dict)
    with atomic_write(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


# --------------------------------------------------------------------------------------- loading

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save files (Lightning .ckpt, .pt, .pth) are zip archives
_PICKLE_PROTOCOL = b"\x80"   # a bare pickle starts with the PROTO opcode


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; any other file is refused with a message naming it.

    safetensors itself raises a bare `Error while deserializing header` naming no file; this
    checks the first bytes first, so an empty, truncated, zip (`torch.save`, `.ckpt`) or pickle
    file gets a message saying which file and what it is. Nothing is ever unpickled.

    Raises:
        FileNotFoundError: `path` is missing or a folder.
        CheckpointFormatError: the file is not a complete safetensors file (names file and cause).
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"safetensors file {path} {what}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if size == 0:
        raise CheckpointFormatError(f"{path} is empty (0 bytes): not a safetensors file (an interrupted download or write?)")
    if head.startswith(_ZIP_MAGIC):
        raise CheckpointFormatError(
            f"{path} is a torch.save zip archive (a Lightning .ckpt / .pt file), not safetensors: convert a training "
            f"checkpoint with `python -m metis.checkpoints.convert {path} <out_dir>`")
    header = int.from_bytes(head[:8], "little") if len(head) >= 8 else None
    if header is not None and 8 + header <= size and head[8:9] == b"{":
        try:
            return load_file(os.fspath(path), device=str(device))
        except SafetensorError as exn:
            raise CheckpointFormatError(f"{path} is not a valid safetensors file (truncated or corrupt?): {exn}") from None
    if head[:1] == _PICKLE_PROTOCOL and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointFormatError(f"{path} is a pickle file, not safetensors: it is not loaded (unpickling can run code)")
    if header is None:
        raise CheckpointFormatError(f"{path} is truncated: {size} bytes, less than the 8-byte safetensors header length")
    if head[8:9] in (b"{", b""):
        raise CheckpointFormatError(f"{path} is truncated: its header claims {header} bytes, the file has {size - 8} "
                                    f"after the length field")
    raise CheckpointFormatError(f"{path} is not safetensors: no JSON header after the 8-byte length field")


def check_dtypes(expected: Mapping[str, torch.dtype], actual: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Refuse tensors whose dtype kind differs from the model's (float vs integer/bool); warn, naming
    them, when only the width differs (fp16/bf16 into fp32, int32 into int64: converted on load)."""
    kind_diff, width_diff = {}, {}
    for key, value in actual.items():
        want = expected.get(key)
        if want is None or value.dtype == want:
            continue
        same_kind = value.dtype.is_floating_point == want.is_floating_point and (value.dtype == torch.bool) == (want == torch.bool)
        (width_diff if same_kind else kind_diff)[key] = (value.dtype, want)

    def listing(d):
        return ", ".join(f"{k} ({str(f).removeprefix('torch.')} vs model {str(m).removeprefix('torch.')})"
                         for k, (f, m) in list(d.items())[:5]) + (" ..." if len(d) > 5 else "")

    if kind_diff:
        raise CheckpointMismatchError(source, note=f"{len(kind_diff)} tensor(s) have another dtype kind than the model's: "
                                                   f"{listing(kind_diff)}")
    if width_diff:
        warnings.warn(f"checkpoint {source}: {len(width_diff)} tensor(s) stored in another precision than the model's, "
                      f"converted on load: {listing(width_diff)}", stacklevel=3)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def check_state_dict(expected: Mapping[str, torch.Size | tuple[int, ...]], actual: Mapping[str, torch.Tensor], *,
                     source: str, allow_missing: Iterable[str] = (), ignore_zero_size: bool = True,
                     note: str = "") -> None:
    """Raise CheckpointMismatchError unless `actual` has exactly the keys and shapes of `expected`.

    Args:
        expected: key -> shape the model needs.
        actual: key -> tensor from the file.
        source: the file name, used in the error message.
        allow_missing: keys (or fnmatch patterns such as "cond_adapter.*") the file may lack.
        ignore_zero_size: accept zero-size tensors (S2A's vestigial `diff_estimator.embed_tokens.weight`
            [0, 256], docs/reference.md Q14) whether the file has them or not.
        note: an extra line for the error message.
    """
    allow_missing = tuple(allow_missing)
    missing, unexpected, mismatched = [], [], {}
    for key, shape in expected.items():
        shape = tuple(shape)
        if key not in actual:
            zero = ignore_zero_size and 0 in shape
            if not (zero or _matches(key, allow_missing)):
                missing.append(key)
        elif tuple(actual[key].shape) != shape:
            mismatched[key] = (tuple(actual[key].shape), shape)
    for key, value in actual.items():
        if key not in expected and not (ignore_zero_size and value.numel() == 0):
            unexpected.append(key)
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(source, missing, unexpected, mismatched, note)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str,
              allow_missing: Iterable[str] = (), ignore_zero_size: bool = True, assign: bool = False) -> nn.Module:
    """Strictly load `state_dict` into `model`.

    Unlike the reference's non-strict loads (docs/reference.md Q12), every missing, unexpected or mis-shaped key is
    an error that names `source` and the key (with both shapes). A tensor of another dtype kind
    (integer weights for a float parameter) is an error; another float width is converted with a
    warning naming the keys. Values are copied into the model's tensors, or assigned when `assign`.

    Args:
        model: the module to fill.
        state_dict: key -> tensor, keys as in `model.state_dict()`.
        source: the file the tensors came from (for the error message).
        allow_missing: keys or fnmatch patterns the file may lack (they keep their current values).
        ignore_zero_size: accept zero-size tensors present or absent (docs/reference.md Q14).
        assign: pass-through to `load_state_dict(assign=...)`.
    Returns:
        `model`.
    """
    own = model.state_dict()
    expected = {k: v.shape for k, v in own.items()}
    check_state_dict(expected, state_dict, source=source, allow_missing=allow_missing, ignore_zero_size=ignore_zero_size)
    check_dtypes({k: v.dtype for k, v in own.items()}, state_dict, source=source)
    to_load = {k: v for k, v in state_dict.items() if k in expected}
    result = model.load_state_dict(to_load, strict=False, assign=assign)
    # The check above already covered keys; this guards against load_state_dict disagreeing.
    leftover = [k for k in result.missing_keys if k in to_load] + list(result.unexpected_keys)
    if leftover:
        raise CheckpointMismatchError(source, unexpected=leftover, note="load_state_dict rejected these keys")
    return model

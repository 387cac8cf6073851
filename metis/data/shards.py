"""The shard format: plain tar files, one sample = the members sharing a key.

A sample is `{key}.{flac|mp3|wav}` + `{key}.json` (Emilia's layout: `id`, `text`, `duration`,
`speaker`, `language`, optional `dnsmos`), optionally with `{key}.sem.npy` (int16 SSL tokens, 50 Hz),
`{key}.ac.npy` (int16 acoustic tokens, (12, T)) and `{key}.vis.npy` (visual features).
A token shard starts with a member `__tokenizer__.json` = {"sem": identity, "ac": identity} naming the
tokenizers that made its tokens (see `metis.tokenizers.base.SpeechTokenizer.identity`).

Writers here are atomic: a shard is written to a temporary name beside its target and renamed into
place only when complete, so a shard that exists is a finished shard.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from metis.atomic import atomic_write

TOKENIZER_MEMBER = "__tokenizer__"
AUDIO_EXTS = ("flac", "mp3", "wav", "ogg", "opus", "m4a")
REQUIRED_JSON = ("id", "text", "duration", "speaker", "language")


def is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_shards(shards: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Brace patterns ("{000..099}"), '::'-joined lists, globs, directories (all *.tar inside),
    local paths and URLs -> an explicit shard list.

    Raises:
        ValueError: the pattern(s) expanded to nothing (the message names them).
        FileNotFoundError: a local shard that does not exist (named).
    """
    import webdataset as wds

    specs = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    if not specs:
        raise ValueError("empty shard list: no shards given")
    out: list[str] = []
    for spec in specs:
        spec = os.fspath(spec)
        missing = []
        for url in wds.shardlists.expand_urls(spec):
            if is_remote(url):
                out.append(url)
            elif os.path.isdir(url):
                found = sorted(glob.glob(os.path.join(url, "*.tar")))
                if not found:
                    raise ValueError(f"shard directory {url!r} (from {spec!r}) holds no *.tar")
                out.extend(found)
            elif any(c in url for c in "*?["):
                out.extend(sorted(glob.glob(url)))
            elif not os.path.exists(url):
                missing.append(url)
            else:
                out.append(url)
        if missing:
            raise FileNotFoundError(f"{len(missing)} shard(s) from pattern {spec!r} do not exist: "
                                    f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if not out:
        raise ValueError(f"shard pattern(s) {specs!r} expanded to an empty list")
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards for identical content
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Writes one tar atomically (`metis.atomic.atomic_write`): members go to a temporary file beside
    `path`, renamed to `path` on `close()`.

    Use as a context manager; on an exception the temporary file is removed and `path` is untouched.
    """

    def __init__(self, path: str | os.PathLike, tokenizers: dict[str, dict] | None = None):
        self.path = Path(path)
        self._file = atomic_write(self.path)
        self._tar = tarfile.open(self._file.tmp, "w")
        self.count = 0
        self.nbytes = 0
        if tokenizers:
            _add_member(self._tar, f"{TOKENIZER_MEMBER}.json", json.dumps(tokenizers, sort_keys=True).encode())

    def write(self, key: str, members: dict[str, bytes]) -> None:
        """members: extension ('flac', 'json', 'sem.npy', ...) -> bytes."""
        if "." in key or "/" in key or key.startswith("__"):
            raise ValueError(f"sample key {key!r} must not contain '.' or '/' nor start with '__'")
        for ext, data in members.items():
            _add_member(self._tar, f"{key}.{ext}", data)
            self.nbytes += len(data) + 512
        self.count += 1

    def close(self) -> None:
        self._tar.close()
        self._file.commit()

    def abort(self) -> None:
        self._tar.close()
        self._file.abort()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ShardSink:
    """Rolls samples into `{out_dir}/{prefix}-{i:06d}.tar`, a new shard every `max_count` samples or
    `max_bytes` bytes, each shard written atomically."""

    def __init__(self, out_dir: str | os.PathLike, prefix: str = "shard", max_count: int = 1000,
                 max_bytes: int = 1 << 30, tokenizers: dict[str, dict] | None = None):
        self.out_dir = Path(out_dir)
        self.prefix, self.max_count, self.max_bytes, self.tokenizers = prefix, max_count, max_bytes, tokenizers
        self.paths: list[Path] = []
        self.samples = 0
        self._w: ShardWriter | None = None

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if self._w is not None and (self._w.count >= self.max_count or self._w.nbytes >= self.max_bytes):
            self._finish()
        if self._w is None:
            path = self.out_dir / f"{self.prefix}-{len(self.paths):06d}.tar"
            self._w = ShardWriter(path, self.tokenizers)
        self._w.write(key, members)
        self.samples += 1

    def _finish(self) -> None:
        assert self._w is not None
        self._w.close()
        self.paths.append(self._w.path)
        self._w = None

    def close(self) -> list[Path]:
        if self._w is not None:
            self._finish()
        return self.paths

    def abort(self) -> None:
        if self._w is not None:
            self._w.abort()
            self._w = None


_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # "dir/key.sem.npy" -> ("dir/key", "sem.npy")


def read_samples(url: str, start: int = 0) -> Iterator[tuple[int, int | None, dict]]:
    """The samples of one shard from byte `start` on (the offset of a sample's first member).

    Yields (offset, next_offset, sample): `sample` maps extension -> bytes plus `__key__` and
    `__url__`; `next_offset` is where the following sample starts (None after the last one), so
    `read_samples(url, next_offset)` continues exactly there. Local shards are seeked to `start`
    (the members before it are not read); remote ones (`pipe:`, URLs) are streamed from the
    beginning and the members before `start` skipped. tarfile errors (truncated, corrupt) propagate.
    """
    import webdataset as wds

    stream = wds.gopen(url, "rb") if is_remote(url) else open(url, "rb")
    try:
        if not is_remote(url) and start:
            stream.seek(start)
        tar = tarfile.open(fileobj=stream, mode="r|" if is_remote(url) else "r:")
        sample: dict | None = None
        first = 0
        for info in tar:
            if info.offset < start or not info.isreg():
                continue
            m = _KEY_EXT.match(info.name)
            if m is None:
                continue
            key, ext = m.groups()
            if sample is not None and key != sample["__key__"]:
                yield first, info.offset, sample
                sample = None
            if sample is None:
                sample, first = {"__key__": key, "__url__": url}, info.offset
            sample[ext] = tar.extractfile(info).read()
            tar.members = []  # do not keep every header of a large shard
        if sample is not None:
            yield first, None, sample
    finally:
        stream.close()


def read_sample_at(url: str, offset: int) -> dict:
    """The one sample whose first member starts at byte `offset` of shard `url`."""
    for _, _, sample in read_samples(url, offset):
        return sample
    raise ValueError(f"{url}: no sample at byte offset {offset} (the shard changed since the position was saved?)")


def iter_tar(path: str, handler=None) -> Iterator[dict]:
    """Samples of one shard in order: dicts ext -> bytes plus `__key__`, `__url__`. The tokenizer
    member comes back as a sample with key `__tokenizer__`. A read error goes to `handler(exn)`
    (the samples before it have been yielded; the rest of the shard is skipped) or is raised."""
    try:
        for _, _, sample in read_samples(path):
            yield sample
    except (tarfile.TarError, OSError, EOFError) as exn:
        if handler is None:
            raise
        handler(exn)


def read_tokenizers(path: str) -> dict[str, dict] | None:
    """The `__tokenizer__.json` of a shard (first member), or None when the shard has none."""
    with tarfile.open(path, "r|*") as tar:
        for info in tar:
            if info.name == f"{TOKENIZER_MEMBER}.json":
                return json.loads(tar.extractfile(info).read())
            return None
    return None


def audio_ext(sample: dict) -> str | None:
    for ext in AUDIO_EXTS:
        if ext in sample:
            return ext
    return None

"""metis.atomic: a reader sees the old file or the whole new one, never a partial file."""

import json
import os
import stat

import pytest

from metis.atomic import atomic_write, write_json, write_text


def test_commit_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "deep" / "f.json"
    write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}
    write_text(p, "second")
    assert p.read_text() == "second" and os.listdir(p.parent) == ["f.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_temporary_is_beside_the_destination_and_removed_on_error(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_write(p) as tmp:
            assert tmp.parent == p.parent and tmp != p
            tmp.write_bytes(b"partial")
            raise RuntimeError("half way")
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_commit_and_abort_by_hand(tmp_path):
    w = atomic_write(tmp_path / "a.tar")
    w.tmp.write_bytes(b"x")
    assert not (tmp_path / "a.tar").exists()  # nothing visible before commit
    w.commit()
    assert (tmp_path / "a.tar").read_bytes() == b"x"
    w = atomic_write(tmp_path / "b.tar")
    w.tmp.write_bytes(b"y")
    w.abort()
    assert sorted(os.listdir(tmp_path)) == ["a.tar"]


def test_a_shard_appears_only_when_complete(tmp_path):
    from metis.data.shards import ShardWriter, iter_tar

    with pytest.raises(RuntimeError, match="stop"):
        with ShardWriter(tmp_path / "a.tar") as w:
            w.write("k0", {"txt": b"x"})
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []
    with ShardWriter(tmp_path / "a.tar") as w:
        w.write("k0", {"txt": b"x"})
        assert os.listdir(tmp_path) != ["a.tar"]  # still a temporary name while open
    assert os.listdir(tmp_path) == ["a.tar"] and [s["__key__"] for s in iter_tar(str(tmp_path / "a.tar"))] == ["k0"]

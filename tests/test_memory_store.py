"""serving/store.py: the snapshot file format, its checks, retention and an unwritable store."""

import logging
import os
import time

import numpy as np
import pytest

from reloop2_serving import store as st

FP = "sha256:" + "ab" * 32


def sketch(rows: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 5, (rows, 3)).astype(np.float32)


def test_format_round_trips_bit_for_bit_with_its_header():
    state = sketch()
    data = st.encode_snapshot(state, {"fingerprint": FP, "model_version": 4, "memory_weight": 7.5})
    assert data.startswith(st.MAGIC) and len(data) > state.nbytes + 32
    header, back = st.decode_snapshot(data)
    np.testing.assert_array_equal(back, state)
    assert back.dtype == np.float32 and back.shape == (40, 3)
    assert header["fingerprint"] == FP and header["model_version"] == 4
    assert header["rows"] == 40 and header["payload_bytes"] == state.nbytes
    with pytest.raises(ValueError, match="shape"):
        st.encode_snapshot(np.zeros([4, 2], np.float32), {})


@pytest.mark.parametrize("where", ["magic", "header", "payload", "digest"])
def test_one_flipped_byte_anywhere_is_rejected(where):
    data = bytearray(st.encode_snapshot(sketch(), {"fingerprint": FP}))
    head_len = int.from_bytes(data[len(st.MAGIC):len(st.MAGIC) + 4], "big")
    offset = {"magic": 2, "header": len(st.MAGIC) + 4 + head_len // 2,
              "payload": len(data) - 32 - 7, "digest": len(data) - 1}[where]
    data[offset] ^= 0x01
    with pytest.raises(st.SnapshotError, match="f.r2snap"):
        st.decode_snapshot(bytes(data), "f.r2snap")


@pytest.mark.parametrize("keep_bytes", [0, 5, 20, -1, -33])
def test_truncated_files_are_rejected(keep_bytes):
    data = st.encode_snapshot(sketch(), {"fingerprint": FP})
    with pytest.raises(st.SnapshotError, match="truncated|checksum|magic"):
        st.decode_snapshot(data[:keep_bytes], "x")


def test_newest_valid_skips_truncated_and_mismatched_files_naming_them(tmp_path, caplog):
    store = st.MemoryStore(tmp_path, keep=5)
    good = store.write_snapshot(sketch(seed=1), FP, model_version=1, memory_weight=1.0)
    other = store.write_snapshot(sketch(seed=2), "sha256:other", model_version=1, memory_weight=2.0)
    newest = store.write_snapshot(sketch(seed=3), FP, model_version=2, memory_weight=3.0)
    assert store.snapshots() == [newest, other, good]
    assert store.newest_valid_snapshot(FP).path == newest
    with open(newest, "r+b") as handle:       # a crash in the middle of a copy
        handle.truncate(os.path.getsize(newest) // 2)
    caplog.set_level(logging.WARNING, logger="reloop2.store")
    found = store.newest_valid_snapshot(FP)
    assert found.path == good and found.memory_weight == 1.0
    np.testing.assert_array_equal(found.sketch, sketch(seed=1))
    messages = [r.getMessage() for r in caplog.records]
    assert any(newest in m and "checksum" in m for m in messages), messages
    assert any(other in m and "layout sha256:other differs" in m for m in messages), messages
    # The right layout but another state shape (a model with other table sizes) is skipped too.
    assert store.newest_valid_snapshot(FP, rows=41) is None
    assert store.newest_valid_snapshot("sha256:none") is None


def test_retention_keeps_the_newest_n_of_this_model_only(tmp_path):
    mine = st.MemoryStore(tmp_path, model_name="reloop2", keep=2)
    theirs = st.MemoryStore(tmp_path, model_name="ranker", keep=2)
    kept_theirs = theirs.write_snapshot(sketch(), FP, 1, 0.0)
    paths = [mine.write_snapshot(sketch(seed=i), FP, 1, float(i)) for i in range(5)]
    assert mine.snapshots() == paths[:-3:-1]
    assert theirs.snapshots() == [kept_theirs]
    assert mine.newest_valid_snapshot(FP).memory_weight == 4.0
    # A temporary file left by a writer killed mid-write is removed once it is stale.
    stale, fresh = tmp_path / ".tmp-dead.r2snap.part", tmp_path / ".tmp-live.r2snap.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    mine.prune()
    assert not stale.exists() and fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".tmp")) == sorted(
        os.path.basename(p) for p in [*paths[-2:], kept_theirs])


def test_unwritable_store_raises_store_error_naming_it_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = st.MemoryStore(blocker / "store")
    with pytest.raises(st.StoreError, match="cannot write memory snapshot to .*a-file/store"):
        store.write_snapshot(sketch(), FP, 1, 0.0)
    assert store.snapshots() == [] and store.newest_valid_snapshot(FP) is None
    assert blocker.read_text() == "not a folder"


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="keep"):
        st.MemoryStore(tmp_path, keep=0)
    with pytest.raises(ValueError, match="model_name"):
        st.MemoryStore(tmp_path, model_name="a/b")
    with pytest.raises(ValueError, match="writer"):
        st.MemoryStore(tmp_path, writer="pod/0")

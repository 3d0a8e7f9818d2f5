"""The write-ahead log append (issue 21, fourth pass): frame and payload go out with one ``writev``
instead of being joined first; the log's bytes must stay exactly what the reader expects."""
from __future__ import annotations

import os

import pytest

from telesketch.service import epochs
from telesketch.service.epochs import EpochManager
from telesketch.service.sketchset import SketchSet

EPOCH_NS = 3600 * 10**9


def _manager(tmp_path):
    return EpochManager(SketchSet.from_config({}), EPOCH_NS, 4, tmp_path / "data", wal=True, durability="none")


def test_logged_records_are_the_old_framing_and_replay(tmp_path):
    payloads = [b"", b"x", bytes(range(256)) * 40]
    m = _manager(tmp_path)
    base = m.lsn
    for p in payloads:
        m._log(p)
    m.close()
    data = (tmp_path / "data" / "wal.log").read_bytes()
    expected = b"".join(epochs._record(base + 1 + i, p) for i, p in enumerate(payloads))
    assert data[20:] == expected
    offset, got = 20, []
    while offset < len(data):
        lsn, payload = epochs._record_at(data, offset, 1 << 20)
        got.append((lsn, bytes(payload)))
        offset += 16 + len(payload)
    assert got == [(base + 1 + i, p) for i, p in enumerate(payloads)]


@pytest.mark.parametrize("first", [0, 5, 16, 17, 1000])
def test_short_writev_is_finished(tmp_path, monkeypatch, first):
    """A ``writev`` that writes only ``first`` bytes (a signal, a size limit) is completed with
    ``write``: the record on disk is whole and the same as a full write's."""
    real = os.writev

    def short(fd, buffers):
        joined = b"".join(bytes(b) for b in buffers)
        return os.write(fd, joined[:first]) if first else 0

    payload = bytes(range(200)) * 10
    m = _manager(tmp_path)
    monkeypatch.setattr(epochs.os, "writev", short)
    m._log(payload)
    monkeypatch.setattr(epochs.os, "writev", real)
    m._log(payload)
    m.close()
    data = (tmp_path / "data" / "wal.log").read_bytes()
    assert data[20:] == epochs._record(m.lsn - 1, payload) + epochs._record(m.lsn, payload)


@pytest.mark.parametrize("first", [0, 7, 16, 40])
def test_a_full_disk_part_way_leaves_no_partial_record(tmp_path, monkeypatch, first):
    """``writev`` writes ``first`` bytes of the record, then the disk is full (ENOSPC on the
    ``write`` that finishes it): a ``LogWriteError`` (space) is raised, nothing of the record stays in
    the log, the lsn does not move, and the next record follows the last whole one."""
    import errno

    real_writev, real_write = os.writev, os.write

    def short(fd, buffers):
        joined = b"".join(bytes(b) for b in buffers)
        if not first:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, joined[:first])

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    m = _manager(tmp_path)
    m._log(b"whole")
    lsn = m.lsn
    monkeypatch.setattr(epochs.os, "writev", short)
    monkeypatch.setattr(epochs.os, "write", full)
    with pytest.raises(epochs.LogWriteError, match="disk full") as info:
        m._log(bytes(range(100)))
    assert info.value.space and m.lsn == lsn
    monkeypatch.setattr(epochs.os, "writev", real_writev)
    monkeypatch.setattr(epochs.os, "write", real_write)
    assert (tmp_path / "data" / "wal.log").read_bytes()[20:] == epochs._record(lsn, b"whole")
    m._log(b"next")
    m.close()
    data = (tmp_path / "data" / "wal.log").read_bytes()
    assert data[20:] == epochs._record(lsn, b"whole") + epochs._record(lsn + 1, b"next")

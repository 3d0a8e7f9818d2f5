"""Faults an operator meets, against real server subprocesses on loopback (issue 16).

Each test drives one fault (clock skew, hostile sequences, disk full, damaged log or snapshots,
admin calls without the admin token, a batch over many epochs, undecodable messages) and checks
the rule: an acknowledged packet is never lost, and any loss that cannot be prevented is loud (a
log line naming the file and offset, a refusal to start, a counted rejection). Counts are exact:
the ``exact`` sketch's per-flow counts are compared with what the server acknowledged.
"""
from __future__ import annotations

import json
import os
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from telesketch import wire
from telesketch.client import Client
from telesketch.packets import PacketBatch

REPO = Path(__file__).resolve().parents[1]
EPOCH_S = 1
OLD_EPOCH = 1_700_000_000  # a 2023 capture being replayed: epoch ids of 1 s epochs
EXACT = {"exact": {"kind": "exact"}}
ADMIN = "admin-secret"
INGEST = "ingest-secret"


# ---------------------------------------------------------------------------- helpers
def make_batch(n: int, first_ts_ns: int, span_ns: int = 1, flows: int = 50, seed: int = 0) -> PacketBatch:
    """``n`` packets over ``flows`` flows (told apart by source address 10.0.0.x), time-ordered
    over ``[first_ts_ns, first_ts_ns + span_ns)``."""
    rng = np.random.default_rng(seed)
    src = (0x0A000000 + rng.integers(0, flows, n)).astype(np.uint32)
    ts = np.uint64(first_ts_ns) + np.sort(rng.integers(0, max(span_ns, 1), n)).astype(np.uint64)
    return PacketBatch.from_columns(ts_ns=ts, src_ip=src, dst_ip=np.full(n, 0xC0A80001, np.uint32),
                                    src_port=np.full(n, 1000, np.uint16), dst_port=np.full(n, 443, np.uint16),
                                    proto=np.full(n, 6, np.uint8), length=np.full(n, 100, np.uint16))


def counts_of(batches) -> Counter:
    """Packets per source address in ``batches`` (what the server acknowledged)."""
    total = Counter()
    for b in batches:
        values, n = np.unique(b.src_ip, return_counts=True)
        total.update(dict(zip(values.tolist(), n.tolist())))
    return total


def server_counts(client: Client) -> Counter:
    """Packets per source address over every retained epoch, from the exact sketch."""
    epochs = client.stats()["epochs"]
    if not epochs:
        return Counter()
    rows = client.top_flows(100_000, last=len(epochs), sketch="exact")
    total = Counter()
    for key, estimate in rows:
        total[int.from_bytes(key[:4], "big")] += int(estimate)
    return total


def old_batches(count: int, per_batch: int = 500, epochs: int = 3, seed: int = 1) -> list[PacketBatch]:
    """``count`` time-ordered batches of a 2023 capture over ``epochs`` one-second epochs."""
    span = epochs * 10**9 // count
    return [make_batch(per_batch, OLD_EPOCH * 10**9 + i * span, span, seed=seed + i) for i in range(count)]


#: ``python -c LIMITED_SERVE BYTES serve ...``: ``telesketch serve`` with RLIMIT_FSIZE at BYTES (a full disk:
#: a write past it fails with EFBIG, Python ignoring SIGXFSZ).
LIMITED_SERVE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
from telesketch.cli import main
sys.exit(main(sys.argv[2:]))
"""


class Server:
    """``telesketch serve`` in a subprocess (its own session), its output collected in the background."""

    def __init__(self, tmp_path: Path, sketches=EXACT, extra_args=(), fsize_limit: int | None = None, **server):
        self.data_dir = tmp_path / "data"
        values = dict(grpc_address="127.0.0.1:0", http_address="127.0.0.1:0", data_dir=str(self.data_dir),
                      epoch_seconds=EPOCH_S, keep_epochs=6)
        values.update(server)
        self.config_path = tmp_path / f"telesketch-{len(list(tmp_path.glob('telesketch-*.json')))}.json"
        self.config_path.write_text(json.dumps({"server": values, "sketches": sketches}))
        self.extra_args = list(extra_args)
        self.token = values.get("token", "")
        self.fsize_limit = fsize_limit
        self.lines: list[str] = []
        self.proc = None
        self.port = self.http_port = 0

    def start(self, expect_failure: bool = False) -> "Server":
        # The file-size limit is set by the child itself (LIMITED_SERVE), not by a preexec_fn: Python
        # code between fork and exec can deadlock on a lock another thread of this process held.
        launch = ["-m", "telesketch.cli"] if self.fsize_limit is None else ["-c", LIMITED_SERVE, str(self.fsize_limit)]
        self.lines = []
        self.proc = subprocess.Popen(
            [sys.executable, *launch, "serve", "--config", str(self.config_path), *self.extra_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, start_new_session=True)
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("telesketch serving"):
                    ports = dict(part.split("=") for part in line.split()[2:])
                    self.port, self.http_port = int(ports["grpc"]), int(ports["http"])
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(90)
        if expect_failure:
            self.proc.wait(30)
            time.sleep(0.2)
            return self
        assert self.port, "server did not start:\n" + "\n".join(self.lines)
        return self

    def client(self, **kw) -> Client:
        return Client(f"127.0.0.1:{self.port}", timeout=30, **kw)

    def metric(self, name: str, **labels) -> float:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/metrics")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        text = urllib.request.urlopen(request, timeout=10).read().decode()
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = re.escape(name + (f"{{{selector}}}" if selector else "")) + r" ([0-9.e+]+)"
        match = re.search(pattern, text)
        assert match, f"{name} {labels} not in /metrics"
        return float(match.group(1))

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(30) == 0

    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def servers():
    """Servers a test started; whatever is still running at the end is killed."""
    started: list[Server] = []
    yield started
    for s in started:
        if s.proc is not None and s.proc.poll() is None:
            s.kill()


def start(servers, *args, **kw) -> Server:
    s = Server(*args, **kw).start()
    servers.append(s)
    return s


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---------------------------------------------------------------------------- 1. clock ahead
def test_batches_stamped_far_in_the_future_are_refused_counted_and_stall_nothing(tmp_path, servers):
    """One collector an hour ahead used to move the open epoch forward and make every real packet
    late; one near 2**64 ns broke Stats. Now both are refused (counted as future_timestamp)."""
    srv = start(servers, tmp_path, epoch_seconds=10)
    now = time.time_ns()
    # live traffic inside one 10 s epoch (the last complete one), so no boundary can make a packet late
    epoch_start = (now // (10 * 10**9) - 1) * 10 * 10**9
    live = [make_batch(300, epoch_start + 10**9, 10**9, seed=i) for i in range(3)]
    c = srv.client(sender_id="collector-a")
    acked = [live[0]]
    assert c.push_one(live[0]).applied_packets == 300
    ahead = srv.client(sender_id="collector-ahead")
    for ts in (now + 3600 * 10**9, 2**64 - 2):
        err = rpc_error(lambda: ahead.push_one(make_batch(100, ts)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "ahead of the server clock" in err.details()
    assert ahead.last_sequence() == 0  # nothing of the refused batches was applied
    for b in live[1:]:
        ack = c.push_one(b)
        assert (ack.applied_packets, ack.late_packets) == (300, 0)
        acked.append(b)
    stats = c.stats()  # used to fail with UNKNOWN (epoch end out of range)
    assert int(stats["late_packets"]) == 0 and int(stats["packets"]) == 900
    assert server_counts(c) == counts_of(acked)
    assert srv.metric("telesketch_batches_rejected_total", reason="future_timestamp") == 2


def test_replaying_an_old_capture_keeps_working(tmp_path, servers):
    srv = start(servers, tmp_path)
    batches = old_batches(6)
    c = srv.client(sender_id="replay")
    assert c.push(batches).applied_packets == 3000
    assert server_counts(c) == counts_of(batches)


# ---------------------------------------------------------------------------- 4. sequence poisoning
def test_a_sequence_far_ahead_is_refused_and_cannot_poison_the_sender(tmp_path, servers):
    """Sequence 2**64-1 made every later batch of the sender an acknowledged duplicate (all
    dropped) and a fresh Client raise ValueError."""
    srv = start(servers, tmp_path)
    batches = old_batches(4)
    hostile = srv.client(sender_id="x")
    for seq in (2**64 - 1, 10**7):
        err = rpc_error(lambda: hostile.push_one(batches[0], sequence=seq))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "max_sequence_jump" in err.details()
    fresh = srv.client(sender_id="x")
    assert fresh.last_sequence() == 0
    summary = fresh.push(batches)
    assert (summary.duplicate_batches, summary.applied_packets, summary.last_sequence) == (0, 2000, 4)
    assert server_counts(fresh) == counts_of(batches)
    assert srv.metric("telesketch_batches_rejected_total", reason="sequence_jump") == 2
    with pytest.raises(OverflowError):
        fresh.push_one(batches[0], sequence=2**64)


# ---------------------------------------------------------------------------- 2. disk full
def test_disk_full_during_ingest_then_kill_and_restart_loses_nothing_acknowledged(tmp_path, servers):
    """A write past RLIMIT_FSIZE fails like a full disk (EFBIG). The batch must not be applied, the
    sender gets a retryable status, its retry applies once, and a torn record must not sit in the
    middle of the log: 20 batches acknowledged after space came back survive kill -9."""
    batches = old_batches(60, per_batch=400, epochs=1)  # one epoch: everything stays in the log
    record = len(wire.batch_to_bytes(batches[0], sender_id="c", sequence=1)) + 16  # what the client sends
    limit = 20 + record * 30 + record // 2  # room for 30 records and half of the 31st
    srv = start(servers, tmp_path, fsize_limit=limit)
    c = srv.client(sender_id="c")
    acked = []
    for b in batches[:30]:
        c.push_one(b)
        acked.append(b)
    failed = batches[30]
    err = rpc_error(lambda: c.push_one(failed))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "disk full" in err.details()  # retryable
    assert "nothing was applied" in err.details()
    assert c.last_sequence() == 30 and int(c.stats()["packets"]) == 30 * 400
    assert srv.metric("telesketch_log_write_failures_total") == 1
    assert (srv.data_dir / "wal.log").stat().st_size == 20 + 30 * record  # the partial record was cut off
    resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    # the next batch must not overtake the one that failed (its retry would be taken for a duplicate)
    err = rpc_error(lambda: c.push_one(batches[31], sequence=32))
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "resend from sequence 31" in err.details()
    ack = c.push_one(failed, sequence=31)  # the retry
    assert not ack.duplicate and ack.applied_packets == 400
    acked.append(failed)
    for b in batches[31:51]:
        c.push_one(b)
        acked.append(b)
    srv.kill()
    srv.fsize_limit = None
    srv.start()
    c = srv.client(sender_id="c")
    assert c.last_sequence() == 51
    assert server_counts(c) == counts_of(acked)
    srv.stop()


# ---------------------------------------------------------------------------- 3. damaged log
def _records(wal: Path) -> list[tuple[int, int]]:
    """``[(offset, size)]`` of the framed records (see telesketch.service.epochs)."""
    data = wal.read_bytes()
    out, pos = [], 20
    while pos + 16 <= len(data):
        (size,) = struct.unpack_from("<I", data, pos)
        if pos + 16 + size > len(data):
            break
        out.append((pos, 16 + size))
        pos += 16 + size
    return out


def _fill_log(tmp_path, servers, n=8):
    """A server killed with ``n`` acknowledged batches in its log (one epoch, no checkpoint yet)."""
    srv = start(servers, tmp_path)
    batches = old_batches(n, epochs=1)
    c = srv.client(sender_id="c")
    for b in batches:
        c.push_one(b)
    srv.kill()
    return srv, batches


def test_a_torn_tail_is_cut_with_one_log_line_and_nothing_acknowledged_is_lost(tmp_path, servers):
    srv, batches = _fill_log(tmp_path, servers)
    wal = srv.data_dir / "wal.log"
    size = wal.stat().st_size
    with open(wal, "ab") as f:  # a write cut short by the crash: header and part of a payload
        f.write(struct.pack("<IIQ", 5000, 0, 9) + b"\x0a" * 300)
    srv.start()
    assert f"cut a torn record at offset {size} (316 bytes dropped" in srv.output()
    assert server_counts(srv.client()) == counts_of(batches)
    srv.stop()


def test_a_truncated_log_is_loud_and_keeps_every_record_before_the_cut(tmp_path, servers):
    srv, batches = _fill_log(tmp_path, servers)
    wal = srv.data_dir / "wal.log"
    size = wal.stat().st_size
    os.truncate(wal, size // 2)
    kept = [i for i, (off, n) in enumerate(_records(wal))]
    cut_at = 20 + sum(n for _, n in _records(wal))
    srv.start()
    assert f"cut a torn record at offset {cut_at} ({size // 2 - cut_at} bytes dropped" in srv.output()
    assert server_counts(srv.client()) == counts_of(batches[: len(kept)])
    srv.stop()


@pytest.mark.parametrize("damage", ["flipped-byte", "bad-length"])
def test_a_damaged_record_mid_log_refuses_to_start_and_recover_reports_the_loss(tmp_path, servers, damage):
    srv, batches = _fill_log(tmp_path, servers)
    wal = srv.data_dir / "wal.log"
    records = _records(wal)
    offset, _ = records[3]
    data = bytearray(wal.read_bytes())
    if damage == "flipped-byte":
        data[offset + 40] ^= 0x01
    else:
        data[offset : offset + 4] = struct.pack("<I", 0x7FFFFFF0)
    wal.write_bytes(bytes(data))
    srv.start(expect_failure=True)
    assert srv.proc.returncode == 2
    error = [line for line in srv.lines if line.startswith("telesketch serve: error:")]
    assert len(error) == 1 and f"{wal}: damaged record at offset {offset}" in error[0]
    assert "Traceback" not in srv.output()
    assert wal.read_bytes() == bytes(data)  # the evidence is kept
    srv.extra_args = ["--recover"]
    srv.start()
    assert f"recovery: {wal}: damaged record at offset {offset} (LSN 4), with 4 intact records after it " \
           f"(LSN 5..8, 2000 packets)" in srv.output()
    assert list(srv.data_dir.glob("wal.log.damaged-*"))
    assert server_counts(srv.client()) == counts_of(batches[:3])
    srv.stop()


@pytest.mark.parametrize("payload", ["not-protobuf", "bad-columns"])
def test_an_intact_record_that_does_not_decode_refuses_to_start_and_recover_drops_only_it(tmp_path, servers, payload):
    """A record whose frame and checksum are intact but whose payload is not a batch (a bug in a
    writer, or damage made before the checksum): start-up refuses with one line naming the file,
    the offset and the LSN; ``--recover`` drops that record alone, says so, and keeps the rest."""
    import crc32c

    srv, batches = _fill_log(tmp_path, servers)
    wal = srv.data_dir / "wal.log"
    offset, size = _records(wal)[3]
    data = wal.read_bytes()
    if payload == "not-protobuf":
        body = b"\xff" * 64  # field 31 with wire type 7: no protobuf parses it
    else:  # a well-formed message whose columns disagree in length
        message = wire.batch_to_message(batches[3], sender_id="c", sequence=4)
        message.src_ip = message.src_ip[:-4]
        body = message.SerializeToString()
    lsn = struct.pack("<Q", 4)
    record = struct.pack("<II", len(body), crc32c.crc32c(body, crc32c.crc32c(lsn))) + lsn + body
    wal.write_bytes(data[:offset] + record + data[offset + size:])
    damaged = wal.read_bytes()
    srv.start(expect_failure=True)
    assert srv.proc.returncode == 2
    error = [line for line in srv.lines if line.startswith("telesketch serve: error:")]
    assert len(error) == 1, srv.output()
    assert f"{wal}: record at offset {offset} (LSN 4) does not decode" in error[0] and "--recover" in error[0]
    assert "Traceback" not in srv.output()
    assert wal.read_bytes() == damaged  # the evidence is kept
    srv.extra_args = ["--recover"]
    srv.start()
    assert f"recovery: {wal}: record at offset {offset} (LSN 4) does not decode" in srv.output()
    c = srv.client(sender_id="c")
    assert server_counts(c) == counts_of(batches[:3] + batches[4:])
    assert c.last_sequence() == 8  # the sender's sequence moved past it: the loss is reported, not retried
    srv.stop()


# ---------------------------------------------------------------------------- 3. damaged snapshots
def _fill_epochs(tmp_path, servers):
    """A server stopped after 3 epochs of a replay: epochs 0 and 1 closed on disk, 2 in open.tsk."""
    srv = start(servers, tmp_path)
    batches = old_batches(9, epochs=3)
    c = srv.client(sender_id="c")
    c.push(batches)
    srv.stop()
    return srv, batches


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped", "open-missing"])
def test_a_damaged_snapshot_refuses_to_start_and_recover_reports_the_loss(tmp_path, servers, damage):
    srv, batches = _fill_epochs(tmp_path, servers)
    target = srv.data_dir / ("open.tsk" if damage == "open-missing" else f"epoch-{OLD_EPOCH + 1:020d}.tsk")
    data = target.read_bytes()
    if damage in ("missing", "open-missing"):
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) - 10] ^= 0x40
        target.write_bytes(bytes(flipped))
    srv.start(expect_failure=True)
    assert srv.proc.returncode == 2
    error = [line for line in srv.lines if line.startswith("telesketch serve: error:")]
    assert len(error) == 1 and str(target) in error[0], srv.output()
    srv.extra_args = ["--recover"]
    srv.start()
    assert "recovery: " in srv.output() and str(target) in srv.output()
    lost_epoch = OLD_EPOCH + 2 if damage == "open-missing" else OLD_EPOCH + 1
    got = server_counts(srv.client())
    # every epoch but the damaged one is exact; the damaged one is gone, and the log line says so
    assert got == counts_of(_split_epochs(batches, keep=lambda e: e != lost_epoch))
    if damage != "open-missing":
        assert f"closed epoch {lost_epoch}, " in srv.output()
    srv.stop()


def _split_epochs(batches, keep):
    parts = []
    for b in batches:
        eids = b.ts_ns // np.uint64(10**9)
        mask = np.array([keep(int(e)) for e in eids])
        parts.append(b[mask])
    return parts


def test_a_start_with_other_settings_is_refused_naming_the_setting(tmp_path, servers):
    srv, _ = _fill_epochs(tmp_path, servers)
    for change, words in (({"epoch_seconds": 2}, "epoch_seconds was 1"),
                          ({"sketches": {"exact": {"kind": "exact", "phi": 0.5}}}, "sketch 'exact' setting 'phi'")):
        config = json.loads(srv.config_path.read_text())
        config["server"].update({k: v for k, v in change.items() if k != "sketches"})
        config["sketches"] = change.get("sketches", config["sketches"])
        other = Server(tmp_path, sketches=config["sketches"], **config["server"])
        other.start(expect_failure=True)
        assert other.proc.returncode == 2 and words in other.output(), other.output()


# ---------------------------------------------------------------------------- 5. admin roles
def test_admin_calls_need_the_admin_token_and_cannot_push_the_open_epoch_ahead(tmp_path, servers):
    """Ten RotateEpoch calls (with the shared token) evicted every retained epoch and made the next
    real batch late. Now the ingest token cannot call Admin, and even the admin token cannot rotate
    an epoch that has not ended by the server clock."""
    srv = start(servers, tmp_path, epoch_seconds=3600, token=INGEST, admin_token=ADMIN)
    now = time.time_ns()
    c = srv.client(sender_id="live", token=INGEST)
    first = make_batch(100, now - 10**6, seed=1)
    c.push_one(first)
    for token, code in ((INGEST, grpc.StatusCode.PERMISSION_DENIED), ("", grpc.StatusCode.UNAUTHENTICATED),
                        ("nope", grpc.StatusCode.UNAUTHENTICATED)):
        err = rpc_error(lambda: srv.client(token=token).rotate_epoch())
        assert err.code() == code
    admin = srv.client(token=ADMIN)
    for _ in range(10):
        closed, _, _ = admin.rotate_epoch()
        assert not closed
    second = make_batch(100, now, seed=2)
    ack = c.push_one(second)
    assert (ack.applied_packets, ack.late_packets) == (100, 0)
    assert server_counts(admin) == counts_of([first, second])
    assert srv.metric("telesketch_batches_rejected_total", reason="admin_denied") == 1


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine other than loopback (None when it has none)."""
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_admin_without_a_configured_admin_token_is_loopback_only(tmp_path, servers):
    from telesketch.service.server import is_loopback_peer

    assert is_loopback_peer("ipv4:127.0.0.1:5000") and is_loopback_peer("ipv6:[::1]:5000")
    assert not is_loopback_peer("ipv4:10.1.2.3:5000") and not is_loopback_peer("ipv6:[2001:db8::1]:80")
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    srv = start(servers, tmp_path, grpc_address="0.0.0.0:0")
    srv.client(sender_id="c").push_one(old_batches(1)[0])
    remote = Client(f"{address}:{srv.port}", timeout=10)
    err = rpc_error(lambda: remote.rotate_epoch())
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "admin_token" in err.details()
    assert remote.stats()["packets"] == "500"  # queries and ingest stay open; only Admin is loopback-only
    assert srv.client().rotate_epoch()[0]  # from loopback it is served


def test_a_token_without_tls_off_loopback_is_warned_about(tmp_path, servers):
    srv = start(servers, tmp_path, grpc_address="0.0.0.0:0", token=INGEST)
    assert "bearer tokens will travel in clear text" in srv.output()


# ---------------------------------------------------------------------------- 6. many epochs in one batch
def test_one_batch_over_many_epochs_is_bounded_and_cheap(tmp_path, servers):
    """2,000 epochs in one batch took 18 s (a snapshot write and fsync per epoch). Over the bound it
    is refused; under it only the retained epochs are written."""
    srv = start(servers, tmp_path, max_epochs_per_batch=3000)
    c = srv.client(sender_id="c")
    wide = make_batch(8000, OLD_EPOCH * 10**9, 2000 * 10**9, seed=3)
    assert np.unique(wide.ts_ns // np.uint64(10**9)).size > 1900
    t = time.perf_counter()
    ack = c.push_one(wide)
    elapsed = time.perf_counter() - t
    assert ack.applied_packets == 8000 and elapsed < 5, elapsed
    assert len(list(srv.data_dir.glob("epoch-*.tsk"))) == 6
    retained = [int(e["epoch"]) for e in c.stats()["epochs"]]
    assert server_counts(c) == counts_of(_split_epochs([wide], keep=lambda e: e in retained))
    srv.stop()
    (tmp_path / "b").mkdir()
    bounded = start(servers, tmp_path / "b")
    err = rpc_error(lambda: bounded.client().push_one(wide))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_epochs_per_batch 256" in err.details()
    assert bounded.metric("telesketch_batches_rejected_total", reason="too_many_epochs") == 1


# ---------------------------------------------------------------------------- 10. in-flight budget
def test_concurrent_large_batches_stay_within_the_inflight_budget_and_refusals_are_retried(tmp_path, servers):
    """16 concurrent 57 MB pushes took the server from 298 MB to 2.8 GB. Here the budget holds 3 of
    the ~300 KB batches that 8 clients push at once (4 streams without a sender id, 4 senders batch
    by batch): the bytes held never pass the budget, refusals are busy (RESOURCE_EXHAUSTED with a
    retry hint), the client retries them, and every flow's count is exactly what was sent."""
    budget = 1 << 20
    srv = start(servers, tmp_path, max_message_bytes=budget, max_inflight_bytes=budget, durability="every-batch")
    plans = [[make_batch(12_000, (OLD_EPOCH + 1) * 10**9 + 10 * i + c, seed=100 * c + i, flows=200)
              for i in range(6)] for c in range(8)]
    assert all(len(wire.batch_to_bytes(b)) > budget // 4 for b in plans[0])  # what the client sends
    retries, errors = [0] * 8, []

    def push(c: int) -> None:
        try:
            if c < 4:  # one anonymous stream: resumed exactly at the refused batch
                with srv.client() as client:
                    summary = client.push(plans[c])
                    assert (summary.batches, summary.applied_packets) == (6, 72_000)
            else:  # batch by batch, with a sender id
                with srv.client(sender_id=f"collector-{c}") as client:
                    for b in plans[c]:
                        assert client.push_one(b).applied_packets == 12_000
            retries[c] = client.busy_retries
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=push, args=(c,)) for c in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    busy = srv.metric("telesketch_batches_rejected_total", reason="busy")
    assert busy > 0 and sum(retries) == busy, (busy, retries)  # every refusal was retried by a client
    print(f"busy refusals {busy:.0f}, retries per client {retries}")
    assert 0 < srv.metric("telesketch_inflight_bytes_peak") <= budget
    assert srv.metric("telesketch_inflight_bytes") == 0  # every reservation given back
    assert srv.metric("telesketch_inflight_bytes_limit") == budget
    with srv.client() as client:
        assert server_counts(client) == counts_of([b for plan in plans for b in plan])
        assert int(client.stats()["batches"]) == 48


def test_a_busy_refusal_of_a_lone_batch_names_the_budget_and_changes_nothing(tmp_path):
    """Without retries (a raw stub), a batch that does not fit is RESOURCE_EXHAUSTED with the
    reason, the retry hint in the trailing metadata, and nothing applied; an oversized batch is
    still "oversized" (not busy: no retry could fit it)."""
    from telesketch.service.budget import RETRY_AFTER_KEY
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread
    from telesketch.v1 import service_pb2_grpc

    config = ServiceConfig(grpc_address="127.0.0.1:0", http_address="", data_dir=str(tmp_path / "data"),
                           epoch_seconds=3600, sketches=EXACT, durability="none",
                           max_message_bytes=1 << 20, max_inflight_bytes=1 << 20)
    batch = make_batch(4000, OLD_EPOCH * 10**9, seed=3)
    with ServiceThread(config) as svc:
        budget = svc.service.budget
        assert budget.try_reserve(budget.limit - 1000)  # as if other calls held nearly all of it
        stub = service_pb2_grpc.IngestStub(grpc.insecure_channel(f"127.0.0.1:{svc.grpc_port}"))
        err = rpc_error(lambda: stub.PushOne(wire.batch_to_message(batch, sender_id="x", sequence=1), timeout=10))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server busy" in err.details() and "max_inflight_bytes" in err.details()
        assert dict(err.trailing_metadata())[RETRY_AFTER_KEY] == "50"
        big = wire.batch_to_message(make_batch(20_000, OLD_EPOCH * 10**9, seed=4))
        err = rpc_error(lambda: stub.PushOne(big, timeout=10))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_message_bytes" in err.details()
        assert RETRY_AFTER_KEY not in dict(err.trailing_metadata() or ())
        budget.release(budget.limit - 1000)
        assert budget.in_use == 0
        with Client(f"127.0.0.1:{svc.grpc_port}", sender_id="x") as c:
            assert c.last_sequence() == 0 and int(c.stats()["batches"]) == 0
            assert c.push_one(batch).applied_packets == 4000 and c.busy_retries == 0


def test_max_inflight_bytes_below_max_message_bytes_is_a_config_error():
    from telesketch.service.config import ConfigError, ServiceConfig

    with pytest.raises(ConfigError, match="max_inflight_bytes"):
        ServiceConfig(max_message_bytes=2 << 20, max_inflight_bytes=1 << 20).validate()


# ---------------------------------------------------------------------------- 9. undecodable messages
def test_undecodable_messages_are_invalid_argument_counted_and_logged_once(tmp_path, servers):
    srv = start(servers, tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    push_one = channel.unary_unary("/telesketch.v1.Ingest/PushOne")
    for _ in range(5):
        err = rpc_error(lambda: push_one(b"\xff\xff\xff\xff\x0f", timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a telesketch.v1.PacketBatch" in err.details()
    assert srv.metric("telesketch_batches_rejected_total", reason="undecodable") == 5
    assert sum("undecodable PacketBatch" in line for line in srv.lines) == 1
    assert "Traceback" not in srv.output()
    # in a stream, the batches before the bad one are applied before the error returns
    batches = old_batches(5)
    raw = [wire.batch_to_message(b, sender_id="s", sequence=i + 1).SerializeToString() for i, b in enumerate(batches)]
    push = channel.stream_unary("/telesketch.v1.Ingest/Push")
    err = rpc_error(lambda: push(iter(raw + [b"\xff\xff\xff\xff\x0f"]), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "batch #6 of the stream" in err.details()
    c = srv.client(sender_id="s")
    assert c.last_sequence() == 5
    assert server_counts(c) == counts_of(batches)


# ---------------------------------------------------------------------------- fuzzed wire messages
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

COLUMN_FIELDS = ("ts_ns", "src_ip", "dst_ip", "src_port", "dst_port", "proto", "length", "ip_id", "ttl", "tos",
                 "tcp_flags", "tcp_window", "tcp_seq", "hdr_len", "header")
REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION}


@st.composite
def wire_messages(draw) -> bytes:
    """Bytes a hostile or broken sender might send: noise, valid batches with extreme fields
    (timestamps from 0 to 2**64, sequences up to 2**64-1, long sender ids), and valid batches with
    one field or byte damaged."""
    kind = draw(st.sampled_from(["noise", "valid", "field", "bytes"]))
    if kind == "noise":
        return draw(st.binary(max_size=200))
    n = draw(st.integers(0, 40))
    base = draw(st.sampled_from([OLD_EPOCH * 10**9, time.time_ns(), time.time_ns() + 10**13, 2**64 - 100, 0]))
    span = draw(st.sampled_from([1, 10**9, 10**12]))
    batch = make_batch(n, base, span if base < 2**63 else 1, seed=draw(st.integers(0, 1000)))
    sender = draw(st.sampled_from(["", "fuzz-a", "fuzz-b", "s" * 300]))
    sequence = draw(st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1)))
    message = wire.batch_to_message(batch, sender_id=sender, sequence=sequence)
    if kind == "field":
        name = draw(st.sampled_from(COLUMN_FIELDS + ("count", "schema_version")))
        if name in COLUMN_FIELDS:
            setattr(message, name, draw(st.binary(max_size=80)))
        else:
            setattr(message, name, draw(st.integers(0, 2**32 - 1)))
    raw = message.SerializeToString()
    if kind == "bytes" and raw:
        pos = draw(st.integers(0, len(raw) - 1))
        raw = raw[:pos] + bytes([raw[pos] ^ draw(st.integers(1, 255))]) + raw[pos + 1:] if draw(st.booleans()) \
            else raw[:pos]
    return raw


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("fuzz"), durability="none").start()
    channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
    yield srv, channel.unary_unary("/telesketch.v1.Ingest/PushOne"), srv.client()
    channel.close()
    srv.kill()


def _state(client: Client) -> tuple:
    s = client.stats()
    return tuple(int(s[k]) for k in ("packets", "batches", "late_packets", "duplicate_batches"))


def _fuzz_one(fuzz_server, raw: bytes) -> None:
    srv, push_one, client = fuzz_server
    before = _state(client)
    try:
        push_one(raw, timeout=30)
        accepted = True
    except grpc.RpcError as err:
        assert err.code() in REFUSALS, (err.code(), err.details(), raw[:100])
        accepted = False
        event(f"refused {err.code().name}")
    after = _state(client)
    if accepted:
        event("accepted")
        assert after[1] + after[3] == before[1] + before[3] + 1  # one batch, applied or a duplicate
    else:
        assert after == before  # a refusal changes nothing


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=wire_messages())
def test_fuzzed_messages_never_crash_or_change_state_when_refused(fuzz_server, raw):
    _fuzz_one(fuzz_server, raw)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=wire_messages())
def test_fuzzed_messages_ten_thousand(fuzz_server, raw):
    _fuzz_one(fuzz_server, raw)


def test_the_fuzzed_server_is_alive(fuzz_server):
    srv, _, client = fuzz_server
    assert srv.proc.poll() is None and client.stats()
    assert "Traceback" not in srv.output()


# ---------------------------------------------------------------------------- 7. queries vs. ingest
def test_a_slow_query_does_not_hold_ingestion_back(tmp_path, monkeypatch):
    """A client polling HeavyHitters cut 8-client ingest to a quarter and raised the worst stream
    latency from 1.1 s to 22 s: each query held the ingest lock while it computed. Here a query is
    made slow on purpose (3 s inside the sketch's answer); a batch pushed meanwhile must be
    acknowledged at once, and the query answers from the state it copied."""
    from telesketch.service import sketchset
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import ServiceThread

    real = sketchset.heavy_hitters
    in_query = threading.Event()

    def slow_heavy_hitters(*args, **kw):
        in_query.set()
        time.sleep(3.0)
        return real(*args, **kw)

    monkeypatch.setattr(sketchset, "heavy_hitters", slow_heavy_hitters)
    config = ServiceConfig(grpc_address="127.0.0.1:0", http_address="", data_dir=str(tmp_path / "data"),
                           epoch_seconds=3600, sketches=EXACT, durability="none")
    first, second = old_batches(2, epochs=1)
    with ServiceThread(config) as svc:
        c = Client(f"127.0.0.1:{svc.grpc_port}", sender_id="c", timeout=30)
        c.push_one(first)
        answer = []
        query = threading.Thread(target=lambda: answer.append(c.heavy_hitters(threshold=0, sketch="exact")))
        query.start()
        assert in_query.wait(10)
        t = time.perf_counter()
        c.push_one(second)
        pushed_in = time.perf_counter() - t
        query.join()
        assert pushed_in < 1.5, f"the push waited {pushed_in:.2f} s for the query"
        by_source = Counter()
        for key, value in answer[0]:
            by_source[key if isinstance(key, int) else int.from_bytes(key[:4], "big")] += int(value)
        assert by_source == counts_of([first])  # the state as it was when the query began
        assert server_counts(c) == counts_of([first, second])


def test_idle_senders_leave_the_sequence_table_and_the_table_survives_restarts(tmp_path):
    from telesketch.service.epochs import EpochManager
    from telesketch.service.sketchset import SketchSet

    def manager():
        return EpochManager(SketchSet.from_config(EXACT), 10**9, 6, tmp_path / "data", durability="none",
                            sender_ttl_seconds=3600)

    m = manager()
    b = old_batches(2, epochs=1)
    m.apply(b[0], "idle", 1)
    m.apply(b[1], "busy", 1)
    m.sender_seen["idle"] -= 7200  # its last batch two hours ago
    m.checkpoint()
    assert m.senders == {"busy": 1}
    m.close()
    again = manager()
    assert again.senders == {"busy": 1} and abs(again.sender_seen["busy"] - time.time()) < 60
    again.close()


def test_adding_a_sketch_is_allowed_but_removing_one_is_refused(tmp_path, servers):
    srv, batches = _fill_epochs(tmp_path, servers)
    more = dict(EXACT, exact2={"kind": "exact", "phi": 0.01})
    config = json.loads(srv.config_path.read_text())["server"]
    added = start(servers, tmp_path, sketches=more, **config)
    assert server_counts(added.client()) == counts_of(batches)
    added.stop()
    removed = Server(tmp_path, sketches={"exact2": more["exact2"]}, **config)
    removed.start(expect_failure=True)
    assert removed.proc.returncode == 2 and "sketch 'exact' was configured when it was created" in removed.output()


def test_a_failed_checkpoint_keeps_the_log_and_is_counted(tmp_path, servers):
    """Closing an epoch whose snapshot cannot be written (here a directory sits where its temporary
    file goes; a full disk does the same): the batch is still acknowledged (it is in the log), the
    failure is logged and counted, the log is not cut, and kill -9 and restart bring every batch back."""
    batches = old_batches(6, per_batch=400, epochs=3)
    srv = start(servers, tmp_path)
    blocker = srv.data_dir / f"epoch-{OLD_EPOCH:020d}.tsk.tmp"
    blocker.mkdir()
    c = srv.client(sender_id="c")
    for b in batches:
        c.push_one(b)
    assert srv.metric("telesketch_checkpoint_failures") >= 1
    assert "checkpoint after closing an epoch failed" in srv.output()
    srv.kill()
    blocker.rmdir()
    srv.start()
    assert server_counts(srv.client()) == counts_of(batches)
    srv.stop()


@pytest.mark.parametrize("mode", ["none", "interval", "every-batch"])
def test_kill_during_ingest_loses_nothing_acknowledged_in_every_durability_mode(tmp_path, servers, mode):
    """Every mode writes the batch to the log before acknowledging it; they differ only in when it
    is forced to disk (power loss), so kill -9 loses nothing in any of them."""
    srv = start(servers, tmp_path, durability=mode, fsync_interval_seconds=0.2)
    batches = old_batches(10, epochs=3)
    c = srv.client(sender_id="c")
    c.push(batches[:5])
    for b in batches[5:]:
        c.push_one(b)
    time.sleep(0.5 if mode == "interval" else 0)  # the interval fsync runs meanwhile
    srv.kill()
    srv.start()
    c = srv.client(sender_id="c")
    assert c.last_sequence() == 10 and server_counts(c) == counts_of(batches)
    srv.stop()


def test_stats_answers_for_an_epoch_that_ends_past_2_64_ns(tmp_path):
    """A data directory from before timestamps were checked may hold such an epoch; Stats failed
    with UNKNOWN (epoch end out of range)."""
    from telesketch.service.config import ServiceConfig
    from telesketch.service.server import Service

    service = Service(ServiceConfig(data_dir=str(tmp_path / "data"), epoch_seconds=10, sketches=EXACT))
    try:
        service.manager.apply(make_batch(10, 2**64 - 2))  # straight to the manager: the RPC would refuse it
        reply = service.stats_message()
        assert reply.epochs[-1].end_ns == 2**64 - 1 and reply.packets == 10
    finally:
        service.manager.close()


def test_telesketch_replay_rides_out_a_full_disk(tmp_path, servers):
    """The replay client retries UNAVAILABLE: a disk that fills mid-replay and frees up again costs
    retries, not packets; every flow's count matches the capture."""
    from telesketch.replay import ReplayOptions, replay
    from telesketch.traces import generate_capture, read_capture

    capture = tmp_path / "capture.pcap"
    generate_capture(capture, packets=20_000, flows=500, duration_s=1.0, seed=4)
    sent = list(read_capture(capture, batch_size=1000))
    record = len(wire.batch_to_message(sent[0], sender_id="r", sequence=1).SerializeToString()) + 16
    srv = start(servers, tmp_path, epoch_seconds=10, fsize_limit=20 + int(record * 5.5))
    done = threading.Event()

    def free_space_after_the_first_failure():
        while not done.is_set():
            if srv.metric("telesketch_log_write_failures_total") >= 1:
                time.sleep(0.3)
                resource.prlimit(srv.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=free_space_after_the_first_failure)
    watcher.start()
    try:
        summary = replay([capture], ReplayOptions(f"127.0.0.1:{srv.port}", batch_size=1000, sender_id="r",
                                                  retries=40, backoff_s=0.05, max_backoff_s=0.2))
    finally:
        done.set()
        watcher.join()
    assert summary.error is None and summary.packets_rejected == 0 and summary.retries >= 1
    assert summary.packets_applied == 20_000
    assert server_counts(srv.client()) == counts_of(sent)


def test_a_client_polling_queries_does_not_stall_ingest_and_counts_stay_exact(tmp_path, servers):
    """Fault 7 against a real server: while one client polls TopFlows back to back (the default
    ``query_share`` 0.25 paces it), 40 batches pushed one by one are each acknowledged promptly,
    the poller's answers grow monotonically and never exceed what was acknowledged, and at the
    end every flow's count is exact."""
    srv = start(servers, tmp_path, durability="none")
    pusher, poller = srv.client(sender_id="p"), srv.client()
    batches = old_batches(40, per_batch=2000, epochs=1)
    pusher.push_one(batches[0])  # an epoch to query
    acked_packets, seen, errors, done = [len(batches[0])], [], [], threading.Event()

    def poll():
        try:
            while not done.is_set():
                rows = poller.top_flows(100_000, sketch="exact")
                seen.append((sum(int(v) for _, v in rows), acked_packets[0]))
        except Exception as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        worst = 0.0
        for b in batches[1:]:
            t = time.perf_counter()
            pusher.push_one(b)
            worst = max(worst, time.perf_counter() - t)
            acked_packets[0] += len(b)
    finally:
        done.set()
        thread.join(60)
    assert not thread.is_alive() and not errors, errors
    totals = [total for total, _ in seen]
    assert len(seen) >= 3 and totals == sorted(totals)
    # never more than acknowledged by the time it answered (+ the one batch that may be in flight)
    assert all(total <= acked + 2000 for total, acked in seen)
    assert worst < 2.0, f"a push waited {worst:.2f} s behind the poller"
    assert server_counts(pusher) == counts_of(batches)
    assert srv.metric("telesketch_query_paced_seconds") > 0  # the poller was paced

"""ResidualSketch's approximate **batched** update (spec ``specs/residualsketch.md`` §5), written once for
the GPU twin and for its CPU emulation.

Exact mode (the default everywhere) walks the batch packet by packet: F's count of a key decides, at the
packet, whether the Residual Blocks see it. That walk is serial. Batched mode (opt-in on the GPU twin:
``telesketch.gpu.residualsketch.ResidualSketch(gpu_update="batched")``) replaces it by whole-batch array
steps (spec §5):

(one update per chunk of :data:`CHUNK_PACKETS` packets by default)

1. reduce the batch to distinct keys ``x`` with weights ``w_x`` (sort + segment counts);
2. probe F once per distinct key (:func:`probe_key`: one thread per key): held bucket with its count
   ``o_x`` at batch start, or the min bucket of the two rows (batch-start counts, ties to row 0);
3. weighted F update (:func:`weighted_insert`): every bucket's count grows by the sum of the weights of
   the keys landing on it (held keys on their bucket, the others on their min bucket); among the
   newcomers of a bucket, the one with the least ``Exp(1) / w_x`` (drawn from ``rand32``) is the
   candidate, and it takes the bucket with probability ``W_new / count_after`` (``W_new`` the
   newcomers' weight): a weighted sample over ``{old id: old count + held weight} ∪ {x: w_x}``;
4. residual weight ``r_x = w_x`` for a key not held at batch start, else ``clamp(T - o_x, 0, w_x)``; a key
   crosses when ``o_x < T <= o_x + w_x``;
5. per Residual Block ``k``: ``W_k(p) = Σ r_x``, ``D_k(p) = T · #crossings`` summed by ``p = prefix(x, k)``;
   weighted insert of ``(p, W_k(p))``, then, if ``p`` is held after it, ``count = max(0, count - D_k(p))``.

It equals exact mode when no key changes bucket ownership inside a batch (test:
``tests/test_residual_batched.py``); otherwise it differs (a key that takes a bucket mid-batch sends its
later packets to the blocks; decrements are applied after the batch's inserts; the clamp). Accuracy
against exact mode is measured in BENCHMARKS.md ("issue 22b") and tested (mean F1 within 0.02 over 3
seeds). Its answers depend on where batches are cut (exact mode's do not).

**One code path.** :func:`batched_update` takes an ``ops`` object: ``xp`` (``numpy`` or ``cupy``), the
per-key probe launch and a scatter-add. The GPU twin passes CuPy arrays (numpy under the CUDA simulator)
and launches :func:`probe_key` as a CUDA kernel (its device twin); :class:`CpuOps` runs the same
:func:`probe_key` in a ``nogil`` loop over numpy arrays, which is how the accuracy table is computed on
the CPU (:func:`emulate_update`). The simulator test checks that both give the same state bit for bit.

Scope: IPv4 keys counted in packets (``weight="packets"``); the IPv6 tree keeps exact mode.

**Where this differs from the spec's §5 text** (second review; each a choice, none changes what §5
guarantees: exact mode's state when no key changes ownership, and F1 within 0.02):

- step 3's sample: the old id weighs its batch-start count **plus** the batch weight of the held key
  that owns the bucket (spec: the old count), as exact mode's count has grown by then; it is drawn in
  two stages, a candidate among the newcomers (least ``Exp(1) / w_x``) and a takeover with probability
  ``W_new / count_after`` (``coin2 % count_after < W_new``), the same distribution as one weighted
  sample, with a second coin per key (``rand32`` under ``seed_mix ^ SEED_MIX2``);
- coins: a key's coin index ``n`` is the stream index of its first packet in the batch; a prefix's is
  that of its smallest light key (the spec names ``rand32`` only);
- step 5: a key with ``r_x = 0`` (heavy at batch start) is left out of the blocks' inserts (a zero
  weight would change nothing); "if p is held" is read after the block's insert;
- with ``connection=False`` (noConn) every key's whole weight goes to the blocks, no debt, as exact
  mode's noConn does;
- chunking: a batch is applied as consecutive updates of :data:`CHUNK_PACKETS` (the spec has one per
  batch; the 0.02 bar holds at 16 Ki on every §8 row, not at 64 Ki);
- step 6 (a dense bucket scan and per-layer segmented reduction on the device) is not built: queries
  run on the host with the CPU class's code, the same answers for the same state;
- scope: packets only (byte weighting is refused: ``SketchError`` on the GPU twin, ``ValueError`` in
  :func:`emulate_update`) and the IPv4 tree only.
"""
from __future__ import annotations

import numpy as np

from telesketch.jit import kernel, twin
from telesketch.sketches.cocosketch import _M32, _ROW0, _ROW1, bob_hash, fastmod, rand32

__all__ = ["CHUNK_PACKETS", "CpuOps", "GPU_UPDATES", "SEED_MIX2", "batched_update", "emulate_update", "probe_key", "probe_keys_cpu",
           "weighted_insert"]

#: The values of ``gpu_update``: ``exact`` (spec §3 order, the CPU's state bit for bit) or ``batched`` (§5).
GPU_UPDATES = ("exact", "batched")
#: XORed into ``seed_mix`` for the second coin of a key (the takeover draw, independent of the sample's).
SEED_MIX2 = np.uint64(0xD1B54A32D192ED03)
_TWO32 = 4294967296.0
#: Packets per batched update (the GPU twin's default ``batched_chunk``): a larger batch is applied as
#: consecutive chunks of this size. The approximation grows with the chunk (a key not held at a chunk's
#: start sends all its packets of the chunk to the blocks; takeovers land at the chunk's end). On the
#: spec's 8 M-packet workloads (every §8.1/§8.2 memory point, 3 seeds, BENCHMARKS.md "issue 22b"):
#: 16 Ki-packet updates stay within F1 0.02 of exact mode on all 21 rows (worst -0.018), 64 Ki ones on 19
#: (synth_inj T=4000 at 32 / 64 KiB: -0.034 / -0.026), 1 Mi ones lose up to 0.124.
CHUNK_PACKETS = 16384


@twin()
def probe_key(i, keys, nidx, ids, counts, occ, blk, w, wmagic, seed_mix, seed_mix2, coin_j, code, coin, coin2):
    """Probe block ``blk`` (int64) for key ``keys[i]`` (uint32; ``w`` buckets per row, ``wmagic`` its
    fastmod magic, uint64) at batch-start state ``ids``/``counts``/``occ`` (``[blocks, 2, wmax]``).

    Writes ``code[i]`` (int64): ``-(1 + row * wmax + pos)`` if the key is held there (row 0 first), else
    ``row * wmax + pos`` of the bucket with the smaller count (ties to row 0); ``coin[i]`` /
    ``coin2[i]`` (uint64 holding a u32): ``rand32(seed_mix, nidx[i], coin_j)`` and the same with
    ``seed_mix2`` -- the key's sampling and takeover coins. One call per key, so one GPU thread each.
    """
    x = np.uint64(keys[i])
    wmax = np.int64(ids.shape[2])
    p0 = np.int64(fastmod(bob_hash(x, _ROW0), wmagic, w))
    p1 = np.int64(fastmod(bob_hash(x, _ROW1), wmagic, w))
    if occ[blk, 0, p0] != 0 and np.uint64(ids[blk, 0, p0]) == x:
        code[i] = -(p0 + np.int64(1))
    elif occ[blk, 1, p1] != 0 and np.uint64(ids[blk, 1, p1]) == x:
        code[i] = -(wmax + p1 + np.int64(1))
    elif counts[blk, 1, p1] < counts[blk, 0, p0]:
        code[i] = wmax + p1
    else:
        code[i] = p0
    n = np.uint64(nidx[i])
    coin[i] = rand32(seed_mix, n, coin_j) & _M32
    coin2[i] = rand32(seed_mix2, n, coin_j) & _M32


@kernel
def probe_keys_cpu(keys, nidx, ids, counts, occ, blk, w, wmagic, seed_mix, seed_mix2, coin_j, code, coin, coin2):
    """:func:`probe_key` for every key, in a ``nogil`` loop (the CPU emulation of the GPU kernel)."""
    for i in range(keys.shape[0]):
        probe_key(i, keys, nidx, ids, counts, occ, blk, w, wmagic, seed_mix, seed_mix2, coin_j, code, coin, coin2)


class CpuOps:
    """The array operations of :func:`batched_update` on the CPU: numpy, :func:`probe_keys_cpu`, ``np.add.at``."""

    xp = np

    @staticmethod
    def probe(keys, nidx, state, blk: int, w, wmagic, seed_mix, seed_mix2, coin_j: int):
        """``(code int64[n], coin uint64[n], coin2 uint64[n])`` of :func:`probe_key` for every key."""
        n = keys.shape[0]
        code, coin, coin2 = np.empty(n, np.int64), np.empty(n, np.uint64), np.empty(n, np.uint64)
        probe_keys_cpu(keys, nidx, *state, np.int64(blk), np.uint64(w), np.uint64(wmagic), np.uint64(seed_mix),
                       np.uint64(seed_mix2), np.uint64(coin_j), code, coin, coin2)
        return code, coin, coin2

    @staticmethod
    def scatter_add(target, idx, values) -> None:
        """``target[idx[k]] += values[k]`` (duplicates add up)."""
        np.add.at(target, idx, values)


def weighted_insert(ops, state, blk: int, keys, wts, nidx, w, wmagic, seed_mix, coin_j: int):
    """Spec §5 step 3 for block ``blk``: insert distinct ``keys`` (uint32) with weights ``wts`` (int64 > 0)
    and coin indices ``nidx`` (uint64) at once. Returns ``(held, before, owner)``: ``held`` (bool) the keys
    held at batch start, ``before`` (int64) their bucket's count then, ``owner`` (int64) the flat index into
    ``state``'s arrays of the bucket each key holds afterwards, or -1."""
    xp = ops.xp
    ids, counts, occ = state
    wmax = ids.shape[2]
    code, coin, coin2 = ops.probe(keys, nidx, state, blk, w, wmagic, seed_mix, np.uint64(seed_mix) ^ SEED_MIX2,
                                  coin_j)
    held = code < 0
    flat = xp.where(held, -code - 1, code) + blk * 2 * wmax
    cflat, iflat, oflat = counts.reshape(-1), ids.reshape(-1), occ.reshape(-1)
    before = cflat[flat].astype(np.int64)
    ops.scatter_add(cflat, flat, wts.astype(cflat.dtype))
    new = xp.flatnonzero(~held)
    if new.shape[0]:
        t = flat[new]
        score = -xp.log((coin[new].astype(np.float64) + 0.5) / _TWO32) / wts[new].astype(np.float64)
        order = xp.lexsort(xp.stack([score, t.astype(np.float64)]))  # by bucket, then least score first
        ts = t[order]
        first = xp.ones(ts.shape[0], dtype=bool)
        first[1:] = ts[1:] != ts[:-1]
        starts = xp.flatnonzero(first)
        seg = xp.cumsum(first) - 1
        w_new = xp.bincount(seg, weights=wts[new][order].astype(np.float64)).astype(np.int64)
        bucket = ts[starts]
        winner = new[order[starts]]  # index into keys of each bucket's candidate
        after = cflat[bucket].astype(np.int64)
        take = (coin2[winner] % after.astype(np.uint64)).astype(np.int64) < w_new
        iflat[bucket[take]] = keys[winner[take]]
        oflat[bucket[take]] = 1
    owner = xp.where((oflat[flat] != 0) & (iflat[flat] == keys), flat, -1)
    return held, before, owner


def batched_update(ops, state, keys, n0: int, T: int, connection: bool, masks, widths, wmagics, seed_mix) -> None:
    """Spec §5 batched update of the IPv4 tree's blocks ``state = (ids, counts, occ)`` (``[1 + |K|, 2, wmax]``,
    ``xp`` arrays, updated in place) by the batch ``keys`` (``uint32[n]`` ``xp`` array, packets ``n0 ..``),
    each packet weighing 1. ``masks``: the crucial layers' prefix masks (host ints, ascending layer);
    ``widths`` / ``wmagics``: buckets per row and fastmod magic per block, F first (host)."""
    xp = ops.xp
    if keys.shape[0] == 0:
        return
    ux, first, wx = xp.unique(keys, return_index=True, return_counts=True)
    wx = wx.astype(np.int64)
    nidx = first.astype(np.uint64) + np.uint64(n0)
    held, before, _ = weighted_insert(ops, state, 0, ux, wx, nidx, widths[0], wmagics[0], seed_mix, 0)
    if connection:
        residual = xp.where(held, xp.minimum(xp.maximum(np.int64(T) - before, 0), wx), wx)
        cross = held & (before < T) & (before + wx >= T)
    else:
        residual, cross = wx, xp.zeros(wx.shape[0], dtype=bool)
    light = xp.flatnonzero(residual > 0)
    if light.shape[0] == 0:
        return
    ux, residual, cross, nidx = ux[light], residual[light], cross[light], nidx[light]
    for j, mask in enumerate(masks, start=1):
        prefixes, pfirst, inverse = xp.unique(ux & np.uint32(mask), return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        weight = xp.bincount(inverse, weights=residual.astype(np.float64)).astype(np.int64)
        debt = xp.bincount(inverse, weights=cross.astype(np.float64)).astype(np.int64) * np.int64(T)
        _, _, owner = weighted_insert(ops, state, j, prefixes, weight, nidx[pfirst], widths[j], wmagics[j], seed_mix, j)
        dec = xp.flatnonzero((owner >= 0) & (debt > 0))
        if dec.shape[0]:
            cflat = state[1].reshape(-1)
            at = owner[dec]
            cflat[at] = xp.maximum(cflat[at].astype(np.int64) - debt[dec], 0).astype(cflat.dtype)


def emulate_update(sketch, addresses, chunk: int | None = CHUNK_PACKETS) -> None:
    """Apply one batch of IPv4 ``addresses`` to a CPU :class:`~telesketch.sketches.residualsketch.ResidualSketch`
    (``weight="packets"``) with the batched algorithm (:class:`CpuOps`), in chunks of ``chunk`` packets
    (``None``: one update for the whole batch): what the GPU twin with ``gpu_update="batched"`` does to
    the same state, on the CPU (the accuracy table's runs). A ``chunk`` that is not ``None`` or a
    positive integer is a ``ValueError`` (a negative one used to apply nothing, silently)."""
    from telesketch.sketches.cocosketch import as_addresses

    if sketch.params.weight != "packets":
        raise ValueError("the batched update counts packets only (weight='packets')")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
        raise ValueError(f"chunk (packets per batched update) must be a positive integer or None, got {chunk!r}")
    keys = as_addresses(addresses)
    if chunk is not None and keys.shape[0] > chunk:
        for k in range(0, keys.shape[0], chunk):
            emulate_update(sketch, keys[k:k + chunk], None)
        return
    state = (np.ascontiguousarray(sketch.cells["id"]), np.ascontiguousarray(sketch.cells["count"]),
             np.ascontiguousarray(sketch.occ))
    widths, wmagics = sketch._geometry
    batched_update(CpuOps, state, keys, sketch.packets, sketch.T, sketch.params.connection,
                   [int(m) for m in sketch._masks], [int(v) for v in widths], [int(v) for v in wmagics],
                   sketch._seed_mix)
    sketch.cells["id"], sketch.cells["count"] = state[0], state[1]
    sketch.occ[...] = state[2]
    sketch.packets += keys.shape[0]

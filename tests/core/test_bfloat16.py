"""bfloat16 (numpy arrays of ml_dtypes.bfloat16) on every backend, with real rank processes.

One 4-rank job per backend runs every check: reductions bit for bit against
ml_dtypes (float32 arithmetic rounded to bfloat16), the copying collectives
and send/recv bit for bit, out=, and the errors.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import BACKENDS, RankRunner
from tests.core.test_mpi import assert_clean, run_mpi

# Runs inside each rank; prints a digest of the results every rank must share.
CHECKS = r"""
import hashlib
import ml_dtypes
import numpy as np
import chorus

bf16 = np.dtype(ml_dtypes.bfloat16)
g = chorus.init(strict=True)
rank, size = g.rank(), g.size()
assert g.backend == BACKEND, g.backend
assert size == 4, size
digest = hashlib.sha256()
checked = 0

def bits(a):
    return np.ascontiguousarray(a).view(np.uint16)

def check(name, got, want, same_everywhere=True):
    # Bit for bit: NaN payloads and signed zeros included.
    global checked
    assert got.dtype == bf16, (name, got.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    bad = np.flatnonzero(bits(got) != bits(want))
    assert bad.size == 0, (f"{name}: {bad.size} elements differ, e.g. at {bad[:4]}: got "
                           f"{[hex(v) for v in bits(got).ravel()[bad[:4]]]}, want "
                           f"{[hex(v) for v in bits(want).ravel()[bad[:4]]]}")
    if same_everywhere:
        digest.update(bits(got).tobytes())
    checked += 1

def as_bf16(pattern):
    return np.asarray(pattern, np.uint16).view(bf16)

def positive_nans(pattern):
    # A NaN plus (or max of) a NaN of the other sign keeps the first operand's
    # sign, and which operand is first depends on the backend's order.
    return np.where((pattern & 0x7FFF) > 0x7F80, pattern & 0x7FFF, pattern).astype(np.uint16)

# ---- all_sum and sum_scatter: every bfloat16 value, each against four partners.
# Per element, two ranks hold the operands a and b, the others -0.0 (x + -0.0
# is x for every x, -0.0 included), so any order of adding gives exactly
# round(a + b), and the reference is ml_dtypes' own rounding.
every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
rng = np.random.default_rng(2024)  # same seed on every rank: the same partners
sign, exponent = every & 0x8000, (every >> 7) & 0xFF
# b = half an ulp of a, same sign (a tie: rounds to even) and opposite sign.
half_ulp = np.where(exponent > 8, (exponent - 8) << 7, 0).astype(np.uint16)
a = positive_nans(np.tile(every, 4))
b = positive_nans(np.concatenate([rng.permutation(every), rng.integers(0, 1 << 16, every.size),
                                  sign | half_ulp, (sign ^ 0x8000) | half_ulp]).astype(np.uint16))
index = np.arange(a.size)
holds_a = index % size
holds_b = (holds_a + 1 + (index // size) % (size - 1)) % size
mine = as_bf16(np.where(holds_a == rank, a, np.where(holds_b == rank, b, 0x8000)))
with np.errstate(all="ignore"):  # inf - inf, NaN casts: ml_dtypes warns, chorus does not
    want = (as_bf16(a).astype(np.float32) + as_bf16(b).astype(np.float32)).astype(bf16)
# The cases are there: 1 + 2^-8 is a tie that stays at 1, (1 + 2^-7) + 2^-8 one
# that rounds up, the largest finite plus half its ulp rounds to inf.
ties = 2 * every.size
assert bits(want)[ties + 0x3F80] == 0x3F80 and bits(want)[ties + 0x3F81] == 0x3F82
assert bits(want)[ties + 0x7F7F] == 0x7F80 and np.isnan(want).sum() > 1000
check("all_sum", chorus.all_sum(mine), want)
out = np.full(mine.shape, 7, bf16)
assert chorus.all_sum(mine, out=out) is out
check("all_sum out=", out, want)
in_place = mine.copy()
assert chorus.all_sum(in_place, out=in_place) is in_place
check("all_sum in place", in_place, want)
check("all_sum strided", chorus.all_sum(np.repeat(mine, 2)[::2]), want)
block = want.size // size
check("sum_scatter", chorus.sum_scatter(mine.reshape(size, -1)),
      want[rank * block:(rank + 1) * block].reshape(1, -1), same_everywhere=False)
out = np.empty((1, block), bf16)
assert chorus.sum_scatter(mine.reshape(size, -1), out=out) is out
check("sum_scatter out=", out, want[rank * block:(rank + 1) * block].reshape(1, -1),
      same_everywhere=False)

# A sum where every rank contributes: the order of rounding is the backend's,
# so compare with a tolerance, then bit-identity across ranks (the digest).
values = [np.random.default_rng(r).standard_normal(100_003).astype(np.float32) for r in range(size)]
got = chorus.all_sum(values[rank].astype(bf16))
exact = sum(v.astype(bf16).astype(np.float64) for v in values)
scale = sum(np.abs(v.astype(bf16).astype(np.float64)) for v in values)
assert got.dtype == bf16, got.dtype
# Three roundings, each at most half an ulp (2^-8 relative) of a partial sum.
assert np.all(np.abs(got.astype(np.float64) - exact) <= 3 * 2.0**-8 * scale)
digest.update(bits(got).tobytes())
check("0-d all_sum", chorus.all_sum(np.array(1.5, bf16)), np.array(1.5 * size, bf16))

# ---- all_max / all_min: exact, so every rank contributes. +0 only: max(-0, +0)
# returns whichever operand comes second, in numpy as in chorus.
pattern = positive_nans(np.random.default_rng(rank + 7).integers(0, 1 << 16, 70_001).astype(np.uint16))
pattern[pattern == 0x8000] = 0
everyone = [positive_nans(np.random.default_rng(r + 7).integers(0, 1 << 16, 70_001).astype(np.uint16))
            for r in range(size)]
for p in everyone:
    p[p == 0x8000] = 0
mine = as_bf16(pattern)
for name, fn, ufunc in (("all_max", chorus.all_max, np.maximum), ("all_min", chorus.all_min, np.minimum)):
    with np.errstate(all="ignore"):
        want = ufunc.reduce([as_bf16(p).astype(np.float32) for p in everyone]).astype(bf16)
    assert np.isnan(want).any() and np.isinf(want).any()
    check(name, fn(mine), want)
    out = np.empty_like(mine)
    assert fn(mine, out=out) is out
    check(name + " out=", out, want)

# ---- all_gather, broadcast, send/recv: copies, bit for bit (any NaN payload).
def raw(r, n=5_005):
    return as_bf16(np.random.default_rng(100 + r).integers(0, 1 << 16, n).astype(np.uint16))

check("all_gather", chorus.all_gather(raw(rank)), np.concatenate([raw(r) for r in range(size)]))
out = np.empty(size * 5_005, bf16)
assert chorus.all_gather(raw(rank), out=out) is out
check("all_gather out=", out, np.concatenate([raw(r) for r in range(size)]))
check("0-d all_gather", chorus.all_gather(raw(rank, 1)[0]), np.concatenate([raw(r, 1) for r in range(size)]))
check("broadcast", chorus.broadcast(raw(rank), 2), raw(2))
out = np.empty(5_005, bf16)
assert chorus.broadcast(raw(rank), 1, out=out) is out
check("broadcast out=", out, raw(1))
right, left = (rank + 1) % size, (rank - 1) % size  # ring neighbours: every backend has them
chorus.send(raw(rank).reshape(7, -1), right)
check("recv", chorus.recv((7, 5_005 // 7), ml_dtypes.bfloat16, left), raw(left).reshape(7, -1),
      same_everywhere=False)
chorus.send(raw(rank, 3), right)
check("recv_like", chorus.recv_like(np.zeros(3, bf16), left), raw(left, 3), same_everywhere=False)

# ---- errors
# Ranks disagree on the dtype (same size in bytes): ValueError everywhere,
# naming both; the group goes on.
try:
    chorus.all_sum(np.ones(8, np.float16 if rank == 1 else bf16))
except ValueError as err:
    text = str(err)
    assert "(8,) bfloat16" in text and "(8,) float16" in text, text
    print("MISMATCH", text.replace(chr(10), " "))
else:
    raise AssertionError("no error for bfloat16 against float16")
check("after mismatch", chorus.all_sum(np.full(3, 1.5, bf16)), np.full(3, 1.5 * size, bf16))
# A recv of another dtype names what was sent; the message is consumed.
chorus.send(np.ones(4, bf16), right)
try:
    chorus.recv(4, np.float16, left)
except ValueError as err:
    assert "bfloat16" in str(err) and "float16" in str(err), err
    print("P2P-MISMATCH", str(err).replace(chr(10), " "))
else:
    raise AssertionError("float16 recv of a bfloat16 message was accepted")
chorus.send(np.full(2, rank, bf16), right)
check("recv after mismatch", chorus.recv(2, bf16, left), np.full(2, left, bf16), same_everywhere=False)
# out= of another dtype is refused before communicating.
try:
    chorus.all_sum(np.ones(4, bf16), out=np.empty(4, np.float16))
except ValueError as err:
    assert "bfloat16" in str(err), err
else:
    raise AssertionError("a float16 out= was accepted for bfloat16")
# Other 2-byte void dtypes are still refused, as before bfloat16.
for dtype in (np.dtype("V2"), np.dtype([("a", "<u2")]), np.dtype(ml_dtypes.float8_e4m3fn)):
    try:
        chorus.all_sum(np.zeros(4, dtype))
    except TypeError as err:
        assert "chorus cannot communicate arrays of dtype" in str(err), err
    else:
        raise AssertionError(f"{dtype} was accepted")
chorus.barrier()
print("CHECKED", checked, "DIGEST", digest.hexdigest())
"""

_ENV = {"CHORUS_SEGMENT_BYTES": "1000"}  # every large array in many pieces


def _digests(lines: list[str]) -> set[str]:
    return {line.split("DIGEST")[-1].strip() for line in lines if "DIGEST" in line}


@pytest.mark.parametrize("backend", [*BACKENDS, "mesh"])
def test_bfloat16(ranks: RankRunner, backend: str) -> None:
    results = ranks.run(f"BACKEND = {backend!r}\n" + CHECKS, 4, backend=backend, env=_ENV)
    for result in results:
        starts = [line.split(" ", 1)[0] for line in result.stdout.splitlines()]
        assert starts.count("MISMATCH") == 1, result.stdout
        assert starts.count("P2P-MISMATCH") == 1, result.stdout
        assert starts.count("CHECKED") == 1, result.stdout
    assert len(_digests([r.stdout for r in results])) == 1, [r.stdout for r in results]


def test_bfloat16_mpi(tmp_path: Path) -> None:
    run = run_mpi(
        tmp_path, "BACKEND = 'mpi'\n" + CHECKS, 4, {"CHORUS_BACKEND": "mpi", **_ENV}, timeout=120
    )
    assert_clean(run, 4, marker="CHECKED")
    assert len(run.lines("MISMATCH ")) == 4, run.stdout
    assert len(run.lines("P2P-MISMATCH ")) == 4, run.stdout
    assert len(_digests(run.lines("CHECKED"))) == 1, run.stdout

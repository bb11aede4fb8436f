"""Every op x dtype x shape x N x backend against numpy, with real rank processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, RankRunner

# Runs inside each rank: computes every case, checks it against numpy, and
# prints a digest of all results so the test can check bit-identity across ranks.
SWEEP = r"""
import hashlib, sys
import numpy as np
import chorus

g = chorus.init(strict=STRICT)
rank, size = g.rank(), g.size()
assert g.backend == BACKEND, g.backend
digest = hashlib.sha256()
checked = 0

DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
          np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128]
SHAPES = [(), (1,), (7,), (3 * size + 1,), (1024,), (5, 3)]

def data(case, r, shape, dtype):
    rng = np.random.default_rng(case * 1000 + r)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    low = 0 if np.issubdtype(dtype, np.unsignedinteger) else -8
    values = rng.integers(low, 9, size=shape)
    if np.issubdtype(dtype, np.complexfloating):
        return (values + 1j * rng.integers(-8, 9, size=shape)).astype(dtype)
    return values.astype(dtype)

def check(name, got, want, same_everywhere=True):
    global checked
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.array_equal(got, want), (name, got, want)
    if same_everywhere:
        digest.update(np.ascontiguousarray(got).tobytes())
    checked += 1

def check_out(name, call, want, same_everywhere=True):
    # out= gets the same result, written into the caller's (dirty) array.
    out = np.full_like(want, 1)
    got = call(out)
    assert got is out, name
    check(name + " out=", got, want, same_everywhere)

case = 0
for dtype in DTYPES:
    complex_ = np.issubdtype(dtype, np.complexfloating)
    for shape in SHAPES:
        case += 1
        mine = data(case, rank, shape, dtype)
        everyone = [data(case, r, shape, dtype) for r in range(size)]
        for op, fn in (("sum", chorus.all_sum), ("max", chorus.all_max), ("min", chorus.all_min)):
            if complex_ and op != "sum":
                try:
                    fn(mine)
                except TypeError:
                    continue
                raise AssertionError("complex max/min did not raise TypeError")
            ufunc = {"sum": np.add, "max": np.maximum, "min": np.minimum}[op]
            want = everyone[0].copy()
            for other in everyone[1:]:
                want = ufunc(want, other).astype(dtype)
            want = np.asarray(want, dtype=dtype)
            check(f"all_{op} {dtype} {shape}", fn(mine), want)
            check_out(f"all_{op} {dtype} {shape}", lambda o, x=mine, fn=fn: fn(x, out=o), want)
            inplace = np.array(mine)
            check(f"all_{op} in place {dtype} {shape}", fn(inplace, out=inplace), want)
        want = np.concatenate([np.atleast_1d(e) for e in everyone])
        check(f"all_gather {dtype} {shape}", chorus.all_gather(mine), want)
        check_out(f"all_gather {dtype} {shape}", lambda o: chorus.all_gather(mine, out=o), want)
        root = case % size
        check(f"broadcast {dtype} {shape}", chorus.broadcast(mine, root), everyone[root])
        check_out(f"broadcast {dtype} {shape}", lambda o: chorus.broadcast(mine, root, out=o),
                  everyone[root])
        # sum_scatter needs a first axis divisible by size
        rows = size * (1 + case % 3)
        case += 1
        mine = data(case, rank, (rows, 3), dtype)
        total = np.zeros((rows, 3), dtype=dtype)
        for r in range(size):
            total = np.add(total, data(case, r, (rows, 3), dtype)).astype(dtype)
        block = rows // size
        check(f"sum_scatter {dtype}", chorus.sum_scatter(mine),
              total[rank * block:(rank + 1) * block], same_everywhere=False)
        check_out(f"sum_scatter {dtype}", lambda o: chorus.sum_scatter(mine, out=o),
                  total[rank * block:(rank + 1) * block], same_everywhere=False)

# out= that does not fit is refused on the calling rank, before any communication.
for bad, error in ((np.empty(3, np.float32), ValueError), (np.empty(4, np.float64), ValueError),
                   (np.empty(8, np.float32)[::2], ValueError), ([0.0] * 4, TypeError),
                   (np.frombuffer(bytes(16), np.float32), ValueError)):
    try:
        chorus.all_sum(np.ones(4, np.float32), out=bad)
    except error as exc:
        assert "out" in str(exc), exc
    else:
        raise AssertionError(f"out={bad!r} was accepted")
try:
    chorus.all_gather(np.ones(4, np.float32), out=np.empty(4 * size + 1, np.float32))
except ValueError as exc:
    assert f"out has shape ({4 * size + 1},)" in str(exc), exc
else:
    raise AssertionError("all_gather accepted an out one element too long")
# sum_scatter's shape is checked where it is used (the compiled ops), naming
# the rank, before out and before any communication.
misfits = [(np.float32(1.0), "needs an array with at least one axis")]
if size > 1:
    misfits += [(np.ones((size + 1, 2)), "is not divisible by the group size"),
                ([1.0] * (size + 1), "is not divisible by the group size")]
for bad, words in misfits:
    try:
        chorus.sum_scatter(bad, out=np.empty(7))
    except ValueError as exc:
        assert words in str(exc) and f"rank {rank}/{size}" in str(exc), exc
    else:
        raise AssertionError(f"sum_scatter accepted {bad!r}")
check_out("sum_scatter of a list", lambda o: chorus.sum_scatter([float(rank)] * size, out=o),
          np.asarray([float(sum(range(size)))]), same_everywhere=True)

# A big float32 array with non-integer values: compare with tolerance, then
# bit-identity across ranks through the digest.
big = np.random.default_rng(rank).standard_normal((1024, 1024)).astype(np.float32)
want = sum(np.random.default_rng(r).standard_normal((1024, 1024)).astype(np.float32)
           for r in range(size))
got = chorus.all_sum(big)
assert np.allclose(got, want, rtol=1e-5, atol=1e-5)
digest.update(got.tobytes())

# Inputs that are not plain contiguous arrays.
check("non-contiguous", chorus.all_sum(np.arange(20.0)[::2] * rank),
      np.arange(20.0)[::2] * sum(range(size)))
check("fortran", chorus.all_sum(np.asfortranarray(np.ones((3, 4)) * rank)),
      np.ones((3, 4)) * sum(range(size)))
check("scalar", chorus.all_sum(np.float64(rank)), np.asarray(float(sum(range(size)))))
check("0-d array", chorus.all_sum(np.array(float(rank))), np.asarray(float(sum(range(size)))))
check("0-d gather", chorus.all_gather(np.array(rank, np.int32)), np.arange(size, dtype=np.int32))
check("0-d out", chorus.all_sum(np.array(1.0), out=np.array(0.0)), np.asarray(float(size)))
check("list", chorus.all_sum([rank, 1]), np.asarray([sum(range(size)), size]))
check("memoryview", chorus.all_sum(memoryview(bytearray([rank, 1]))),
      np.asarray([sum(range(size)) % 256, size], dtype=np.uint8))
# Byte-swapped input: converted to native order, result in native order.
swapped = (np.arange(4) * rank).astype(">i4")
check("byteswapped", chorus.all_sum(swapped), (np.arange(4) * sum(range(size))).astype("=i4"))
check("byteswapped gather", chorus.all_gather(swapped),
      np.concatenate([(np.arange(4) * r).astype("=i4") for r in range(size)]))
chorus.barrier()
print("CHECKED", checked, "DIGEST", digest.hexdigest())
"""


def _run_sweep(
    ranks: RankRunner,
    backend: str,
    size: int,
    segment: int | None,
    extra_env: dict[str, str] | None = None,
) -> None:
    env = {"CHORUS_SEGMENT_BYTES": str(segment)} if segment else {}
    env.update(extra_env or {})
    code = f"BACKEND = {backend!r}\nSTRICT = True\n" + SWEEP
    results = ranks.run(code, size, backend=backend, env=env, timeout=240)
    digests = {r.stdout.split("DIGEST")[-1].strip() for r in results}
    assert len(digests) == 1, f"ranks disagree on results: {[r.stdout for r in results]}"
    for result in results:
        assert "CHECKED" in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [2, 3, 4])
def test_every_op_and_dtype(ranks: RankRunner, backend: str, size: int) -> None:
    _run_sweep(ranks, backend, size, None)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [2, 4])
def test_tiny_segments_exercise_pipelining(ranks: RankRunner, backend: str, size: int) -> None:
    _run_sweep(ranks, backend, size, 64)


@pytest.mark.parametrize("size", [2, 4])
def test_single_copy_all_gather_every_dtype(ranks: RankRunner, size: int) -> None:
    # Every all_gather of the sweep, however small, through cross-memory reads.
    _run_sweep(ranks, "shm", size, None, {"CHORUS_SHM_CMA_BYTES": "0"})


def test_size_one_without_launcher(tmp_path: Path) -> None:
    """`python script.py` with no CHORUS_* variables runs as a size-1 group."""
    script = tmp_path / "alone.py"
    script.write_text("BACKEND = 'single'\nSTRICT = False\n" + SWEEP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHORUS_")}
    done = subprocess.run(
        [sys.executable, str(script)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "CHECKED" in done.stdout

"""The mesh backend with real rank processes: collectives, tagged any-to-any
send/recv, the coordinator rendezvous. A killed rank, Ctrl-C and strangers
are tested with the other backends in test_failures.py."""

from __future__ import annotations

import pytest

from tests.conftest import RankRunner, free_ports
from tests.core.test_collectives import _run_sweep


@pytest.mark.parametrize(("size", "segment"), [(2, None), (4, None), (4, 64)])
def test_every_collective_and_dtype(ranks: RankRunner, size: int, segment: int | None) -> None:
    # Default segments: small inputs take the record round, large ones the
    # direct path; 64-byte segments push everything through the direct path.
    _run_sweep(ranks, "mesh", size, segment)


def test_send_recv_any_pair_tags_order_and_errors(ranks: RankRunner) -> None:
    code = """
    import numpy as np, chorus
    g = chorus.init("mesh", strict=True)
    rank, size = g.rank(), g.size()
    # Every rank sends to every other rank first, then receives: no deadlock.
    for peer in range(size):
        if peer != rank:
            chorus.send(np.full(100_000, rank, np.int32), peer)
    for peer in range(size):
        if peer != rank:
            assert chorus.recv(100_000, np.int32, peer)[-1] == peer
    # Tags out of order: 0 sends tag 1 then tag 0 to 3; 3 takes tag 0 first.
    if rank == 0:
        for i in range(3):
            chorus.send(np.array([100 + i]), 3, tag=1)
            chorus.send(np.array([i]), 3, tag=0)
    elif rank == 3:
        assert [int(chorus.recv(1, np.int64, 0)[0]) for _ in range(3)] == [0, 1, 2]
        got = [int(chorus.recv_like(np.zeros(1, np.int64), 0, tag=1)[0]) for _ in range(3)]
        assert got == [100, 101, 102], got
    # A mismatched recv names the sender; the next message still arrives.
    if rank == 1:
        chorus.send(np.zeros(4, np.float32), 2, tag=7)
        chorus.send(np.ones(2), 2, tag=7)
    elif rank == 2:
        try:
            chorus.recv((5,), np.float32, 1, tag=7)
        except ValueError as err:
            assert "rank 1 (" in str(err) and "16 bytes of float32" in str(err), err
            print("MISMATCH")
        assert chorus.recv(2, np.float64, 1, tag=7).tolist() == [1.0, 1.0]
    for bad in (-1, True):
        try:
            chorus.send(np.ones(1), (rank + 1) % size, tag=bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"tag {bad!r} accepted")
    # Sub-groups are meshes too.
    pair = g.split(rank % 2)
    mate = 1 - pair.rank()
    chorus.send(np.array([rank]), mate, tag=5, group=pair)
    assert chorus.recv(1, np.int64, mate, tag=5, group=pair)[0] == (rank + 2) % 4
    assert chorus.all_sum(np.ones(3)).tolist() == [4.0] * 3
    print("OK")
    """
    results = ranks.run(code, 4, backend="mesh")
    assert "MISMATCH" in results[2].stdout
    assert all("OK" in r.stdout for r in results)


def test_symmetric_send_then_recv_of_64_mib(ranks: RankRunner) -> None:
    code = """
    import numpy as np, chorus
    g = chorus.init(strict=True)
    assert g.backend == "mesh", g.backend
    peer = 1 - g.rank()
    big = np.full(16 << 20, g.rank() + 1, np.float32)  # 64 MiB
    chorus.send(big, peer)
    other = chorus.recv(big.shape, big.dtype, peer)
    assert other[0] == peer + 1 and other[-1] == peer + 1 and np.all(other[::4099] == peer + 1)
    print("OK")
    """
    results = ranks.run(code, 2, backend="mesh", timeout=60)
    assert all("OK" in r.stdout for r in results)


def test_tags_need_the_mesh_backend(ranks: RankRunner) -> None:
    code = """
    import numpy as np, chorus
    g = chorus.init(strict=True)
    try:
        chorus.send(np.ones(1), 1 - g.rank(), tag=3)
    except ValueError as err:
        assert "tags need the mesh backend" in str(err), err
        print("REFUSED", g.backend)
    """
    results = ranks.run(code, 2, backend="shm")
    assert all("REFUSED shm" in r.stdout for r in results)


def test_coordinator_rendezvous_without_hostfile(ranks: RankRunner) -> None:
    (port,) = free_ports(1)
    code = """
    import numpy as np, chorus
    from chorus.env import read_rank_env
    assert read_rank_env().hosts == []
    g = chorus.init(strict=True)
    rank, size = g.rank(), g.size()
    assert g.backend == "mesh", g.backend
    assert chorus.all_sum(np.arange(3) * rank).tolist() == [0, 6, 12]
    assert chorus.all_gather(np.array([rank])).tolist() == [0, 1, 2, 3]
    chorus.send(np.array([rank]), (rank + 2) % size, tag=4)
    assert chorus.recv(1, np.int64, (rank + 2) % size, tag=4)[0] == (rank + 2) % size
    print("OK")
    """
    env = {"CHORUS_HOSTFILE": "", "CHORUS_COORDINATOR": f"127.0.0.1:{port}"}
    results = ranks.run(code, 4, backend="mesh", env=env)
    assert all("OK" in r.stdout for r in results)

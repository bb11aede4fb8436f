"""split, sub-group collectives, send/recv, average_gradients, GIL release."""

from __future__ import annotations

import pytest

from tests.conftest import BACKENDS, RankRunner


@pytest.mark.parametrize("backend", [*BACKENDS, "hier"])
def test_split_pairs_and_parity_used_alternately(ranks: RankRunner, backend: str) -> None:
    code = """
    import numpy as np, chorus
    world = chorus.init(strict=True)
    rank, size = world.rank(), world.size()
    pairs = world.split(rank // 2)
    parity = world.split(rank % 2, key=size - rank)   # reversed order inside
    assert pairs.size() == 2 and pairs.rank() == rank % 2, (pairs.rank(), pairs.size())
    assert parity.size() == 2 and parity.rank() == (1 - rank // 2), (parity.rank(),)
    for step in range(5):
        a = chorus.all_sum(np.array([rank, step]), group=pairs)
        assert a.tolist() == [2 * (rank // 2) * 2 + 1, 2 * step], a
        b = chorus.all_gather(np.array([rank]), group=parity)
        assert b.tolist() == sorted([r for r in range(size) if r % 2 == rank % 2], reverse=True), b
        c = chorus.all_sum(np.ones(3) * rank)
        assert c.tolist() == [6.0] * 3, c
    single = world.split(rank)
    assert single.size() == 1 and chorus.all_sum(np.ones(2), group=single).tolist() == [1, 1]
    print("OK")
    """
    results = ranks.run(code, 4, backend=backend)
    assert all("OK" in r.stdout for r in results)


@pytest.mark.parametrize("backend", [*BACKENDS, "hier"])
def test_send_recv_ping_pong(ranks: RankRunner, backend: str) -> None:
    code = """
    import numpy as np, chorus
    g = chorus.init(strict=True)
    rank = g.rank()
    peer = 1 - rank
    big = np.arange(3_000_000, dtype=np.float64)  # past socket buffers and slots
    for i in range(20):
        if rank == 0:
            chorus.send(np.array([i], dtype=np.int32), peer)
            back = chorus.recv((1,), np.int32, peer)
            assert back[0] == i + 1
        else:
            got = chorus.recv_like(np.zeros(1, np.int32), peer)
            chorus.send(got + 1, peer)
    # symmetric send-then-recv of a large message must not deadlock
    chorus.send(big * (rank + 1), peer)
    other = chorus.recv(big.shape, big.dtype, peer)
    assert np.array_equal(other, big * (peer + 1))
    # a mismatched recv is a clear error, then the link still works
    if rank == 0:
        chorus.send(np.zeros(4, np.float32), peer)
    else:
        try:
            chorus.recv((5,), np.float32, peer)
        except ValueError as err:
            print("MISMATCH", err)
        else:
            raise AssertionError("no error for a mismatched recv")
    chorus.barrier()
    assert chorus.all_sum(np.ones(2)).tolist() == [2, 2]
    print("OK")
    """
    results = ranks.run(code, 2, backend=backend)
    assert "MISMATCH" in results[1].stdout
    assert all("OK" in r.stdout for r in results)


def test_ring_send_to_non_neighbour_is_a_clear_error(ranks: RankRunner) -> None:
    code = """
    import numpy as np, chorus
    g = chorus.init(strict=True)
    if g.rank() == 0:
        try:
            chorus.send(np.ones(1), 2)
        except ValueError as err:
            assert "neighbour" in str(err), err
            print("REFUSED")
    chorus.barrier()
    """
    results = ranks.run(code, 4, backend="ring")
    assert "REFUSED" in results[0].stdout


def test_average_gradients_batches_calls(ranks: RankRunner) -> None:
    code = """
    import numpy as np, chorus
    import chorus.collectives as C
    g = chorus.init(strict=True)
    rank, size = g.rank(), g.size()
    calls = []
    real = C.all_sum
    def counting(x, *, group=None):
        calls.append(np.asarray(x).nbytes)
        return real(x, group=group)
    C.all_sum = counting
    tree = {"w": [np.full((10, 10), rank, np.float32) for _ in range(50)],
            "b": (np.full(3, rank, np.float64), np.full(2, rank + 1.0)),
            "n": np.full(4, 2 * rank, np.int64)}
    avg = chorus.average_gradients(tree)
    mean = sum(range(size)) / size
    assert len(calls) == 3, calls             # one per dtype: float32, float64, int64
    assert avg["w"][7].dtype == np.float32 and np.all(avg["w"][7] == mean)
    assert isinstance(avg["b"], tuple) and np.all(avg["b"][1] == mean + 1)
    assert avg["n"].tolist() == [int(2 * mean)] * 4
    calls.clear()
    chorus.average_gradients(tree, all_reduce_size=1000)
    assert len(calls) == 50 // 2 + 1 + 1, calls   # 400-byte leaves, two per 1000-byte batch
    calls.clear()
    chorus.average_gradients(tree, all_reduce_size=0)
    assert len(calls) == 53, calls
    print("OK")
    """
    results = ranks.run(code, 2, backend="shm")
    assert all("OK" in r.stdout for r in results)


def test_gil_is_released_while_waiting(ranks: RankRunner) -> None:
    code = """
    import threading, time, numpy as np, chorus
    g = chorus.init(strict=True)
    ticks = 0
    stop = False
    def spin():
        global ticks
        while not stop:
            ticks += 1
            time.sleep(0.001)
    if g.rank() == 1:
        t = threading.Thread(target=spin); t.start()
        chorus.all_sum(np.ones(4))          # rank 0 arrives 1 s late
        stop = True; t.join()
        assert ticks > 100, ticks
        print("TICKS", ticks)
    else:
        time.sleep(1.0)
        chorus.all_sum(np.ones(4))
    """
    results = ranks.run(code, 2, backend="shm")
    assert "TICKS" in results[1].stdout

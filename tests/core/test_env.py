"""The rank environment's one writer and one reader agree (chorus.env)."""

from __future__ import annotations

import dataclasses

import pytest

from chorus.env import (
    DEFAULT_FLIGHT_RECORDS,
    DEFAULT_PEER_TIMEOUT,
    EnvError,
    RankEnv,
    read_rank_env,
)

WRITTEN = RankEnv(
    rank=2,
    size=4,
    hosts=[["127.0.0.1:5000"], ["127.0.0.1:5001"], ["10.0.0.2:5002", "10.1.0.2:5002"], ["h:1"]],
    backend="ring",
    token="ab" * 16,
    job_id="123-cafe",
    timeout=7.5,
    peer_timeout=4.0,
    coordinator="127.0.0.1:5000",
    verbose=True,
    listen_fds=[5, 6],
    segment_bytes=1 << 20,
    flight_records=16,
    flight_sites=True,
    supervisor="127.0.0.1:4711",
    reports="stderr",
    # 0 is a setting of its own for each knob (no spin, always stream, ...).
    shm_spin_us=0,
    shm_yield_us=25,
    shm_cma=False,
    shm_cma_bytes=0,
    tcp_spin_us=7,
    tcp_yield_us=0,
    machine_ranks=6,
    stream_bytes=0,
    mpi_libname="/opt/openmpi/lib/libmpi.so.40",
)


def test_what_to_environ_writes_read_rank_env_reads_back() -> None:
    environ = WRITTEN.to_environ()
    assert all(name.startswith("CHORUS_") for name in environ), environ
    back = read_rank_env(environ)
    # What the reading process finds out by itself, not from the variables.
    local = {"hostname", "mpi_launched", "local_size"}
    for field in dataclasses.fields(RankEnv):
        if field.name not in local:
            assert getattr(back, field.name) == getattr(WRITTEN, field.name), field.name


def test_knobs_at_their_defaults_are_left_out() -> None:
    environ = RankEnv(rank=0, size=2, backend="shm").to_environ()
    assert set(environ) == {"CHORUS_RANK", "CHORUS_WORLD_SIZE", "CHORUS_BACKEND", "CHORUS_TIMEOUT"}
    back = read_rank_env(environ)
    assert back.peer_timeout == DEFAULT_PEER_TIMEOUT
    assert back.flight_records == DEFAULT_FLIGHT_RECORDS
    assert back.shm_cma
    assert back.mpi_libname == ""
    knobs = (back.shm_spin_us, back.shm_yield_us, back.shm_cma_bytes, back.tcp_spin_us)
    assert knobs == (None, None, None, None)
    assert (back.tcp_yield_us, back.machine_ranks) == (None, None)
    assert back.stream_bytes is None


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CHORUS_SHM_SPIN_US", "abc", "CHORUS_SHM_SPIN_US='abc' is not an integer"),
        ("CHORUS_SHM_YIELD_US", "1.5", "CHORUS_SHM_YIELD_US='1.5' is not an integer"),
        ("CHORUS_SHM_YIELD_US", "-1", "CHORUS_SHM_YIELD_US='-1' must be a number of microseconds"),
        ("CHORUS_TCP_SPIN_US", "10**13", "CHORUS_TCP_SPIN_US='10**13' is not an integer"),
        ("CHORUS_TCP_SPIN_US", str(10**13), f"CHORUS_TCP_SPIN_US='{10**13}' must be"),
        ("CHORUS_TCP_YIELD_US", "-3", "CHORUS_TCP_YIELD_US='-3' must be a number of microseconds"),
        ("CHORUS_MACHINE_RANKS", "four", "CHORUS_MACHINE_RANKS='four' is not an integer"),
        (
            "CHORUS_MACHINE_RANKS",
            str(2**31),
            f"CHORUS_MACHINE_RANKS='{2**31}' must be a number of ranks",
        ),
        ("CHORUS_SHM_CMA", "yes", "CHORUS_SHM_CMA='yes' must be 0 or 1"),
        ("CHORUS_SHM_CMA_BYTES", "64k", "CHORUS_SHM_CMA_BYTES='64k' is not an integer"),
        ("CHORUS_STREAM_BYTES", "-4", "CHORUS_STREAM_BYTES='-4' must be a number of bytes"),
        ("CHORUS_STREAM_BYTES", str(2**64), f"CHORUS_STREAM_BYTES='{2**64}' must be"),
    ],
)
def test_a_malformed_tuning_knob_is_named(name: str, value: str, expected: str) -> None:
    with pytest.raises(EnvError) as err:
        read_rank_env({"CHORUS_RANK": "0", "CHORUS_WORLD_SIZE": "2", name: value})
    assert expected in str(err.value)


@pytest.mark.parametrize("with_rank", [True, False])
def test_a_launcher_that_numbers_ranks_itself_gets_no_rank(with_rank: bool) -> None:
    environ = RankEnv(backend="mpi", timeout=30).to_environ(with_rank=with_rank)
    assert ("CHORUS_RANK" in environ) is with_rank
    assert ("CHORUS_WORLD_SIZE" in environ) is with_rank
    assert environ["CHORUS_BACKEND"] == "mpi"
    assert environ["CHORUS_TIMEOUT"] == "30"


@pytest.mark.parametrize(
    ("address", "host"),
    [
        ("10.0.0.1:5000", "10.0.0.1"),
        ("[fe80::1]:5000", "fe80::1"),
        ("[fe80::1%eth0]:5000", "fe80::1%eth0"),
        ("fe80::1", "fe80::1"),
        ("node-3:29500", "node-3"),
        ("node-3", "node-3"),
        ("[::1", "::1"),
    ],
)
def test_python_reads_a_ranks_host_as_the_backends_do(address: str, host: str) -> None:
    # RankEnv.shares_hosts picks the hier backend by the hosts the hier
    # backend itself will group ranks by (tcp::host_of): they must agree.
    from chorus import _core
    from chorus.hostfile import host_of

    assert host_of(address) == host
    assert _core.host_of(address) == host

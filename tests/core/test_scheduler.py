"""Where rank 0 is when a scheduler started the ranks (chorus.scheduler)."""

from __future__ import annotations

import pytest

from chorus.scheduler import SchedulerError, derived_coordinator, derived_token, expand_nodelist


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("node1", ["node1"]),
        ("n[01-03,7],gpu", ["n01", "n02", "n03", "n7", "gpu"]),
        ("a[1-2]b,c[09-11]", ["a1b", "a2b", "c09", "c10", "c11"]),
        ("rack1-[8-9]", ["rack1-8", "rack1-9"]),
    ],
)
def test_expand_nodelist(nodelist: str, hosts: list[str]) -> None:
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["", "n[1-", "n[a-b]", "n[1-2]x[", "n[3-]"])
def test_malformed_nodelist(nodelist: str) -> None:
    with pytest.raises(SchedulerError, match="nodelist"):
        expand_nodelist(nodelist)


def slurm(**extra: str) -> dict[str, str]:
    env = {
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "4",
        "SLURM_JOB_NODELIST": "localhost,other[1-3]",
        "SLURM_JOB_ID": "4711",
        "SLURM_STEP_ID": "0",
    }
    env.update(extra)
    return env


def test_slurm_coordinator_is_the_first_node() -> None:
    assert derived_coordinator(slurm()) == f"127.0.0.1:{20000 + 4711 * 16 % 20000}"
    # Another step of the same job gets another port.
    assert derived_coordinator(slurm(SLURM_STEP_ID="1")) != derived_coordinator(slurm())
    assert derived_coordinator(slurm(CHORUS_PORT="29500")) == "127.0.0.1:29500"
    step_list = slurm(SLURM_STEP_NODELIST="localhost")
    assert derived_coordinator(step_list).startswith("127.0.0.1:")


def test_no_scheduler_no_coordinator() -> None:
    assert derived_coordinator({}) is None
    assert derived_coordinator({"OMPI_COMM_WORLD_RANK": "0"}) is None


def test_slurm_errors_name_the_variable() -> None:
    with pytest.raises(SchedulerError, match="CHORUS_PORT"):
        derived_coordinator(slurm(CHORUS_PORT="http"))
    with pytest.raises(SchedulerError, match="does not resolve"):
        derived_coordinator(slurm(SLURM_JOB_NODELIST="no-such-node.invalid"))
    with pytest.raises(SchedulerError, match="SLURM_JOB_ID"):
        derived_coordinator(slurm(SLURM_JOB_ID="x"))


def test_derived_token_is_shared_by_ranks_of_a_job_only() -> None:
    assert derived_token(slurm()) == derived_token(slurm(SLURM_PROCID="0"))
    assert derived_token(slurm()) != derived_token(slurm(SLURM_JOB_ID="4712"))


def test_slurm_job_on_several_nodes_is_not_local() -> None:
    from chorus.env import read_rank_env

    one = read_rank_env(slurm(SLURM_JOB_NODELIST="localhost", SLURM_STEP_NUM_NODES="1"))
    assert one.all_hosts_local()
    several = read_rank_env(slurm(SLURM_JOB_NODELIST="localhost", SLURM_STEP_NUM_NODES="2"))
    assert not several.all_hosts_local()
    assert several.coordinator is not None
    assert several.token.startswith("derived:")

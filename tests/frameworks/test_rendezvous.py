"""The frameworks' rendezvous variables and the ports reserved for them."""

from __future__ import annotations

import socket

import pytest

from chorus.launch.ports import reserved_ports
from chorus.rendezvous import (
    NodePosition,
    Rendezvous,
    framework_environment,
    node_positions,
)
from tests.launch.helpers import launch


def test_node_positions_number_hosts_by_their_first_rank() -> None:
    positions = node_positions(["b", "a", "b", "a", "c"])
    assert positions == [
        NodePosition(0, 2, 0, 3),
        NodePosition(0, 2, 1, 3),
        NodePosition(1, 2, 0, 3),
        NodePosition(1, 2, 1, 3),
        NodePosition(0, 1, 2, 3),
    ]


def test_environment_is_torchruns_and_keeps_the_users_addresses() -> None:
    rendezvous = Rendezvous("10.0.0.1", 29500, 29501)
    env = framework_environment(3, 4, NodePosition(1, 2, 1, 2), rendezvous, {})
    assert env == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "ROLE_RANK": "3",
        "ROLE_WORLD_SIZE": "4",
        "ROLE_NAME": "default",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29500",
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:29501",
    }
    users = {"MASTER_PORT": "1234", "JAX_COORDINATOR_ADDRESS": "h:1", "RANK": "7"}
    kept = framework_environment(0, 1, NodePosition(0, 1, 0, 1), rendezvous, users)
    assert "MASTER_ADDR" not in kept
    assert "MASTER_PORT" not in kept
    assert "JAX_COORDINATOR_ADDRESS" not in kept
    assert kept["RANK"] == "0"
    v6 = framework_environment(0, 1, NodePosition(0, 1, 0, 1), Rendezvous("fe80::1", 1, 2), {})
    assert v6["JAX_COORDINATOR_ADDRESS"] == "[fe80::1]:2"
    gloo = framework_environment(0, 1, NodePosition(0, 1, 0, 1), rendezvous, {}, "eth1")
    assert gloo["GLOO_SOCKET_IFNAME"] == "eth1"
    mine = framework_environment(
        0, 1, NodePosition(0, 1, 0, 1), rendezvous, {"GLOO_SOCKET_IFNAME": "ib0"}, "eth1"
    )
    assert "GLOO_SOCKET_IFNAME" not in mine


def test_reserved_ports_are_kept_from_everyone_but_reuseaddr_servers() -> None:
    ports = reserved_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        with socket.socket() as server:
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("0.0.0.0", port))
            server.listen()


def test_gpus_give_each_rank_of_a_host_its_own_device() -> None:
    code = "import os\nprint(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['LOCAL_RANK'])"
    result = launch("--gpus", "3,5", "-n", "2", "-c", code)
    assert result.returncode == 0, result.stderr
    assert "[0] 3 0" in result.stdout, result.stdout
    assert "[1] 5 1" in result.stdout, result.stdout
    counted = launch("--gpus", "4", "-n", "2", "-c", code)
    assert "[1] 1 1" in counted.stdout, counted.stdout
    too_few = launch("--gpus", "2", "-n", "3", "-c", code)
    assert too_few.returncode == 2, too_few
    assert "3 ranks on this host but --gpus names 2 device(s) (0,1)" in too_few.stderr
    plain = launch("-n", "1", "-c", "import os\nprint(os.environ.get('CUDA_VISIBLE_DEVICES'))")
    assert "None" in plain.stdout, plain.stdout

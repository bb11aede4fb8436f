"""jax.distributed.initialize() with no arguments in chorus ranks, and a psum across them."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.frameworks.test_torch import SCRIPTS
from tests.launch.helpers import launch


def test_jax_initialize_with_no_arguments_and_a_psum_across_four_ranks() -> None:
    result = launch("-n", "4", str(SCRIPTS / "jax_psum.py"), timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    for rank in range(4):
        # 1 + 2 + 3 + 4: every process's one CPU device in the psum.
        assert f"[{rank}] jax {rank} 4 4 [10.0]" in result.stdout, result.stdout


def test_chorus_is_the_cluster_jax_finds_first_even_inside_slurm() -> None:
    code = (
        "from jax._src import clusters\n"
        "env = next(e for e in clusters.ClusterEnv._cluster_types if e.is_env_present())\n"
        "print(env.name, env.get_process_id(), env.get_process_count(),"
        " env.get_coordinator_address(None, None))"
    )
    env = {
        **os.environ,
        "CHORUS_RANK": "2",
        "CHORUS_WORLD_SIZE": "4",
        "JAX_COORDINATOR_ADDRESS": "127.0.0.1:5555",
        "SLURM_JOB_ID": "1",  # JAX would take this for a Slurm job
    }
    inside = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split() == ["chorus", "2", "4", "127.0.0.1:5555"]
    # Outside a rank, nothing of chorus runs at start-up; inside, the hook is loaded.
    inside_check = subprocess.run(
        [sys.executable, "-c", "import sys\nprint('chorus.startup' in sys.modules)"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert inside_check.stdout.strip() == "True", inside_check
    plain = {k: v for k, v in env.items() if not k.startswith("CHORUS_")}
    check = "import sys\nprint('chorus.startup' in sys.modules)"
    outside = subprocess.run(
        [sys.executable, "-c", check], env=plain, capture_output=True, text=True, check=False
    )
    assert outside.stdout.strip() == "False", outside

"""torch tensors, MLX and JAX arrays in chorus's collectives: the input's kind comes back.

JAX runs in the ranks only: once its backend is up in a process, every fork
there warns (an error under pytest's settings) and pexpect's tests fork.
"""

from __future__ import annotations

import numpy as np
import pytest

from chorus.arrays import Kind, from_framework, writable_view
from tests.frameworks.test_torch import SCRIPTS
from tests.launch.helpers import launch

CHECKS = [
    "torch all_sum",
    "torch requires_grad",
    "torch out",
    "torch in place",
    "torch gather scatter broadcast",
    "torch send recv",
    "torch device refused",
    "torch average_gradients",
    "bfloat16",
    "mlx",
    "jax out refused",
    "jax",
    "results share memory",
]


@pytest.mark.parametrize("backend", ["shm", "mesh"])
def test_every_frameworks_arrays_through_the_collectives(backend: str) -> None:
    result = launch("-n", "3", "--backend", backend, str(SCRIPTS / "arrays.py"), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in CHECKS:
        for rank in range(3):
            assert f"[{rank}] ok {check}\n" in result.stdout, (check, result.stdout)


def test_out_views_are_the_arrays_own_memory() -> None:
    import mlx.core as mx
    import torch

    tensor = torch.zeros(4)
    view = writable_view(tensor, "check")
    view[:] = 3
    assert tensor.tolist() == [3.0] * 4
    array = mx.zeros((3,))
    mlx_view = writable_view(array, "check")
    mlx_view[:] = 2
    assert array.tolist() == [2.0] * 3
    with pytest.raises(TypeError, match=r"numpy\.ndarray, a torch tensor or an mlx array"):
        writable_view([1, 2], "check")
    assert isinstance(Kind("x", lambda r: r).wrap(view), np.ndarray)


def test_an_array_that_only_speaks_dlpack_is_read_in_place() -> None:
    class OnlyDLPack:
        """An array of a library numpy knows nothing of, but for DLPack."""

        def __init__(self, array: np.ndarray) -> None:
            self.array = array

        def __dlpack__(self, **kwargs: object) -> object:
            return self.array.__dlpack__(**kwargs)

        def __dlpack_device__(self) -> tuple[int, int]:
            return self.array.__dlpack_device__()

    backing = np.arange(5.0)
    view, kind = from_framework(OnlyDLPack(backing), "check")
    assert kind is None
    assert view.ctypes.data == backing.ctypes.data
    assert view.tolist() == backing.tolist()

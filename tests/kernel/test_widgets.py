"""Widgets from every rank, through jupyter_client as a frontend sees them (comm messages)."""

from __future__ import annotations

import queue
import time
from itertools import pairwise
from typing import Any

from tests.kernel.conftest import Frontend

SLIDERS = (
    "import ipywidgets as w\n"
    "from IPython.display import display\n"
    "slider = w.IntSlider(value=rank)\n"
    "display(slider)\n"
)


def _sliders(run_comms: list[dict[str, Any]]) -> dict[int, str]:
    """value -> comm id of every IntSlider model opened."""
    found = {}
    for msg in run_comms:
        if msg["header"]["msg_type"] != "comm_open":
            continue
        state = msg["content"]["data"]["state"]
        if state.get("_model_name") == "IntSliderModel":
            found[state["value"]] = msg["content"]["comm_id"]
    return found


def test_a_widget_on_every_rank_is_one_labelled_widget_each_and_talks_to_its_rank(
    kernel: Frontend,
) -> None:
    run = kernel.run(SLIDERS)
    assert run.status == "ok", run
    sliders = _sliders(run.comms)
    assert sorted(sliders) == [0, 1, 2, 3], run.comms
    # Each rank's view, in rank order, after a label of its own.
    views = [d for d in run.displays if "application/vnd.jupyter.widget-view+json" in d["data"]]
    models = [d["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] for d in views]
    assert models == [sliders[r] for r in range(4)], (models, sliders)
    labels = [
        label["text"]
        for (kind, label), (_, view) in pairwise(run.outputs)
        if kind == "stream" and "application/vnd.jupyter.widget-view+json" in view.get("data", {})
    ]
    assert labels == ["[0]\n", "[1]\n", "[2]\n", "[3]\n"], labels

    # The frontend moves rank 2's slider: only rank 2's value changes.
    client = kernel.client
    update = {"method": "update", "state": {"value": 42}, "buffer_paths": []}
    message = client.session.msg("comm_msg", {"comm_id": sliders[2], "data": update})
    client.shell_channel.send(message)
    # The rank's echo comes back to the frontend under the frontend's own message.
    deadline = time.monotonic() + 30
    echoed = False
    while not echoed and time.monotonic() < deadline:
        try:
            msg = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["header"]["msg_type"] == "comm_msg" and msg["content"]["comm_id"] == sliders[2]:
            echoed = msg["parent_header"].get("msg_id") == message["header"]["msg_id"]
    assert echoed, "no echo of the update under the frontend's message"
    values = kernel.run("print(slider.value)")
    assert values.stdout.splitlines() == ["[0] 0", "[1] 1", "[2] 42", "[3] 3"], values.stdout

    # comm_info lists every rank's widget models.
    client.comm_info(target_name="jupyter.widget")
    reply = client.get_shell_msg(timeout=30)
    assert reply["header"]["msg_type"] == "comm_info_reply", reply
    assert set(sliders.values()) <= set(reply["content"]["comms"]), reply["content"]

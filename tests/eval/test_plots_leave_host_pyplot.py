"""Open-loop plots are drawn without pyplot: a program that chose its own matplotlib backend (a notebook's, a
dashboard's) and has figures open keeps both, and its plt.show() still reaches its backend."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from eval.dataset_factory import make_dataset

from gr00t_client import PolicyClient
from gr00t_eval import OpenLoopConfig, evaluate_open_loop, plots
from gr00t_server.policies.replay import ReplayPolicy
from gr00t_server.server import PolicyServer

HOST_BACKEND = "pdf"  # any backend but Agg stands for the host's own choice
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"


@pytest.fixture
def host_pyplot():
    """pyplot as a host program set it up: its own backend and one open figure; put back as it was afterwards."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    backend_before = matplotlib.get_backend()
    plt.switch_backend(HOST_BACKEND)
    figure = plt.figure()
    try:
        yield plt
    finally:
        plt.close(figure)
        plt.switch_backend(backend_before)


def pyplot_state(plt) -> tuple:
    """The host-visible pyplot state: the backend's name and the figure numbers open."""
    import matplotlib

    return matplotlib.get_backend(), plt.get_fignums()


def test_plot_trajectory_leaves_the_hosts_backend_and_figures_and_writes_a_valid_png(tmp_path, host_pyplot):
    from PIL import Image

    before = pyplot_state(host_pyplot)
    ground_truth = np.linspace(0.0, 1.0, 20, dtype=np.float32).reshape(10, 2)
    path = plots.plot_trajectory(tmp_path / "traj_0.png", 0, ground_truth, ground_truth + 0.1, inference_steps=[0, 5],
                                 action_keys=["arm"])
    assert pyplot_state(host_pyplot) == before == (HOST_BACKEND, before[1])
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(path) as image:
        image.verify()


def test_a_plot_being_drawn_is_never_among_the_hosts_pyplot_figures(tmp_path, host_pyplot, monkeypatch):
    """plt.close('all') or plt.show() of another thread of the host meanwhile would have closed or shown it."""
    figures_while_saving = []
    save = plots._save_aside

    def noting_pyplots_figures(fig, path, **options):
        figures_while_saving.append(host_pyplot.get_fignums())
        save(fig, path, **options)

    monkeypatch.setattr(plots, "_save_aside", noting_pyplots_figures)
    before = host_pyplot.get_fignums()
    ground_truth = np.zeros((4, 1), np.float32)
    plots.plot_trajectory(tmp_path / "traj_0.png", 0, ground_truth, ground_truth, inference_steps=[0])
    assert figures_while_saving == [before]


def test_evaluate_open_loop_with_plots_leaves_the_hosts_backend_and_figures(tmp_path, host_pyplot):
    dataset = make_dataset(tmp_path / "ds", lengths=(8,), cameras=())
    before = pyplot_state(host_pyplot)
    server = PolicyServer(ReplayPolicy(dataset, execution_horizon=4), host="127.0.0.1", port=0).start()
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=20000) as client:
            result = evaluate_open_loop(client, OpenLoopConfig(str(dataset), traj_ids=[0], steps=8,
                                                               output_dir=str(tmp_path / "out")), progress=False)
    finally:
        server.close()
        serving.join(10)
    assert result.status == "complete"
    assert pyplot_state(host_pyplot) == before
    written = sorted(Path(tmp_path / "out").glob("traj_0*.jpeg"))
    assert len(written) == 1 and written[0].read_bytes().startswith(JPEG_SIGNATURE)

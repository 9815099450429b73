"""A plain `pip install gr00t-eval` (no matplotlib, no gymnasium): open-loop works, the rest names its extra.

Each check runs the real `gr00t-eval` CLI in a subprocess where the optional modules are hidden
(`sys.modules[name] = None` makes `import name` fail exactly as if it were not installed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from gr00t_server.policies.replay import ReplayPolicy
from serving import running_server

_EVAL_WITHOUT = textwrap.dedent(
    """
    import atexit, sys
    hidden = sys.argv[1].split(",")
    for name in hidden:
        sys.modules[name] = None
    atexit.register(lambda: print("torch imported:", "torch" in sys.modules, flush=True))
    from gr00t_eval.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)
OPTIONAL = "matplotlib,gymnasium,metaworld,mujoco,gym_pusht,ray"


def _eval_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _EVAL_WITHOUT, OPTIONAL, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("extras") / "ds", lengths=(6,))


def test_open_loop_runs_without_plot_and_sim_extras_and_skips_plots_with_a_note(dataset, tmp_path):
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        result = _eval_cli("open-loop", "--dataset-path", str(dataset), "--port", str(server.port),
                           "--traj-ids", "0", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "skipping plots (pip install 'gr00t-eval[plots]')" in result.stderr
    assert "torch imported: False" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results and not list(tmp_path.glob("*.jpeg"))


def test_a_save_plot_path_without_matplotlib_is_refused_before_connecting_naming_the_plots_extra(dataset, tmp_path):
    """The requested plot was dropped with a note: the run connected, exited 0 and never wrote PATH."""
    plot, out = tmp_path / "plot.png", tmp_path / "out"
    with running_server(ReplayPolicy(dataset, execution_horizon=4)) as server:
        result = _eval_cli("open-loop", "--dataset-path", str(dataset), "--port", str(server.port),
                           "--traj-ids", "0", "--output-dir", str(out), "--save-plot-path", str(plot))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"gr00t-eval open-loop: error: --save-plot-path {plot} needs matplotlib, which is not installed: "
        "pip install 'gr00t-eval[plots]' (or drop --save-plot-path to run without plots)"]
    assert not out.exists() and not plot.exists()


def test_rollout_without_sim_extra_fails_with_one_line_naming_it():
    result = _eval_cli("rollout", "--env-name", "metaworld/reach-v3", "--n-episodes", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gr00t-eval rollout: error: closed-loop rollout needs gymnasium (")
    assert lines[0].endswith("): pip install 'gr00t-eval[sim]'")


def test_a_pusht_rollout_without_gymnasium_names_the_pusht_extra():
    """It named [sim] (Meta-World and MuJoCo, no gym-pusht): the run after installing it failed again."""
    result = _eval_cli("rollout", "--env-name", "pusht/PushT-v0", "--n-episodes", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gr00t-eval rollout: error: closed-loop rollout needs gymnasium (")
    assert lines[0].endswith("): pip install 'gr00t-eval[pusht]'")


def test_a_rollout_of_pusht_and_meta_world_envs_without_gymnasium_names_both_extras():
    result = _eval_cli("rollout", "--env-name", "metaworld/reach-v3,pusht/PushT-v0", "--n-episodes", "1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().endswith("): pip install 'gr00t-eval[pusht,sim]'"), result.stderr


def test_a_batch_job_of_pusht_envs_without_gymnasium_fails_naming_the_pusht_extra(tmp_path):
    from eval.scale_fixtures import ConstantPolicy

    jobs = tmp_path / "jobs.json"
    with running_server(ConstantPolicy()) as server:
        jobs.write_text(json.dumps([{"name": "pusht", "env_name": "pusht/PushT-v0", "n_episodes": 1,
                                     "policy_server": {"port": server.port, "timeout_ms": 5000}}]))
        result = _eval_cli("batch", "--jobs", str(jobs), "--output-dir", str(tmp_path / "out"))
    [job] = json.loads((tmp_path / "out" / "batch_results.json").read_text())["jobs"]
    assert job["status"] == "failed", result.stderr
    assert job["reason"].endswith("): pip install 'gr00t-eval[pusht]'"), job["reason"]


def test_the_rollout_modules_without_gymnasium_name_the_extra_of_each_simulator():
    """Imported where no env name says which simulator is meant (a resumed run, the Python API)."""
    code = "import sys; sys.modules['gymnasium'] = None; import gr00t_eval.rollout.runner"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gr00t_eval.extras.MissingExtraError: closed-loop rollout needs gymnasium ("), result.stderr
    assert last.endswith("): pip install 'gr00t-eval[sim]' for Meta-World, 'gr00t-eval[pusht]' for PushT"), last


def test_the_pusht_adapter_without_gymnasium_names_the_pusht_extra():
    code = "import sys; sys.modules['gymnasium'] = None; import gr00t_eval.rollout.adapters.pusht"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stderr.strip().endswith("): pip install 'gr00t-eval[pusht]'"), result.stderr


def test_record_without_sim_extra_fails_with_one_line_naming_it(tmp_path):
    # record reaches the Meta-World adapter without the rollout runner's guard: it said "No module named 'gymnasium'"
    result = _eval_cli("record", "--env-name", "metaworld/reach-v3", "--episodes", "1", "--output", str(tmp_path / "d"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "needs gymnasium (" in lines[0] and lines[0].endswith("): pip install 'gr00t-eval[sim]'")


def test_plotting_without_matplotlib_raises_missing_extra_error_naming_plots():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["matplotlib"] = None
        import numpy as np
        from gr00t_eval.extras import MissingExtraError
        from gr00t_eval.plots import plot_trajectory
        try:
            plot_trajectory("/nonexistent/x.jpeg", 0, np.zeros((3, 1)), np.zeros((3, 1)), [0])
        except MissingExtraError as exc:
            print(exc)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().endswith("pip install 'gr00t-eval[plots]'"), result.stdout + result.stderr


def test_merge_and_suites_need_no_sim_extra(tmp_path):
    """Merging shards' results is JSON work: on a plain install `gr00t-eval merge` (and `suites`) stopped with
    'closed-loop rollout needs gymnasium', since the shard plans came from the rollout runner's module."""
    from eval.scale_fixtures import ConstantPolicy
    from gr00t_eval import cli

    split = tmp_path / "split"
    with running_server(ConstantPolicy()) as server:  # the shards themselves run here, with the sim extra
        for index in range(2):
            assert cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1",
                             "--vectorization", "sync", "--n-action-steps", "2", "--max-episode-steps", "6",
                             "--seed", "0", "--no-video", "--policy-client-port", str(server.port),
                             "--output-dir", str(split), "--shard", f"{index}/2",
                             "--env-import", "eval.scale_fixtures"]) == 0
    merged = tmp_path / "merged.json"
    result = _eval_cli("merge", str(split), "--output", str(merged))
    assert result.returncode == 0, result.stderr
    assert json.loads(merged.read_text())["overall"]["n_episodes"] == 4
    assert "torch imported: False" in result.stdout
    suites = _eval_cli("suites")
    assert suites.returncode == 0, suites.stderr
    assert "metaworld-mt10" in suites.stdout


def _stand_in_module(tmp_path: Path, name: str, body: str) -> dict:
    """An environment whose `name` is a package installed on the path that raises at import as `body` does."""
    package = tmp_path / "stand_in" / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(package.parent), os.environ.get("PYTHONPATH", "")]))


def test_rollout_with_gymnasium_installed_but_failing_to_import_names_the_cause_not_the_extra(tmp_path):
    """It said pip install 'gr00t-eval[sim]', which was installed: the install changed nothing."""
    env = _stand_in_module(tmp_path, "gymnasium", "raise ImportError('built for numpy 2, found numpy 1.26.4')\n")
    result = subprocess.run([sys.executable, "-c", _EVAL_WITHOUT, "matplotlib", "rollout", "--env-name",
                             "metaworld/reach-v3", "--n-episodes", "1"], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "gr00t-eval rollout: error: closed-loop rollout needs gymnasium: gymnasium is installed but failed to import "
        "(built for numpy 2, found numpy 1.26.4)"]


def test_the_rollout_modules_with_a_dependency_of_gymnasium_missing_name_it_not_the_extras(tmp_path):
    """A module gymnasium imports is missing (ModuleNotFoundError, but not gymnasium's own): installing the extra is
    no remedy."""
    env = _stand_in_module(tmp_path, "gymnasium", "import gymnasium_dependency_not_installed\n")
    result = subprocess.run([sys.executable, "-c", "import gr00t_eval.rollout.runner"], capture_output=True, text=True,
                            timeout=60, env=env)
    last = result.stderr.strip().splitlines()[-1]
    assert last == ("gr00t_eval.extras.MissingExtraError: closed-loop rollout needs gymnasium: gymnasium is installed "
                    "but failed to import (No module named 'gymnasium_dependency_not_installed')"), result.stderr


@pytest.mark.parametrize("module, call, expected", [
    ("ray", "from gr00t_eval.ray_connect import import_ray; import_ray()",
     "--ray-address needs Ray: ray is installed but failed to import (stand-in failure)"),
    ("gym_pusht", "from gr00t_eval.rollout.adapters.pusht import PushTEnv; PushTEnv()",
     "PushT envs need gym-pusht: gym_pusht is installed but failed to import (stand-in failure)"),
], ids=["ray", "gym_pusht"])
def test_ray_and_gym_pusht_installed_but_failing_to_import_name_the_cause_not_the_extra(tmp_path, module, call,
                                                                                        expected):
    env = _stand_in_module(tmp_path, module, "raise ImportError('stand-in failure')\n")
    result = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True, timeout=60, env=env)
    assert result.stderr.strip().splitlines()[-1] == f"gr00t_eval.extras.MissingExtraError: {expected}", result.stderr


_EVAL_WITH_MUJOCO = textwrap.dedent(
    """
    import sys
    import mujoco
    mujoco.__version__ = sys.argv[1]  # the release a `pip install -U mujoco` brings, as the adapter reads it
    from gr00t_eval.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_record_beside_mujoco_4_is_refused_in_one_line_naming_both_versions_and_the_install(tmp_path):
    """MuJoCo 4 beside Meta-World 3.1.1 stopped every Meta-World command at its first reset with numpy's bare
    'could not broadcast input array from shape (11,) into shape (12,)' (checked with the real mujoco 4.0.1)."""
    pytest.importorskip("metaworld")
    from importlib import metadata

    output = tmp_path / "d"
    result = subprocess.run([sys.executable, "-c", _EVAL_WITH_MUJOCO, "4.0.1", "record", "--env-name",
                             "metaworld/reach-v3", "--episodes", "1", "--output", str(output)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"gr00t-eval record: error: Meta-World {metadata.version('metaworld')} is written for MuJoCo 3, and MuJoCo "
        "4.0.1 is installed (its weld constraints changed shape in 4.0); install MuJoCo 3: pip install "
        "'mujoco>=3.3,<4'"]
    assert not output.exists()


@pytest.mark.parametrize("mujoco_version, metaworld_version, refused", [
    ("3.3.0", "3.1.1", False), ("3.9.9", "unknown", False), ("4.0.1", "3.1.1", True), ("4.0.0rc1", "3.0.0", True),
    ("4.0.1", "unknown", True), ("4.0.1", "3.2.0", False), ("5.1", "4.0", False),
])
def test_mujoco_4_is_refused_only_beside_a_meta_world_written_for_mujoco_3(mujoco_version, metaworld_version, refused):
    pytest.importorskip("gymnasium")
    from gr00t_eval.extras import MissingExtraError
    from gr00t_eval.rollout.adapters.metaworld import refuse_mujoco_too_new

    if refused:
        named = "Meta-World 3" if metaworld_version != "unknown" else r"This Meta-World \(its version unknown: "
        with pytest.raises(MissingExtraError, match=f"^{named}.* MuJoCo {mujoco_version} is installed"):
            refuse_mujoco_too_new(mujoco_version, metaworld_version)
    else:
        refuse_mujoco_too_new(mujoco_version, metaworld_version)

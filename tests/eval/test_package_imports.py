"""The gr00t_eval package: its public API is exported at the top and importing it pulls in nothing heavy."""

import json
import subprocess
import sys

import pytest

import gr00t_eval

HEAVY = ("torch", "ray", "mujoco", "metaworld")


def modules_loaded_after(code):
    """Run `code` in a fresh interpreter; return which of HEAVY (and the lazily loaded libraries) it imported."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r)))" % (
        HEAVY + ("av", "pyarrow", "gymnasium", "matplotlib"),
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {name.split(".")[0] for name in json.loads(done.stdout.strip().splitlines()[-1])}


def test_importing_the_package_imports_no_torch_ray_or_simulator():
    loaded = modules_loaded_after("import gr00t_eval")
    assert not loaded & set(HEAVY), loaded


def test_importing_the_package_defers_video_parquet_and_gym_libraries():
    assert modules_loaded_after("import gr00t_eval") == set()


def test_using_the_main_api_still_imports_no_torch_ray_or_simulator():
    loaded = modules_loaded_after(
        "from gr00t_eval import LeRobotDataset, DatasetWriter, run_rollout, RolloutConfig, evaluate_open_loop, "
        "OpenLoopConfig, record_metaworld, run_suite, merge_results, run_batch, run_with_ray"
    )
    assert not loaded & set(HEAVY), loaded


def test_the_cli_module_imports_no_torch_ray_or_simulator():
    loaded = modules_loaded_after("import gr00t_eval.cli; gr00t_eval.cli.build_parser()")
    assert not loaded & set(HEAVY), loaded


@pytest.mark.parametrize("name", [n for n in gr00t_eval.__all__ if n != "__version__"])
def test_every_exported_name_resolves_to_its_definition(name):
    value = getattr(gr00t_eval, name)
    assert value is not None
    assert name in dir(gr00t_eval)


def test_the_exports_are_the_objects_of_the_defining_modules():
    from gr00t_eval.dataset import LeRobotDataset
    from gr00t_eval.open_loop import evaluate_open_loop
    from gr00t_eval.rollout.runner import RolloutConfig, run_rollout

    assert gr00t_eval.LeRobotDataset is LeRobotDataset
    assert gr00t_eval.RolloutConfig is RolloutConfig
    assert gr00t_eval.run_rollout is run_rollout
    assert gr00t_eval.evaluate_open_loop is evaluate_open_loop


def test_an_unknown_name_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_thing"):
        gr00t_eval.no_such_thing  # noqa: B018


def test_the_errors_the_docs_tell_callers_to_catch_are_exported_and_raised_as_such(tmp_path):
    from gr00t_eval.extras import MissingExtraError
    from gr00t_eval.output_files import OutputDirError
    from gr00t_eval.rollout.replay_recordings import RecordedEnvMismatchError
    from gr00t_eval.run_stop import OutputFolderGone

    assert gr00t_eval.MissingExtraError is MissingExtraError
    assert gr00t_eval.OutputDirError is OutputDirError
    assert gr00t_eval.OutputFolderGone is OutputFolderGone
    assert gr00t_eval.RecordedEnvMismatchError is RecordedEnvMismatchError
    # a fresh interpreter can import them the way docs/evaluation.md's examples catch them, loading nothing heavy
    loaded = modules_loaded_after("from gr00t_eval import MissingExtraError, OutputDirError, OutputFolderGone, "
                                  "RecordedEnvMismatchError")
    assert not loaded & set(HEAVY), loaded

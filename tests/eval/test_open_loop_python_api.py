"""The documented Python call, evaluate_open_loop(client, OpenLoopConfig(dataset, traj_ids=...)), against the server
the docs start (`serve --dataset-path D --use-sim-policy-wrapper`): it scores as the CLI does. Real server, real client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from eval.scale_fixtures import sim_replay_policy
from gr00t_client import PolicyClient
from gr00t_eval import OpenLoopConfig, evaluate_open_loop
from serving import running_server


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("open_loop_api") / "ds", lengths=(6,))


@pytest.fixture(scope="module")
def sim_server(dataset):
    with running_server(sim_replay_policy(dataset, execution_horizon=4)) as server:
        yield server


def evaluate(dataset, server, output_dir: Path, **settings):
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        config = OpenLoopConfig(str(dataset), traj_ids=range(1), execution_horizon=4, output_dir=str(output_dir),
                                plot=False, **settings)
        return evaluate_open_loop(client, config, report=lambda _: None, progress=False)


def test_the_documented_call_scores_a_sim_wrapper_server_by_asking_it_the_observation_form(dataset, sim_server, tmp_path):
    result = evaluate(dataset, sim_server, tmp_path / "out")
    assert result.errored == {} and list(result.trajectories) == [0] and result.avg_mse == 0.0
    recorded = json.loads(result.results_path.read_text())["config"]
    assert recorded["observation_format"] == "flat"  # the form sent, as the CLI records it


def test_an_explicit_nested_form_against_a_sim_wrapper_server_errors_naming_the_form_it_takes(dataset, sim_server,
                                                                                                tmp_path):
    result = evaluate(dataset, sim_server, tmp_path / "out", observation_format="nested")
    assert list(result.errored) == [0] and not result.trajectories
    assert ("the server serves Gr00tSimPolicyWrapper, which takes the flat observation form, and this run sent the "
            "nested form: pass observation_format='flat' or 'auto'") in result.errored[0]


def test_an_output_dir_that_is_a_file_is_refused_before_the_policy_is_queried(dataset, sim_server, tmp_path):
    from gr00t_eval.output_files import OutputDirError

    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    queries = []
    with PolicyClient("127.0.0.1", sim_server.port, timeout_ms=5000) as client:
        ask = client.get_action
        client.get_action = lambda *args, **kwargs: (queries.append(1), ask(*args, **kwargs))[1]
        config = OpenLoopConfig(str(dataset), traj_ids=range(1), execution_horizon=4, output_dir=str(target), plot=False)
        with pytest.raises(OutputDirError, match="notes.txt exists and is not a directory"):
            evaluate_open_loop(client, config, report=lambda _: None, progress=False)
    assert queries == [] and target.read_text() == "keep me"


@pytest.mark.parametrize("denoising_steps", [2.5, True, float("nan"), "4"])
def test_denoising_steps_that_is_not_a_whole_number_is_refused_naming_it(dataset, tmp_path, denoising_steps):
    # 2.5 was sent to the policy as 2 while results.json recorded 2.5; True was sent as 1; NaN failed mid-run
    with pytest.raises(ValueError, match="denoising_steps must be a whole number >= 1"):
        OpenLoopConfig(str(dataset), output_dir=str(tmp_path / "out"), denoising_steps=denoising_steps)


def test_plot_that_is_not_a_bool_is_refused_naming_it(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"plot must be True or False, got 'no' \(str\)"):  # bool("no") is True
        OpenLoopConfig(str(dataset), output_dir=str(tmp_path / "out"), plot="no")


def test_modality_keys_given_as_a_generator_are_scored_and_recorded_as_a_list(dataset, sim_server, tmp_path):
    result = evaluate(dataset, sim_server, tmp_path / "out", modality_keys=(key for key in ["arm"]))
    assert result.errored == {} and list(result.trajectories[0].errors.per_key) == ["arm"]
    assert json.loads(result.results_path.read_text())["config"]["modality_keys"] == ["arm"]


@pytest.mark.parametrize("keys", ["arm", "action.arm"])
def test_modality_keys_given_as_one_string_is_refused_naming_the_list_expected(dataset, tmp_path, keys):
    # it was read as its letters: "action keys ['a', 'r', 'm'] are not in the dataset"
    with pytest.raises(ValueError, match=rf"modality_keys must be a list of action keys, got the str '{keys}'"):
        OpenLoopConfig(str(dataset), output_dir=str(tmp_path / "out"), modality_keys=keys)



def test_modality_keys_given_as_bytes_is_refused_naming_the_str_key_expected(dataset, tmp_path):
    # it was read as its byte values: the keys [97, 114, 109]
    with pytest.raises(ValueError, match=r"modality_keys must be a list of action keys, got the bytes b'arm'; "
                                         r"expected \['arm'\] for that one key"):
        OpenLoopConfig(str(dataset), output_dir=str(tmp_path / "out"), modality_keys=b"arm")


@pytest.mark.parametrize("keys, named", [
    ([b"arm"], r"b'arm' \(bytes\)"),
    ([("arm",)], r"\('arm',\) \(tuple\)"),
    (["arm", 3], r"3 \(int\)"),
], ids=["bytes", "tuple", "int"])
def test_modality_keys_holding_a_key_that_is_not_a_str_is_refused_naming_it(dataset, tmp_path, keys, named):
    # it was taken, and the run died on "'int' object has no attribute 'startswith'", naming nothing given
    with pytest.raises(ValueError, match=r"modality_keys must hold action keys as str, got " + named + "$"):
        OpenLoopConfig(str(dataset), output_dir=str(tmp_path / "out"), modality_keys=keys)


@pytest.mark.parametrize("setting, value, named", [
    ("dataset_path", None, r"dataset_path must be a path \(str or os.PathLike\), got None \(NoneType\)"),
    ("output_dir", 5, r"output_dir must be a path \(str or os.PathLike\) or None, got 5 \(int\)"),
    ("plot_path", 3, r"plot_path must be a path \(str or os.PathLike\) or None, got 3 \(int\)"),
], ids=["dataset_path", "output_dir", "plot_path"])
def test_a_path_setting_that_is_not_a_path_is_refused_naming_it(dataset, setting, value, named):
    # os.path.expanduser's bare TypeError ("expected str, bytes or os.PathLike object, not NoneType") named no setting
    settings = {"dataset_path": str(dataset), setting: value}
    with pytest.raises(ValueError, match=named):
        OpenLoopConfig(**settings, plot=False)

def test_an_output_dir_starting_with_tilde_is_written_in_the_home_folder(dataset, sim_server, home, tmp_path):
    result = evaluate(dataset, sim_server, Path("~/out"))
    assert result.results_path == home / "out" / "results.json" and result.results_path.exists()
    assert json.loads(result.results_path.read_text())["config"]["output_dir"] == str(home / "out")
    assert not (tmp_path / "work" / "~").exists()  # a folder literally named '~' in the working directory


class ReplayThatActsFirst:
    """An in-process replay that runs `first` once, at its first query: something another run does meanwhile."""

    def __new__(cls, dataset, first):
        from gr00t_server.policies.replay import ReplayPolicy

        class Acting(ReplayPolicy):
            def _get_action(self, observation, options=None):
                action = first.pop() if first else None
                if action is not None:
                    action()
                return super()._get_action(observation, options)

        return Acting(dataset, execution_horizon=4)


def run_in_process(dataset, policy, output_dir: Path):
    config = OpenLoopConfig(str(dataset), traj_ids=[0], execution_horizon=4, output_dir=str(output_dir), plot=False)
    return evaluate_open_loop(policy, config, report=lambda _: None, progress=False)


def test_a_second_run_into_an_output_dir_a_run_is_writing_to_is_refused_and_the_first_keeps_its_results(dataset,
                                                                                                      tmp_path):
    """Both runs passed the results.json check at their start; the one that ended last replaced the other's
    results.json, whose results_path then held another run's scores."""
    from gr00t_eval.output_files import OutputDirError
    from gr00t_server.policies.replay import ReplayPolicy

    out = tmp_path / "out"
    refused = []

    def second_run():
        with pytest.raises(OutputDirError, match=r"output_dir .*out is in use: the run that claimed it is still running"):
            run_in_process(dataset, ReplayPolicy(dataset, execution_horizon=4), out)
        refused.append(True)

    first = run_in_process(dataset, ReplayThatActsFirst(dataset, [second_run]), out)
    assert refused == [True]
    assert first.results_path == out / "results.json" and first.status == "complete"
    assert sorted(path.name for path in out.iterdir()) == ["results.json"]  # the claim is gone with the run


def test_an_output_dir_claimed_by_a_live_cli_run_is_refused_before_the_policy_is_queried(dataset, tmp_path):
    """The API ignored open_loop_run.json: it wrote into the folder of a gr00t-eval open-loop still running."""
    from gr00t_eval.output_files import OutputDirError
    from gr00t_eval.run_claim import claim_output_dir

    out = tmp_path / "out"
    out.mkdir()
    claim = claim_output_dir(out, "open_loop_run.json", {"kind": "open_loop"})  # held by this live process
    queries = []
    policy = ReplayThatActsFirst(dataset, [lambda: queries.append(1)])
    with pytest.raises(OutputDirError, match=r"output_dir .*out is in use: .* in open_loop_run.json"):
        run_in_process(dataset, policy, out)
    assert queries == [] and sorted(path.name for path in out.iterdir()) == [f".gr00t_{claim.name}.alive", claim.name]


def test_a_results_json_that_appears_during_the_run_is_not_replaced(dataset, tmp_path):
    """write_results replaced whatever results.json another writer (a gr00t-eval older than this claim) put there."""
    from gr00t_eval.output_files import OutputDirError

    out = tmp_path / "out"
    other = out / "results.json"
    policy = ReplayThatActsFirst(dataset, [lambda: other.write_text("another run's results")])
    with pytest.raises(OutputDirError, match=r"output_dir .*out: results.json appeared there during this run"):
        run_in_process(dataset, policy, out)
    assert other.read_text() == "another run's results"
    assert sorted(path.name for path in out.iterdir()) == ["results.json"]


def test_the_claim_of_a_killed_run_is_taken_over_by_the_next_run_into_its_folder(dataset, tmp_path):
    """The API has no --overwrite to empty a killed run's claim: a claim whose process is gone must not refuse the
    folder for ever (a folder without results.json was always runnable into again)."""
    import subprocess
    import sys

    from gr00t_server.policies.replay import ReplayPolicy

    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([sys.executable, "-c", "import sys; from gr00t_eval.run_claim import claim_output_dir; "
                    "claim_output_dir(sys.argv[1], 'open_loop_run.json', {'kind': 'open_loop'})", str(out)],
                   check=True, timeout=60)  # its process has ended: a run killed mid-way leaves this
    assert (out / "open_loop_run.json").is_file()
    result = run_in_process(dataset, ReplayPolicy(dataset, execution_horizon=4), out)
    assert result.status == "complete" and result.results_path == out / "results.json"
    assert "open_loop_run.json" not in {path.name for path in out.iterdir()}  # taken over, then removed with the run

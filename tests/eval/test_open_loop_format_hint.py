"""open-loop's advice about --observation-format: a server that refuses a request over one of its size limits, or that
names a policy taking the nested form, gets its own error alone, never the advice to send flat keys; auto sends the
form the server reports its policy takes, whatever the policy's class is named. Real replay
servers on loopback, real datasets, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from gr00t_client import PolicyClient
from gr00t_eval import OpenLoopConfig, cli, evaluate_open_loop
from gr00t_eval.open_loop_observation import FLAT_FORMAT_HINT, format_hint
from gr00t_eval.policy_identity import NESTED_ONLY_POLICIES
from gr00t_server.policies import Gr00tSimPolicyWrapper
from gr00t_server.policies.replay import ReplayPolicy
from gr00t_server.serving import ServerLimits
from serving import running_server


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("format_hint") / "ds", lengths=(4,), size=(32, 32))


def errored_reason(dataset: Path, limits: ServerLimits, out: Path) -> str:
    with running_server(ReplayPolicy(dataset, execution_horizon=4), limits=limits) as server:
        cli.main(["open-loop", "--dataset-path", str(dataset), "--port", str(server.port), "--execution-horizon", "4",
                  "--traj-ids", "0", "--no-plots", "--output-dir", str(out)])
    [entry] = json.loads((out / "results.json").read_text())["errored_trajectories"]
    return entry["error"]


@pytest.mark.parametrize("limits, refusal", [
    (ServerLimits(max_language_chars=5), "characters; this server accepts at most 5 (--max-language-chars)"),
    (ServerLimits(max_image_pixels=256), "32x32 images; this server accepts at most 256 pixels per image"),
], ids=["language too long", "images too large"])
def test_a_size_limit_refusal_from_a_replay_server_is_not_blamed_on_the_observation_format(dataset, tmp_path, limits,
                                                                                           refusal):
    reason = errored_reason(dataset, limits, tmp_path / "out")
    assert refusal in reason
    assert "--observation-format" not in reason and "flat keys" not in reason, reason


def test_auto_gives_no_flat_keys_advice_when_the_server_names_a_nested_only_policy():
    """A key in the dotted form quoted by a ReplayPolicy or Gr00tPolicy server is its nested key's path, not a sign
    that flat keys were wanted: those policies take only the nested form that auto sent."""
    for policy_class in NESTED_ONLY_POLICIES:
        assert format_hint({"policy_class": policy_class}, "auto", "KeyError: 'state.arm'") == ""
    assert format_hint(None, "auto", "KeyError: 'state.arm'") == FLAT_FORMAT_HINT  # a server that cannot say


class LiberoFlatWrapper(Gr00tSimPolicyWrapper):
    """A user's subclass of the sim wrapper, under a name without "Sim"."""


class SimpleArmPolicy(ReplayPolicy):
    """A nested-form policy whose name happens to contain "Sim"."""


def open_loop(policy, dataset: Path, out: Path):
    config = OpenLoopConfig(str(dataset), traj_ids=[0], steps=4, execution_horizon=4, output_dir=str(out), plot=False)
    return evaluate_open_loop(policy, config, report=lambda _: None, progress=False)


@pytest.mark.parametrize("make_policy, form", [
    (lambda root: LiberoFlatWrapper(ReplayPolicy(root, execution_horizon=4)), "flat"),
    (lambda root: SimpleArmPolicy(root, execution_horizon=4), "nested"),
], ids=["sim wrapper subclass", "nested policy named Sim"])
def test_auto_sends_the_form_the_server_reports_whatever_its_policy_class_is_named(dataset, tmp_path, make_policy, form):
    with running_server(make_policy(dataset)) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        result = open_loop(client, dataset, tmp_path / "out")
    assert result.errored == {} and list(result.trajectories) == [0]
    assert json.loads(result.results_path.read_text())["config"]["observation_format"] == form


def test_auto_sends_an_in_process_sim_wrapper_subclass_the_flat_form(dataset, tmp_path):
    result = open_loop(LiberoFlatWrapper(ReplayPolicy(dataset, execution_horizon=4)), dataset, tmp_path / "out")
    assert result.errored == {} and list(result.trajectories) == [0]


def test_the_hint_names_the_form_the_server_reports_over_its_class_name():
    info = {"policy_class": "SimpleArmPolicy", "observation_format": "nested"}
    assert "takes the nested observation form" in format_hint(info, "flat", "KeyError: 'video'")
    assert format_hint(info, "nested", "KeyError: 'state.arm'") == ""

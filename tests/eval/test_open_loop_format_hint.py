"""open-loop's advice about --observation-format: a server that refuses a request over one of its size limits, or that
names a policy taking the nested form, gets its own error alone, never the advice to send flat keys. Real replay
servers on loopback, real datasets, the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.dataset_factory import make_dataset
from gr00t_eval import cli
from gr00t_eval.open_loop_observation import FLAT_FORMAT_HINT, format_hint
from gr00t_eval.policy_identity import NESTED_ONLY_POLICIES
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

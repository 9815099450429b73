"""statistics.json faults as a served checkpoint meets them: only the statistics serving a tag uses are held to the
load checks, and an action the statistics cannot decode is refused naming those statistics, not the state."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from serving import running_server

from gr00t_client import NonFiniteActionError, PolicyClient, PolicyServerError

pytest.importorskip("torch")


def _edit(checkpoint, name, change):
    path = checkpoint / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # NaN as Python's json writes it (and the reference reads it)


def _serve_one_call(checkpoint, tag="new_embodiment"):
    """Load Gr00tPolicy for `tag` from `checkpoint` and answer one request over a loopback server."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    policy = Gr00tPolicy(checkpoint, tag, device="cpu")
    observation = example_observation(checkpoint, tag, image_size=(32, 32))
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        return client.get_action(observation, {"seed": 0})


# --- 1. statistics serving does not use ------------------------------------------------------------


@pytest.mark.parametrize("tag, group, key, stat", [
    ("libero_sim", "state", "unused_sensor", None),  # a dataset column none of the modality configs names
    ("new_embodiment", "state", "gripper", "std"),  # a q01/q99 key: its std is never read
    ("new_embodiment", "relative_action", "gripper", "min"),  # gripper is an absolute action key
])
def test_a_nan_statistic_serving_never_uses_is_warned_about_and_the_tag_serves(copy_of, caplog, tag, group, key, stat):
    checkpoint = copy_of()

    def put_nan(stats):
        keys = stats[tag].setdefault(group, {})
        if stat is None:
            keys[key] = {"min": [0.0], "max": [1.0], "mean": [float("nan")], "std": [float("nan")], "q01": [0.0],
                         "q99": [1.0]}
        else:
            stats_of_key = keys.setdefault(key, {"min": [0.0], "max": [1.0]})
            stats_of_key[stat] = [float("nan")] * len(stats_of_key["min"])

    _edit(checkpoint, "statistics.json", put_nan)
    with caplog.at_level("WARNING"):
        action, _ = _serve_one_call(checkpoint, tag)
    assert all(np.isfinite(value).all() for value in action.values())
    named = f"statistics[{tag!r}][{group!r}][{key!r}][{(stat or 'mean')!r}] has a non-finite value (nan)"
    warned = [record for record in caplog.records if named in record.getMessage()]
    assert warned and "that serving it does not use" in warned[0].getMessage()


def test_a_nan_statistic_serving_uses_is_still_refused_at_load(copy_of):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _edit(checkpoint, "statistics.json", lambda stats: stats["new_embodiment"]["state"]["gripper"].update(q01=[np.nan]))
    with pytest.raises(ValueError, match=r"statistics\['new_embodiment'\]\['state'\]\['gripper'\]\['q01'\] has a "
                                         r"non-finite value \(nan\)"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


# --- 2. relative rot6d statistics that decode to no rotation ----------------------------------------


def test_relative_rot6d_statistics_that_always_decode_a_zero_rotation_row_are_refused_at_load(copy_of):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()

    def zero_first_rotation_row(stats):
        for name, value in stats["new_embodiment"]["relative_action"]["eef_9d"].items():
            value = np.array(value)
            value[:, 3:6] = 0.0
            stats["new_embodiment"]["relative_action"]["eef_9d"][name] = value.tolist()

    _edit(checkpoint, "statistics.json", zero_first_rotation_row)
    with pytest.raises(ValueError, match=r"relative_action key 'eef_9d' of 'new_embodiment' \(xyz \+ rot6d\) has min "
                                         r"and max 0 in all of values 3:6 \(a rotation row\) at steps \[0, 1, 2"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


def test_a_degenerate_decoded_rotation_names_the_statistics_not_the_reference_state(copy_of):
    """A std of 1e-200 scales the first rot6d row to about 1e-200, whose norm underflows to 0: Gram-Schmidt made NaN
    (with a RuntimeWarning), and the error blamed a reference state of |values| < 1 as beyond float32's range."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = copy_of()

    def z_score_eef(config):
        config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["mean_std_embedding_keys"] = ["eef_9d"]

    def tiny_first_rotation_row(stats):
        relative = stats["new_embodiment"]["relative_action"]["eef_9d"]
        for name, value in (("mean", 0.0), ("std", 1e-200)):
            rows = np.array(relative[name])
            rows[:, 3:6] = value
            relative[name] = rows.tolist()

    _edit(checkpoint, "processor_config.json", z_score_eef)
    _edit(checkpoint, "statistics.json", tiny_first_rotation_row)
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", image_size=(32, 32))
    expected = (r"relative action key 'eef_9d' \(xyz \+ rot6d\) decodes to a degenerate rotation .* in rows \[0\], "
                r"steps \[0, 1, 2, .*Its relative_action statistics in values 3:9 at step 0: mean \[0, 0, 0, "
                r".*std \[1e-200, 1e-200, 1e-200, ")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy warning leaks out of the decode
        with pytest.raises(NonFiniteActionError, match=expected) as refused:
            policy.get_action(observation, {"seed": 0})
    assert "beyond float32's range" not in str(refused.value)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=expected):
            client.get_action(observation, {"seed": 0})


# --- 3. a mean/std key that overflows float32 ------------------------------------------------------


def test_a_mean_std_action_overflowing_float32_names_its_std_not_its_percentile_range(copy_of):
    checkpoint = copy_of()

    def z_score_gripper(config):
        config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["mean_std_embedding_keys"] = ["gripper"]

    _edit(checkpoint, "processor_config.json", z_score_gripper)
    _edit(checkpoint, "statistics.json", lambda stats: stats["new_embodiment"]["action"]["gripper"].update(std=[3e38]))
    with pytest.raises(PolicyServerError, match=r"action key 'gripper' of 'new_embodiment' holds non-finite values .* "
                                                r"Likely cause: its statistics \(mean/std: \|std\| up to 3e\+38, \|mean\| "
                                                r"up to \S+\) unnormalize the model's output beyond float32's range") as refused:
        _serve_one_call(checkpoint)
    assert "range [" not in str(refused.value)


def test_a_relative_action_overflowing_float32_names_its_statistics_not_a_small_reference_state(copy_of):
    checkpoint = copy_of()

    def z_score_joints(config):
        config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["mean_std_embedding_keys"] = ["joints"]

    def huge_std(stats):
        relative = stats["new_embodiment"]["relative_action"]["joints"]
        relative["std"] = (np.array(relative["std"]) * 0 + 3e38).tolist()

    _edit(checkpoint, "processor_config.json", z_score_joints)
    _edit(checkpoint, "statistics.json", huge_std)
    with pytest.raises(PolicyServerError, match=r"action key 'joints' of 'new_embodiment' holds non-finite values .* "
                                                r"Likely cause: its relative_action statistics \(mean/std: \|std\| up to "
                                                r"3e\+38, .*\(its reference state 'state.joints' is within it") as refused:
        _serve_one_call(checkpoint)
    assert "send states that fit float32" not in str(refused.value)

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


HUGE_INTEGER = 10 ** 400  # a JSON integer literal beyond float64's range: json reads it as a Python int


@pytest.mark.parametrize("tag, group, key, stat", [
    ("libero_sim", "action", "x", "max"),  # another embodiment's statistics
    ("new_embodiment", "action", "gripper", "mean"),  # a q01/q99 key: its mean is never read
])
def test_an_integer_beyond_float64_in_statistics_serving_never_uses_leaves_the_tag_servable(copy_of, caplog, tag,
                                                                                           group, key, stat):
    """It failed the load with a bare "OverflowError: int too large to convert to float", naming nothing."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _edit(checkpoint, "statistics.json", lambda stats: stats[tag][group][key].update({stat: [HUGE_INTEGER]}))
    with caplog.at_level("WARNING"):
        policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    assert policy.embodiment_tag_value == "new_embodiment"
    if tag == "new_embodiment":
        named = f"statistics[{tag!r}][{group!r}][{key!r}][{stat!r}] holds an integer beyond float64's range"
        assert any(named in record.getMessage() for record in caplog.records)


def test_an_integer_beyond_float64_in_statistics_serving_uses_is_refused_naming_the_stat(copy_of):
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _edit(checkpoint, "statistics.json",
          lambda stats: stats["new_embodiment"]["action"]["gripper"].update(q99=[HUGE_INTEGER]))
    with pytest.raises(ValueError, match=r"statistics\.json: statistics\['new_embodiment'\]\['action'\]\['gripper'\]"
                                         r"\['q99'\] holds an integer beyond float64's range"):
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
    with pytest.raises(ValueError, match=r"relative_action key 'eef_9d' of 'new_embodiment' \(xyz \+ rot6d\) fixes a "
                                         r"rotation row at steps \[0, 1, 2, .*\(min == max\) to values no rotation "
                                         r"matrix has: step 0's values 3:9 are \[0, 0, 0, varies"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


def test_a_degenerate_decoded_rotation_names_the_statistics_not_the_reference_state(copy_of):
    """A first rot6d row ranging over [0, 1e-200] (not fixed, so it loads) decodes to a row whose norm underflows to
    0: Gram-Schmidt made NaN (with a RuntimeWarning), and the error blamed a reference state of |values| < 1 as beyond
    float32's range."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy
    from gr00t_server.test_checkpoint import example_observation

    checkpoint = copy_of()

    def tiny_first_rotation_row(stats):
        relative = stats["new_embodiment"]["relative_action"]["eef_9d"]
        for name, value in (("min", 0.0), ("max", 1e-200)):
            rows = np.array(relative[name])
            rows[:, 3:6] = value
            relative[name] = rows.tolist()

    _edit(checkpoint, "statistics.json", tiny_first_rotation_row)
    policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
    observation = example_observation(checkpoint, "new_embodiment", image_size=(32, 32))
    expected = (r"relative action key 'eef_9d' \(xyz \+ rot6d\) decodes to a degenerate rotation .* in rows \[0\], "
                r"steps \[0, 1, 2, .*Its relative_action statistics in values 3:9 at step 0: min \[0, 0, 0, "
                r".*max \[1e-200, 1e-200, 1e-200, ")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no numpy warning leaks out of the decode
        with pytest.raises(NonFiniteActionError, match=expected) as refused:
            policy.get_action(observation, {"seed": 0})
    assert "beyond float32's range" not in str(refused.value)
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
        with pytest.raises(PolicyServerError, match=expected):
            client.get_action(observation, {"seed": 0})


def _z_score_eef(config):
    config["processor_kwargs"]["modality_configs"]["new_embodiment"]["action"]["mean_std_embedding_keys"] = ["eef_9d"]


def _fix_rotation(names, rows):
    """A statistics.json edit: relative_action stats `names` of eef_9d set to `rows` in values 3:9 at every step."""
    def change(stats):
        relative = stats["new_embodiment"]["relative_action"]["eef_9d"]
        for name, value in zip(names, rows):
            steps = np.array(relative[name])
            steps[:, 3:9] = value
            relative[name] = steps.tolist()
    return change


@pytest.mark.parametrize("names, rows, z_scored, shown", [
    (("min", "max"), ([1e-12, 0, 0, 0, 1, 0],) * 2, False, r"1e-12, 0, 0, 0, 1, 0"),  # a tiny, not zero, row
    (("min", "max"), ([1, 0, 0, 1, 0, 0],) * 2, False, r"1, 0, 0, 1, 0, 0"),  # parallel rows
    (("mean", "std"), ([0, 0, 0, 0, 1, 0], [1e-200, 1e-200, 1e-200, 0.1, 0.1, 0.1]), True, r"0, 0, 0, varies"),
], ids=["tiny-row", "parallel-rows", "mean-std-tiny-std"])
def test_relative_rot6d_statistics_fixing_a_degenerate_rotation_are_refused_at_load_naming_steps_and_values(
        copy_of, names, rows, z_scored, shown):
    """Such statistics loaded, and then every request was refused "decodes to a degenerate rotation"."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    if z_scored:
        _edit(checkpoint, "processor_config.json", _z_score_eef)
    _edit(checkpoint, "statistics.json", _fix_rotation(names, rows))
    with pytest.raises(ValueError, match=r"relative_action key 'eef_9d' of 'new_embodiment' \(xyz \+ rot6d\) fixes a "
                                         rf"rotation row at steps \[0, 1, 2, .*no rotation matrix has: step 0's values "
                                         rf"3:9 are \[{shown}.*a zero row or two parallel rows"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


@pytest.mark.parametrize("names, rows, z_scored", [
    (("min", "max"), ([1, 0, 0, 0, 1, 0],) * 2, False),  # the identity's rows, every step: the data never turned
    (("mean", "std"), ([0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]), True),  # std 0 passes the model's output through
], ids=["fixed-identity", "mean-std-zero-std"])
def test_relative_rot6d_statistics_that_can_decode_a_rotation_still_serve(copy_of, names, rows, z_scored):
    checkpoint = copy_of()
    if z_scored:
        _edit(checkpoint, "processor_config.json", _z_score_eef)
    _edit(checkpoint, "statistics.json", _fix_rotation(names, rows))
    action, _ = _serve_one_call(checkpoint)
    assert np.isfinite(action["eef_9d"]).all()


def _as_pose_key(checkpoint, action_format, rotation):
    """Turn the checkpoint's eef_9d into a relative key `eef` in `action_format` ("DEFAULT": a flattened 4x4 pose,
    "XYZ_ROTVEC") whose relative_action rotation values are `rotation` in min and max at every step."""
    width = {"DEFAULT": 16, "XYZ_ROTVEC": 6}[action_format]

    def configs(config):
        modalities = config["processor_kwargs"]["modality_configs"]["new_embodiment"]
        for group in ("state", "action"):
            keys = modalities[group]["modality_keys"]
            modalities[group]["modality_keys"] = ["eef" if key == "eef_9d" else key for key in keys]
        modalities["action"]["action_configs"][0].update(format=action_format, state_key="eef")

    def statistics(stats):
        tag = stats["new_embodiment"]
        if action_format == "DEFAULT":  # the identity pose's rotation block, a translation in [-1, 1]
            low, high = np.eye(4).reshape(-1), np.eye(4).reshape(-1)
            low[[3, 7, 11]], high[[3, 7, 11]] = -1.0, 1.0
        else:  # xyz in [-1, 1], a rotation vector in [-pi, pi]
            low, high = np.r_[-np.ones(3), -np.pi * np.ones(3)], np.r_[np.ones(3), np.pi * np.ones(3)]
        for group in ("state", "action"):
            del tag[group]["eef_9d"]
            tag[group]["eef"] = {"min": low.tolist(), "max": high.tolist(), "mean": ((low + high) / 2).tolist(),
                                 "std": ((high - low) / 4 + 1e-3).tolist(), "q01": low.tolist(), "q99": high.tolist()}
        steps = len(tag["relative_action"].pop("eef_9d")["min"])
        low, high = np.zeros(width), np.zeros(width)
        if action_format == "DEFAULT":  # translation in [-0.1, 0.1], last row [0, 0, 0, 1]
            low[[0, 1, 2, 4, 5, 6, 8, 9, 10]] = high[[0, 1, 2, 4, 5, 6, 8, 9, 10]] = rotation
            low[[3, 7, 11]], high[[3, 7, 11]] = -0.1, 0.1
            low[15] = high[15] = 1.0
        else:
            low[:3], high[:3] = -0.1, 0.1
            low[3:6] = high[3:6] = rotation
        tag["relative_action"]["eef"] = {name: [list(value)] * steps for name, value in (
            ("min", low), ("max", high), ("mean", (low + high) / 2), ("std", (high - low) / 4))}

    _edit(checkpoint, "processor_config.json", configs)
    _edit(checkpoint, "statistics.json", statistics)


def test_a_4x4_pose_key_whose_relative_rotation_block_is_fixed_at_zero_is_refused_at_load(copy_of):
    """It loaded, and every action silently kept the reference state's rotation (the nearest rotation of a zero
    block is the identity)."""
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _as_pose_key(checkpoint, "DEFAULT", np.zeros(9))
    with pytest.raises(ValueError, match=r"relative_action key 'eef' of 'new_embodiment' \(a flattened 4x4 pose\) "
                                         r"fixes its 3x3 rotation block at steps \[0, 1, 2, .*\(min == max\) to values "
                                         r"no rotation matrix has: step 0's block \(values 0:3, 4:7, 8:11\) is \[0, 0, "
                                         r".*singular\. Every action would silently keep the reference state's "
                                         r"rotation"):
        Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")


@pytest.mark.parametrize("action_format, rotation", [
    ("DEFAULT", np.eye(3).reshape(-1)),  # a fixed identity block: the data never turned
    ("XYZ_ROTVEC", np.zeros(3)),  # a zero rotation vector is the identity, not a degenerate rotation
], ids=["4x4-identity", "rotvec-zero"])
def test_a_pose_key_whose_relative_rotation_is_fixed_at_the_identity_still_serves(copy_of, action_format, rotation):
    checkpoint = copy_of()
    _as_pose_key(checkpoint, action_format, rotation)
    action, _ = _serve_one_call(checkpoint)
    assert np.isfinite(action["eef"]).all()


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


# --- 4. a statistic serving does not use, as make-test-checkpoint and export meet it ----------------


def test_make_test_checkpoint_writes_a_dataset_whose_unused_statistic_is_nan_and_the_checkpoint_serves(
        tmp_path, caplog):
    """It refused, saying serve would refuse a checkpoint made from these statistics, which serve accepts."""
    from eval.dataset_factory import make_dataset
    from gr00t_server import cli

    dataset = make_dataset(tmp_path / "ds", lengths=(6, 9))
    stats_path = dataset / "meta" / "stats.json"
    stats = json.loads(stats_path.read_text())
    stats["observation.state"]["std"][0] = float("nan")  # the std of a q01/q99 state key: serving never reads it
    stats_path.write_text(json.dumps(stats))
    checkpoint = tmp_path / "ckpt"
    with caplog.at_level("WARNING"):
        assert cli.main(["make-test-checkpoint", str(checkpoint), "--dataset-path", str(dataset)]) == 0
    assert any("stats.json: ignoring statistics of 'dataset' that serving it does not use" in record.getMessage()
               and "['std'] has a non-finite value (nan)" in record.getMessage() for record in caplog.records)
    action, _ = _serve_one_call(checkpoint)
    assert all(np.isfinite(value).all() for value in action.values())


def test_a_statistic_serving_does_not_use_is_warned_about_once_on_the_export_path(copy_of, caplog):
    """Gr00tPolicy warned at load, then the export/verify path's sample observation parsed statistics.json and
    warned again, where the docs say once at load."""
    from gr00t_server.backends.export import sample_observation
    from gr00t_server.policies.gr00t_policy import Gr00tPolicy

    checkpoint = copy_of()
    _edit(checkpoint, "statistics.json",
          lambda stats: stats["new_embodiment"]["state"]["gripper"].update(mean=[np.nan]))
    with caplog.at_level("WARNING"):
        policy = Gr00tPolicy(checkpoint, "new_embodiment", device="cpu")
        observation = sample_observation(policy, image_size=(32, 32))
        with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=60000) as client:
            action, _ = client.get_action(observation, {"seed": 0})
    assert np.isfinite(action["gripper"]).all()
    warned = [record for record in caplog.records if "ignoring statistics of 'new_embodiment'" in record.getMessage()]
    assert len(warned) == 1 and "['gripper']['mean'] has a non-finite value (nan)" in warned[0].getMessage()

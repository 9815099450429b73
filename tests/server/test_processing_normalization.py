"""State normalization and action decoding steps, checked against hand-computed numbers (model.md §3.5, §3.6)."""

import numpy as np
import pytest

from gr00t_client.modality import ActionConfig, ModalityConfig
from gr00t_server.processing import normalization as norm
from gr00t_server.processing.config import parse_statistics, processor_config_from_kwargs
from gr00t_server.processing.processor import Gr00tN1d7Processor


def test_minmax_normalize_maps_range_to_minus_one_one():
    low, high = np.array([0.0, -2.0]), np.array([4.0, 2.0])
    out = norm.minmax_normalize(np.array([1.0, 0.0]), low, high)
    # 2 * (1 - 0) / 4 - 1 = -0.5 ; 2 * (0 + 2) / 4 - 1 = 0
    np.testing.assert_allclose(out, [-0.5, 0.0])


def test_minmax_normalize_clips_outliers_only_when_asked():
    low, high = np.array([0.0]), np.array([1.0])
    assert norm.minmax_normalize(np.array([3.0]), low, high, clip=True)[0] == 1.0
    assert norm.minmax_normalize(np.array([3.0]), low, high, clip=False)[0] == 5.0  # 2*3/1 - 1


def test_minmax_normalize_degenerate_range_gives_zero():
    out = norm.minmax_normalize(np.array([7.0, 0.5]), np.array([2.0, 0.0]), np.array([2.0, 1.0]))
    np.testing.assert_allclose(out, [0.0, 0.0])


def test_minmax_round_trip():
    low, high = np.array([-1.0, 10.0, 0.0]), np.array([3.0, 20.0, 0.5])
    x = np.array([[0.5, 12.5, 0.25], [-1.0, 20.0, 0.0]])
    np.testing.assert_allclose(norm.minmax_unnormalize(norm.minmax_normalize(x, low, high), low, high), x)


def test_minmax_unnormalize_clips_model_output_first():
    # (clip(1.7) + 1) / 2 * (4 - 0) + 0 = 4 ; (clip(-3) + 1) / 2 * 4 = 0
    np.testing.assert_allclose(norm.minmax_unnormalize(np.array([1.7, -3.0]), np.zeros(2), np.full(2, 4.0)), [4.0, 0.0])


def test_mean_std_round_trip_and_zero_std_passthrough():
    mean, std = np.array([1.0, 5.0]), np.array([2.0, 0.0])
    x = np.array([5.0, 9.0])
    z = norm.mean_std_normalize(x, mean, std)
    np.testing.assert_allclose(z, [2.0, 9.0])  # (5 - 1) / 2 = 2 ; std 0 -> unchanged
    np.testing.assert_allclose(norm.mean_std_unnormalize(z, mean, std), x)


def test_sin_cos_encoding_doubles_width():
    out = norm.sin_cos_encode(np.array([[0.0, np.pi / 2]]))
    np.testing.assert_allclose(out, [[0.0, 1.0, 1.0, 0.0]], atol=1e-12)


def test_key_norm_params_use_percentiles_or_min_max():
    stats = {k: np.array(v) for k, v in {"min": [0.0], "max": [10.0], "q01": [1.0], "q99": [9.0]}.items()}
    p = norm.key_norm_params(stats, use_percentiles=True, where="k")
    assert (p.low[0], p.high[0]) == (1.0, 9.0)
    p = norm.key_norm_params(stats, use_percentiles=False, where="k")
    assert (p.low[0], p.high[0]) == (0.0, 10.0)


def test_pad_state_rejects_too_wide_state():
    assert norm.pad_last_dim(np.ones((1, 3)), 5).tolist() == [[1, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="exceeds max_state_dim 2"):
        norm.pad_last_dim(np.ones((1, 3)), 2)


def test_relative_joint_actions_add_last_state_step():
    relative = np.array([[[0.1, -0.2], [0.3, 0.0]]])  # (B=1, H=2, D=2)
    state = np.array([[[9.0, 9.0], [1.0, 2.0]]])  # (B=1, T=2, D=2); only the last step counts
    out = norm.decode_relative("j", relative, state, "NON_EEF", "DEFAULT")
    np.testing.assert_allclose(out, [[[1.1, 1.8], [1.3, 2.0]]])


def _rot_z(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_relative_eef_rot6d_composes_reference_then_relative():
    ref_rot, rel_rot = _rot_z(np.pi / 2), _rot_z(np.pi / 4)
    reference = np.concatenate([[1.0, 0.0, 0.0], ref_rot[:2].reshape(6)])  # xyz + first two rows
    relative = np.concatenate([[1.0, 0.0, 0.0], rel_rot[:2].reshape(6)])
    out = norm.decode_relative("eef", relative[None, None], reference[None, None], "EEF", "XYZ_ROT6D")[0, 0]
    # T_ref @ T_rel: xyz = ref_xyz + R_ref @ rel_xyz = (1,0,0) + Rz(90)(1,0,0) = (1,1,0); R = Rz(135 deg).
    np.testing.assert_allclose(out[:3], [1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(out[3:], _rot_z(3 * np.pi / 4)[:2].reshape(6), atol=1e-12)


def test_relative_eef_rotvec_composition():
    reference = np.array([0.0, 0.0, 1.0, 0.0, 0.0, np.pi / 2])
    relative = np.array([0.0, 1.0, 0.0, 0.0, 0.0, np.pi / 4])
    out = norm.decode_relative("eef", relative[None, None], reference[None, None], "EEF", "XYZ_ROTVEC")[0, 0]
    # Rz(90) @ (0,1,0) = (-1,0,0); rotation Rz(135 deg) -> rotvec (0, 0, 3pi/4).
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0, 0.0, 0.0, 3 * np.pi / 4], atol=1e-12)


@pytest.mark.parametrize("rotvec", [[0.0, 0.0, 0.0], [0.3, -0.2, 0.1], [0.0, np.pi - 1e-6, 0.0], [1.0, 1.0, 1.0]])
def test_rotvec_matrix_round_trip(rotvec):
    rotvec = np.array(rotvec)
    back = norm.matrix_to_rotvec(norm.rotvec_to_matrix(rotvec))
    np.testing.assert_allclose(norm.rotvec_to_matrix(back), norm.rotvec_to_matrix(rotvec), atol=1e-6)


@pytest.mark.parametrize("rot6d, why", [
    ([0.0] * 6, "all zero"),
    ([0.0, 0.0, 0.0, 0.0, 1.0, 0.0], "first row zero"),
    ([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], "second row zero"),
    ([1.0, 2.0, 0.0, -2.0, -4.0, 0.0], "parallel rows"),
])
def test_a_degenerate_rot6d_reference_state_is_refused_naming_key_and_row_both_ways(rot6d, why):
    good = np.concatenate([[0.0, 0.0, 0.0], _rot_z(0.3)[:2].reshape(6)])
    reference = np.stack([good, np.concatenate([[0.1, 0.2, 0.3], rot6d])])[:, None]  # (B=2, T=1, 9); row 1 is bad
    relative = np.tile(good, (2, 4, 1))
    for convert in (norm.decode_relative, norm.encode_relative):
        with pytest.raises(ValueError, match=r"relative key 'eef' \(xyz \+ rot6d\) has a degenerate rotation in rows \[1\]"):
            convert("eef", relative, reference, "EEF", "XYZ_ROT6D")
    fine = norm.decode_relative("eef", relative[:1], reference[:1], "EEF", "XYZ_ROT6D")  # the good row alone
    assert np.isfinite(fine).all()


@pytest.mark.parametrize("action_type, action_format, dim", [("NON_EEF", "DEFAULT", 3), ("EEF", "XYZ_ROTVEC", 6)])
def test_a_non_finite_reference_state_is_refused_instead_of_giving_nan_actions(action_type, action_format, dim):
    reference = np.zeros((3, 2, dim))
    reference[2, -1, 0] = np.nan
    with pytest.raises(ValueError, match=r"reference state 'state.arm' of relative key 'arm' has NaN or infinite "
                                         r"values in rows \[2\]"):
        norm.decode_relative("arm", np.zeros((3, 4, dim)), reference, action_type, action_format)
    reference[2, -1, 0], reference[2, 0, 0] = 0.0, np.inf  # only the last step anchors the actions
    assert np.isfinite(norm.decode_relative("arm", np.zeros((3, 4, dim)), reference, action_type, action_format)).all()


def test_rot6d_gram_schmidt_orthonormalizes():
    matrix = norm.rot6d_to_matrix(np.array([2.0, 0.0, 0.0, 1.0, 3.0, 0.0]))
    np.testing.assert_allclose(matrix, np.eye(3), atol=1e-12)


def _processor(use_relative_action=True, mean_std_actions=()):
    configs = {
        "robot": {
            "video": {"delta_indices": [0], "modality_keys": ["cam"]},
            "state": {"delta_indices": [-1, 0], "modality_keys": ["arm", "hand"], "mean_std_embedding_keys": ["hand"]},
            "action": {
                "delta_indices": [0, 1],
                "modality_keys": ["arm", "hand"],
                "mean_std_embedding_keys": list(mean_std_actions),
                "action_configs": [
                    {"rep": "RELATIVE", "type": "NON_EEF", "format": "DEFAULT", "state_key": None},
                    {"rep": "ABSOLUTE", "type": "NON_EEF", "format": "DEFAULT", "state_key": None},
                ],
            },
            "language": {"delta_indices": [0], "modality_keys": ["task"]},
        }
    }
    config = processor_config_from_kwargs(
        {"modality_configs": configs, "max_state_dim": 6, "max_action_dim": 5, "max_action_horizon": 4,
         "use_relative_action": use_relative_action, "use_percentiles": True}
    )
    stats = parse_statistics(
        {
            "robot": {
                "state": {
                    "arm": {"min": [0, 0], "max": [10, 10], "q01": [0, 2], "q99": [4, 6], "mean": [0, 0], "std": [1, 1]},
                    "hand": {"min": [0], "max": [1], "q01": [0], "q99": [1], "mean": [1.0], "std": [2.0]},
                },
                "action": {
                    "arm": {"min": [0, 0], "max": [10, 10], "q01": [0, 2], "q99": [4, 6], "mean": [0, 0], "std": [1, 1]},
                    "hand": {"min": [0], "max": [1], "q01": [0.2], "q99": [0.8], "mean": [0.5], "std": [1.0]},
                },
                "relative_action": {
                    "arm": {"min": [[-1, -1], [-2, -2]], "max": [[1, 1], [2, 2]], "q01": [[0, 0], [0, 0]], "q99": [[0, 0], [0, 0]],
                            "mean": [[0.5, -0.5], [1.0, 2.0]], "std": [[2.0, 4.0], [0.0, 0.5]]}
                },
            }
        }
    )
    return Gr00tN1d7Processor(config, stats, {"robot": 3}, tokenizer=None)


def test_state_normalization_concatenates_in_key_order_and_pads():
    proc = _processor()
    state = proc.normalize_state("robot", {"arm": np.array([[9, 9], [2.0, 4.0]]), "hand": np.array([[0.0], [5.0]])})
    # arm uses q01/q99: 2*(2-0)/4-1 = 0, 2*(4-2)/4-1 = 0 ; hand is mean/std: (5-1)/2 = 2 (not clipped).
    assert state.dtype == np.float32 and state.shape == (2, 6)
    np.testing.assert_allclose(state[1], [0.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(state[0, :2], [1.0, 1.0])  # 2*(9-0)/4-1 = 3.5 -> clipped; 2*(9-2)/4-1 = 2.5 -> 1


def test_decode_relative_key_uses_relative_min_max_per_step_and_last_state():
    proc = _processor()
    model_out = np.zeros((1, 4, 5))
    model_out[0, :, 0:2] = [[0.0, 1.0], [0.5, -1.0], [9, 9], [9, 9]]  # rows >= horizon 2 are dropped
    model_out[0, :, 2] = [1.0, 0.0, 0, 0]
    raw_state = {"arm": np.array([[[0.0, 0.0], [3.0, 4.0]]]), "hand": np.zeros((1, 2, 1))}
    out = proc.decode_action(model_out, "robot", raw_state)
    # step 0 relative stats [-1, 1]: 0 -> 0, 1 -> 1 ; step 1 stats [-2, 2]: 0.5 -> 1, -1 -> -2; + last state (3, 4)
    np.testing.assert_allclose(out["arm"][0], [[3.0, 5.0], [4.0, 2.0]])
    # hand is absolute with q01/q99 = [0.2, 0.8]: 1 -> 0.8, 0 -> 0.5
    np.testing.assert_allclose(out["hand"][0, :, 0], [0.8, 0.5], rtol=1e-6)
    assert all(v.dtype == np.float32 for v in out.values())


def test_a_relative_key_listed_as_mean_std_decodes_with_the_relative_mean_and_std():
    """Upstream checks mean_std_embedding_keys first, with the relative statistics in place of the action ones; the
    relative min/max rule (clipped to [-1, 1]) was applied instead, off by up to 0.046 on a test checkpoint and
    without bound on real statistics."""
    proc = _processor(mean_std_actions=["arm"])
    model_out = np.zeros((1, 2, 5))
    model_out[0, :, 0:2] = [[1.5, -1.0], [2.0, 3.0]]  # beyond [-1, 1]: not clipped for a mean/std key
    raw_state = {"arm": np.array([[[0.0, 0.0], [3.0, 4.0]]]), "hand": np.zeros((1, 2, 1))}
    out = proc.decode_action(model_out, "robot", raw_state)
    # step 0: 1.5*2+0.5, -1*4-0.5 ; step 1: std 0 leaves 2.0, 3*0.5+2 ; + last state (3, 4)
    np.testing.assert_allclose(out["arm"][0], [[3.5 + 3.0, -4.5 + 4.0], [2.0 + 3.0, 3.5 + 4.0]])
    encoded = proc.encode_action({"arm": out["arm"], "hand": out["hand"]}, "robot", raw_state)  # RTC's inverse
    np.testing.assert_allclose(encoded[0, :, 0:2], model_out[0, :, 0:2], rtol=1e-6)
    del proc.statistics["robot"]["relative_action"]["arm"]["std"]
    proc._norm_cache.clear()
    with pytest.raises(ValueError, match=r"lack 'std' \(the key is in mean_std_embedding_keys\)"):
        proc.decode_action(model_out, "robot", raw_state)


def test_decode_without_relative_flag_treats_relative_keys_as_absolute():
    proc = _processor(use_relative_action=False)
    out = proc.decode_action(np.zeros((1, 2, 5)), "robot", None)
    np.testing.assert_allclose(out["arm"][0, 0], [2.0, 4.0])  # midpoints of q01/q99 [0,4] and [2,6]


def test_decode_relative_needs_states():
    with pytest.raises(ValueError, match="State dict required"):
        _processor().decode_action(np.zeros((1, 2, 5)), "robot", None)


def test_missing_relative_statistics_is_a_clear_error():
    proc = _processor()
    del proc.statistics["robot"]["relative_action"]
    with pytest.raises(ValueError, match="'relative_action' not found"):
        proc.norm_params("robot")


def test_modality_config_type_is_the_client_one():
    proc = _processor()
    action = proc.modality_configs("robot")["action"]
    assert isinstance(action, ModalityConfig) and isinstance(action.action_configs[0], ActionConfig)


def test_sin_cos_state_keys_are_encoded_not_normalized():
    proc = _processor()
    configs = proc.config.modality_configs["robot"]
    configs["state"].sin_cos_embedding_keys = ["hand"]
    object.__setattr__(proc.config, "apply_sincos_state_encoding", True)
    state = proc.normalize_state("robot", {"arm": np.array([[2.0, 4.0]]), "hand": np.array([[np.pi / 2]])})
    # arm -> (0, 0); hand -> [sin(pi/2), cos(pi/2)] = [1, 0]; padded to 6.
    np.testing.assert_allclose(state[0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0], atol=1e-7)


def test_relative_eef_default_format_is_a_4x4_matrix():
    reference = np.eye(4)
    reference[:3, 3] = [1.0, 2.0, 3.0]
    relative = np.eye(4)
    relative[:3, 3] = [0.5, 0.0, 0.0]
    out = norm.decode_relative("eef", relative.reshape(1, 1, 16), reference.reshape(1, 1, 16), "EEF", "DEFAULT")
    np.testing.assert_allclose(out.reshape(4, 4)[:3, 3], [1.5, 2.0, 3.0])


def test_a_sin_cos_state_key_of_another_width_than_its_statistics_is_refused():
    """Its width went unchecked: a 2-wide 'hand' (statistics: 1) moved every later state key onto other columns."""
    proc = _processor()
    configs = proc.config.modality_configs["robot"]
    configs["state"].sin_cos_embedding_keys = ["hand"]
    object.__setattr__(proc.config, "apply_sincos_state_encoding", True)
    with pytest.raises(ValueError, match="State key 'hand' has dimension 2; the checkpoint statistics expect 1"):
        proc.normalize_state("robot", {"arm": np.array([[2.0, 4.0]]), "hand": np.array([[0.1, 0.2]])})


def test_a_state_anchoring_a_relative_action_of_another_width_is_refused_naming_the_key_and_width():
    """With clip_outliers on, the anchor's magnitude check ran first and failed with numpy's broadcast error, naming
    neither the key nor the width its statistics expect."""
    from gr00t_client.policy import ObservationError

    proc = _processor()
    assert proc.config.clip_outliers and "arm" in proc.relative_anchors("robot")
    with pytest.raises(ObservationError, match="State key 'arm' has dimension 3; the checkpoint statistics expect 2"):
        proc.normalize_state("robot", {"arm": np.array([[2.0, 4.0, 1.0]]), "hand": np.array([[0.5]])})


@pytest.mark.parametrize("pose, why", [
    (np.zeros(16), "all zero"),
    (np.diag([1.0, 1.0, 0.0, 1.0]).reshape(16), "a zero rotation axis"),
    (np.concatenate([np.eye(4)[:3].reshape(12), np.zeros(4)]), "last row zero"),
])
def test_a_singular_4x4_reference_pose_is_refused_naming_key_and_row_both_ways(pose, why):
    """A flattened 4x4 (DEFAULT) reference pose that is singular made decode return T_ref @ T_rel, finite and wrong
    (all zeros for an all-zero state); encode refused it. Both now refuse it, by the same criterion."""
    good = np.eye(4)
    good[:3, :3], good[:3, 3] = _rot_z(0.3), [0.1, 0.2, 0.3]
    reference = np.stack([good.reshape(16), pose])[:, None]  # (B=2, T=1, 16); row 1 is bad
    relative = np.tile(np.eye(4).reshape(16), (2, 4, 1))
    for convert in (norm.decode_relative, norm.encode_relative):
        with pytest.raises(ValueError, match=r"reference state 'state.eef' of relative key 'eef' \(a flattened 4x4 "
                                             r"pose\) is singular \(not invertible\) in rows \[1\]: it must be an "
                                             r"invertible homogeneous transform"):
            convert("eef", relative, reference, "EEF", "DEFAULT")
    fine = norm.decode_relative("eef", relative[:1], reference[:1], "EEF", "DEFAULT")  # the good row alone
    np.testing.assert_allclose(fine[0, 0], good.reshape(16))


def test_a_4x4_reference_pose_with_float32_round_off_is_accepted():
    """A real robot's pose comes as float32: its rotation is orthonormal only to ~1e-7, and its last row may read
    1e-8 instead of 0. That is no singular pose."""
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = _rot_z(1.234), [0.5, -0.25, 0.75]
    reference = pose.astype(np.float32).astype(np.float64).reshape(1, 1, 16)
    reference[0, 0, 12] = 1e-8
    relative = np.tile(np.eye(4).reshape(16), (1, 2, 1))
    decoded = norm.decode_relative("eef", relative, reference, "EEF", "DEFAULT")
    np.testing.assert_allclose(decoded[0, 0], reference[0, 0], atol=1e-6)
    encoded = norm.encode_relative("eef", decoded, reference, "EEF", "DEFAULT")
    np.testing.assert_allclose(encoded, relative, atol=1e-6)


def test_a_4x4_reference_pose_flattened_column_major_is_refused_naming_key_row_and_last_row_both_ways():
    """A pose flattened column-major (Eigen, OpenGL, T.T.flatten()) is invertible, so it passed: its translation sat in
    the last row, which was dropped, and the chunk was composed onto a pose at the origin with the inverse rotation."""
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = _rot_z(0.5), [0.5, 0.1, 0.3]
    reference = np.stack([pose.reshape(16), pose.T.reshape(16)])[:, None]  # (B=2, T=1, 16); row 1 column-major
    relative = np.tile(np.eye(4).reshape(16), (2, 4, 1))
    for convert in (norm.decode_relative, norm.encode_relative):
        with pytest.raises(ValueError, match=r"reference state 'state.eef' of relative key 'eef' \(a flattened 4x4 "
                                             r"pose\) has last row \[0.5, 0.1, 0.3, 1\] in rows \[1\]; expected "
                                             r"\[0, 0, 0, 1\] .*flattened column-major"):
            convert("eef", relative, reference, "EEF", "DEFAULT")
    fine = norm.decode_relative("eef", relative[:1], reference[:1], "EEF", "DEFAULT")  # the row-major row alone
    np.testing.assert_allclose(fine[0, 0], pose.reshape(16), atol=1e-12)


def test_a_4x4_reference_pose_composed_in_float32_is_accepted():
    """Poses a robot composes in float32 (base -> flange -> tool) keep a last row of [0, 0, 0, 1] to round-off."""
    rng = np.random.default_rng(3)
    pose = np.eye(4, dtype=np.float32)
    for angle in rng.uniform(-3, 3, 6):
        step = np.eye(4, dtype=np.float32)
        step[:3, :3], step[:3, 3] = _rot_z(angle), rng.uniform(-2, 2, 3)
        pose = pose @ step.astype(np.float32)
    reference = pose.astype(np.float64).reshape(1, 1, 16)
    reference[0, 0, 12:16] += [3e-7, -3e-7, 1e-7, 6e-8]  # float32 round-off of a last row computed, not set
    relative = np.tile(np.eye(4).reshape(16), (1, 2, 1))
    decoded = norm.decode_relative("eef", relative, reference, "EEF", "DEFAULT")
    np.testing.assert_allclose(decoded[0, 0, :12], reference[0, 0, :12], atol=1e-5)


def _rigid_by_reference_rule(matrix):
    """[R t; 0 1] as the reference's EndEffectorPose(homogeneous=...) rebuilds it: scipy's Rotation.from_matrix
    where scipy is installed, else the polar factor (M M^T)^(-1/2) M of a block with positive determinant."""
    out = np.eye(4)
    try:
        from scipy.spatial.transform import Rotation
        out[:3, :3] = Rotation.from_matrix(matrix[:3, :3]).as_matrix()
    except ImportError:
        values, vectors = np.linalg.eigh(matrix[:3, :3] @ matrix[:3, :3].T)
        out[:3, :3] = vectors @ np.diag(values ** -0.5) @ vectors.T @ matrix[:3, :3]
    out[:3, 3] = matrix[:3, 3]
    return out


def _not_rigid(rng, angle, translation):
    """A 4x4 near a pose, as a model's unnormalized output is: rotation block off by ~0.1, last row not [0, 0, 0, 1]."""
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = _rot_z(angle), translation
    return matrix + 0.1 * rng.standard_normal((4, 4))


def test_relative_eef_default_poses_compose_as_rigid_transforms_like_the_reference():
    """Each 16-value pose is parsed as the reference does (nearest rotation + translation), so the absolute action is a
    rigid transform: the raw 4x4 product had rotation blocks off orthonormal by 0.14 and a last row of noise."""
    rng = np.random.default_rng(0)
    reference = _not_rigid(rng, 0.4, [0.4, 0.1, 0.3])
    reference[3] = [0.0, 0.0, 0.0, 1.0]  # a state's last row is checked (a column-major pose holds xyz there)
    relative = np.stack([_not_rigid(rng, 0.1 * step, [0.01 * step, 0.0, 0.02]) for step in range(4)])
    decoded = norm.decode_relative("eef", relative.reshape(1, 4, 16), reference.reshape(1, 1, 16), "EEF", "DEFAULT")
    poses = decoded.reshape(4, 4, 4)
    expected = [_rigid_by_reference_rule(_rigid_by_reference_rule(reference) @ _rigid_by_reference_rule(step))
                for step in relative]
    np.testing.assert_allclose(poses, expected, atol=1e-12)
    np.testing.assert_allclose(poses[:, :3, :3] @ poses[:, :3, :3].transpose(0, 2, 1), np.tile(np.eye(3), (4, 1, 1)),
                               atol=1e-12)
    np.testing.assert_array_equal(poses[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (4, 1)))


def test_relative_eef_default_encoding_gives_rigid_relative_poses_that_decode_back():
    """RTC's encoder is the decoder's inverse on the same rigid poses: inv(T_ref) @ T_abs of the parsed poses."""
    rng = np.random.default_rng(1)
    reference = _not_rigid(rng, -0.7, [0.2, -0.3, 0.5])
    reference[3] = [0.0, 0.0, 0.0, 1.0]  # a state's last row is checked (a column-major pose holds xyz there)
    reference = reference.reshape(1, 1, 16)
    absolute = np.stack([_not_rigid(rng, 0.2 * step, [0.3, 0.0, 0.1 * step]) for step in range(3)]).reshape(1, 3, 16)
    encoded = norm.encode_relative("eef", absolute, reference, "EEF", "DEFAULT")
    steps = encoded.reshape(3, 4, 4)
    expected = [_rigid_by_reference_rule(np.linalg.inv(_rigid_by_reference_rule(reference.reshape(4, 4)))
                                         @ _rigid_by_reference_rule(pose)) for pose in absolute.reshape(3, 4, 4)]
    np.testing.assert_allclose(steps, expected, atol=1e-12)
    decoded = norm.decode_relative("eef", encoded, reference, "EEF", "DEFAULT")
    rigid_absolute = [_rigid_by_reference_rule(pose) for pose in absolute.reshape(3, 4, 4)]
    np.testing.assert_allclose(decoded.reshape(3, 4, 4), rigid_absolute, atol=1e-12)


def test_nearest_rotation_turns_a_reflection_into_a_rotation_and_keeps_non_finite_blocks_nan():
    reflected = np.diag([1.0, 1.0, -1.0]) @ _rot_z(0.3)
    rotation = norm.nearest_rotation(np.stack([reflected, np.full((3, 3), np.nan)]))
    assert np.linalg.det(rotation[0]) == pytest.approx(1.0)
    np.testing.assert_allclose(rotation[0] @ rotation[0].T, np.eye(3), atol=1e-12)
    assert np.isnan(rotation[1]).all()

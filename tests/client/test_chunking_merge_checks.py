"""ActionChunker against a real PolicyServer on loopback: a prefetch keeps the options passed with its observation, a
merge's steps are checked as a chunk is and taken by every env or none, a running env keeps its chunk under RTC when
another env's reset fetches in the foreground, a prefetch timing out while the call waits is outlived, and settings
that would fail later or never apply are refused when the chunker is made."""

import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from gr00t_client import ActionChunker, ActionError, BasePolicy, PolicyClient, PolicyWrapper
from gr00t_client.chunking_merge import merge_overlap
from serving import running_server


class StampPolicy(BasePolicy):
    """Step j of the chunk for an env whose observation holds t is 100 * t + j (float32, or `x_dtype`); an int64 (or
    `gripper_dtype`) 'gripper' key holds 3 * t. It records each request's options, and its call number `stall_call`
    takes `stall_s` (a stalled server)."""

    def __init__(self, horizon=8, stall_call=None, stall_s=0.0, x_dtype=np.float32, gripper_dtype=np.int64):
        super().__init__(strict=False)
        self.horizon, self.stall_call, self.stall_s = horizon, stall_call, stall_s
        self.x_dtype, self.gripper_dtype = x_dtype, gripper_dtype
        self.options, self.calls = [], 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        self.options.append(options)
        if self.calls == self.stall_call:
            time.sleep(self.stall_s)
        t = np.asarray(observation["state"]["t"], np.float32)[:, 0]
        chunk = 100.0 * t[:, None] + np.arange(self.horizon, dtype=np.float32)[None, :]
        gripper = np.repeat(3 * t.astype(np.int64)[:, None, None], self.horizon, axis=1)
        return {"x": chunk[:, :, None].astype(self.x_dtype), "gripper": gripper.astype(self.gripper_dtype)}, {}

    def reset(self, options=None):
        return {}


def obs(*t):
    return {"state": {"t": np.array(t, np.float32)[:, None]}}


def prefetched(chunker, *others):
    """Steps 0..3 of env 0 (and of the envs starting at `others`), the last of which sends the prefetch, then waits
    for it: the next call merges it. Returns the last step's info."""
    for t in range(4):
        _step, info = chunker.get_action(obs(t, *(start + t for start in others)))
    assert chunker.wait_for_prefetch(10)
    return info


@pytest.fixture
def served():
    """(policy, client) for a StampPolicy served on loopback."""
    policy = StampPolicy()
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        yield policy, client


class HeldBack(PolicyWrapper):
    """Forwards to the client; a request waits for `go` first (a busy prefetch thread), so the caller acts meanwhile."""

    def __init__(self, policy):
        super().__init__(policy, strict=False)
        self.go = threading.Event()
        self.go.set()

    def _get_action(self, observation, options=None):
        self.go.wait(10)
        return self.policy.get_action(observation, options)


# --- what a prefetch sends ------------------------------------------------------------------------------------


def test_a_prefetch_sends_the_array_options_passed_with_its_observation_though_the_caller_refills_them(served):
    # The options dict was copied, its arrays were not: every prefetch ran with the noise the robot wrote after
    # get_action returned.
    policy, client = served
    wrapper = HeldBack(client)
    noise = np.zeros((1, 8, 1), np.float32)  # the robot's preallocated noise buffer, refilled every step
    with ActionChunker(wrapper, asynchronous=True, prefetch_steps=4) as chunker:
        for t in range(4):
            noise[...] = t
            if t == 3:  # the prefetch this call sends waits until the buffer is refilled
                wrapper.go.clear()
            chunker.get_action(obs(t), {"noise": noise})
        noise[...] = -1
        wrapper.go.set()
        assert chunker.wait_for_prefetch(10)
    assert chunker.stats.prefetches == 1
    assert [float(options["noise"][0, 0, 0]) for options in policy.options] == [0.0, 3.0]


# --- a merge's steps ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge, key, got, expected", [
    (lambda old, new: np.where(np.ones(new.shape, bool), np.nan, new).astype(object), "x", "object", "float32"),
    (lambda old, new: (old + new) / 2 if old.dtype == np.int64 else new, "gripper", "float64", "int64"),
])
def test_a_merge_function_that_changes_a_keys_dtype_is_refused_naming_the_key_and_both_dtypes(served, merge, key, got,
                                                                                              expected):
    # An object array hid NaN from the finite check, and (old + new) / 2 sent fractional float64 gripper commands.
    _policy, client = served
    with ActionChunker(client, asynchronous=True, prefetch_steps=4, merge=merge) as chunker:
        prefetched(chunker)
        with pytest.raises(ActionError, match=rf"merging the overlap of action key '{key}' \(<function .*\) gave "
                                              rf"dtype {got}; expected {expected}, the key's dtype in the policy's chunks"):
            chunker.get_action(obs(4))
        step, _ = chunker.get_action(obs(5))
    assert step["gripper"].dtype == np.int64 and step["gripper"].tolist() == [[0]]  # the first chunk runs on


def test_a_merge_function_returning_a_masked_array_is_refused_naming_the_key_and_the_merge(served):
    # np.asarray dropped the mask: the robot got the values under it. Then a bare ValueError named neither the key
    # whose merge returned it nor the merge, nor that the chunk was not used.
    _policy, client = served

    def masked_gripper(old, new):
        return np.ma.masked_array(new, mask=True) if new.dtype.kind == "i" else new

    with ActionChunker(client, asynchronous=True, prefetch_steps=4, merge=masked_gripper) as chunker:
        prefetched(chunker)
        with pytest.raises(ActionError, match=r"merging the overlap of action key 'gripper' \(<function .*masked_gripper"
                                              r".*\): merge function returned a numpy masked array; return "
                                              r"merged.filled\(x\) .*; the chunk was not used"):
            chunker.get_action(obs(4))
        step, _ = chunker.get_action(obs(5))
    assert step["x"].tolist() == [[4.0]] and step["gripper"].tolist() == [[0]]  # the first chunk runs on


def _weighted_average(old, new):  # LeRobot's weighted average by np.average: float64 for float32 steps
    return np.average(np.stack([old, new]), axis=0, weights=[0.3, 0.7]) if new.dtype.kind == "f" else new


@pytest.mark.parametrize("x_dtype, gripper_dtype, merge, x, gripper", [
    (np.float32, np.int64, _weighted_average, 0.3 * 4 + 0.7 * 301, 9),  # float64 for a float32 key
    (">f4", np.int64, lambda old, new: (old + new) / 2 if new.dtype.kind == "f" else new, (4 + 301) / 2, 9),
    (np.float32, np.int32, lambda old, new: ((old + new) / 2).astype(int) if new.dtype.kind == "i" else new, 301, 4),
])
def test_a_merge_function_giving_another_dtype_of_the_keys_kind_is_cast_back_to_the_keys_dtype(
        x_dtype, gripper_dtype, merge, x, gripper):
    # A float64 result for a float32 key, native floats for big-endian ones ('>f4', kept by the wire) and .astype(int)
    # for an int32 key were refused mid-run ("gave dtype float32; expected >f4").
    policy = StampPolicy(x_dtype=x_dtype, gripper_dtype=gripper_dtype)
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=4, merge=merge) as chunker:
        prefetched(chunker)
        step, info = chunker.get_action(obs(4))  # old step 4 (4, gripper 0) with new step 1 (301, gripper 9)
    assert info["merged_env_ids"] == [0]
    assert step["x"].dtype == np.dtype(x_dtype).newbyteorder("=") and step["gripper"].dtype == gripper_dtype
    assert step["x"][0, 0] == pytest.approx(x, abs=1e-3) and step["gripper"].tolist() == [[gripper]]


def test_a_merge_function_giving_ints_outside_the_keys_int_range_is_refused_not_wrapped():
    policy = StampPolicy(gripper_dtype=np.int32)
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=4,
                          merge=lambda old, new: new.astype(np.int64) + 2**31 if new.dtype.kind == "i" else new) as chunker:
        prefetched(chunker)
        with pytest.raises(ActionError, match=r"merging the overlap of action key 'gripper' \(<function .*\) gave values "
                                              r"from 2147483657 to 2147483657; expected values in \[-2147483648, "
                                              r"2147483647\], the range of the key's dtype int32; the chunk was not used"):
            chunker.get_action(obs(4))
        step, _ = chunker.get_action(obs(5))
    assert step["gripper"].tolist() == [[0]]


def test_a_merge_refused_for_one_env_leaves_every_env_on_its_running_chunk(served):
    # Env 0 had already merged the chunk the error said "was not used": env 0 ran the new chunk, env 1 the old one.
    _policy, client = served

    def merge(old, new):  # inf for env 1's rows (its t is 50 more than env 0's) only
        return np.full(new.shape, np.inf, new.dtype) if new.dtype.kind == "f" and new[0, 0] >= 5000 else new

    with ActionChunker(client, asynchronous=True, prefetch_steps=4, merge=merge) as chunker:
        prefetched(chunker, 50)
        with pytest.raises(ActionError, match="action key 'x' .* gave non-finite values .* the chunk was not used"):
            chunker.get_action(obs(4, 54))
        step, _ = chunker.get_action(obs(5, 55))
    assert step["x"][:, 0].tolist() == [4.0, 5004.0]  # both envs on their first chunk, step 4


def test_a_merge_function_merging_in_place_leaves_every_env_on_its_running_chunk_when_another_env_is_refused(served):
    # It was handed views of the buffers: env 0's steps were merged in place, and env 1's set to inf, before env 1's
    # merge was refused ("the chunk was not used"); the next step executed them.
    _policy, client = served

    def merge_in_place(old, new):
        if new.dtype.kind != "f":
            return new
        old *= 0.3  # no temporary
        old += 0.7 * new
        if new[0, 0] >= 5000:  # env 1 (its t is 50 more than env 0's): refused
            old[:] = np.inf
        return old

    with ActionChunker(client, asynchronous=True, prefetch_steps=4, merge=merge_in_place) as chunker:
        prefetched(chunker, 50)
        with pytest.raises(ActionError, match="action key 'x' .* gave non-finite values .* the chunk was not used"):
            chunker.get_action(obs(4, 54))
        steps = [chunker.get_action(obs(t, 50 + t))[0]["x"][:, 0].tolist() for t in (5, 6)]
    assert steps == [[4.0, 5004.0], [5.0, 5005.0]]  # both envs on their first chunk, steps 4 and 5


# --- RTC and a foreground fetch --------------------------------------------------------------------------------


def test_with_rtc_a_running_env_keeps_its_chunk_when_another_envs_reset_fetches_both(served):
    # The foreground fetch (no options["rtc"]: the reset env has no steps to continue) replaced env 0's running
    # chunk by merge "newest": its executed step jumped from 2 to 200.
    policy, client = served
    with ActionChunker(client, asynchronous=True, prefetch_steps=4, rtc_frozen_steps=2) as chunker:
        for t in range(2):
            chunker.get_action(obs(t, t))
        chunker.reset(env_ids=[1])
        step, info = chunker.get_action(obs(2, 2))
        assert info["fetched_env_ids"] == [0, 1] and info["merged_env_ids"] == []
        assert step["x"][:, 0].tolist() == [2.0, 200.0]  # env 0 runs on in its chunk; env 1 starts the new one
        steps = [chunker.get_action(obs(t, t))[0]["x"][0, 0] for t in range(3, 6)]
        assert chunker.wait_for_prefetch(10)
    assert steps == [3.0, 4.0, 5.0]
    assert "rtc" not in (policy.options[1] or {})  # the foreground fetch
    assert "rtc" in policy.options[2]  # the next prefetch, which env 0's chunk joins with RTC


# --- a prefetch failing while the call waits --------------------------------------------------------------------


def test_a_prefetch_timing_out_while_the_call_waits_is_outlived_and_the_reset_env_fetched_afresh():
    # Its PolicyTimeoutError was raised when it landed during the call, while one landed before the call was outlived.
    policy = StampPolicy(horizon=16, stall_call=2, stall_s=1.4)  # the first prefetch stalls past the client's timeout
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=1000) as client, \
            ActionChunker(client, asynchronous=True) as chunker:
        for t in range(8):  # the last call sends the prefetch (8 of 16 steps left)
            chunker.get_action(obs(t, t))
        chunker.reset(env_ids=[1])
        step, info = chunker.get_action(obs(8, 8))  # env 1 ran out: waits for the prefetch, which times out
    assert info["prefetch_error"].startswith("PolicyTimeoutError: ")
    assert info["fetched_env_ids"] == [0, 1] and step["x"][:, 0].tolist() == [800.0, 800.0]


# --- settings refused when the chunker is made -----------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"rtc_ramp_rate": True}, "rtc_ramp_rate must be a finite number > 0, got True (bool); expected a real number, "
                              "not a bool"),
    ({"rtc_ramp_rate": "6"}, "rtc_ramp_rate must be a finite number > 0, got '6' (str)"),
    ({"rtc_ramp_rate": None}, "rtc_ramp_rate must be a finite number > 0, got None (NoneType)"),
    ({"new_weight": "0.5"}, "new_weight must be a real number in [0, 1] (not a bool), got '0.5' (str)"),
    ({"new_weight": None}, "new_weight must be a real number in [0, 1] (not a bool), got None (NoneType)"),
    ({"new_weight": True}, "new_weight must be a real number in [0, 1] (not a bool), got True (bool)"),
])
def test_rtc_ramp_rate_and_new_weight_of_another_type_are_refused_naming_the_parameter(served, kwargs, message):
    # True was taken (True > 0) and the server refused the first prefetch mid-run; a str or None raised a bare
    # TypeError from the comparison, naming neither parameter.
    _policy, client = served
    with pytest.raises(ValueError) as error:
        ActionChunker(client, asynchronous=True, rtc_frozen_steps=2, **kwargs)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("name", ["asynchronous", "per_env"])
@pytest.mark.parametrize("value", ["no", "false", 0, None])
def test_a_true_false_setting_that_is_no_bool_is_refused_naming_it(served, name, value):
    """bool("no") is True: ActionChunker(asynchronous="no") prefetched in a background thread."""
    policy, client = served
    with pytest.raises(ValueError) as error:
        ActionChunker(client, **{name: value})
    assert str(error.value) == f"{name} must be True or False, got {value!r} ({type(value).__name__})"
    with ActionChunker(client, **{name: np.bool_(False)}) as chunker:
        chunker.get_action(obs(0))
        assert chunker.asynchronous is False and chunker.per_env is False


def test_a_fraction_new_weight_and_rtc_ramp_rate_are_used_as_floats(served):
    # numbers.Real let them in; then the first weighted merge of an int key raised a bare numpy TypeError (a Fraction
    # has no rint), and a prefetch with rtc_ramp_rate=Fraction(6) could not be encoded for the wire.
    policy, client = served
    with ActionChunker(client, asynchronous=True, prefetch_steps=4, merge="weighted", new_weight=Fraction(1, 2)) as chunker:
        prefetched(chunker)
        step, info = chunker.get_action(obs(4))
    assert info["merged_env_ids"] == [0]
    assert step["x"].tolist() == [[152.5]] and step["gripper"].tolist() == [[4]]  # (4 + 301) / 2; rint((0 + 9) / 2)
    with ActionChunker(client, asynchronous=True, prefetch_steps=4, rtc_frozen_steps=2,
                       rtc_ramp_rate=Fraction(6)) as chunker:
        info = prefetched(chunker)
        assert "prefetch_error" not in info
        _step, info = chunker.get_action(obs(4))
    assert info["merged_env_ids"] == [0] and policy.options[-1]["rtc"]["ramp_rate"] == 6.0


@pytest.mark.parametrize("new_weight", [np.float32(0.7), np.float32(0.7).item(), Fraction(7, 10)])
def test_the_default_new_weight_in_another_float_type_is_taken_without_asynchronous(served, new_weight):
    # 0.699999988 (a float32 config value's .item()) and Fraction(7, 10) are not 0.7: the default weight was refused
    # as a merge setting a synchronous chunker never applies.
    _policy, client = served
    with ActionChunker(client, new_weight=new_weight) as chunker:
        step, _ = chunker.get_action(obs(1))
    assert step["x"].tolist() == [[100.0]]


@pytest.mark.parametrize("kwargs, named", [
    ({"merge": "oldest"}, "merge='oldest'"),
    ({"merge": max}, "merge=<built-in function max>"),
    ({"merge": "weighted", "new_weight": 0.5}, "merge='weighted' and new_weight=0.5"),
])
def test_a_merge_setting_without_asynchronous_is_refused_as_never_applied(served, kwargs, named):
    # It was taken and silently ignored: a synchronous chunker replaces the chunks it fetches.
    _policy, client = served
    with pytest.raises(ValueError, match=r"needs asynchronous=True: only a prefetched chunk is merged") as error:
        ActionChunker(client, **kwargs)
    assert str(error.value).startswith(named)
    ActionChunker(client, asynchronous=True, **kwargs).close()  # taken where it applies


class ConstantPolicy(BasePolicy):
    """Every step of every chunk is `value` in a 'g' key of `dtype`."""

    def __init__(self, value, dtype):
        super().__init__(strict=False)
        self.value, self.dtype = value, dtype

    def _get_action(self, observation, options=None):
        return {"g": np.full((1, 8, 1), self.value, dtype=self.dtype)}, {}

    def reset(self, options=None):
        return {}


def _merged_steps(policy, **chunker_kwargs):
    """The 6 steps a served `policy` gives through an asynchronous chunker whose prefetch (sent at step 3) merges at
    step 4."""
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=4, **chunker_kwargs) as chunker:
        steps = []
        for t in range(6):
            if t == 4:
                assert chunker.wait_for_prefetch(10)
            step, info = chunker.get_action(obs(t))
            steps.append(step["g"])
            if t == 4:
                assert info["merged_env_ids"] == [0]
    return steps


@pytest.mark.parametrize("merge", ["average", "weighted"])
@pytest.mark.parametrize("value, dtype", [(2**63 - 1, np.int64), (-2**63, np.int64), (2**64 - 1, np.uint64),
                                          (1733420000123456789, np.int64)])  # an int64 ns timestamp
def test_average_and_weighted_merges_of_64_bit_int_steps_are_exact_not_wrapped(merge, value, dtype):
    # They were computed in float64 and cast back: 2**63 - 1 wrapped to -2**63, 2**64 - 1 to 0, and the timestamp
    # moved by 21 ns, with no error.
    steps = _merged_steps(ConstantPolicy(value, dtype), merge=merge)
    assert all(step.dtype == dtype and step.tolist() == [[value]] for step in steps)


@pytest.mark.parametrize("merge, new_weight, expected", [
    ("average", 0.7, [2**62 + 1, 2**62 - 1]),  # halves go to the newer value: up where it is larger, down where smaller
    ("weighted", 0.7, [2**62 + 1, 2**62 - 1]),  # 0.7 * (2**62 + 1) + 0.3 * 2**62: 0.7 above 2**62, rounded up
    ("weighted", 0.5, [2**62, 2**62]),  # a tie rounds to the even value, as np.rint
])
def test_average_and_weighted_merges_of_large_int_steps_round_as_documented(merge, new_weight, expected):
    old = np.array([[2**62], [2**62]], np.int64)
    new = np.array([[2**62 + 1], [2**62 - 1]], np.int64)
    assert merge_overlap(old, new, merge, new_weight).tolist() == [[value] for value in expected]


@pytest.mark.parametrize("dtype, factor, limit", [(np.float16, 70000.0, "65504"), (np.float32, 1e39, "3.40282e+38")])
def test_a_merge_function_giving_floats_beyond_the_keys_float_range_is_refused_naming_the_values_and_range(
        dtype, factor, limit):
    # The finite float64 values were cast to inf and refused as "non-finite values (NaN or inf) from finite chunks".
    def scaled(old, new):
        return new.astype(np.float64) * factor

    with pytest.raises(ActionError) as error:
        _merged_steps(ConstantPolicy(1.0, dtype), merge=scaled)
    message = str(error.value)
    assert f"gave finite values up to {factor:g} in magnitude; expected values in [-{limit}, {limit}], the range of " \
           f"the key's dtype {np.dtype(dtype).name}; the chunk was not used" in message
    assert "non-finite" not in message


@pytest.mark.parametrize("kwargs, message", [
    ({"rtc_ramp_rate": Fraction(1, 10**400)}, "rtc_ramp_rate must be a finite number > 0 as a float (what the server "
                                              "gets), got Fraction(1, 1000"),
    ({"rtc_ramp_rate": 10**400}, "rtc_ramp_rate must be a real number within the float range (about 1.8e308), got one "
                                 "too large for a float (int: "),
    ({"new_weight": 10**400}, "new_weight must be a real number within the float range (about 1.8e308), got one too "
                              "large for a float (int: "),
])
def test_rtc_ramp_rate_and_new_weight_are_validated_as_the_floats_stored(served, kwargs, message):
    # Fraction(1, 10**400) passed "> 0" and was stored as 0.0 (the server refused ramp 0 at the first prefetch,
    # mid-run); 10**400 passed "< inf" and float() then raised a bare OverflowError naming no parameter.
    _policy, client = served
    with pytest.raises(ValueError) as error:
        ActionChunker(client, asynchronous=True, rtc_frozen_steps=2, merge="weighted", **kwargs)
    assert str(error.value).startswith(message)

"""ActionChunker edges: integer averages that do not wrap, and empty or reshaped chunks refused before any merge."""

import numpy as np
import pytest

from gr00t_client import ActionError, BasePolicy
from gr00t_client.chunking import ActionChunker, merge_overlap


class ScriptedPolicy(BasePolicy):
    """Answers call k with the k-th chunk it was given (the last one again once they run out)."""

    def __init__(self, *chunks):
        super().__init__(strict=False)
        self.chunks = list(chunks)
        self.calls = 0

    def _get_action(self, observation, options=None):
        chunk = self.chunks[min(self.calls, len(self.chunks) - 1)]
        self.calls += 1
        return {"action.x": chunk.copy()}, {}

    def reset(self, options=None):
        return {}


def steps(base, n_envs=1, horizon=4, dim=2, dtype=np.float32):
    """A (n_envs, horizon, dim) chunk whose step j of env e holds base + 10 * e + j."""
    values = base + 10 * np.arange(n_envs)[:, None] + np.arange(horizon)[None, :]
    return np.repeat(values[:, :, None], dim, axis=2).astype(dtype)


def obs(n_envs=1):
    return {"state": {"t": np.zeros((n_envs, 1), np.float32)}}


# --- merge_overlap("average") on integer and bool steps ------------------------------------------------


@pytest.mark.parametrize("dtype, old, new, expected", [
    (np.int8, 100, 120, 110),
    (np.int8, -100, -120, -110),
    (np.uint8, 200, 100, 150),
    (np.uint8, 250, 254, 252),
    (np.int16, 30000, 32000, 31000),
])
def test_average_of_integer_steps_is_their_mean_not_a_wrapped_sum(dtype, old, new, expected):
    merged = merge_overlap(np.full((2, 1), old, dtype), np.full((2, 1), new, dtype), "average")
    assert merged.dtype == dtype
    assert merged.tolist() == [[expected], [expected]]


def test_an_integer_average_halfway_between_two_ints_goes_to_the_newer_value():
    old = np.array([[1], [2], [-3], [-4]], np.int32)
    new = np.array([[2], [1], [-4], [-3]], np.int32)
    assert merge_overlap(old, new, "average").tolist() == [[2], [1], [-4], [-3]]


def test_bool_average_keeps_agreeing_values_and_takes_the_newer_where_they_differ():
    old = np.array([True, False, True, False])
    new = np.array([True, True, False, False])
    merged = merge_overlap(old, new, "average")
    assert merged.dtype == np.bool_ and merged.tolist() == [True, True, False, False]


def test_float_average_keeps_its_dtype_and_value():
    old = np.array([[1.0], [0.1]], np.float32)
    new = np.array([[2.0], [0.2]], np.float32)
    merged = merge_overlap(old, new, "average")
    assert merged.dtype == np.float32
    np.testing.assert_array_equal(merged, (old + new) / 2)


def test_chunker_average_of_int8_gripper_chunks_is_their_mean():
    policy = ScriptedPolicy(np.full((1, 4, 1), 100, np.int8), np.full((1, 4, 1), 120, np.int8))
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=3, merge="average")
    try:
        first, _ = chunker.get_action(obs())  # the prefetch of the 120 chunk starts here
        chunker.wait_for_prefetch(timeout=10)
        second, info = chunker.get_action(obs())
    finally:
        chunker.close()
    assert info["merged_env_ids"] == [0]
    assert first["action.x"].tolist() == [[100]] and second["action.x"].tolist() == [[110]]


# --- a chunk of horizon 0 ---------------------------------------------------------------------------------


def test_a_chunk_of_horizon_zero_is_an_action_error_naming_the_key():
    chunker = ActionChunker(ScriptedPolicy(np.zeros((1, 0, 2), np.float32)))
    with pytest.raises(ActionError, match=r"action key 'action.x' has horizon 0 \(shape \(1, 0, 2\)\); expected .* at least 1 step"):
        chunker.get_action(obs())


def test_after_a_chunk_of_horizon_zero_the_next_call_fetches_again():
    chunker = ActionChunker(ScriptedPolicy(np.zeros((1, 0, 2), np.float32), steps(5)))
    with pytest.raises(ActionError):
        chunker.get_action(obs())
    assert chunker.remaining().tolist() == [0]
    action, info = chunker.get_action(obs())
    assert action["action.x"].tolist() == [[5.0, 5.0]] and info["fetched_env_ids"] == [0]
    assert chunker.remaining().tolist() == [3]


def test_a_prefetched_chunk_of_horizon_zero_is_refused_and_the_running_chunk_goes_on():
    chunker = ActionChunker(ScriptedPolicy(steps(0), np.zeros((1, 0, 2), np.float32)), asynchronous=True, prefetch_steps=3)
    try:
        chunker.get_action(obs())
        chunker.wait_for_prefetch(timeout=10)
        with pytest.raises(ActionError, match="horizon 0"):
            chunker.get_action(obs())
        action, _ = chunker.get_action(obs())
    finally:
        chunker.close()
    assert action["action.x"].tolist() == [[1.0, 1.0]]


# --- a chunk whose steps change shape -----------------------------------------------------------------------


def test_a_prefetched_chunk_with_another_action_dimension_is_an_action_error_naming_both_shapes():
    chunker = ActionChunker(ScriptedPolicy(steps(0, dim=2), steps(50, dim=3)), asynchronous=True, prefetch_steps=3)
    try:
        chunker.get_action(obs())
        chunker.wait_for_prefetch(timeout=10)
        with pytest.raises(ActionError, match=r"action key 'action.x' has shape \(1, 4, 3\).*expected steps of shape \(2,\)"):
            chunker.get_action(obs())
    finally:
        chunker.close()


def test_a_refused_prefetch_leaves_every_env_as_it_was_and_the_next_prefetch_merges():
    policy = ScriptedPolicy(steps(0, n_envs=2), steps(50, n_envs=2, dim=3), steps(100, n_envs=2))
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=2)
    try:
        chunker.get_action(obs(2))
        chunker.get_action(obs(2))  # 2 steps left: the prefetch of the reshaped chunk starts
        chunker.wait_for_prefetch(timeout=10)
        with pytest.raises(ActionError, match="expected steps of shape"):
            chunker.get_action(obs(2))
        assert chunker.remaining().tolist() == [2, 2]  # no env merged, no cursor moved
        action, _ = chunker.get_action(obs(2))  # the old chunk's step 2; a new prefetch starts
        assert action["action.x"][:, 0].tolist() == [2.0, 12.0]
        chunker.wait_for_prefetch(timeout=10)
        action, info = chunker.get_action(obs(2))
    finally:
        chunker.close()
    # The new chunk was asked for with the previous call's observation: its step 1 lines up with this call.
    assert info["merged_env_ids"] == [0, 1]
    assert action["action.x"].tolist() == [[101.0, 101.0], [111.0, 111.0]]


def test_a_chunk_of_another_dtype_is_refused_not_cast_into_the_earlier_steps():
    """A float32 gripper chunk then an int64 one: merge "average" cast the buffered 0.4 to int (1), and the robot's
    steps changed dtype mid-episode, without a word."""
    first = np.full((1, 4, 1), 0.4, np.float32)
    policy = ScriptedPolicy(first, np.ones((1, 4, 1), np.int64), first)
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=3, merge="average")
    try:
        chunker.get_action(obs())
        chunker.wait_for_prefetch(timeout=10)
        with pytest.raises(ActionError, match=r"action key 'action.x' has dtype int64; expected float32, as in the "
                                              "earlier chunks"):
            chunker.get_action(obs())
        assert chunker.remaining().tolist() == [3]  # nothing merged
        action, _ = chunker.get_action(obs())
    finally:
        chunker.close()
    assert action["action.x"].dtype == np.float32 and np.allclose(action["action.x"], 0.4)


def test_a_chunk_shorter_than_n_action_steps_is_refused_naming_both():
    chunker = ActionChunker(ScriptedPolicy(steps(0, horizon=2)), n_action_steps=8)
    with pytest.raises(ActionError, match=r"action chunk has 2 steps, fewer than n_action_steps=8: the policy would be "
                                          r"asked every 2 steps instead of every 8; pass n_action_steps=2 or fewer"):
        chunker.get_action(obs())
    assert ActionChunker(ScriptedPolicy(steps(0, horizon=8)), n_action_steps=8).get_action(obs())[0]["action.x"].shape == (1, 2)


def test_an_observation_of_zero_rows_is_named_as_such():
    chunker = ActionChunker(ScriptedPolicy(steps(0)))
    with pytest.raises(ValueError, match=r"^observation has 0 rows \(a batch of size 0\): expected one row per env$"):
        chunker.get_action(obs(0))


def test_a_refetched_chunk_with_another_action_dimension_is_refused_and_installs_nothing():
    chunker = ActionChunker(ScriptedPolicy(steps(0, horizon=1, dim=2), steps(50, dim=3), steps(100, dim=2)))
    chunker.get_action(obs())
    with pytest.raises(ActionError, match=r"steps of shape \(3,\); expected steps of shape \(2,\)"):
        chunker.get_action(obs())
    assert chunker.remaining().tolist() == [0]
    action, info = chunker.get_action(obs())
    assert action["action.x"].tolist() == [[100.0, 100.0]] and info["fetched_env_ids"] == [0]


# --- a chunk with NaN or inf --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_chunk_with_a_non_finite_step_is_refused_naming_key_and_rows_and_the_next_call_fetches_again(bad):
    # A local policy checks nothing: the chunker is the last layer before the robot.
    chunk = steps(0, n_envs=2)
    chunk[1, 2, 0] = bad
    chunker = ActionChunker(ScriptedPolicy(chunk, steps(5, n_envs=2)))
    with pytest.raises(ActionError, match=r"action key 'action.x' has non-finite values \(NaN or inf\) in rows \[1\]"):
        chunker.get_action(obs(2))
    assert chunker.remaining().tolist() == [0, 0]
    action, _ = chunker.get_action(obs(2))
    assert action["action.x"][:, 0].tolist() == [5.0, 15.0]


@pytest.mark.parametrize("hide, refusal", [
    (np.ma.masked_invalid, r"action key 'action.x' is a numpy masked array; return value.filled\(x\)"),
    (lambda chunk: chunk.astype(object), r"action key 'action.x' has dtype object; expected a numeric"),
], ids=["masked", "object"])
def test_a_nan_hidden_in_a_masked_or_object_chunk_is_refused_naming_the_key(hide, refusal):
    # The finite check saw neither a masked entry nor an object array's items: the robot was handed the NaN.
    chunk = steps(0)
    chunk[0, 1, 1] = np.nan
    chunker = ActionChunker(ScriptedPolicy(hide(chunk), steps(5)))
    with pytest.raises(ActionError, match=refusal):
        chunker.get_action(obs())
    assert chunker.remaining().tolist() == [0]


@pytest.mark.parametrize("dtype, old, new, expected", [
    (np.int8, 100, 101, 101),    # 100.7: truncation gave 100
    (np.int8, 100, 120, 114),    # 114.0, no wrap-around
    (np.uint8, 250, 254, 253),   # 252.8
    (np.int16, -100, -101, -101),
])
def test_weighted_merge_of_integer_steps_rounds_to_the_nearest(dtype, old, new, expected):
    merged = merge_overlap(np.array([old], dtype), np.array([new], dtype), "weighted", new_weight=0.7)
    assert merged.dtype == dtype and merged.tolist() == [expected]


def test_weighted_merge_of_float_steps_is_unchanged():
    merged = merge_overlap(np.array([1.0], np.float32), np.array([2.0], np.float32), "weighted", new_weight=0.7)
    assert merged.dtype == np.float32 and merged.tolist() == [np.float32(0.7 * 2.0 + 0.3 * 1.0)]


# --- key order --------------------------------------------------------------------------------------------


class KeyOrderPolicy(BasePolicy):
    """Returns its action keys in a given (non-alphabetical) order; each key's values name the key."""

    def __init__(self, *orders):
        super().__init__(strict=False)
        self.orders = list(orders)
        self.calls = 0

    def _get_action(self, observation, options=None):
        order = self.orders[min(self.calls, len(self.orders) - 1)]
        self.calls += 1
        widths = {"right_arm": 2, "left_arm": 2, "gripper": 1}
        fill = {"right_arm": 1.0, "left_arm": 2.0, "gripper": 3.0}
        return {key: np.full((1, 2, widths[key]), fill[key], np.float32) for key in order}, {}

    def reset(self, options=None):
        return {}


@pytest.mark.parametrize("asynchronous", [False, True])
def test_steps_keep_the_policys_key_order_so_joined_values_go_to_the_same_joints(asynchronous):
    """Keys came back sorted: robot code joining a step's values in dict order sent the gripper's to the right arm."""
    order = ["right_arm", "left_arm", "gripper"]
    chunker = ActionChunker(KeyOrderPolicy(order, ["gripper", "right_arm", "left_arm"]), n_action_steps=2,
                            asynchronous=asynchronous)
    for _ in range(5):  # across chunks, the later ones returned in another order
        step, _info = chunker.get_action(obs())
        assert list(step) == order
        assert np.concatenate([value[0] for value in step.values()]).tolist() == [1, 1, 2, 2, 3]
    chunker.close()


def test_a_chunk_with_other_keys_is_refused_naming_both_sets():
    chunker = ActionChunker(KeyOrderPolicy(["right_arm", "gripper"], ["right_arm", "left_arm"]), n_action_steps=1)
    chunker.get_action(obs())
    with pytest.raises(ActionError, match=r"action keys changed from \['gripper', 'right_arm'\] to \['left_arm', 'right_arm'\]"):
        chunker.get_action(obs())


# --- exit with a prefetch in flight -------------------------------------------------------------------------


_EXIT_WITH_PREFETCH_IN_FLIGHT = """
import sys, time
import numpy as np, zmq
from gr00t_client import ActionChunker, PolicyClient

context = zmq.Context()
router = context.socket(zmq.ROUTER)  # answers the first chunk and its configs, then takes requests and never answers
port = router.bind_to_random_port("tcp://127.0.0.1")
client = PolicyClient("127.0.0.1", port, timeout_ms=30000, wire="reference", strict=False)
import threading
from gr00t_client import codec

def answer_once():
    # the first get_action, then the get_modality_config with which the chunker checks the served action steps
    for reply in ([{"action.x": np.zeros((1, 4, 1), np.float32)}, {}], {}):
        frames = router.recv_multipart()
        router.send_multipart([*frames[:-1], codec.encode(reply)])
    while True:
        router.recv_multipart()

threading.Thread(target=answer_once, daemon=True).start()
client._server_is_ours = False  # a reference server: no negotiation round trip
chunker = ActionChunker(client, asynchronous=True, prefetch_steps=3)
observation = {"state": {"t": np.zeros((1, 1), np.float32)}}
chunker.get_action(observation)
chunker.get_action(observation)  # 3 steps left: the prefetch goes out and is never answered
time.sleep(0.2)
print("exiting", flush=True)
"""


def test_a_program_exits_at_once_with_a_prefetch_in_flight_to_a_stalled_server():
    """The prefetch ran on an executor thread, which exit joins: the program waited out timeout_ms (30 s here)."""
    import subprocess
    import sys
    import time

    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _EXIT_WITH_PREFETCH_IN_FLIGHT], capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0 and "exiting" in proc.stdout, proc.stderr
    assert elapsed < 15, f"exit took {elapsed:.1f} s"


def test_close_ends_the_prefetch_thread_and_a_dropped_chunker_does_too():
    import gc
    import threading
    import time

    def prefetch_threads():
        return [t for t in threading.enumerate() if t.name == "gr00t-chunk-prefetch"]

    before = len(prefetch_threads())
    chunker = ActionChunker(ScriptedPolicy(steps(0)), asynchronous=True, prefetch_steps=3)
    chunker.get_action(obs())
    chunker.get_action(obs())
    chunker.close()
    dropped = ActionChunker(ScriptedPolicy(steps(0)), asynchronous=True, prefetch_steps=3)
    dropped.get_action(obs())
    dropped.get_action(obs())
    dropped.wait_for_prefetch(5)
    del dropped
    gc.collect()
    deadline = time.monotonic() + 5
    while len(prefetch_threads()) > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(prefetch_threads()) == before


class ZeroPolicy(BasePolicy):
    """A zero chunk of 4 steps for every row, for as many calls as asked."""

    def __init__(self):
        super().__init__(strict=False)

    def _get_action(self, observation, options=None):
        return {"action.x": np.zeros((observation["state"]["t"].shape[0], 4, 2), np.float32)}, {}

    def reset(self, options=None):
        return {}


def test_a_chunker_closed_and_reused_per_episode_keeps_no_finalizer_or_stopped_worker_per_episode():
    import gc
    import weakref

    chunker = ActionChunker(ZeroPolicy(), asynchronous=True, prefetch_steps=2)
    workers = []
    for _ in range(20):  # a robot's episodes: reset, steps, close (the next get_action starts a new prefetch thread)
        chunker.reset()
        for _ in range(6):
            chunker.get_action(obs())
        workers.append(weakref.ref(chunker._worker))
        chunker.close()
    gc.collect()
    kept = sum(1 for worker in workers if worker() is not None)
    assert kept == 0, f"{kept} of 20 stopped prefetch workers are still held after their chunker's close()"
    finalizers = [f for f in weakref.finalize._registry if f.peek() is not None and f.peek()[0] is chunker]
    assert not finalizers, f"{len(finalizers)} finalizers still registered for a closed chunker; expected none"


# --- chunks too short to prefetch --------------------------------------------------------------------------------


def test_asynchronous_with_one_step_chunks_warns_once_and_fetches_as_synchronous_does(caplog):
    """Every prefetch of a one-step chunk came after its step: thrown away and asked for again, twice the requests of
    asynchronous=False, each counted as merged (audit12 actions note)."""
    policy = ScriptedPolicy(steps(0), steps(100), steps(200), steps(300), steps(400))
    with caplog.at_level("WARNING", logger="gr00t_client.chunking"):
        with ActionChunker(policy, n_action_steps=1, asynchronous=True) as chunker:
            executed = [chunker.get_action(obs())[0]["action.x"][0, 0] for _ in range(5)]
    assert executed == [0, 100, 200, 300, 400]  # step 0 of each chunk, one chunk per step
    assert policy.calls == 5 and chunker.stats.requests == 5 and chunker.stats.prefetches == 0
    assert chunker.stats.merged_envs == 0
    warnings = [r.getMessage() for r in caplog.records if "at least 2 usable steps" in r.getMessage()]
    assert len(warnings) == 1 and "n_action_steps=1" in warnings[0]


class SlowScriptedPolicy(ScriptedPolicy):
    """ScriptedPolicy whose every call after the first takes `delay_s`."""

    def __init__(self, delay_s, *chunks):
        super().__init__(*chunks)
        self.delay_s = delay_s

    def _get_action(self, observation, options=None):
        if self.calls:
            import time

            time.sleep(self.delay_s)
        return super()._get_action(observation, options)


def test_a_prefetch_that_comes_after_all_its_steps_is_counted_late_not_merged():
    """Its steps had all passed: nothing of it was used, yet it counted as merged (and named in merged_env_ids)."""
    policy = SlowScriptedPolicy(0.3, steps(0, horizon=2), steps(100, horizon=2), steps(200, horizon=2))
    with ActionChunker(policy, asynchronous=True) as chunker:
        first, second = (chunker.get_action(obs()) for _ in range(2))
        third_step, third_info = chunker.get_action(obs())  # waits for the prefetch sent at step 0: both its steps passed
    assert chunker.stats.late_envs == 1 and chunker.stats.merged_envs == 0
    assert third_info["merged_env_ids"] == [] and third_info["fetched_env_ids"] == [0]
    assert third_step["action.x"][0, 0] == 200  # a fresh chunk from this step's observation, step 0 of it

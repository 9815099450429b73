"""ActionChunker: one step per env per call, refetch points, per-env resets, async prefetch and merge rules."""

import re
import threading
import time

import numpy as np
import pytest

from gr00t_client import BasePolicy, PolicyClient
from gr00t_client.chunking import ActionChunker, merge_overlap

HORIZON = 6


class StampPolicy(BasePolicy):
    """Action step j for an env whose observation says t is 100 * t + j, so a test can read where a step came from."""

    def __init__(self, horizon=HORIZON, delay_s=0.0, gate=None):
        super().__init__(strict=False)
        self.horizon = horizon
        self.delay_s = delay_s
        self.gate = gate
        self.batches = []  # the t values of each request, one list per call
        self.resets = 0

    def _get_action(self, observation, options=None):
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.delay_s:
            time.sleep(self.delay_s)
        t = np.asarray(observation["state"]["t"], dtype=np.float32)[:, 0]
        self.batches.append([int(v) for v in t])
        steps = np.arange(self.horizon, dtype=np.float32)
        chunk = 100.0 * t[:, None] + steps[None, :]
        return {"action.x": chunk[:, :, None]}, {"n": len(self.batches)}

    def reset(self, options=None):
        self.resets += 1
        return {"reset": True}


def obs(*t_values):
    return {"state": {"t": np.array(t_values, dtype=np.float32)[:, None]}, "language": {"task": [["go"]] * len(t_values)}}


def run_steps(chunker, n_steps, n_envs=1, start=0):
    """Call the chunker with t = start..start+n_steps-1 for every env; return the action values, (n_steps, B)."""
    return np.array([chunker.get_action(obs(*([t] * n_envs)))[0]["action.x"][:, 0] for t in range(start, start + n_steps)])


def test_steps_come_out_in_chunk_order_one_per_env():
    chunker = ActionChunker(StampPolicy(), n_action_steps=4)
    action, _ = chunker.get_action(obs(0, 0))
    assert action["action.x"].shape == (2, 1)
    values = np.concatenate([action["action.x"][:, 0][None], run_steps(chunker, 3, n_envs=2, start=1)])
    np.testing.assert_array_equal(values[:, 0], [0, 1, 2, 3])
    np.testing.assert_array_equal(values[:, 1], [0, 1, 2, 3])


def test_sync_refetches_for_all_envs_exactly_when_the_executed_part_runs_out():
    policy = StampPolicy()
    chunker = ActionChunker(policy, n_action_steps=4)
    values = run_steps(chunker, 10, n_envs=2)
    assert policy.batches == [[0, 0], [4, 4], [8, 8]]
    np.testing.assert_array_equal(values[:, 0], [0, 1, 2, 3, 400, 401, 402, 403, 800, 801])
    assert chunker.stats.requests == 3 and chunker.stats.blocking_waits == 3


def test_whole_chunk_is_used_without_n_action_steps():
    policy = StampPolicy(horizon=3)
    chunker = ActionChunker(policy)
    np.testing.assert_array_equal(run_steps(chunker, 4)[:, 0], [0, 1, 2, 300])


def test_reset_of_one_env_refetches_only_that_env_with_per_env():
    policy = StampPolicy()
    chunker = ActionChunker(policy, per_env=True)
    run_steps(chunker, 2, n_envs=3)
    chunker.reset(env_ids=[1])
    action, info = chunker.get_action(obs(2, 2, 2))
    assert policy.batches[-1] == [2]  # only env 1's observation went to the policy
    assert info["fetched_env_ids"] == [1]
    np.testing.assert_array_equal(action["action.x"][:, 0], [2, 200, 2])
    assert policy.resets == 0  # a partial reset never resets the (shared) policy


def test_reset_of_one_env_refetches_all_envs_in_lockstep():
    policy = StampPolicy()
    chunker = ActionChunker(policy)
    run_steps(chunker, 2, n_envs=2)
    chunker.reset(env_ids=[0])
    action, _ = chunker.get_action(obs(2, 2))
    assert policy.batches[-1] == [2, 2]
    np.testing.assert_array_equal(action["action.x"][:, 0], [200, 200])


@pytest.mark.parametrize("merge, expected_env0", [("oldest", 2), ("newest", 200), ("weighted", 0.7 * 200 + 0.3 * 2)])
def test_async_lockstep_refetch_merges_into_the_envs_still_running_by_the_merge_rule(merge, expected_env0):
    """Asynchronous, one request for all envs (the rollout's mode): when env 1 restarts, the request made for it
    also carries env 0, whose chunk still runs. Env 0's steps were replaced outright: with merge "oldest" (or RTC)
    the robot jumped to a fresh chunk at every other env's episode end."""
    policy = StampPolicy(horizon=HORIZON)
    chunker = ActionChunker(policy, asynchronous=True, merge=merge, prefetch_steps=0)  # no prefetch before the end
    run_steps(chunker, 2, n_envs=2)  # both envs at cursor 2 of the chunk computed at t=0
    chunker.reset(env_ids=[1])
    action, info = chunker.get_action(obs(2, 2))
    assert policy.batches[-1] == [2, 2] and info["fetched_env_ids"] == [0, 1] and info["merged_env_ids"] == [0]
    assert action["action.x"][1, 0] == 200  # the restarted env: the fresh chunk's first step
    assert action["action.x"][0, 0] == pytest.approx(expected_env0)  # the running env: its step 2, merged by the rule
    chunker.close()


def test_per_env_requests_for_some_envs_take_those_envs_rows_of_a_row_shaped_option():
    """options={"noise": (B, ...)} went whole with a request for one env, which a server refuses (it wants (1, ...))."""
    class NoisePolicy(StampPolicy):
        def _get_action(self, observation, options=None):
            noise = options["noise"]
            assert noise.shape[0] == len(observation["state"]["t"]), noise.shape
            action, info = super()._get_action(observation, options)
            return {"action.x": action["action.x"] + noise[:, :1, None]}, info

    chunker = ActionChunker(NoisePolicy(horizon=4), per_env=True)
    noise = np.array([[0.25], [0.5]], np.float32)
    chunker.get_action(obs(0, 0), {"noise": noise})
    chunker.reset(env_ids=[1])
    action, info = chunker.get_action(obs(1, 1), {"noise": noise})
    assert info["fetched_env_ids"] == [1]
    np.testing.assert_allclose(action["action.x"][:, 0], [1.25, 100.5])  # env 0: its running chunk; env 1: its row


class SeedPolicy(StampPolicy):
    """StampPolicy that keeps the seed option of each call."""

    def __init__(self):
        super().__init__(horizon=4)
        self.seeds = []

    def _get_action(self, observation, options=None):
        self.seeds.append(options["seed"])
        return super()._get_action(observation, options)


def test_per_env_requests_for_some_envs_keep_each_envs_own_seed():
    """options={"seed": s} means row i uses s + i; a fetch for env 2 alone sent s, env 0's seed, so an env's action
    depended on which other envs it happened to be fetched with."""
    policy = SeedPolicy()
    chunker = ActionChunker(policy, per_env=True)
    chunker.get_action(obs(0, 0, 0, 0), {"seed": 10})
    chunker.reset(env_ids=[2])
    chunker.get_action(obs(1, 1, 1, 1), {"seed": 10})
    chunker.reset(env_ids=[1, 2])
    chunker.get_action(obs(2, 2, 2, 2), {"seed": 10})
    chunker.reset(env_ids=[0, 3])
    chunker.get_action(obs(3, 3, 3, 3), {"seed": 10})
    assert policy.seeds == [10, 12, 11, [10, 13]]  # a run of envs shifts the int; others get one seed per row
    chunker.reset(env_ids=[1, 3])
    chunker.get_action(obs(4, 4, 4, 4), {"seed": [7, 8, 9, 5]})  # one seed per env: the fetched envs' own
    assert policy.seeds[-1] == [8, 5]


def test_per_env_requests_for_some_envs_read_a_0d_integer_array_seed_as_its_int():
    """np.asarray(10) went as given to a fetch of env 2 alone, where Gr00tPolicy took it as seed 10, env 0's."""
    policy = SeedPolicy()
    chunker = ActionChunker(policy, per_env=True)
    chunker.get_action(obs(0, 0, 0, 0), {"seed": np.array(10)})
    chunker.reset(env_ids=[2])
    chunker.get_action(obs(1, 1, 1, 1), {"seed": np.array(10)})
    chunker.reset(env_ids=[0, 3])
    chunker.get_action(obs(2, 2, 2, 2), {"seed": np.array(10, dtype=np.uint32)})
    assert policy.seeds[1:] == [12, [10, 13]]


def test_a_partial_reset_before_the_first_call_is_a_no_op():
    policy = StampPolicy()
    chunker = ActionChunker(policy)
    assert chunker.reset(env_ids=[0]) == {} and policy.resets == 0
    assert chunker.get_action(obs(3))[0]["action.x"][0, 0] == 300


def test_full_reset_clears_buffers_and_resets_the_policy():
    policy = StampPolicy()
    chunker = ActionChunker(policy)
    run_steps(chunker, 2)
    assert chunker.reset() == {"reset": True}
    assert policy.resets == 1
    assert chunker.get_action(obs(7))[0]["action.x"][0, 0] == 700


def test_per_env_buffers_run_out_at_different_steps_after_a_reset():
    policy = StampPolicy(horizon=4)
    chunker = ActionChunker(policy, per_env=True)
    run_steps(chunker, 2, n_envs=2)  # both envs at cursor 2
    chunker.reset(env_ids=[0])
    run_steps(chunker, 2, n_envs=2, start=2)  # env 0 refetched at t=2; env 1 ends its chunk
    chunker.get_action(obs(4, 4))  # env 1 exhausted now, env 0 still has 2 steps
    assert policy.batches == [[0, 0], [2], [4]]


def test_batch_size_change_is_an_error_naming_both_sizes():
    chunker = ActionChunker(StampPolicy())
    chunker.get_action(obs(0, 0))
    with pytest.raises(ValueError, match="batch size 3.*2 envs"):
        chunker.get_action(obs(0, 0, 0))


def test_merge_rules_on_overlapping_steps():
    old = np.array([[3.0], [4.0]], dtype=np.float32)
    new = np.array([[201.0], [202.0]], dtype=np.float32)
    np.testing.assert_allclose(merge_overlap(old, new, "newest"), new)
    np.testing.assert_allclose(merge_overlap(old, new, "oldest"), old)
    np.testing.assert_allclose(merge_overlap(old, new, "average"), [[102.0], [103.0]])
    np.testing.assert_allclose(merge_overlap(old, new, "weighted", new_weight=0.7), [[141.6], [142.6]], rtol=1e-6)
    np.testing.assert_allclose(merge_overlap(old, new, lambda o, n: np.maximum(o, n) - 1), new - 1)
    with pytest.raises(ValueError, match="merge rule"):
        merge_overlap(old, new, "median")


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("newest", [201, 202, 203, 204, 205]),
        ("average", [102, 103, 104, 204, 205]),
        ("weighted", [141.6, 142.6, 143.6, 204, 205]),
    ],
)
def test_async_merges_leftover_steps_with_the_new_chunk_aligned_by_elapsed_steps(rule, expected):
    # H=6, prefetch at 3 steps left: the request goes out at t=2 (old steps 3,4,5 still to run) and lands
    # before t=3, one step later, so new[1:] = 201..205 lines up with old 3,4,5 and then runs on alone.
    policy = StampPolicy()
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=3, merge=rule, new_weight=0.7)
    np.testing.assert_array_equal(run_steps(chunker, 3)[:, 0], [0, 1, 2])
    assert chunker.wait_for_prefetch(timeout=5)
    values = run_steps(chunker, 5, start=3)[:, 0]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    assert policy.batches[:2] == [[0], [2]]
    chunker.close()


def test_async_prefetch_that_arrives_late_is_aligned_by_steps_executed_meanwhile():
    gate = threading.Event()
    policy = StampPolicy(horizon=4)
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=2)
    chunker.get_action(obs(0))  # sync fetch, ungated
    policy.gate = gate
    run_steps(chunker, 3, start=1)  # prefetch sent at t=1; old chunk runs out after t=3
    threading.Timer(0.2, gate.set).start()  # the answer comes while the robot already waits
    action, info = chunker.get_action(obs(4))  # waits for the prefetch: 3 steps elapsed, so new[3] = 103
    assert action["action.x"][0, 0] == 103 and info["merged_env_ids"] == [0]
    assert chunker.stats.blocking_waits == 2
    chunker.close()


@pytest.mark.parametrize("timeout", [float("inf"), 2.0 ** 64])
def test_wait_for_prefetch_with_an_endless_timeout_waits_for_the_answer(timeout):
    # threading raised OverflowError for either
    gate = threading.Event()
    policy = StampPolicy(horizon=4)
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=2)
    chunker.get_action(obs(0))
    policy.gate = gate
    chunker.get_action(obs(1))  # the prefetch is sent, and held until the gate opens
    threading.Timer(0.2, gate.set).start()
    assert chunker.wait_for_prefetch(timeout) and gate.is_set()
    chunker.close()


@pytest.mark.parametrize("timeout", [float("nan"), -1.0, "5"])
def test_wait_for_prefetch_refuses_a_timeout_that_is_no_number_of_seconds(timeout):
    # NaN returned False at once, as if the prefetch had not answered in time
    chunker = ActionChunker(StampPolicy(), asynchronous=True)
    with pytest.raises(ValueError, match=rf"wait_for_prefetch: timeout must be None or a number of seconds >= 0 "
                                         rf"\(inf: no limit\), got {re.escape(repr(timeout))}"):
        chunker.wait_for_prefetch(timeout)
    chunker.close()


def test_reset_during_a_prefetch_discards_that_envs_row():
    gate = threading.Event()
    policy = StampPolicy(horizon=4)
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=2, per_env=True)
    chunker.get_action(obs(0, 0))
    policy.gate = gate
    run_steps(chunker, 1, n_envs=2, start=1)  # prefetch for both envs in flight
    chunker.reset(env_ids=[1])
    gate.set()
    assert chunker.wait_for_prefetch(timeout=5)
    action, info = chunker.get_action(obs(2, 2))
    assert info["merged_env_ids"] == [0] and info["fetched_env_ids"] == [1]
    assert chunker.stats.discarded_envs == 1
    np.testing.assert_array_equal(action["action.x"][:, 0], [101, 200])
    chunker.close()


def test_policy_error_in_the_background_surfaces_in_the_robots_call():
    class Failing(StampPolicy):
        def _get_action(self, observation, options=None):
            if self.batches:
                raise RuntimeError("server went away")
            return super()._get_action(observation, options)

    chunker = ActionChunker(Failing(horizon=4), asynchronous=True, prefetch_steps=3)
    chunker.get_action(obs(0))
    chunker.wait_for_prefetch(timeout=5)
    with pytest.raises(RuntimeError, match="server went away"):
        chunker.get_action(obs(1))
    chunker.close()


@pytest.fixture
def slow_server():
    from gr00t_server.server import PolicyServer

    server = PolicyServer(StampPolicy(horizon=20, delay_s=0.1), host="127.0.0.1", port=0).start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server
    server.stop()
    thread.join(timeout=5)


def robot_loop(chunker, n_steps, step_s):
    for t in range(n_steps):
        chunker.get_action(obs(t, t))
        time.sleep(step_s)  # the robot's control period


def test_sync_chunking_waits_for_the_slow_server_at_every_chunk_boundary(slow_server):
    with PolicyClient("127.0.0.1", slow_server.port, timeout_ms=5000) as client:
        chunker = ActionChunker(client)
        robot_loop(chunker, 60, step_s=0.03)
    assert chunker.stats.requests == 3 and chunker.stats.blocking_waits == 3


def test_async_prefetch_hides_the_slow_server_after_the_first_chunk(slow_server):
    # 15 steps of 30 ms left when the prefetch goes out: 450 ms of slack against a 100 ms server.
    with PolicyClient("127.0.0.1", slow_server.port, timeout_ms=5000) as client:
        with ActionChunker(client, asynchronous=True, prefetch_steps=15) as chunker:
            robot_loop(chunker, 60, step_s=0.03)
    assert chunker.stats.blocking_waits == 1  # only the very first chunk was waited for
    assert chunker.stats.prefetches >= 2 and chunker.stats.merged_envs >= 4


def test_close_from_another_thread_ends_a_call_waiting_on_a_late_prefetch_at_once():
    """The robot's call held the chunker's lock while it waited for a late prefetch, so close() from another thread
    (a stop button, a shutdown callback) waited up to timeout_ms for a server that was not answering."""
    from gr00t_server.server import PolicyServer

    gate = threading.Event()
    server = PolicyServer(StampPolicy(horizon=4, gate=gate), host="127.0.0.1", port=0).start()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    outcome = {}
    try:
        with PolicyClient("127.0.0.1", server.port, timeout_ms=8000) as client:
            chunker = ActionChunker(client, asynchronous=True, prefetch_steps=2)
            gate.set()
            run_steps(chunker, 2)  # the first chunk, then a prefetch goes out with 2 steps left
            gate.clear()  # ... and the server stalls on it
            run_steps(chunker, 1, start=2)

            def robot():
                try:
                    outcome["value"] = chunker.get_action(obs(3))  # its last step
                    outcome["value"] = chunker.get_action(obs(4))  # exhausted: waits on the stalled prefetch
                except Exception as exc:  # noqa: BLE001 - the test reads it
                    outcome["error"] = exc

            robot_thread = threading.Thread(target=robot)
            robot_thread.start()
            time.sleep(0.3)
            started = time.monotonic()
            chunker.close()
            closed_in = time.monotonic() - started
            robot_thread.join(5)
    finally:
        gate.set()
        server.stop()
        thread.join(timeout=5)
    assert closed_in < 1.0, f"close() took {closed_in:.1f} s"
    assert isinstance(outcome.get("error"), ConnectionError) and "closed while this call waited" in str(outcome["error"])


class OptionsStampPolicy(StampPolicy):
    """StampPolicy that also records the options of every request."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.options = []

    def _get_action(self, observation, options=None):
        self.options.append(options)
        return super()._get_action(observation, options)


def test_rtc_prefetch_sends_the_old_steps_from_this_call_on_as_the_previous_chunk():
    # H=6, prefetch at 3 steps left: at t=2 steps 0..2 ran, so old steps 2..5 line up with new steps 0..3.
    policy = OptionsStampPolicy()
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=3, rtc_frozen_steps=2, rtc_ramp_rate=4.0)
    for t in range(3):
        chunker.get_action(obs(t, 10 + t), {"seed": 7})
    assert chunker.wait_for_prefetch(timeout=5)
    first, prefetch = policy.options
    assert first == {"seed": 7}  # the first (blocking) fetch has nothing to continue
    rtc = prefetch["rtc"]
    assert prefetch["seed"] == 7 and (rtc["overlap_steps"], rtc["frozen_steps"], rtc["ramp_rate"]) == (4, 2, 4.0)
    np.testing.assert_array_equal(rtc["previous_action"]["action.x"][:, :, 0], [[2, 3, 4, 5], [1002, 1003, 1004, 1005]])
    chunker.close()


def test_rtc_overlap_is_what_every_env_still_has_and_frozen_never_exceeds_it():
    policy = OptionsStampPolicy(horizon=4)
    chunker = ActionChunker(policy, asynchronous=True, prefetch_steps=1, rtc_frozen_steps=5)
    run_steps(chunker, 3)  # prefetch at t=2 with one old step left: overlap = that step + this call's
    assert chunker.wait_for_prefetch(timeout=5)
    rtc = policy.options[1]["rtc"]
    assert (rtc["overlap_steps"], rtc["frozen_steps"]) == (2, 2)
    np.testing.assert_array_equal(rtc["previous_action"]["action.x"][0, :, 0], [2, 3])
    chunker.close()


@pytest.mark.parametrize("n_action_steps", [2, 3, 4, 5, 8])
def test_no_prefetch_overlaps_more_than_largest_rtc_overlap_and_one_reaches_it(n_action_steps):
    """gr00t-eval bounds --rtc-frozen-steps by largest_rtc_overlap: a K above what a prefetch overlaps froze the whole
    overlap (no ramped rows) while the run recorded K."""
    policy = OptionsStampPolicy(horizon=8)
    largest = ActionChunker.largest_rtc_overlap(n_action_steps)
    chunker = ActionChunker(policy, n_action_steps=n_action_steps, asynchronous=True, rtc_frozen_steps=largest)
    for t in range(3 * n_action_steps):
        chunker.get_action(obs(t))
        assert chunker.wait_for_prefetch(timeout=5)
    overlaps = [options["rtc"]["overlap_steps"] for options in policy.options if options and "rtc" in options]
    assert overlaps and max(overlaps) == ActionChunker.largest_rtc_overlap(n_action_steps) == n_action_steps // 2 + 1
    chunker.close()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_action_steps": 8, "rtc_frozen_steps": 8},
         "rtc_frozen_steps must be at most 5, the most steps a prefetch overlaps with n_action_steps 8 "
         "(n_action_steps // 2 + 1), got 8"),
        ({"n_action_steps": 8, "prefetch_steps": 2, "rtc_frozen_steps": 4},
         "rtc_frozen_steps must be at most 3, the most steps a prefetch overlaps with n_action_steps 8 "
         "(min(prefetch_steps 2, n_action_steps - 1) + 1), got 4"),
    ],
)
def test_rtc_frozen_steps_above_the_largest_overlap_is_refused_naming_both_numbers(kwargs, message):
    """A prefetch pins at most its overlap: k above it froze the whole overlap (no ramped rows) without a word."""
    with pytest.raises(ValueError) as refused:
        ActionChunker(StampPolicy(), asynchronous=True, **kwargs)
    assert str(refused.value) == message


def test_rtc_frozen_steps_at_the_largest_overlap_is_taken_and_sent():
    policy = OptionsStampPolicy(horizon=8)
    with ActionChunker(policy, n_action_steps=8, asynchronous=True, rtc_frozen_steps=5) as chunker:
        for t in range(8):
            chunker.get_action(obs(t))
            assert chunker.wait_for_prefetch(timeout=5)
    assert [options["rtc"]["frozen_steps"] for options in policy.options if options and "rtc" in options][0] == 5


def test_rtc_frozen_steps_above_the_first_chunks_overlap_is_warned_once(caplog):
    """Without n_action_steps the chunk's length is known only from the first chunk: warned then, once."""
    policy = OptionsStampPolicy(horizon=8)
    with caplog.at_level("WARNING", logger="gr00t_client.chunking"), \
            ActionChunker(policy, asynchronous=True, rtc_frozen_steps=8) as chunker:
        for t in range(20):
            chunker.get_action(obs(t))
            assert chunker.wait_for_prefetch(timeout=5)
    warned = [record.getMessage() for record in caplog.records if "rtc_frozen_steps" in record.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("rtc_frozen_steps must be at most 5, the most steps a prefetch overlaps with the "
                                "chunk's steps 8 (the chunk's steps // 2 + 1), got 8: each prefetch pins its whole "
                                "overlap"), warned[0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rtc_frozen_steps": 2}, "needs asynchronous=True"),
        ({"asynchronous": True, "rtc_frozen_steps": 0}, "must be an int >= 1"),
        ({"asynchronous": True, "rtc_frozen_steps": True}, "must be an int >= 1"),
        ({"asynchronous": True, "rtc_frozen_steps": 1, "rtc_ramp_rate": 0.0}, "rtc_ramp_rate must be a finite number > 0"),
    ],
)
def test_rtc_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ActionChunker(StampPolicy(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_action_steps": 0}, "n_action_steps must be an int >= 1 or None (the whole chunk), got 0"),
        ({"n_action_steps": 2.5}, "n_action_steps must be an int >= 1 or None (the whole chunk), got 2.5"),
        ({"n_action_steps": True}, "n_action_steps must be an int >= 1 or None (the whole chunk), got True"),
        ({"asynchronous": True, "prefetch_steps": -1}, "prefetch_steps must be an int >= 0 or None (half the chunk), got -1"),
        ({"asynchronous": True, "prefetch_steps": float("nan")}, "prefetch_steps must be an int >= 0 or None (half the chunk), got nan"),
    ],
)
def test_step_counts_must_be_ints(kwargs, message):
    with pytest.raises(ValueError) as error:
        ActionChunker(StampPolicy(), **kwargs)
    assert str(error.value) == message


def test_numpy_step_counts_are_taken():
    chunker = ActionChunker(StampPolicy(), n_action_steps=np.int64(3), asynchronous=True, prefetch_steps=np.int32(1))
    assert (chunker.n_action_steps, chunker.prefetch_steps) == (3, 1) and type(chunker.n_action_steps) is int
    chunker.close()


def test_numpy_rtc_frozen_steps_is_taken_as_an_int():
    # Sized as 1 + latency in control steps, computed with numpy: np.ceil(0.045 * 50).astype(int) + 1.
    frozen_steps = np.ceil(0.045 * 50.0).astype(int) + 1
    chunker = ActionChunker(StampPolicy(), asynchronous=True, rtc_frozen_steps=frozen_steps)
    assert chunker.rtc_frozen_steps == 4 and type(chunker.rtc_frozen_steps) is int
    chunker.close()


def test_prefetch_steps_without_asynchronous_is_refused():
    """A synchronous chunker never prefetches: prefetch_steps=3 was taken and never applied."""
    with pytest.raises(ValueError) as refused:
        ActionChunker(StampPolicy(), prefetch_steps=3)
    assert str(refused.value) == ("prefetch_steps needs asynchronous=True: only an asynchronous chunker prefetches (a "
                                  "synchronous one fetches when a chunk runs out); leave prefetch_steps None, or pass "
                                  "asynchronous=True")


@pytest.mark.parametrize("policy, got", [
    (None, "got NoneType"),
    ("localhost:5555", "got str (an address? pass PolicyClient(host, port))"),
    (PolicyClient, "got the class PolicyClient (pass an instance: PolicyClient(...))"),
])
def test_a_policy_that_is_no_policy_object_is_refused_naming_policy(policy, got):
    """None, an address or a class was taken; the first get_action then failed with a bare AttributeError."""
    with pytest.raises(TypeError) as refused:
        ActionChunker(policy)
    assert str(refused.value) == f"policy must be a BasePolicy or PolicyClient (an object with a get_action method), {got}"

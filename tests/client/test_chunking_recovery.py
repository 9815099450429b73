"""ActionChunker after a call that went wrong: a Ctrl-C inside get_action, a server now serving other actions, a
prefetch the server did not run (stopping, or out of time), and options of a request for some envs. A real
PolicyServer on loopback."""

import sys
import threading
import time

import numpy as np
import pytest

from gr00t_client import ActionError, BasePolicy, PolicyClient, PolicyTimeoutError, ServerStoppingError
from gr00t_client.chunking import ActionChunker
from gr00t_client.client_errors import server_error
from serving import running_server, stopped_while_it_hangs


class StepPolicy(BasePolicy):
    """Step j of the chunk for an env whose observation holds t is t + j: the action for control step t + j. Its
    steps have `dim` values; with `hang_from` set, that call and later ones wait for `release` (`hanging` set)."""

    def __init__(self, horizon=8, dim=1, delay_s=0.0, hang_from=None):
        super().__init__(strict=False)
        self.horizon, self.dim, self.delay_s, self.hang_from, self.calls = horizon, dim, delay_s, hang_from, 0
        self.hanging, self.release = threading.Event(), threading.Event()
        self.options = []  # the options of each get_action

    def _get_action(self, observation, options=None):
        self.calls += 1
        self.options.append(options)
        if self.hang_from is not None and self.calls >= self.hang_from:
            self.hanging.set()
            self.release.wait(10)
        time.sleep(self.delay_s)
        t = np.asarray(observation["state"]["t"], np.float64)[:, 0]
        chunk = t[:, None] + np.arange(self.horizon)[None, :]
        return {"x": np.repeat(chunk[:, :, None], self.dim, axis=2)}, {}

    def reset(self, options=None):
        return {}


def obs(*t):
    return {"state": {"t": np.array(t, np.float32)[:, None]}}


def interrupt_after_the_pop():
    """A KeyboardInterrupt at the first thing get_action does once this step left the buffer (a Ctrl-C landing
    there): its call to remaining(). Returns the function that arms it for the next such call."""
    armed = {"on": False}

    def tracer(frame, event, arg):
        if armed["on"] and event == "call" and frame.f_code.co_name == "remaining" \
                and frame.f_code.co_filename.endswith("chunking.py"):
            armed["on"] = False
            raise KeyboardInterrupt
        return None

    sys.settrace(tracer)
    return lambda: armed.update(on=True)


@pytest.mark.parametrize("settings", [{}, {"per_env": True}, {"asynchronous": True, "prefetch_steps": 6}])
def test_a_ctrl_c_inside_get_action_hands_out_no_step_so_the_retry_gets_that_step(settings):
    """The interrupted call's step was lost: the retry handed out the next one, and the robot ran 0, 1, 3, 4, ..."""
    with running_server(StepPolicy()) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, **settings) as chunker:
        executed, t = [], 0
        arm = interrupt_after_the_pop()
        try:
            while t < 6:
                if t == 2 and len(executed) == 2:
                    arm()
                try:
                    step, _ = chunker.get_action(obs(t, t))
                except KeyboardInterrupt:
                    assert t == 2
                    continue
                executed.append(step["x"][:, 0].tolist())
                t += 1
        finally:
            sys.settrace(None)
    assert executed == [[k, k] for k in range(6)]


def interrupt_at_line(n):
    """A KeyboardInterrupt at the n-th line the chunker's own code (get_action and its callees in chunking*.py) runs
    on this thread while armed. Returns the state: set "armed" to count; "where" names the line once it fired."""
    state = {"armed": False, "count": 0, "where": None}
    this_thread = threading.current_thread()

    def tracer(frame, event, arg):
        code = frame.f_code
        if "gr00t_client" not in code.co_filename or "chunking" not in code.co_filename \
                or threading.current_thread() is not this_thread:
            return None
        if event == "line" and state["armed"]:
            state["count"] += 1
            if state["count"] == n:
                state["armed"] = False
                state["where"] = f"{code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} ({code.co_name})"
                raise KeyboardInterrupt
        return tracer

    sys.settrace(tracer)
    return state


def run_interrupted_at_line(client, settings, n):
    """Steps 0..9 of 2 envs (env 1 reset at step 5), each call retried after a Ctrl-C; the calls of steps 4 and 5
    (a prefetch merged, a fetch after the reset) are interrupted at their n-th line. Returns (steps, where)."""
    executed, t, state = [], [0, 0], interrupt_at_line(n)
    try:
        with ActionChunker(client, **settings) as chunker:
            while len(executed) < 10:
                if len(executed) == 5 and t[1] == 5:
                    chunker.reset(env_ids=[1])
                    t[1] = 0
                chunker.wait_for_prefetch(10)  # the prefetch is in: the same lines run each time
                state["armed"] = state["where"] is None and len(executed) in (4, 5)
                try:
                    step, _ = chunker.get_action(obs(*t))
                except KeyboardInterrupt:
                    continue
                finally:
                    state["armed"] = False
                executed.append(step["x"][:, 0].tolist())
                t = [k + 1 for k in t]
    finally:
        sys.settrace(None)
    return executed, state["where"]


@pytest.mark.parametrize("settings", [{"asynchronous": True, "prefetch_steps": 4},
                                      {"asynchronous": True, "merge": "average", "n_action_steps": 6},
                                      {"asynchronous": True, "per_env": True, "prefetch_steps": 5},
                                      {"asynchronous": True, "rtc_frozen_steps": 2}])
def test_a_ctrl_c_at_any_line_of_get_action_leaves_the_retry_the_step_it_was_for(settings):
    """A Ctrl-C in _commit between an env's new buffer and its cursor left the merged buffer with the old cursor: the
    retry handed out a step several ahead (or mixed merge values), or every later call raised IndexError."""
    expected = [[k, k] for k in range(5)] + [[k, k - 5] for k in range(5, 10)]
    with running_server(StepPolicy()) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        n = 0
        while True:
            n += 1
            executed, where = run_interrupted_at_line(client, settings, n)
            assert executed == expected, f"a Ctrl-C at {where}"
            if where is None:  # line n is past the calls' last line: every line was interrupted once
                break
    assert n > 100


def test_after_reset_the_chunker_takes_the_steps_of_a_policy_now_serving_other_actions():
    """The first chunk's keys, shapes and dtypes were kept for ever: every chunk of the new shape was refused, even
    after reset(), with nothing buffered."""
    policy = StepPolicy(dim=4)
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client) as chunker:
        assert chunker.get_action(obs(0))[0]["x"].shape == (1, 4)
        policy.dim = 6  # the server now serves another embodiment
        chunker.reset()
        assert chunker.get_action(obs(0))[0]["x"].shape == (1, 6)


@pytest.mark.parametrize("settings", [{}, {"asynchronous": True, "prefetch_steps": 7}], ids=["sync", "a prefetch pending"])
@pytest.mark.parametrize("reset", [lambda chunker: chunker.reset(env_ids=[0, 1], policy_reset_by_caller=True),
                                   lambda chunker: (chunker.reset(env_ids=[0]), chunker.reset(env_ids=[1]))],
                         ids=["every env, policy reset by the caller", "each env in turn"])
def test_a_reset_leaving_nothing_buffered_takes_the_steps_of_a_policy_now_serving_other_actions(reset, settings):
    """gr00t-eval rollout's reset (every env, policy_reset_by_caller=True) and resets of each env in turn left nothing
    buffered, yet every new chunk was refused with advice to make the reset just made."""
    policy = StepPolicy(dim=4)
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, **settings) as chunker:
        assert chunker.get_action(obs(0, 0))[0]["x"].shape == (2, 4)
        chunker.wait_for_prefetch(10)
        policy.dim = 6  # the server now serves another embodiment
        reset(chunker)
        assert chunker.get_action(obs(0, 0))[0]["x"].shape == (2, 6)


def test_a_chunk_of_other_step_shapes_mid_episode_is_refused_saying_a_reset_takes_it():
    policy = StepPolicy(horizon=2, dim=4)
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client) as chunker:
        chunker.get_action(obs(0))
        chunker.get_action(obs(1))
        policy.dim = 6
        with pytest.raises(ActionError, match=r"expected steps of shape \(4,\), as in the earlier chunks; a policy now "
                                              r"serving other actions needs every env reset first \(reset\(\), or "
                                              r"reset\(env_ids\) of each env: nothing buffered\)"):
            chunker.get_action(obs(2))


def test_a_prefetch_the_stopping_server_did_not_run_is_reported_while_buffered_steps_flow():
    """ServerStoppingError raised from get_action with 11 steps buffered, while a kill -9 of the same server was only
    reported (info["prefetch_error"]): the orderly stop interrupted the robot mid-chunk."""
    policy = StepPolicy(horizon=16, hang_from=2)
    with stopped_while_it_hangs(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=12) as chunker:
        for t in range(5):  # the prefetch is asked for at step 3
            chunker.get_action(obs(t))
        chunker.wait_for_prefetch(10)
        step, info = chunker.get_action(obs(5))
    assert step["x"][0, 0] == 5.0 and info["remaining"].tolist() == [10]
    assert info["prefetch_error"].startswith("ServerStoppingError: Server error: server is shutting down")


def test_once_the_buffer_runs_out_a_prefetch_the_stopping_server_did_not_run_raises_its_error_at_once():
    """No server is left to fetch the next chunk from: the fetch waited out the connection instead, and raised
    ReplyLostError, not the server's word that it stopped."""
    with stopped_while_it_hangs(StepPolicy(horizon=4, hang_from=2)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, asynchronous=True) as chunker:
        for t in range(4):  # the prefetch is asked for at step 1
            chunker.get_action(obs(t))
        chunker.wait_for_prefetch(10)
        time.sleep(0.5)  # the server has stopped: it no longer answers a fetch that it is shutting down
        with pytest.raises(ServerStoppingError, match="server is shutting down"):
            chunker.get_action(obs(4))


def test_a_prefetch_the_server_did_not_run_in_time_is_reported_while_buffered_steps_flow():
    """DeadlineNotRunError (a PolicyTimeoutError) raised from get_action with 14 steps buffered, while a plain timeout
    was dropped and asked again."""
    with running_server(StepPolicy(horizon=16, delay_s=0.4)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=3000) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=14) as chunker:
        chunker.get_action(obs(0))  # the server has seen a 400 ms call
        client.timeout_ms = 200  # the prefetch's budget is shorter than the calls take: not run
        chunker.get_action(obs(1))
        chunker.wait_for_prefetch(10)
        step, info = chunker.get_action(obs(2))
    assert step["x"][0, 0] == 2.0 and info["remaining"].tolist() == [13]
    assert info["prefetch_error"].startswith("DeadlineNotRunError: ")


class BusyAtSecondCall(StepPolicy):
    """StepPolicy whose second get_action (the first prefetch) is refused busy, as a server at its queue's cap."""

    def _get_action(self, observation, options=None):
        if self.calls == 1:
            self.calls += 1
            raise server_error("server busy: 9 requests are waiting for the policy; this server queues at most 9 in "
                               "all (ServerLimits.max_queued_requests); try again", "get_action")
        return super()._get_action(observation, options)


def test_a_prefetch_the_server_refused_busy_is_reported_and_asked_again_while_buffered_steps_flow():
    """ServerBusyError (not run: the queue was at its cap) raised from get_action with 14 steps buffered, and errored
    the episode of a rollout with --client-chunking async, while a DeadlineNotRunError was dropped and asked again."""
    policy = BusyAtSecondCall(horizon=16)
    with ActionChunker(policy, asynchronous=True, prefetch_steps=14) as chunker:
        chunker.get_action(obs(0))
        chunker.get_action(obs(1))  # the prefetch is asked for here, and refused
        chunker.wait_for_prefetch(10)
        step, info = chunker.get_action(obs(2))
        assert step["x"][0, 0] == 2.0 and info["remaining"].tolist() == [13]
        assert info["prefetch_error"].startswith("ServerBusyError: "), info.get("prefetch_error")
        chunker.wait_for_prefetch(10)  # asked again
        step, info = chunker.get_action(obs(3))
    assert step["x"][0, 0] == 3.0 and policy.calls >= 3 and not info.get("prefetch_error"), info


def test_per_env_fetches_send_a_whole_batch_option_whole_whatever_its_length():
    """A goal of 3 numbers, with 3 envs, reached the policy as the one number of the env fetched ([0.1])."""
    policy = StepPolicy(horizon=2)
    goal = np.array([0.4, 0.1, 0.3])
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, per_env=True) as chunker:
        chunker.get_action(obs(0, 0, 0), options={"goal_xyz": goal})
        chunker.reset(env_ids=[1])
        _, info = chunker.get_action(obs(1, 0, 1), options={"goal_xyz": goal})
    assert info["fetched_env_ids"] == [1]
    assert [options["goal_xyz"].tolist() for options in policy.options] == [goal.tolist()] * 2


def test_per_env_fetches_send_the_rows_of_the_fetched_envs_of_noise_and_seed():
    policy = StepPolicy(horizon=2)
    noise = np.arange(3.0)[:, None, None] * np.ones((3, 2, 1))
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, per_env=True) as chunker:
        chunker.get_action(obs(0, 0, 0), options={"noise": noise, "seed": np.array([7, 8, 9])})
        chunker.reset(env_ids=[1])
        chunker.get_action(obs(1, 0, 1), options={"noise": noise, "seed": np.array([7, 8, 9])})
    assert policy.options[1]["noise"].tolist() == noise[[1]].tolist() and policy.options[1]["seed"].tolist() == [8]


@pytest.mark.parametrize("as_given", [lambda noise: noise.tolist(), lambda noise: tuple(noise.tolist())],
                         ids=["nested lists", "a tuple"])
def test_per_env_fetches_send_the_rows_of_the_fetched_envs_of_a_noise_given_as_lists(as_given):
    """Gr00tPolicy takes a noise of nested lists: only a numpy noise was cut to the fetched envs' rows, so a fetch of
    env 1 sent all 3 envs' noise and the server refused it."""
    policy = StepPolicy(horizon=2)
    noise = np.arange(3.0)[:, None, None] * np.ones((3, 2, 1))
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, per_env=True) as chunker:
        chunker.get_action(obs(0, 0, 0), options={"noise": as_given(noise)})
        chunker.reset(env_ids=[1])
        _, info = chunker.get_action(obs(1, 0, 1), options={"noise": as_given(noise)})
    assert info["fetched_env_ids"] == [1]
    assert np.asarray(policy.options[1]["noise"]).tolist() == noise[[1]].tolist()


def test_a_per_env_fetch_refuses_a_ragged_noise_naming_it():
    policy = StepPolicy(horizon=2)
    ragged = [[0.0], [1.0, 2.0], [3.0]]
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, per_env=True) as chunker:
        chunker.get_action(obs(0, 0, 0), options={"noise": ragged})
        chunker.reset(env_ids=[1])
        with pytest.raises(ValueError, match=r"options\['noise'\] must be an array of shape \(B, \.\.\.\) \(one row per "
                                             r"env, B=3\) or nested lists of that shape; got list"):
            chunker.get_action(obs(1, 0, 1), options={"noise": ragged})


class LetGoOnceLock:
    """The chunker's lock, which the first release after `arm()` follows with a wait for `other_done` (set by another
    thread's call that took the lock then): the gap between an error's release and a rollback that takes it again."""

    def __init__(self, lock):
        self.lock, self.armed, self.other_done = lock, False, threading.Event()

    def acquire(self, *args, **kwargs):
        return self.lock.acquire(*args, **kwargs)

    def release(self):
        self.lock.release()
        if self.armed:
            self.armed = False
            self.other_done.wait(5)

    __enter__ = acquire

    def __exit__(self, *exc):
        self.release()


def test_a_call_that_raises_after_its_pop_gives_its_step_to_the_next_call_not_another_threads_step_twice():
    """The rollback ran after the lock was let go and taken again: another thread's call popped step 2 in between,
    the rollback put the cursor back to 1, and step 2 was handed out twice ([0, 2, 1, 2, 3])."""
    chunker = ActionChunker(StepPolicy(), n_action_steps=8)
    handed = [float(chunker.get_action(obs(0))[0]["x"][0, 0])]
    chunker._lock = gate = LetGoOnceLock(chunker._lock)
    other = []

    def other_thread():
        other.append(float(chunker.get_action(obs(0))[0]["x"][0, 0]))
        gate.other_done.set()

    def failing_remaining():
        del chunker.remaining  # once: an error after the pop (a bad row, a failed submit, ...)
        gate.armed = True
        thread.start()  # waits for the lock this call holds
        raise RuntimeError("after the pop")

    thread = threading.Thread(target=other_thread)
    chunker.remaining = failing_remaining
    with pytest.raises(RuntimeError, match="after the pop"):
        chunker.get_action(obs(0))
    thread.join(10)
    handed += other + [float(chunker.get_action(obs(0))[0]["x"][0, 0]) for _ in range(3)]
    assert handed == [0.0, 1.0, 2.0, 3.0, 4.0]


class RefusingPrefetchPolicy(StepPolicy):
    """StepPolicy whose second call (the first prefetch) is refused."""

    def _get_action(self, observation, options=None):
        if self.calls == 1:
            self.calls += 1
            raise ValueError("observation refused for this request")
        return super()._get_action(observation, options)


@pytest.mark.parametrize("reset", ["together", "in turn"])
def test_a_failed_prefetch_for_envs_all_reset_since_is_dropped_not_raised(reset):
    """After every env was reset in turn (reset(env_ids)), a prefetch for them that the server refused was raised by
    the next get_action, while reset() of every env together dropped it."""
    with running_server(RefusingPrefetchPolicy(horizon=4)) as server, \
            PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        with ActionChunker(client, n_action_steps=4, asynchronous=True, prefetch_steps=2) as chunker:
            chunker.get_action(obs(0, 0))
            chunker.get_action(obs(1, 1))  # sends the prefetch, which the server refuses
            chunker.wait_for_prefetch(5)
            for env_ids in ([[0, 1]] if reset == "together" else [[0], [1]]):
                chunker.reset(env_ids=env_ids, policy_reset_by_caller=True)
            step, _ = chunker.get_action(obs(0, 0))
    assert step["x"][:, 0].tolist() == [0.0, 0.0]
    assert chunker.stats.discarded_envs == 2


class StoppingPrefetchPolicy(StepPolicy):
    """StepPolicy whose second call (the first prefetch) is answered that the server is shutting down, and whose
    later calls time out (the server has exited)."""

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == 2:
            raise ServerStoppingError("server is shutting down")
        if self.calls > 2:
            raise PolicyTimeoutError("no reply (the server is gone)")
        self.calls -= 1
        return super()._get_action(observation, options)


def test_a_stopping_servers_refusal_of_a_prefetch_for_envs_all_reset_since_is_raised_not_asked_again():
    """Dropping failed prefetches of envs all reset since swallowed a stopping server's refusal too: the next call
    asked the stopping server again and timed out, and a rollout scored its rows errored instead of not run."""
    policy = StoppingPrefetchPolicy(horizon=4)
    with ActionChunker(policy, n_action_steps=4, asynchronous=True, prefetch_steps=2) as chunker:
        chunker.get_action(obs(0, 0))
        chunker.get_action(obs(1, 1))  # sends the prefetch, refused as the server stops
        chunker.wait_for_prefetch(5)
        chunker.reset(env_ids=[0, 1], policy_reset_by_caller=True)  # both episodes ended together, as a rollout's
        with pytest.raises(ServerStoppingError, match="shutting down"):
            chunker.get_action(obs(0, 0))
    assert policy.calls == 2  # not asked again

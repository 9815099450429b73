"""ActionChunker when the robot side goes wrong: a done-mask passed to reset, a fork with a prefetch thread, Ctrl-C
while a prefetch is late, leaving a `with` block against a stalled server. A real PolicyServer on loopback."""

import os
import signal
import threading
import time

import numpy as np
import pytest

from gr00t_client import BasePolicy, PolicyClient, PolicyTimeoutError, PolicyWrapper
from fork_race import first_calls_with_one_held_mid_adoption
from gr00t_client.chunking import ActionChunker
from serving import running_server
from forked_child import in_forked_child


class StampPolicy(BasePolicy):
    """Step j of the chunk for an env whose observation holds t is 100 * t + j (each value names its request). Calls
    wait while `hold` is set (a stalled server)."""

    def __init__(self, horizon=4):
        super().__init__(strict=False)
        self.horizon, self.hold, self.calls = horizon, threading.Event(), 0
        self.release = threading.Event()
        self.reset_options = []  # the options of each reset the policy got

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.hold.is_set():
            self.release.wait(30)
        t = np.asarray(observation["state"]["t"], np.float32)[:, 0]
        chunk = 100.0 * t[:, None] + np.arange(self.horizon, dtype=np.float32)[None, :]
        return {"x": chunk[:, :, None]}, {}

    def reset(self, options=None):
        self.reset_options.append(options)
        return {}


def obs(*t):
    return {"state": {"t": np.array(t, np.float32)[:, None]}}


@pytest.fixture
def stamp():
    policy = StampPolicy()
    try:
        with running_server(policy) as server:
            yield policy, server
    finally:
        policy.release.set()


# --- reset(env_ids) ------------------------------------------------------------------------------------


def test_reset_with_a_done_mask_resets_the_envs_that_are_done_and_only_those(stamp):
    _policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, ActionChunker(client, per_env=True) as chunker:
        chunker.get_action(obs(1, 1, 1))
        chunker.reset(env_ids=np.array([False, False, True]))  # a vector env's terminated | truncated
        assert chunker.remaining().tolist() == [3, 3, 0]
        action, info = chunker.get_action(obs(2, 2, 50))
    assert action["x"].ravel().tolist() == [101.0, 101.0, 5000.0] and info["fetched_env_ids"] == [2]


@pytest.mark.parametrize("env_ids, error, words", [
    ([1.9], TypeError, "got 1.9 (float)"),
    ([0, True], TypeError, "got True (bool)"),
    ([True, False], ValueError, "boolean mask of 2 entries; this chunker serves 3 envs"),
    ([0, 99], IndexError, "env id 99 is out of range for 3 envs"),
    ("12", TypeError, "got str"),
])
def test_reset_refuses_env_ids_that_are_not_indices_or_a_mask_before_dropping_any_buffer(stamp, env_ids, error, words):
    _policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, ActionChunker(client, per_env=True) as chunker:
        chunker.get_action(obs(1, 1, 1))
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            chunker.reset(env_ids=env_ids)
        assert chunker.remaining().tolist() == [3, 3, 3]  # [0, 99] cleared env 0 before refusing 99


def test_reset_options_with_some_envs_alone_are_refused_before_dropping_any_buffer(stamp):
    policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, ActionChunker(client) as chunker:
        chunker.get_action(obs(1, 1))
        with pytest.raises(ValueError, match=r"reset options \['episode_index'\] go to the policy's reset, which only a "
                                             r"reset of every env makes .* this reset of envs \[1\] does not reset"):
            chunker.reset(env_ids=[1], options={"episode_index": 3})
        assert chunker.remaining().tolist() == [3, 3] and policy.reset_options == []


def test_a_done_mask_of_every_env_before_the_first_call_resets_the_policy_with_its_options(stamp):
    policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, ActionChunker(client) as chunker:
        chunker.reset(env_ids=np.array([True, True]), options={"episode_index": 3})
        assert policy.reset_options == [{"episode_index": 3}]
        chunker.reset(env_ids=[0, 1], policy_reset_by_caller=True)  # the caller resets the policy's rows itself
        assert policy.reset_options == [{"episode_index": 3}]


# --- a fork with the prefetch thread running -------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_prefetch_thread_instead_of_waiting_for_ever(stamp):
    _policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=2000) as client:
        chunker = ActionChunker(client, asynchronous=True, prefetch_steps=2)
        for t in range(2):
            chunker.get_action(obs(t))  # the parent's prefetch thread is running
        assert chunker.wait_for_prefetch(5)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child serves 10 steps, or the alarm reports it stuck
            signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
            signal.alarm(10)
            try:
                values = [chunker.get_action(obs(t))[0]["x"].item() for t in range(10, 20)]
                os.write(write, repr(values).encode())
                os._exit(0)
            except BaseException:
                os._exit(4)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        served = os.read(read, 65536).decode()
        os.close(read)
        assert os.waitstatus_to_exitcode(status) == 0, "the child hung (3) or failed (4)"
        values = eval(served)  # noqa: S307 - our own child's repr of a list of floats
        assert len(values) == 10 and any(value >= 1000 for value in values)  # chunks the child fetched itself
        assert chunker.get_action(obs(4))[0]["x"].size == 1  # the parent's chunker still works
        chunker.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_wait_for_prefetch_in_a_forked_child_returns_at_once_instead_of_waiting_for_the_parents_thread(stamp):
    policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client:
        chunker = ActionChunker(client, asynchronous=True, prefetch_steps=2)
        chunker.get_action(obs(0))
        policy.hold.set()  # the next request, the prefetch, stalls in the server
        chunker.get_action(obs(1))
        pid = os.fork()
        if pid == 0:  # no thread of the child will ever finish the parent's prefetch
            signal.signal(signal.SIGALRM, lambda *_: os._exit(3))
            signal.alarm(5)
            os._exit(0 if chunker.wait_for_prefetch() else 4)
        _, status = os.waitpid(pid, 0)
        policy.release.set()
        assert os.waitstatus_to_exitcode(status) == 0, "the child's wait_for_prefetch hung (3) or timed out (4)"
        assert chunker.wait_for_prefetch(5)
        chunker.close()


class SlowInTheParent(BasePolicy):
    """Step j of the chunk for t is 100 * t + j; a call in the process that made it takes 0.6 s."""

    def __init__(self):
        super().__init__(strict=False)
        self.parent = os.getpid()

    def _get_action(self, observation, options=None):
        if os.getpid() == self.parent:
            time.sleep(0.6)
        t = np.asarray(observation["state"]["t"], np.float32)[:, 0]
        return {"x": (100.0 * t[:, None] + np.arange(4, dtype=np.float32)[None, :])[:, :, None]}, {}

    def reset(self, options=None):
        return {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_threads_of_a_forked_child_making_their_first_calls_at_once_each_get_a_step():
    # The second thread saw the child's pid before the first had replaced the parent's lock (held at the fork by a
    # parent thread waiting for its chunk, which the child does not have): it waited for ever.
    chunker = ActionChunker(SlowInTheParent())
    parent_call = threading.Thread(target=chunker.get_action, args=(obs(0),))
    parent_call.start()
    time.sleep(0.2)  # the parent thread holds the chunker's lock, waiting for its chunk
    code, output = in_forked_child(lambda: first_calls_with_one_held_mid_adoption(
        chunker, lambda: chunker.get_action(obs(1))[0]["x"].item()))
    parent_call.join(10)
    assert code == 0 and set(eval(output)) == {100.0, 101.0}, output  # noqa: S307 - the child's own repr of a list
    chunker.close()


# --- Ctrl-C and leaving a with-block against a stalled server -------------------------------------------------


def test_leaving_the_with_block_with_a_prefetch_in_flight_does_not_wait_out_the_timeout(stamp):
    policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=6000) as client:
        with ActionChunker(client, asynchronous=True, prefetch_steps=3) as chunker:
            chunker.get_action(obs(1))
            policy.hold.set()  # the server stalls
            chunker.get_action(obs(2))  # starts the prefetch, which now waits on the server
            began = time.monotonic()
        left_after = time.monotonic() - began
    assert left_after < 1.0  # it waited out timeout_ms (6 s) before the client could be closed
    assert chunker.stats.discarded_envs == 1


def test_close_from_another_thread_ends_a_reset_waiting_on_a_stalled_prefetch_at_once(stamp):
    """reset() waited for the prefetch holding the chunker's lock, so an e-stop's close() from another thread waited
    behind it for the stalled server (up to the client's timeout_ms) instead of returning at once."""
    policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=6000) as client:
        chunker = ActionChunker(client, asynchronous=True, prefetch_steps=3)
        chunker.get_action(obs(1))
        policy.hold.set()  # the server stalls
        chunker.get_action(obs(2))  # starts the prefetch, which now waits on the server
        ended = []

        def episode_end():
            try:
                chunker.reset()
                ended.append("returned")
            except ConnectionError as exc:
                ended.append(str(exc))

        resetter = threading.Thread(target=episode_end)
        resetter.start()
        time.sleep(0.3)  # reset() is waiting on the prefetch
        began = time.monotonic()
        chunker.close()
        close_s = time.monotonic() - began
        resetter.join(2)
    policy.release.set()  # the stalled call ends, so the server can stop
    assert close_s < 1.0, f"close() waited {close_s:.1f} s behind a reset() waiting on a stalled prefetch"
    assert not resetter.is_alive() and len(ended) == 1 and "closed" in ended[0], ended


class Forwarding(PolicyWrapper):
    """A wrapper a user puts around the client (to log or adapt its requests): it keeps the client as `.policy`."""

    def _get_action(self, observation, options=None):
        return self.policy.get_action(observation, options)


def test_ctrl_c_while_a_wrapped_client_prefetch_is_late_leaves_the_with_block_at_once(stamp):
    policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=6000) as client:
        with pytest.raises(KeyboardInterrupt):
            with ActionChunker(Forwarding(client, strict=False), asynchronous=True, prefetch_steps=0) as chunker:
                for t in range(4):  # the 4-step chunk of t=0; the last call starts the prefetch (t=3)
                    chunker.get_action(obs(t))
                policy.hold.set()
                threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
                try:
                    chunker.get_action(obs(4))  # the chunk is exhausted: waits for the stalled prefetch
                finally:
                    interrupted = time.monotonic()
        left_after = time.monotonic() - interrupted
    policy.release.set()  # the stalled call ends, so the server can stop
    assert left_after < 1.0, f"leaving the with block waited {left_after:.1f} s for the wrapped client's prefetch"
    assert chunker.stats.discarded_envs == 1


def test_close_still_waits_for_a_local_policy_call_even_inside_a_wrapper():
    local = StampPolicy()
    with ActionChunker(Forwarding(local, strict=False), asynchronous=True, prefetch_steps=3) as chunker:
        chunker.get_action(obs(1))
        local.hold.set()
        chunker.get_action(obs(2))  # starts the prefetch, which waits until released
        threading.Timer(0.3, local.release.set).start()
        began = time.monotonic()
    assert time.monotonic() - began >= 0.25  # a local policy may not be called by two callers at once
    assert chunker.stats.discarded_envs == 0


def test_a_ctrl_c_while_waiting_for_a_late_prefetch_keeps_it_pending_for_the_next_call(stamp):
    policy, server = stamp
    with PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=0) as chunker:
        for t in range(4):  # the 4-step chunk of t=0; the last call starts the prefetch (t=3)
            chunker.get_action(obs(t))
        policy.hold.set()
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            chunker.get_action(obs(4))  # the chunk is exhausted: waits for the stalled prefetch
        policy.hold.clear()
        policy.release.set()
        action, info = chunker.get_action(obs(5))  # the orphaned request was forgotten and this one sent anew
    assert action["x"].item() == 301.0 and info["merged_env_ids"] == [0] and info["fetched_env_ids"] == []
    assert policy.calls == 2  # the t=0 chunk and the prefetch: no request sent behind the orphan


# --- a failed prefetch, and when the default prefetch is sent -----------------------------------------------


def test_a_prefetch_that_timed_out_hands_out_the_buffered_step_names_the_failure_and_asks_again(stamp):
    # It raised at the next call although the running chunk still held its steps: the step due was withheld.
    policy, server = stamp
    policy.horizon = 8
    with PolicyClient("127.0.0.1", server.port, timeout_ms=300) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=6) as chunker:
        chunker.get_action(obs(0))
        policy.hold.set()  # the server stalls for the prefetch the next call sends (6 steps left)
        chunker.get_action(obs(1))
        assert chunker.wait_for_prefetch(5)  # its PolicyTimeoutError is in
        policy.hold.clear()
        policy.release.set()
        step, info = chunker.get_action(obs(2))
        assert float(step["x"][0, 0]) == 2.0 and info["remaining"].tolist() == [5]
        assert info["prefetch_error"].startswith("PolicyTimeoutError: policy server at 127.0.0.1:")
        assert "did not answer 'get_action' within 300 ms" in info["prefetch_error"]
        assert chunker.stats.prefetches == 2  # asked again at once, with this step's observation
        played = [float(chunker.get_action(obs(tick))[0]["x"][0, 0]) for tick in range(3, 10)]
        assert "prefetch_error" not in chunker.get_action(obs(10))[1]
    assert played[-2:] == [206.0, 207.0]  # the second prefetch's chunk (asked at tick 2) took over on time
    assert all(value in (tick, 200.0 + tick - 2) for tick, value in zip(range(3, 10), played))


def test_a_prefetch_that_timed_out_raises_once_a_step_is_due_from_an_empty_buffer(stamp):
    policy, server = stamp  # 4-step chunks
    with PolicyClient("127.0.0.1", server.port, timeout_ms=300) as client, \
            ActionChunker(client, asynchronous=True, prefetch_steps=1) as chunker:
        chunker.get_action(obs(0))
        chunker.get_action(obs(1))
        policy.hold.set()  # the server stalls from the prefetch the next call sends (1 step left) on
        try:
            chunker.get_action(obs(2))
            assert chunker.wait_for_prefetch(5)
            step, info = chunker.get_action(obs(3))  # the last buffered step is still handed out; asked again
            assert float(step["x"][0, 0]) == 3.0 and info["prefetch_error"].startswith("PolicyTimeoutError: ")
            assert chunker.wait_for_prefetch(5)
            with pytest.raises(PolicyTimeoutError, match="did not answer 'get_action' within 300 ms"):
                chunker.get_action(obs(4))
        finally:
            policy.release.set()  # the server's stalled call ends, so that it can stop


class TickLatencyPolicy(BasePolicy):
    """16-step chunks stamped as StampPolicy's; a request made at control tick t is answered once the robot has
    reached tick t + latency_ticks (a fixed latency, counted in control ticks), or after 0.3 s of the robot waiting."""

    def __init__(self, latency_ticks):
        super().__init__(strict=False)
        self.latency_ticks, self.tick, self.calls = latency_ticks, 0, 0
        self.ticked = threading.Condition()

    def advance(self, tick):
        with self.ticked:
            self.tick = tick
            self.ticked.notify_all()

    def _get_action(self, observation, options=None):
        self.calls += 1
        t = int(np.asarray(observation["state"]["t"])[0, 0])
        if self.calls > 1:  # the first chunk is fetched while the robot waits for it: at once
            with self.ticked:
                self.ticked.wait_for(lambda: self.tick >= t + self.latency_ticks, timeout=0.3)
        return {"x": (100.0 * t + np.arange(16, dtype=np.float32))[None, :, None]}, {}

    def reset(self, options=None):
        return {}


def test_the_default_prefetch_goes_out_at_half_of_every_chunk_so_the_robot_never_waits():
    # After the first chunk it went out at half the merged buffer (4 or 5 of 16 steps left): with a policy taking 6
    # control ticks, the robot waited at every chunk boundary.
    policy = TickLatencyPolicy(latency_ticks=6)
    with running_server(policy) as server, PolicyClient("127.0.0.1", server.port, timeout_ms=5000) as client, \
            ActionChunker(client, asynchronous=True) as chunker:
        asked_with = []
        for tick in range(100):
            policy.advance(tick)
            prefetches = chunker.stats.prefetches
            _, info = chunker.get_action(obs(tick))
            if chunker.stats.prefetches > prefetches:
                asked_with.append(int(info["remaining"][0]))
            # a tick of 30 ms: the reply due 6 ticks after a prefetch sent with 8 steps left has 60 ms to arrive (the
            # 20 ms of 10 ms ticks were missed on a loaded 2-core machine); any tick waits at 4 or 5 steps left
            time.sleep(0.03)
        waited = chunker.stats.blocking_waits - 1  # the first chunk is always waited for
    assert waited == 0, asked_with
    assert len(asked_with) >= 10 and min(asked_with) >= 7, asked_with  # 8, or 7 once a merge leaves 8


class BlipOnSecondCall(BasePolicy):
    """16-step chunks numbered by call; its second call (the first prefetch) times out, as a network blip would."""

    def __init__(self):
        super().__init__(strict=False)
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == 2:
            raise PolicyTimeoutError("policy server at 127.0.0.1:5555 did not answer 'get_action' within 500 ms")
        rows = observation["state"]["s"].shape[0]
        return {"a": np.tile((1000.0 * self.calls + np.arange(16, dtype=np.float32))[None, :, None], (rows, 1, 1))}, {}

    def reset(self, options=None):
        return {}


@pytest.mark.parametrize("per_env", [False, True])
def test_a_prefetch_that_timed_out_as_an_env_was_reset_is_outlived_and_the_reset_env_fetched_afresh(per_env):
    # The env cleared by reset() counted as one whose chunk ran out, so the dropped prefetch's timeout was raised
    # though env 0 had 8 steps buffered and env 1 was fetched in that very call anyway.
    policy = BlipOnSecondCall()
    with ActionChunker(policy, asynchronous=True, per_env=per_env) as chunker:
        observation = {"state": {"s": np.zeros((2, 1, 1), np.float32)}}
        for t in range(8):
            chunker.get_action(observation)
            assert chunker.wait_for_prefetch(5)
        chunker.reset([1])
        step, info = chunker.get_action(observation)
        assert info["prefetch_error"].startswith("PolicyTimeoutError: ")
        # env 0 runs on in its first chunk (per_env), or merges the one fetched for both envs (newest first)
        assert float(step["a"][0, 0]) == (1008.0 if per_env else 3000.0)
        assert float(step["a"][1, 0]) == 3000.0  # env 1 starts the chunk fetched for it in this call

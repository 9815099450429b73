"""A PolicyClient used in a process forked from the one that made it (multiprocessing's fork, gymnasium's
AsyncVectorEnv workers): the child gets its own ZeroMQ context and socket, the parent's connection is unaffected.
The child's first call used to spin at full CPU for ever, whatever timeout_ms. Real sockets on loopback."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import numpy as np
import pytest
from fork_race import first_calls_with_one_held_mid_adoption
from forked_child import in_forked_child
from reference_peer import EchoPolicy, libero_like_observation
from serving import running_server

from gr00t_client import PolicyClient, PolicyServerError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs os.fork (Linux)")


def test_a_forked_child_calls_through_its_own_connection_and_the_parent_goes_on():
    observation = libero_like_observation()
    with running_server(EchoPolicy()) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=3000)
        client.get_action(observation)  # used before the fork: its context has its threads and socket
        code, output = in_forked_child(lambda: sorted(client.get_action(observation)[0]))
        assert code == 0, output
        assert output == str(sorted(client.get_action(observation)[0]))  # the parent's connection still works
        assert client.ping()
        client.close()


@contextlib.contextmanager
def client_with_a_parent_thread_in_a_call():
    """A client one of this process's threads is in a call on (holding the client's lock, waiting for its reply)."""
    observation = libero_like_observation()
    with running_server(EchoPolicy(delay_s=0.6)) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=5000)
        client.get_action(observation)
        parent_call = threading.Thread(target=client.get_action, args=(observation,))
        parent_call.start()
        time.sleep(0.2)
        try:
            yield client
        finally:
            parent_call.join(10)
            client.close()


def test_a_child_forked_while_a_parent_thread_is_in_a_call_is_not_locked_out():
    with client_with_a_parent_thread_in_a_call() as client:
        code, output = in_forked_child(lambda: client.ping())
    assert code == 0 and output == "True", output


def test_threads_of_a_forked_child_making_their_first_calls_at_once_are_each_answered():
    # The second thread saw the child's pid before the first had replaced the parent's lock (held at the fork by a
    # thread the child does not have): it waited for ever, or shared the first thread's REQ socket.
    with client_with_a_parent_thread_in_a_call() as client:
        code, output = in_forked_child(lambda: first_calls_with_one_held_mid_adoption(client, client.ping))
    assert code == 0 and output == "[True, True]", output


def test_a_forked_childs_first_strict_get_action_keeps_to_one_timeout_ms_budget():
    """get_action read the parent's budget state before the child's adoption replaced it: each of its questions
    (get_server_info 0.5 s, get_modality_config, get_action 0.7 s) got a fresh timeout_ms: it answered after 1.2 s."""
    from gr00t_client import PolicyTimeoutError

    def first_call_outcome_and_seconds(client):
        started = time.monotonic()
        try:
            client.get_action(libero_like_observation())
            outcome = "answered"
        except PolicyTimeoutError:  # DeadlineNotRunError too: the server saw the budget could not be met
            outcome = "timed out"
        return outcome, round(time.monotonic() - started, 2)

    with running_server(EchoPolicy(delay_s=0.7)) as server:
        slow_info = {"server": "gr00t-server", "capabilities": []}
        server.register_endpoint("get_server_info", lambda: time.sleep(0.5) or slow_info, requires_input=False)
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=1000, strict=True)  # made, not used, before the fork
        code, output = in_forked_child(lambda: first_call_outcome_and_seconds(client), timeout_s=30)
        client.close()
    assert code == 0, output
    outcome, seconds = eval(output)  # noqa: S307 - the child's own repr of a tuple
    assert outcome == "timed out" and seconds < 1.3, output


def test_closing_in_the_child_leaves_the_parents_client_open():
    with running_server(EchoPolicy()) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=3000)
        assert client.ping()
        code, output = in_forked_child(lambda: client.close())
        assert code == 0, output
        assert client.ping()
        client.close()


def test_a_forked_child_has_a_session_of_its_own_so_a_replay_keeps_each_workers_episode(tmp_path):
    """The child kept the parent's session id, so a replay server (one cursor per session) moved the parent's cursor
    when the child reset to its own episode: the parent's next chunk came from the child's episode, and workers forked
    together were sent each other's episodes, without an error."""
    import numpy as np

    from eval.dataset_factory import expected_actions, make_dataset
    from gr00t_server.policies import ReplayPolicy

    root = make_dataset(tmp_path / "ds", lengths=(12, 12), cameras=())
    with running_server(ReplayPolicy(root, execution_horizon=4)) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=5000)
        client.reset({"episode_index": 0})
        first, _ = client.get_action({})
        code, output = in_forked_child(lambda: (client.reset({"episode_index": 1}),
                                         client.get_action({})[0]["arm"][0, 0].tolist(), client.session_id)[1:])
        assert code == 0, output
        child_arm, child_session = eval(output)  # noqa: S307 - the child's own repr of a list and a str
        assert child_session != client.session_id
        np.testing.assert_allclose(child_arm, expected_actions(1, 12)["arm"][0])  # its episode, from its start
        second, _ = client.get_action({})  # the parent's session went on where it was, in episode 0
        np.testing.assert_allclose(first["arm"][0, :4], expected_actions(0, 12)["arm"][:4])
        np.testing.assert_allclose(second["arm"][0, :4], expected_actions(0, 12)["arm"][4:8])

        named = PolicyClient("127.0.0.1", server.port, timeout_ms=5000, session_id="robot-7")
        code, output = in_forked_child(lambda: named.session_id)
        assert (code, output) == (0, "robot-7")  # a session id its user gave is kept
        named.close()
        client.close()


FORKED_REFUSAL = "was not sent: this process was forked from one whose client for"


@pytest.mark.parametrize("knows_kind", [True, False], ids=["client-knows-the-policy-keeps-sessions", "server-refuses"])
def test_a_forked_childs_first_get_action_of_an_inherited_replay_session_is_refused_until_it_resets(tmp_path,
                                                                                                    knows_kind):
    """The child's new session was sent as a new one, so a replay served it from episode 0 in silence (the parent was
    in episode 1): it is refused until the child resets - by its client, naming the fork, where the client knows the
    policy keeps sessions; else by the server, as a session it does not know - and a bare reset then starts it at
    episode 0 (it was refused too, as a reset of a session whose episodes the replay did not know)."""
    from eval.dataset_factory import expected_actions, make_dataset
    from gr00t_server.policies import ReplayPolicy

    def first_get_action_then_after_a_reset(client):
        if not knows_kind:
            client.server_keeps_sessions = None  # as a client that never learnt the policy's kind
        try:
            client.get_action({})
            refusal = "served"
        except PolicyServerError as exc:
            refusal = f"{type(exc).__name__}: {exc}"
        client.reset()
        return refusal, client.get_action({})[0]["arm"][0, 0].tolist()

    root = make_dataset(tmp_path / "ds", lengths=(12, 12), cameras=())
    with running_server(ReplayPolicy(root, execution_horizon=4)) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=5000)
        client.reset({"episode_index": 1})
        client.get_action({})
        assert client.server_keeps_sessions is True
        code, output = in_forked_child(lambda: first_get_action_then_after_a_reset(client))
        assert code == 0, output
        refusal, arm_after_reset = eval(output)  # noqa: S307 - the child's own repr of a tuple
        if knows_kind:
            assert refusal.startswith(f"ForkedSessionError: 'get_action' {FORKED_REFUSAL} tcp://127.0.0.1:"), refusal
            assert refusal.endswith("call reset in this process first (a replay then starts episode 0, or the one "
                                    "options['episode_index'] names)"), refusal
        else:
            assert "call reset to start it again" in refusal, refusal
        assert arm_after_reset == pytest.approx(expected_actions(0, 12)["arm"][0].tolist())  # served from its start
        second, _ = client.get_action({})  # the parent's session went on in episode 1
        assert second["arm"][0, 0].tolist() == pytest.approx(expected_actions(1, 12)["arm"][4].tolist())
        client.close()


def test_a_forked_child_of_a_client_serving_a_stateless_policy_is_served_at_once():
    """Only a policy that keeps sessions needs the child's session reset: a stateless one serves it as before."""
    with running_server(EchoPolicy()) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=5000)
        client.get_action(libero_like_observation())
        code, output = in_forked_child(lambda: sorted(client.get_action(libero_like_observation())[0]))
        assert code == 0, output
        assert output == repr(sorted(client.get_action(libero_like_observation())[0]))
        client.close()


def test_a_forked_chunkers_child_is_not_handed_the_parents_buffered_steps_of_a_replay(tmp_path):
    """The child handed out the rest of the parent's chunk (episode 1's steps 1..3), then episode 0 from its start:
    its first get_action goes to the server instead, which refuses the session until the child resets."""
    from eval.dataset_factory import expected_states, make_dataset
    from gr00t_client.chunking import ActionChunker
    from gr00t_server.policies import ReplayPolicy

    observation = {"state": {key: np.asarray(value[None, :1], np.float32) for key, value in expected_states(1, 12).items()},
                   "language": {"annotation.human.action.task_description": [["t"]]}}

    def first_get_action(chunker):
        try:
            chunker.get_action(observation)
        except PolicyServerError as exc:
            return str(exc)
        return "handed out a step"

    root = make_dataset(tmp_path / "ds", lengths=(12, 12), cameras=())
    with running_server(ReplayPolicy(root, execution_horizon=4)) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=5000)
        chunker = ActionChunker(client, n_action_steps=4)
        chunker.reset(options={"episode_index": 1})
        chunker.get_action(observation)  # 3 steps of episode 1 left in the buffer
        code, output = in_forked_child(lambda: first_get_action(chunker))
        assert code == 0, output
        assert FORKED_REFUSAL in output
        assert chunker.remaining().tolist() == [3]  # the parent's buffer is its own still
        chunker.close()
        client.close()


def test_a_forked_chunkers_child_sharing_a_given_session_id_hands_out_that_sessions_buffered_steps(tmp_path):
    """A client given its session_id keeps it in the child: the buffered steps are that session's next ones, and the
    child that dropped them was served the steps after them (1504-1507 for 1501-1504), skipping four in silence."""
    from eval.dataset_factory import expected_actions, expected_states, make_dataset
    from gr00t_client.chunking import ActionChunker
    from gr00t_server.policies import ReplayPolicy

    observation = {"state": {key: np.asarray(value[None, :1], np.float32) for key, value in expected_states(1, 12).items()},
                   "language": {"annotation.human.action.task_description": [["t"]]}}
    root = make_dataset(tmp_path / "ds", lengths=(12, 12), cameras=())
    with running_server(ReplayPolicy(root, execution_horizon=4)) as server:
        client = PolicyClient("127.0.0.1", server.port, timeout_ms=5000, session_id="robot-7")
        chunker = ActionChunker(client, n_action_steps=4)
        chunker.reset(options={"episode_index": 1})
        chunker.get_action(observation)  # step 0 handed out, steps 1..3 of episode 1 left in the buffer
        code, output = in_forked_child(lambda: chunker.get_action(observation)[0]["arm"][0].tolist())
        assert code == 0, output
        assert eval(output) == pytest.approx(expected_actions(1, 12)["arm"][1].tolist())  # noqa: S307 - step 1
        chunker.close()
        client.close()

"""get_server_info of a custom policy whose `work_limits()` or `observation_format` raises: the info is still
answered, that field marked unavailable ({"error": ...}), the failure logged once, and the server goes on serving.
A real PolicyServer on loopback and a real PolicyClient."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from gr00t_client import BasePolicy, ModalityConfig, PolicyClient, PolicyServerError
from gr00t_server import PolicyServer
from serving import free_port, running_server

CONFIGS = {"state": ModalityConfig([0], ["joints"]), "action": ModalityConfig([0, 1, 2, 3], ["arm"])}
OBSERVATION = {"state": {"joints": np.zeros((1, 1, 3), np.float32)}}


class FaultyInfoPolicy(BasePolicy):
    """A policy whose `work_limits()` or `observation_format` (the one named by `fails`) raises `exc`."""

    def __init__(self, fails, exc):
        super().__init__()
        self.fails, self.exc = fails, exc

    @property
    def observation_format(self):
        if self.fails == "observation_format":
            raise self.exc
        return "nested"

    def work_limits(self):
        if self.fails == "work_limits":
            raise self.exc
        return {"max_denoising_steps": 8}

    def get_modality_config(self):
        return CONFIGS

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        return {"arm": np.zeros((1, 4, 3), np.float32)}, {}


@pytest.mark.parametrize("exc", [RuntimeError("x" * 5000), SystemExit(3)], ids=["RuntimeError", "SystemExit"])
def test_info_marks_a_failing_observation_format_unavailable_and_the_server_goes_on(exc, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_server"), \
            running_server(FaultyInfoPolicy("observation_format", exc)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        for _ in range(3):
            info = client.get_server_info()
            assert info["observation_format"] == {"error": f"internal error in observation_format: {type(exc).__name__}"}
            assert info["limits"]["max_denoising_steps"] == 8 and info["policy_class"] == "FaultyInfoPolicy"
        action, _ = client.get_action(OBSERVATION)
        assert action["arm"].shape == (1, 4, 3)
        assert client.ping()
    logged = [r.getMessage() for r in caplog.records if "observation_format failed" in r.getMessage()]
    assert len(logged) == 1, logged  # once, not per request
    assert len(logged[0]) < 1500  # the policy's 5,000-character message cut


@pytest.mark.parametrize("exc", [ValueError("no processor"), SystemExit(3)], ids=["ValueError", "SystemExit"])
def test_info_marks_failing_work_limits_unavailable_keeps_the_servers_limits_and_the_server_goes_on(exc, caplog):
    with caplog.at_level(logging.WARNING, logger="gr00t_server"), \
            running_server(FaultyInfoPolicy("work_limits", exc)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
        # a ValueError's message is sent as the server sends a validation error's; any other is named by its type
        expected = "ValueError: no processor" if isinstance(exc, ValueError) else "internal error in work_limits: SystemExit"
        assert info["limits"]["error"] == expected, info["limits"]
        assert "max_rows" in info["limits"] and "max_denoising_steps" not in info["limits"]
        assert info["observation_format"] == "nested"
        assert client.get_server_info()["limits"]["error"] == info["limits"]["error"]
        action, _ = client.get_action(OBSERVATION)
        assert action["arm"].shape == (1, 4, 3)
    assert len([r for r in caplog.records if "work_limits failed" in r.getMessage()]) == 1


def test_an_attribute_error_inside_observation_format_is_reported_and_logged_not_taken_for_no_format(caplog):
    # a misspelt attribute inside the property: not "the policy does not say" (null), silently
    with caplog.at_level(logging.WARNING, logger="gr00t_server"), \
            running_server(FaultyInfoPolicy("observation_format", AttributeError("no _format_typo"))) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
    assert info["observation_format"] == {"error": "internal error in observation_format: AttributeError"}
    assert len([r for r in caplog.records if "observation_format failed" in r.getMessage()]) == 1


class SlowInfoPolicy(FaultyInfoPolicy):
    """A policy whose `observation_format` and `work_limits()` take a while (a lazy load), counting the askings."""

    def __init__(self):
        super().__init__(None, None)
        self.asked = {"observation_format": 0, "work_limits": 0}

    @property
    def observation_format(self):
        self.asked["observation_format"] += 1
        time.sleep(1.0)
        return "nested"

    def work_limits(self):
        self.asked["work_limits"] += 1
        time.sleep(1.0)
        return {"max_denoising_steps": 8}


def test_a_slow_observation_format_and_work_limits_are_asked_once_and_other_clients_are_answered_meanwhile():
    policy = SlowInfoPolicy()
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=10000) as client, \
            PolicyClient(port=server.port, timeout_ms=1500) as other:
        assert client.ping()  # serving: the policy's info facts were asked before
        infos = []
        asking = threading.Thread(target=lambda: infos.extend(client.get_server_info() for _ in range(3)))
        asking.start()
        time.sleep(0.2)
        assert other.ping()  # not held up by another client's info request
        asking.join(30)
    assert [(i["observation_format"], i["limits"]["max_denoising_steps"]) for i in infos] == [("nested", 8)] * 3
    assert policy.asked == {"observation_format": 1, "work_limits": 1}


SLOW_FORMAT_SERVER = """
import time
from gr00t_client import BasePolicy
from gr00t_server.serving.server import PolicyServer

class HangingFormat(BasePolicy):
    @property
    def observation_format(self):
        print("asking observation_format", flush=True)
        time.sleep(120)
        return "nested"

    def get_modality_config(self):
        return {{}}

    def reset(self, options=None):
        return {{}}

    def _get_action(self, observation, options=None):
        return {{}}, {{}}

PolicyServer(HangingFormat(), host="127.0.0.1", port={port}).run()
"""


def test_ctrl_c_stops_a_server_whose_observation_format_hangs():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SLOW_FORMAT_SERVER.format(port=port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if "Server is ready" in line:  # asked on the first info request, if not before serving
                threading.Thread(target=lambda: _ask_info(port), daemon=True).start()
            if "asking observation_format" in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            pytest.fail("the server outlived a Ctrl-C while its policy's observation_format hung")


def _ask_info(port):
    try:
        with PolicyClient(port=port, timeout_ms=30000) as client:
            client.get_server_info()
    except Exception:  # noqa: BLE001 - the server is stopped under it
        pass


class ForwardingWrapper(BasePolicy):
    """A user's thin wrapper that forwards what it lacks (observation_format too) to its inner policy."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def __getattr__(self, name):
        if name == "policy":
            raise AttributeError(name)
        return getattr(self.policy, name)

    def get_modality_config(self):
        return self.policy.get_modality_config()

    def reset(self, options=None):
        return {}

    def _get_action(self, observation, options=None):
        return self.policy.get_action(observation, options)


class FlatPolicy(FaultyInfoPolicy):
    observation_format = "flat"


def test_info_reports_the_observation_format_a_wrapper_forwards_with_getattr():
    wrapper = ForwardingWrapper(FlatPolicy("nothing", None))
    assert wrapper.observation_format == "flat"
    with running_server(wrapper) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_server_info()["observation_format"] == "flat"


def test_a_policys_own_keyboard_interrupt_in_a_property_is_its_failure_not_a_stop():
    """Only a Ctrl-C while run() asks the facts on the main thread stops the start; run() in a thread, where no
    Ctrl-C reaches, was ended by the policy's own KeyboardInterrupt before it served."""
    with running_server(FaultyInfoPolicy("observation_format", KeyboardInterrupt())) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as client:
        info = client.get_server_info()
        assert info["observation_format"] == {"error": "internal error in observation_format: KeyboardInterrupt"}
        assert client.get_action(OBSERVATION)[0]["arm"].shape == (1, 4, 3)


class RaisingBatchingPolicy(FaultyInfoPolicy):
    """A policy whose `supports_batching` property raises: it reads a setting it lacks."""

    settings: dict = {}

    def __init__(self):
        super().__init__(None, None)

    @property
    def supports_batching(self):
        return self.settings["batching"]


def test_a_supports_batching_that_raises_does_not_stop_a_server_that_does_not_batch():
    """It was read on the socket thread per request, outside any try: the first get_action ended run()."""
    with running_server(RaisingBatchingPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_action(OBSERVATION)[0]["arm"].shape == (1, 4, 3)
        assert client.get_server_info()["max_batch_size"] == 1
        assert client.ping()


def test_a_supports_batching_that_raises_fails_a_batching_servers_start_naming_it():
    server = PolicyServer(RaisingBatchingPolicy(), host="127.0.0.1", port=0, max_batch_size=4)
    stop = threading.Timer(5, server.stop)  # a start that does not fail serves until then
    stop.start()
    try:
        with pytest.raises(ValueError, match=r"^RaisingBatchingPolicy\.supports_batching raised KeyError: 'batching'; "
                                             r"expected a bool"):
            server.run()
    finally:
        stop.cancel()
        server.close()


class LockedPolicy(FaultyInfoPolicy):
    """A policy made thread-safe the usual way: one lock around its methods; `get_action` holds it until `release`.
    Notes the thread that asks its configs and identity."""

    def __init__(self, name="locked"):
        super().__init__(None, None)
        self.name = name
        self.lock = threading.RLock()
        self.entered, self.release = threading.Event(), threading.Event()
        self.asked_on = []

    def get_modality_config(self):
        with self.lock:
            self.asked_on.append(threading.current_thread().name)
            return CONFIGS

    def identity(self):
        with self.lock:
            self.asked_on.append(threading.current_thread().name)
            return {"name": self.name}

    def _get_action(self, observation, options=None):
        with self.lock:
            self.entered.set()
            self.release.wait(30)
            return super()._get_action(observation, options)


def test_configs_and_identity_are_answered_while_a_lock_guarded_policy_holds_its_lock_in_a_call():
    """Both were asked of the policy per request on the socket thread: another client's info waited on the policy's
    lock for the whole call, and ping and kill with it."""
    policy = LockedPolicy()
    with running_server(policy, inline_below_ms=0) as server, \
            PolicyClient(port=server.port, timeout_ms=30000) as robot, \
            PolicyClient(port=server.port, timeout_ms=3000) as other:
        calling = threading.Thread(target=robot.get_action, args=(OBSERVATION,), daemon=True)
        calling.start()
        try:
            assert policy.entered.wait(10)
            info = other.get_server_info()
            configs = other.get_modality_config()
            assert other.ping()
        finally:
            policy.release.set()
            calling.join(30)
    assert info["policy_busy"] is True
    assert info["policy_identity"] == {"name": "locked"}
    assert set(info["modality_configs"]) == set(configs) == {"state", "action"}
    # once each on the serving thread, by run() before serving (the worker's are the policy's own check of its input)
    assert policy.asked_on.count("policy-server") == 2


def test_a_policy_swapped_in_while_serving_is_answered_with_its_own_configs_and_identity():
    first, second = LockedPolicy("first"), LockedPolicy("second")
    second.get_modality_config = lambda: {"action": CONFIGS["action"]}
    with running_server(first) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        assert client.get_server_info()["policy_identity"] == {"name": "first"}
        server.policy = second
        info = client.get_server_info()
        assert set(client.get_modality_config()) == {"action"}
    assert info["policy_identity"] == {"name": "second"}
    assert set(info["modality_configs"]) == {"action"}
    assert second.asked_on == ["gr00t-policy-worker"]  # its identity, learnt on the worker, never on the socket thread


class FailingConfigsPolicy(FaultyInfoPolicy):
    """A policy whose get_modality_config() raises, counting the askings."""

    def __init__(self):
        super().__init__(None, None)
        self.asked = 0

    def get_modality_config(self):
        self.asked += 1
        raise ValueError("no config for embodiment 'robot_x'")


def test_configs_that_failed_are_refused_with_the_same_error_on_every_request():
    policy = FailingConfigsPolicy()
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=5000) as client:
        infos = [client.get_server_info() for _ in range(2)]
        errors = []
        for _ in range(2):
            with pytest.raises(PolicyServerError) as refused:
                client.get_modality_config()
            errors.append(str(refused.value))
    assert [info["modality_configs"] for info in infos] == [{"error": "ValueError: no config for embodiment 'robot_x'"}] * 2
    assert len(set(errors)) == 1 and "no config for embodiment 'robot_x'" in errors[0]
    assert policy.asked == 1

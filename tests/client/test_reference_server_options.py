"""get_action options a reference server's policy ignores (seed, noise, denoising_steps, rtc) are warned about once,
naming them; batch_size, which its ReplayPolicy reads, and a current gr00t-server, which applies them all, are not.
denoising_steps is warned of for a gr00t-server whose get_server_info reports no max_denoising_steps: one older than
2026-12-02 ignores it."""

import logging
import time

import numpy as np

from gr00t_client import ActionChunker, PolicyClient
from gr00t_client.client_messages import OPTIONS_NOT_APPLIED_FIELD
from reference_peer import EchoPolicy, ReferenceServer, libero_like_observation, running_server

CLIENT_LOGGER = "gr00t_client.client"


def _ignoring_options(observation, options=None):
    return {"x": np.zeros((1, 8, 1), np.float32)}, {}


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == CLIENT_LOGGER]


def test_options_a_reference_server_ignores_are_warned_once_by_name(caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with ReferenceServer({"get_action": _ignoring_options}) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            for _ in range(3):
                client.get_action(libero_like_observation(height=8, width=8), {"denoising_steps": 2, "batch_size": 1})
            warned = _warnings(caplog)
            assert len(warned) == 1, warned
            assert "'denoising_steps'" in warned[0]
            assert "'batch_size'" not in warned[0].split("not applied")[0]
            assert client.server_is_gr00t_server is False


def test_rtc_of_an_async_chunker_is_warned_against_a_reference_server(caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    observation = libero_like_observation(height=8, width=8)
    with ReferenceServer({"get_action": _ignoring_options}) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            chunker = ActionChunker(client, asynchronous=True, prefetch_steps=3, rtc_frozen_steps=2)
            try:
                for _ in range(16):
                    chunker.get_action(observation)
                    time.sleep(0.005)
            finally:
                chunker.close()
    sent_rtc = [r for r in server.requests if "rtc" in ((r.get("data") or {}).get("options") or {})]
    assert sent_rtc, "the chunker never sent options['rtc']: the test did not exercise the warning"
    warned = _warnings(caplog)
    assert len(warned) == 1 and "'rtc'" in warned[0], warned


class CurrentModelPolicy(EchoPolicy):
    """What a current gr00t-server's Gr00tPolicy says of itself: its info's limits report max_denoising_steps."""

    def work_limits(self):
        return {"max_denoising_steps": 16}


class OlderServerPolicy(EchoPolicy):
    """What a gr00t-server older than 2026-12-02 answered: info limits without max_denoising_steps (it ignored
    options['denoising_steps'] as unknown, without a word)."""


def test_a_gr00t_server_gets_options_without_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with running_server(CurrentModelPolicy()) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            client.get_action(libero_like_observation(height=8, width=8), {"denoising_steps": 2, "seed": 0})
            assert _warnings(caplog) == []
            assert client.server_is_gr00t_server is True


def test_a_relay_to_a_reference_server_names_the_options_its_upstream_ignores_in_info(caplog):
    """A robot behind PolicyServer(PolicyClient(reference)) saw a gr00t-server and was told nothing: its seed and
    denoising_steps were dropped upstream. The relay's info names them, and the robot's client warns once by name."""
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    options = {"seed": 5, "denoising_steps": 2, "batch_size": 1}
    with ReferenceServer({"get_action": _ignoring_options}) as reference:
        with PolicyClient(port=reference.port, timeout_ms=5000) as upstream, running_server(upstream) as relay:
            with PolicyClient(port=relay.port, timeout_ms=5000) as robot:
                infos = [robot.get_action(libero_like_observation(height=8, width=8), options)[1] for _ in range(3)]
                assert robot.server_is_gr00t_server is True
                robot_address = robot.address
    assert [info[OPTIONS_NOT_APPLIED_FIELD] for info in infos] == [["denoising_steps", "seed"]] * 3
    robot_warnings = [m for m in _warnings(caplog) if robot_address in m]
    assert len(robot_warnings) == 1, _warnings(caplog)
    assert "'denoising_steps', 'seed' not known to be applied" in robot_warnings[0]
    assert "'batch_size'" not in robot_warnings[0].split("not applied")[0]


def test_a_relay_to_a_gr00t_server_reports_no_options_not_applied(caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with running_server(EchoPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as upstream:
        with running_server(upstream) as relay, PolicyClient(port=relay.port, timeout_ms=5000) as robot:
            _action, info = robot.get_action(libero_like_observation(height=8, width=8), {"seed": 5})
    assert OPTIONS_NOT_APPLIED_FIELD not in info
    assert _warnings(caplog) == []


def test_denoising_steps_to_a_gr00t_server_reporting_no_max_denoising_steps_are_warned_once_naming_why(caplog):
    """A new robot's options={"denoising_steps": N} to an older gr00t-server got the default-step chunk without a word."""
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with running_server(OlderServerPolicy()) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            for _ in range(3):
                client.get_action(libero_like_observation(height=8, width=8), {"denoising_steps": 2, "seed": 0})
            assert "max_denoising_steps" not in client.get_server_info()["limits"]
            address = client.address
    warned = _warnings(caplog)
    assert len(warned) == 1, warned
    assert "'denoising_steps'" in warned[0] and "'seed'" not in warned[0]
    assert address in warned[0] and "no max_denoising_steps" in warned[0] and "upgrade gr00t-server" in warned[0]


def test_a_relay_to_a_gr00t_server_reporting_no_max_denoising_steps_names_denoising_steps_in_info(caplog):
    """New robot -> new relay -> older gr00t-server: no options_not_applied in the info, no warning on either side."""
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with running_server(OlderServerPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as upstream:
        with running_server(upstream) as relay, PolicyClient(port=relay.port, timeout_ms=5000) as robot:
            infos = [robot.get_action(libero_like_observation(height=8, width=8), {"denoising_steps": 2, "seed": 0})[1]
                     for _ in range(3)]
            robot_address = robot.address
    assert [info.get(OPTIONS_NOT_APPLIED_FIELD) for info in infos] == [["denoising_steps"]] * 3
    robot_warnings = [m for m in _warnings(caplog) if robot_address in m]
    assert len(robot_warnings) == 1, _warnings(caplog)
    assert "'denoising_steps'" in robot_warnings[0] and "upgrade gr00t-server" in robot_warnings[0]


def test_a_relay_to_a_current_gr00t_server_reports_its_max_denoising_steps_and_no_options_not_applied(caplog):
    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    with running_server(CurrentModelPolicy()) as server, PolicyClient(port=server.port, timeout_ms=5000) as upstream:
        with running_server(upstream) as relay, PolicyClient(port=relay.port, timeout_ms=5000) as robot:
            _action, info = robot.get_action(libero_like_observation(height=8, width=8), {"denoising_steps": 2})
            assert robot.get_server_info()["limits"]["max_denoising_steps"] == 16
    assert OPTIONS_NOT_APPLIED_FIELD not in info
    assert _warnings(caplog) == []


def test_denoising_steps_to_a_replay_are_warned_once_as_not_applied_to_recorded_actions_not_as_an_old_server(
        caplog, tmp_path):
    """A current gr00t-server serving a replay reports no max_denoising_steps: the warning told to upgrade gr00t-server,
    which can never help; a replay's recorded actions are what any denoising_steps gives."""
    from eval.dataset_factory import make_dataset
    from gr00t_server.policies import ReplayPolicy

    caplog.set_level(logging.WARNING, logger=CLIENT_LOGGER)
    root = make_dataset(tmp_path / "ds", lengths=(8,), cameras=())
    with running_server(ReplayPolicy(root, execution_horizon=4)) as server:
        with PolicyClient(port=server.port, timeout_ms=5000) as client:
            client.reset({"episode_index": 0})
            for _ in range(2):
                client.get_action({}, {"denoising_steps": 2})
            address = client.address
    assert _warnings(caplog) == [f"get_action option 'denoising_steps' not applied: the server at {address} serves a "
                                 "replay, whose recorded actions no such option changes"]


class OwnRtcPolicy(EchoPolicy):
    """A policy of one's own that applies both options, as docs/serving.md says to report them."""

    def work_limits(self):
        return {"max_denoising_steps": 8, "rtc": True, "max_widgets": 3}


def test_a_relay_reports_every_limit_of_the_policy_behind_it_so_rtc_is_taken_as_applied():
    """The relay passed on max_denoising_steps alone: gr00t-eval then recorded --rtc-frozen-steps as not applied
    through it (and warned), although the model behind the relay applies it. Its own server limits stay its own."""
    from gr00t_eval.applied_settings import settings_not_applied
    from gr00t_server.serving.limits import ServerLimits

    settings = {"denoising_steps": 4, "rtc_frozen_steps": 2}
    with running_server(OwnRtcPolicy(), limits=ServerLimits(max_rows=7)) as server, \
            PolicyClient(port=server.port, timeout_ms=5000) as upstream:
        direct_limits = upstream.get_server_info()["limits"]
        with running_server(upstream) as relay, PolicyClient(port=relay.port, timeout_ms=5000) as robot:
            robot.get_action(libero_like_observation(height=8, width=8))  # the relay learns its upstream
            limits = robot.get_server_info()["limits"]
            assert settings_not_applied(robot, settings) == {}
    assert direct_limits["max_rows"] == 7 and limits["max_rows"] != 7  # the relay's own
    assert {name: limits[name] for name in ("max_denoising_steps", "rtc", "max_widgets")} == {
        "max_denoising_steps": 8, "rtc": True, "max_widgets": 3}

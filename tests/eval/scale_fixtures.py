"""A tiny flat-GR00T env where a constant action succeeds in a seed-dependent number of steps, and its policy server.

`walkto/<speed>`: each step with a positive action moves `speed` units; the goal lies 2 + seed % 7 units away;
reward is the fraction of the way covered. With max_episode_steps=6, speed 1 succeeds for seeds with
seed % 7 <= 4 and speed 2 for all of them, so pc_success and rewards differ per task and per seed.
"""

import os
import signal
import string
import threading
import time

import gymnasium as gym
import numpy as np

from gr00t_client import BasePolicy, EmbodimentTag, ModalityConfig
from gr00t_eval.rollout.envs import register_env_prefix

LANGUAGE_KEY = "annotation.human.task_description"
ACTION_HORIZON = 4


class WalkToEnv(gym.Env):
    """Walk towards a goal 2 + seed % 7 units away at `speed` units per positive action."""

    def __init__(self, speed: float = 1.0):
        self.speed = float(speed)
        self.observation_space = gym.spaces.Dict({
            "state.position": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32),
            LANGUAGE_KEY: gym.spaces.Text(max_length=64, charset=string.printable),
        })
        self.action_space = gym.spaces.Dict({"action.push": gym.spaces.Box(-1.0, 1.0, (1,), np.float32)})
        self.goal = 2.0
        self.position = 0.0

    def _obs(self):
        return {"state.position": np.array([self.position], np.float32), LANGUAGE_KEY: "walk to the goal"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.goal = 2.0 + (int(seed) % 7 if seed is not None else 0)
        self.position = 0.0
        return self._obs(), {}

    def step(self, action):
        if float(np.asarray(action["action.push"]).reshape(-1)[0]) > 0:
            self.position += self.speed
        success = self.position >= self.goal
        return self._obs(), min(1.0, self.position / self.goal), bool(success), False, {"success": success}


    def close(self):
        ENV_EVENTS.append(("close", self.speed))


ENV_EVENTS = []  # ("make" | "close", speed) in order, for envs built in this process (sync vectorisation)


def make_walkto_env(task: str, **kwargs):
    """Adapter: `walkto/fast` moves 2 units per step, `walkto/slow` 1."""
    speeds = {"fast": 2.0, "slow": 1.0}
    if task not in speeds:
        raise ValueError(f"unknown walkto task {task!r}; expected one of {sorted(speeds)}")
    ENV_EVENTS.append(("make", speeds[task]))
    return WalkToEnv(speeds[task], **kwargs)


def register():
    """Register the `walkto` env prefix (call in every process that builds these envs)."""
    register_env_prefix("walkto", EmbodimentTag.NEW_EMBODIMENT, make_walkto_env)


register()


def expected_success(task: str, seed: int, max_episode_steps: int = 6) -> bool:
    """Whether the constant policy succeeds within the step limit."""
    speed = {"fast": 2.0, "slow": 1.0}[task.split("/")[1]]
    return int(np.ceil((2 + seed % 7) / speed)) <= max_episode_steps


class ConstantPolicy(BasePolicy):
    """Always pushes forward: action.push = 1 for every env and step of the chunk."""

    def __init__(self):
        super().__init__(strict=False)

    def get_modality_config(self):
        return {
            "state": ModalityConfig([0], ["position"]),
            "action": ModalityConfig(list(range(ACTION_HORIZON)), ["push"]),
            "language": ModalityConfig([0], [LANGUAGE_KEY]),
        }

    def _get_action(self, observation, options=None):
        batch = np.asarray(observation["state.position"]).shape[0]
        return {"action.push": np.ones((batch, ACTION_HORIZON, 1), np.float32)}, {}

    def reset(self, options=None):
        return {}


class CountingPolicy(ConstantPolicy):
    """ConstantPolicy that counts the action calls it answers (another policy class: another identity)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        return super()._get_action(observation, options)


class Checkpoint(ConstantPolicy):
    """The walkto policy, as served from checkpoint `name` (what a Gr00tPolicy's identity() tells apart)."""

    def __init__(self, name):
        super().__init__()
        self.name = name

    def identity(self):
        return {"kind": "test", "checkpoint": self.name}


class SlowPolicy(ConstantPolicy):
    """ConstantPolicy taking `delay` s per call, so a run lasts long enough to be stopped."""

    def __init__(self, delay):
        super().__init__()
        self.delay = delay

    def _get_action(self, observation, options=None):
        time.sleep(self.delay)
        return super()._get_action(observation, options)


class HangsOnCall(ConstantPolicy):
    """Answers `call - 1` get_action requests, then hangs in the next until `release` is set; `hanging` is set
    when it starts to (for serving.stopped_while_it_hangs)."""

    def __init__(self, call):
        super().__init__()
        self.call, self.calls, self.hanging, self.release = call, 0, threading.Event(), threading.Event()

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == self.call:
            self.hanging.set()
            self.release.wait(30)
        return super()._get_action(observation, options)


class InterruptOnCall(ConstantPolicy):
    """Ctrl-C arriving during policy call number `call` (1-based); every other call takes `nap_s` first."""

    def __init__(self, call, nap_s: float = 0.0):
        super().__init__()
        self.call, self.calls, self.nap_s = call, 0, nap_s

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == self.call:
            raise KeyboardInterrupt
        time.sleep(self.nap_s)
        return super()._get_action(observation, options)



class SigintOnCall(ConstantPolicy):
    """Served in this process: a real SIGINT (Ctrl-C) reaches it while policy call number `call` is answered (once)."""

    def __init__(self, call: int):
        super().__init__()
        self.call, self.calls = call, 0

    def _get_action(self, observation, options=None):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), signal.SIGINT)
        return super()._get_action(observation, options)


class CameraWalkEnv(WalkToEnv):
    """walkto with a 16x16 camera of a constant picture, so each episode writes a video."""

    def __init__(self, speed: float):
        super().__init__(speed)
        self.observation_space = gym.spaces.Dict({**self.observation_space.spaces,
                                                  "video.cam": gym.spaces.Box(0, 255, (16, 16, 3), np.uint8)})

    def _obs(self):
        return {**super()._obs(), "video.cam": np.full((16, 16, 3), 100, np.uint8)}

def run_cli(argv):
    """`gr00t-eval ARGV` with the scale commands wired in (cli.py may not call the wiring functions yet)."""
    import argparse

    from gr00t_eval import cli
    from gr00t_eval.scale_cli import add_scale_arguments, register_scale_commands

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "batch" not in sub.choices:
        add_scale_arguments(sub.choices["rollout"])
        register_scale_commands(sub)
    args = parser.parse_args(argv)
    scale_command = getattr(args, "scale_command", None)
    code = scale_command(args) if scale_command is not None else None
    if code is None:
        code = {"rollout": cli.cmd_rollout, "open-loop": cli.cmd_open_loop, "record": cli.cmd_record}[args.command](args)
    return code


def policy_server(policy=None, api_token=None):
    """A PolicyServer on a free loopback port in a background thread; yields the server."""
    from serving import running_server

    return running_server(policy or ConstantPolicy(), api_token=api_token)


def two_shards(out):
    """Both shards of a 4-episode walkto/fast run (shard 0/2 episodes 0-1, shard 1/2 2-3) written into `out`."""
    from gr00t_eval import cli

    with policy_server() as server:
        for index in (0, 1):
            assert cli.main(["rollout", "--env-name", "walkto/fast", "--n-episodes", "4", "--n-envs", "1",
                             "--vectorization", "sync", "--n-action-steps", "2", "--max-episode-steps", "6",
                             "--seed", "0", "--no-video", "--policy-client-port", str(server.port), "--shard",
                             f"{index}/2", "--output-dir", str(out)]) == 0
    return out


def sim_replay_policy(dataset, execution_horizon: int):
    """What `gr00t-server serve --dataset-path D --use-sim-policy-wrapper` serves: flat keys, as the sim envs send."""
    from gr00t_server.policies.replay import ReplayPolicy
    from gr00t_server.policies.sim_wrapper import Gr00tSimPolicyWrapper

    return Gr00tSimPolicyWrapper(ReplayPolicy(dataset, execution_horizon=execution_horizon))


def free_port():
    """A loopback TCP port with nothing listening on it (for 'server gone' cases)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def names_in_one_second(monkeypatch, n_runs: int):
    """Make `n_runs` concurrent runs without --output-dir all pick their first dated name for one and the same
    second, and hold each until every run has picked one (so they race for the same directory). Returns the
    unpatched run_dir.dated_output_dir, for the names the test expects."""
    import threading

    from gr00t_eval import run_dir

    all_named = threading.Barrier(n_runs, timeout=30)
    dated = run_dir.dated_output_dir
    first_call = threading.local()

    def same_second(base, label, now=None):
        path = dated(base, label, now=1_700_000_000.0)
        if not getattr(first_call, "done", False):
            first_call.done = True
            all_named.wait()
        return path

    monkeypatch.setattr(run_dir, "dated_output_dir", same_second)
    return dated

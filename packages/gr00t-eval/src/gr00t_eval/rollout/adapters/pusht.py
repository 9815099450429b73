"""PushT (gym-pusht) as a flat-GR00T env: `video.image`, `state.agent_pos`, language, `action.agent_pos`."""

from __future__ import annotations

import string
from typing import Any, Dict, Optional

from ...extras import MissingExtraError, is_missing, require

require("gymnasium", "pusht", "PushT envs")  # one line naming the extra (`record` reaches here without the runner)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from . import checked_image_size  # noqa: E402

LANGUAGE_KEY = "annotation.human.action.task_description"
INSTRUCTION = "push the T-shaped block onto the T-shaped target"
UNLIMITED_STEPS = 10**9  # gym's TimeLimit, lifted (see PushTEnv)


class PushTEnv(gym.Env):
    """gym-pusht's PushT-v0 with pixel + agent-position observations; success is info["is_success"]."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str = "", image_size: int = 96) -> None:
        image_size = checked_image_size(image_size)
        try:
            import gym_pusht  # noqa: F401 - registers gym_pusht/PushT-v0
        except ImportError as exc:
            if not is_missing(exc, "gym_pusht"):
                message = f"PushT envs need gym-pusht: gym_pusht is installed but failed to import ({exc})"
                raise MissingExtraError(message) from exc
            raise MissingExtraError(f"PushT envs need gym-pusht ({exc}); install with: pip install 'gr00t-eval[pusht]'") from exc
        env_id = f"gym_pusht/{task}" if task else "gym_pusht/PushT-v0"
        # gym-pusht registers a TimeLimit of 300 steps: `rollout --max-episode-steps 720` (the default) was cut at 300
        # and scored a failure without a word. The caller's budget (rollout's MultiStepWrapper, record's loop) is the
        # only limit, as for Meta-World.
        self._env = gym.make(
            env_id, obs_type="pixels_agent_pos", render_mode="rgb_array",
            observation_width=image_size, observation_height=image_size, max_episode_steps=UNLIMITED_STEPS,
        )
        self.observation_space = gym.spaces.Dict(
            {
                "video.image": gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8),
                "state.agent_pos": gym.spaces.Box(0.0, 512.0, (2,), np.float32),
                LANGUAGE_KEY: gym.spaces.Text(max_length=256, charset=string.printable),
            }
        )
        self.action_space = gym.spaces.Dict({"action.agent_pos": gym.spaces.Box(0.0, 512.0, (2,), np.float32)})

    @staticmethod
    def _observation(raw: Dict[str, np.ndarray]) -> Dict[str, Any]:
        return {
            "video.image": np.asarray(raw["pixels"], dtype=np.uint8),
            "state.agent_pos": np.asarray(raw["agent_pos"], dtype=np.float32),
            LANGUAGE_KEY: INSTRUCTION,
        }

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        raw, info = self._env.reset(seed=seed)
        return self._observation(raw), {}

    def step(self, action: Dict[str, np.ndarray]):
        if "action.agent_pos" not in action:
            raise KeyError(f"PushT action needs 'action.agent_pos'; got keys {sorted(action)}")
        target = np.asarray(action["action.agent_pos"], dtype=np.float32).reshape(2)
        if not np.isfinite(target).all():  # the physics would take NaN positions from it, and score on from there
            raise ValueError(f"action.agent_pos holds non-finite values {target.tolist()}; expected finite numbers")
        raw, reward, terminated, truncated, info = self._env.step(target)
        return self._observation(raw), float(reward), bool(terminated), bool(truncated), {"success": bool(info.get("is_success", False))}

    def render(self) -> np.ndarray:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


def make_pusht_env(task: str = "", **kwargs: Any) -> PushTEnv:
    """Adapter entry point for env names `pusht/<gym-pusht id>` (e.g. `pusht/PushT-v0`)."""
    return PushTEnv(task, **kwargs)

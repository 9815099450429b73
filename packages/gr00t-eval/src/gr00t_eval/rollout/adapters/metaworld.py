"""Meta-World (v3 tasks) as a flat-GR00T env: one camera, arm/gripper/object/goal state, language, action.*.

Headless MuJoCo rendering needs MUJOCO_GL=egl (set here when unset). Determinism: `reset(seed=s)` re-seeds the
task's random goal/object placement from `s` alone, so an episode is the same whatever ran before it.
"""

from __future__ import annotations

import itertools
import logging
import os
import string
from importlib import metadata
from typing import Any, Dict, Optional

from ...extras import MissingExtraError, require

require("gymnasium", "sim", "Meta-World envs")  # one line naming the extra (`record` reaches here without the runner)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from . import checked_image_size  # noqa: E402

LANGUAGE_KEY = "annotation.human.action.task_description"
STATE_SLICES = {"eef_pos": (0, 3), "gripper": (3, 4), "objects": (4, 18), "goal": (36, 39)}
ACTION_DIMS = {"eef_delta": 3, "gripper": 1}
DEFAULT_CAMERA = "corner2"

# A few task descriptions in words; other tasks get their name with dashes as spaces.
TASK_DESCRIPTIONS = {
    "reach-v3": "reach the red goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "button-press-topdown-v3": "press the button from the top",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "door-open-v3": "open the door",
    "window-open-v3": "open the window",
}


def task_description(task: str) -> str:
    """The language instruction of a Meta-World task."""
    return TASK_DESCRIPTIONS.get(task, task.removesuffix("-v3").replace("-", " "))


def _import_metaworld():
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    # PyOpenGL, which MuJoCo's EGL backend imports, logs at INFO that its optional OpenGL_accelerate speed-ups are
    # missing: a line on every record and rollout at the default level that is no concern of the user's.
    opengl_log = logging.getLogger("OpenGL.acceleratesupport")
    if opengl_log.level == logging.NOTSET and not opengl_log.isEnabledFor(logging.DEBUG):
        opengl_log.setLevel(logging.WARNING)
    try:
        import metaworld  # noqa: F401
        import mujoco
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name in ("metaworld", "mujoco"):
            raise MissingExtraError(f"Meta-World envs need metaworld and mujoco ({exc}); install with: pip install 'gr00t-eval[sim]'") from exc
        # installed, but failing to load: a GL library, a binary built for another numpy
        raise MissingExtraError(f"Meta-World envs could not import metaworld/mujoco ({exc})") from exc
    refuse_mujoco_too_new(mujoco.__version__, _installed_version("metaworld"))
    return mujoco, ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE, ENV_POLICY_MAP


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # imported from a source folder, not installed
        return "unknown"


def _release(version: str) -> tuple:
    parts = []
    for part in version.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def refuse_mujoco_too_new(mujoco_version: str, metaworld_version: str) -> None:
    """MissingExtraError where MuJoCo 4 sits beside a Meta-World written for MuJoCo 3 (3.1.1 and older, or one whose
    version is unknown): its resets write 11 values into MuJoCo 4's 12-wide weld rows, and every Meta-World command
    stopped at the first env with numpy's 'could not broadcast input array from shape (11,) into shape (12,)'."""
    if _release(mujoco_version) < (4,):
        return
    known = _release(metaworld_version)
    if known and known > (3, 1, 1):
        return
    which = (f"Meta-World {metaworld_version}" if known else
             "This Meta-World (its version unknown: imported from a folder, not installed)")
    raise MissingExtraError(
        f"{which} is written for MuJoCo 3, and MuJoCo {mujoco_version} is installed (its "
        "weld constraints changed shape in 4.0); install MuJoCo 3: pip install 'mujoco>=3.3,<4'")


def check_task(task: str) -> None:
    """ValueError naming the known tasks when Meta-World has no task `task` (used before a run starts)."""
    _, envs, _ = _import_metaworld()
    if f"{task}-goal-observable" not in envs:
        known = ", ".join(sorted(k.removesuffix("-goal-observable") for k in envs))
        raise ValueError(f"unknown Meta-World task {task!r}; expected one of: {known}")


UNLIMITED_PATH_LENGTH = 2**31 - 1  # Meta-World's own step limit, set out of the way (see MetaWorldEnv)


class MetaWorldEnv(gym.Env):
    """A Meta-World task with goal-observable state, rendered by `camera` at `image_size` pixels."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, task: str, image_size: int = 64, camera: str = DEFAULT_CAMERA, seed: Optional[int] = None) -> None:
        """`seed`: the placements of resets without a seed of their own; None (the default) draws them from fresh
        entropy, as gymnasium's envs do (a fixed 0 gave every env made the same scenes in lock-step)."""
        mujoco, envs, _ = _import_metaworld()
        check_task(task)
        key = f"{task}-goal-observable"
        self.task = task
        self.camera = camera
        self.image_size = checked_image_size(image_size)
        self._mujoco = mujoco
        self._env = envs[key](seed=seed)
        self._env.seeded_rand_vec = True  # draw placements from the env's seeded generator, not np.random
        # Meta-World ends every episode at its own max_path_length (500) with truncated=True, whatever budget the
        # caller set: `rollout --max-episode-steps 720` (the default) and `record --max-episode-steps 800` were cut
        # at 500 without a word. The caller's budget (rollout's MultiStepWrapper, record's loop) is the only limit.
        self._env.max_path_length = UNLIMITED_PATH_LENGTH
        cameras = [self._env.model.camera(i).name for i in range(self._env.model.ncam)]
        if camera not in cameras:  # MuJoCo would only say so at the first render, after a dataset or video was begun
            raise ValueError(f"Meta-World has no camera {camera!r}; its cameras: {', '.join(cameras)}")
        self._renderer = None
        from gr00t_client.cli_signals import stop_signals_held

        try:
            visual = self._env.model.vis.global_  # the offscreen framebuffer (Meta-World's: 640x480) must hold the image
            visual.offwidth, visual.offheight = max(visual.offwidth, self.image_size), max(visual.offheight, self.image_size)
            # A KeyboardInterrupt inside left a half-made renderer (or GL context), whose __del__ then printed
            # 'Exception ignored in ... Renderer.__del__' AttributeError tracebacks after the interrupt's own line.
            with stop_signals_held():
                self._renderer = mujoco.Renderer(self._env.model, self.image_size, self.image_size)
        except Exception as exc:  # noqa: BLE001 - re-raised with the fix
            raise RuntimeError(
                f"MuJoCo cannot render offscreen ({exc}). Set MUJOCO_GL=egl before anything imports mujoco "
                "(needs the system packages libegl1, libegl-mesa0 and libgl1-mesa-dri)"
            ) from exc
        self.instruction = task_description(task)
        self.render_mode = "rgb_array"
        self.observation_space = gym.spaces.Dict(
            {
                f"video.{camera}": gym.spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8),
                **{f"state.{k}": gym.spaces.Box(-np.inf, np.inf, (b - a,), np.float32) for k, (a, b) in STATE_SLICES.items()},
                LANGUAGE_KEY: gym.spaces.Text(max_length=256, charset=string.printable),
            }
        )
        self.action_space = gym.spaces.Dict({f"action.{k}": gym.spaces.Box(-1.0, 1.0, (d,), np.float32) for k, d in ACTION_DIMS.items()})
        self._raw_obs: Optional[np.ndarray] = None

    def render(self) -> np.ndarray:
        """The camera image, uint8 (image_size, image_size, 3)."""
        scene_flags = self._mujoco.mjtRndFlag
        self._renderer.update_scene(self._env.data, camera=self.camera)
        # Shadows and reflections cost 4x on software GL and add nothing a policy needs.
        for flag in (scene_flags.mjRND_SHADOW, scene_flags.mjRND_REFLECTION, scene_flags.mjRND_SKYBOX):
            self._renderer.scene.flags[flag] = 0
        # Meta-World's cameras render upside down and mirrored; turn the image 180 degrees.
        return np.ascontiguousarray(self._renderer.render()[::-1, ::-1])

    def _observation(self, raw: np.ndarray) -> Dict[str, Any]:
        self._raw_obs = raw
        obs: Dict[str, Any] = {f"video.{self.camera}": self.render()}
        for key, (a, b) in STATE_SLICES.items():
            obs[f"state.{key}"] = np.asarray(raw[a:b], dtype=np.float32)
        obs[LANGUAGE_KEY] = self.instruction
        return obs

    @property
    def raw_observation(self) -> Optional[np.ndarray]:
        """Meta-World's own 39-dim observation (what its scripted policies read)."""
        return self._raw_obs

    def reset(self, *, seed: Optional[int] = None, options: Optional[Dict[str, Any]] = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env.seed(int(seed))
        self._env._freeze_rand_vec = False  # a new placement on each reset, from the (re)seeded generator
        self._env.reset()
        self._env._freeze_rand_vec = True
        # Meta-World's reset moves bodies (a drawer, a goal marker) without recomputing positions: its observation
        # (6 tasks) and a render (29 of 50) showed the scene before the reset until the first step. Recomputed here,
        # and the reset observation made again as Meta-World makes it (the previous frame the same as the current).
        self._mujoco.mj_forward(self._env.model, self._env.data)
        self._env._prev_obs = self._env._get_curr_obs_combined_no_goal()
        raw = np.asarray(self._env._get_obs(), dtype=np.float64)
        return self._observation(raw), {"task": self.task}

    def step(self, action: Dict[str, np.ndarray]):
        flat = action_to_array(action)
        before = self._instabilities()
        raw, reward, terminated, truncated, info = self._env.step(flat)
        if self._instabilities() != before:
            # MuJoCo resets the whole scene when its simulation diverges: the step returns normally, the robot and
            # objects back at their default pose, which is the goal of drawer-, door- and window-close (a success)
            raise RuntimeError(f"Meta-World {self.task}: MuJoCo's simulation became unstable at this step (NaN, inf "
                               "or huge values) and reset the scene; the episode cannot be scored from here")
        out_info = {"success": bool(info.get("success", False))}
        return self._observation(raw), float(reward), bool(terminated), bool(truncated), out_info

    def _instabilities(self) -> int:
        """MuJoCo's count of the steps it found NaN, inf or huge positions, velocities, accelerations or controls at
        (and reset the scene for)."""
        warnings, kinds = self._env.data.warning, self._mujoco.mjtWarning
        return sum(warnings[kind].number for kind in (kinds.mjWARN_BADQPOS, kinds.mjWARN_BADQVEL, kinds.mjWARN_BADQACC,
                                                       kinds.mjWARN_BADCTRL))

    def close(self) -> None:
        renderer, self._renderer = getattr(self, "_renderer", None), None
        if renderer is not None:
            renderer.close()  # before interpreter exit, or EGL complains while tearing down
        env = getattr(self, "_env", None)
        if env is not None:
            env.close()


def action_to_array(action: Dict[str, np.ndarray]) -> np.ndarray:
    """GR00T `action.*` groups -> Meta-World's 4-dim float32 action, clipped to [-1, 1]; ValueError for NaN or inf
    (np.clip passes NaN, which MuJoCo answers by resetting the scene: a close task's default pose is its goal)."""
    missing = [f"action.{k}" for k in ACTION_DIMS if f"action.{k}" not in action]
    if missing:
        raise KeyError(f"Meta-World action is missing {missing}; got keys {sorted(action)}")
    parts = [np.asarray(action[f"action.{k}"], dtype=np.float32).reshape(-1) for k in ACTION_DIMS]
    for (key, dim), part in zip(ACTION_DIMS.items(), parts):
        if part.shape[0] != dim:
            raise ValueError(f"action.{key} must have {dim} values, got shape {part.shape}")
        if not np.isfinite(part).all():
            raise ValueError(f"action.{key} holds non-finite values {part.tolist()}; expected finite numbers (they are "
                             "clipped to [-1, 1])")
    return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)


def array_to_action(flat: np.ndarray) -> Dict[str, np.ndarray]:
    """Meta-World's 4-dim action -> GR00T `action.*` groups."""
    out, start = {}, 0
    for key, dim in ACTION_DIMS.items():
        out[f"action.{key}"] = np.asarray(flat[start : start + dim], dtype=np.float32)
        start += dim
    return out


def scripted_policy(task: str) -> Any:
    """Meta-World's own scripted expert for `task`: raw 39-dim observation -> 4-dim action."""
    _, _, policies = _import_metaworld()
    if task not in policies:
        raise ValueError(f"Meta-World has no scripted policy for task {task!r}")
    return policies[task]()


def make_metaworld_env(task: str, **kwargs: Any) -> MetaWorldEnv:
    """Adapter entry point for env names `metaworld/<task>`."""
    return MetaWorldEnv(task, **kwargs)

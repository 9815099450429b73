"""Environment registry: env-name prefix -> embodiment tag, and prefix -> adapter that builds a flat-GR00T env.

An env name is `<prefix>/<task>`. With an adapter registered for the prefix (built in: `metaworld`, `pusht`)
the adapter builds the env; otherwise the name is a gymnasium id of an env that already speaks GR00T's flat
sim format (`video.*`, `state.*`, `annotation.*` observations, `action.*` actions, info["success"]).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

from ..extras import require_gymnasium

require_gymnasium("closed-loop rollout")  # one line naming the extra, not a deep ImportError

import gymnasium as gym  # noqa: E402

from gr00t_client import EmbodimentTag  # noqa: E402

from .config import split_env_name  # noqa: E402,F401 - part of this module's API
from .env_tables import BUILT_IN_ADAPTERS, BUILT_IN_TAGS  # noqa: E402

# The reference's table and the built-in adapters (rollout/env_tables.py, which needs no gymnasium), as registered now.
ENV_PREFIX_TO_EMBODIMENT_TAG: Dict[str, EmbodimentTag] = dict(BUILT_IN_TAGS)

# prefix -> "module:function" (imported lazily, so simulators stay optional) or a callable(task, **kwargs).
EnvAdapter = Union[str, Callable[..., gym.Env]]
_ADAPTERS: Dict[str, EnvAdapter] = dict(BUILT_IN_ADAPTERS)


def register_env_prefix(prefix: str, embodiment_tag: Union[EmbodimentTag, str], adapter: Optional[EnvAdapter] = None) -> None:
    """Map env names `<prefix>/...` to an embodiment; with `adapter`, build them with it (a callable or "module:func")."""
    if "/" in prefix or not prefix:
        raise ValueError(f"an env prefix is the part before the first '/', got {prefix!r}")
    ENV_PREFIX_TO_EMBODIMENT_TAG[prefix] = EmbodimentTag.resolve(embodiment_tag)
    if adapter is not None:
        _ADAPTERS[prefix] = adapter


def embodiment_for_env(env_name: str) -> EmbodimentTag:
    """The embodiment of an env name: the prefix table first, else the prefix read as an embodiment tag."""
    problem = unknown_prefix_problem(env_name)
    if problem is not None:
        raise ValueError(f"{problem} (register new prefixes with --env-adapter PREFIX=MODULE:FUNCTION and --env-prefix "
                         "PREFIX=TAG, or gr00t_eval.rollout.register_env_prefix in Python)")
    prefix, _ = split_env_name(env_name)
    return ENV_PREFIX_TO_EMBODIMENT_TAG[prefix] if prefix in ENV_PREFIX_TO_EMBODIMENT_TAG else EmbodimentTag.resolve(prefix)


def unknown_prefix_problem(env_name: str) -> Optional[str]:
    """"env name 'x/y': unknown prefix 'x'; expected ..." when the prefix is neither registered nor an embodiment tag,
    without advice on registering one (a caller that cannot, `gr00t-eval batch`, gives its own); None when it is known."""
    prefix, _ = split_env_name(env_name)
    if prefix in ENV_PREFIX_TO_EMBODIMENT_TAG:
        return None
    try:
        EmbodimentTag.resolve(prefix)
    except ValueError:
        known = ", ".join(sorted(ENV_PREFIX_TO_EMBODIMENT_TAG))
        return (f"env name {env_name!r}: unknown prefix {prefix!r}; expected one of the env prefixes [{known}] or an "
                "embodiment tag value")
    return None


def _resolve_adapter(adapter: EnvAdapter) -> Callable[..., gym.Env]:
    if callable(adapter):
        return adapter
    module_name, _, attr = adapter.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if module_name.startswith("gr00t_eval."):  # a built-in adapter: its simulator is an optional extra
            raise ImportError(f"env adapter {adapter!r} needs a simulator that is not installed ({exc}); "
                              "install it with: pip install 'gr00t-eval[sim]'") from exc
        raise ImportError(f"env adapter {adapter!r}: cannot import module {module_name!r} ({exc}); is it installed, "
                          "or on PYTHONPATH?") from exc
    function = getattr(module, attr, None)
    if not callable(function):
        raise ValueError(f"env adapter {adapter!r}: module {module_name!r} has no function {attr!r}"
                         + ("" if function is None else f" ({attr} is a {type(function).__name__})"))
    return function


@dataclass(frozen=True)
class EnvFactory:
    """A picklable recipe for one raw env (sent to subprocess workers): adapter by prefix, else gym.make(id).

    For a gym id the parent's registration (EnvSpec) travels along, so envs registered at run time in the
    parent also build in spawned workers, and `step_budget` (the run's max_episode_steps) is gym.make's
    `max_episode_steps` unless the kwargs give one: the id's registered TimeLimit does not cut the run's budget short.
    gymnasium's env checker is left out (unless the kwargs ask for it): after a first reset that raised, it errored
    every later step of that env; MultiStepWrapper and policy_actions check the spaces and actions themselves.
    """

    env_name: str
    adapter: Optional[EnvAdapter] = None
    kwargs: Tuple[Tuple[str, Any], ...] = ()
    spec: Optional[Any] = None  # gymnasium EnvSpec
    step_budget: Optional[int] = None

    def __call__(self) -> gym.Env:
        kwargs = dict(self.kwargs)
        if self.adapter is not None:
            _, task = split_env_name(self.env_name)
            return _resolve_adapter(self.adapter)(task, **kwargs)
        if self.step_budget is not None:
            kwargs.setdefault("max_episode_steps", self.step_budget)
        kwargs.setdefault("disable_env_checker", True)
        return gym.make(self.spec if self.spec is not None else self.env_name, **kwargs)


def env_factory(env_name: str, **kwargs: Any) -> EnvFactory:
    """The factory for `env_name` (validating the prefix), with adapter or gym.make keyword arguments."""
    embodiment_for_env(env_name)
    prefix, _ = split_env_name(env_name)
    adapter = _ADAPTERS.get(prefix)
    spec = None
    if adapter is None:
        spec = gym.envs.registry.get(env_name)  # None: the id may be registered by an import in the worker
    return EnvFactory(env_name, adapter, tuple(sorted(kwargs.items())), spec)


def check_env_name(env_name: str) -> None:
    """Refuse an env name that cannot be built, before a run starts: an unknown prefix, or a task its adapter's module
    says it does not have (an adapter module may define `check_task(task)`, which raises ValueError)."""
    embodiment_for_env(env_name)
    prefix, task = split_env_name(env_name)
    adapter = _ADAPTERS.get(prefix)
    if not isinstance(adapter, str):
        return
    module_name, _, _ = adapter.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:  # the simulator is missing: building the env says so, naming the extra
        return
    check_task = getattr(module, "check_task", None)
    if check_task is not None:
        check_task(task)


def make_env(env_name: str, **kwargs: Any) -> gym.Env:
    """Build one raw (flat GR00T format) env by name."""
    return env_factory(env_name, **kwargs)()

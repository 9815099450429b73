"""The batch job file (docs/batch-jobs.md): parse and check each job, layering `defaults` under the job's own
settings; IsaacLab-Arena's field names are accepted as aliases (ARENA_ALIASES). A job that cannot run becomes a
JobError naming it and why, so the other jobs still run."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from gr00t_client.cli_flags import HomeFolderUnknownError, ascii_digits, home_expanded_path, token_shape
from gr00t_client.client import MAX_TIMEOUT_MS
from gr00t_client.client_options import check_host, endpoint_host
from gr00t_client.curve import is_z85_key, unwrapped_key_text
from gr00t_client.json_keys import RepeatedKeyError, loads_unique_keys

from .rollout.config import (MAX_ENVS, MAX_EPISODES, RolloutConfig, check_env_kwargs_finite, check_env_timeout,
                             check_env_timeout_applies, default_env_timeout, env_timeout_applies)
from .suites import one_folder_key, why_one_folder

logger = logging.getLogger(__name__)

JOB_KEYS = {"name", "env_name", "policy_server", "n_episodes", "max_episode_steps", "n_envs", "seed", "overrides", "policy_type"}
# IsaacLab-Arena job fields -> ours (policy_config_dict and arena_env_args are translated in _layer).
ARENA_ALIASES = {"num_episodes": "n_episodes", "num_envs": "n_envs", "num_steps": "max_episode_steps"}
ARENA_SERVER_KEYS = {"host": "host", "remote_host": "host", "port": "port", "remote_port": "port",
                     "api_token": "api_token", "api_token_env": "api_token_env", "timeout_ms": "timeout_ms"}
ARENA_ENV_NAME_KEYS = ("env_name", "environment", "task")
# The rollout settings that are job fields of their own; given in `overrides` they are read as those fields.
TOP_LEVEL_SETTINGS = ("n_episodes", "max_episode_steps", "n_envs", "seed")
# Arena's policy_type values for a GR00T policy, which here is always the server in policy_server: the
# registered names of its GR00T client of a GR00T policy server and of its in-process GR00T policy, and the
# classes (dotted module.Class paths, any module) of those and of its remote chunking client. Arena's other
# policies (zero_action, replay, rsl_rl, ...) run inside the simulator, not against a policy server.
ARENA_GR00T_POLICY_NAMES = ("gr00t_remote_closedloop", "gr00t_closedloop")
ARENA_GR00T_POLICY_CLASSES = ("Gr00tRemoteClosedloopPolicy", "Gr00tClosedloopPolicy", "ActionChunkingClientSidePolicy")
SERVER_KEYS = {"host", "port", "api_token", "api_token_env", "timeout_ms", "server_public_key", "client_key"}
# Settings whose values an error names by field only: a token or an inline z85 key would land in logs and results files.
SECRET_SETTINGS = frozenset({"api_token", "client_key"})
# first_episode is a shard's own (rollout --shard sets it); a job's episodes are numbered from 0.
CONFIG_FIELDS = {f.name for f in dataclasses.fields(RolloutConfig)} - {"env_name", "first_episode"}
DEFAULT_TIMEOUT_MS = 15000


class JobError(ValueError):
    """A job's description is invalid (the message names the job and the field); `job_name` when it has one."""

    def __init__(self, message: str, job_name: Optional[str] = None) -> None:
        super().__init__(message)
        self.job_name = job_name


@dataclass(frozen=True)
class PolicyServerAddress:
    """Where a job's policy server listens, and how to authenticate."""

    host: str
    port: int
    api_token: Optional[str] = None
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    server_public_key: Optional[str] = None  # CURVE: the server's .key file or z85 key
    client_key: Optional[str] = None  # CURVE: this client's .key_secret file or z85 secret key
    api_token_env: Optional[str] = None  # the variable holding the token, read as the job runs (Job.server_with_token)

    def __str__(self) -> str:
        return f"{endpoint_host(self.host)}:{self.port}"  # an IPv6 literal bracketed, as its port follows


def same_server_text(recorded: Any, server: PolicyServerAddress) -> bool:
    """Whether a record's 'HOST:PORT' names `server`: an older batch wrote an IPv6 host unbracketed ('::1:5555'),
    which is the same server as '[::1]:5555'."""
    if not isinstance(recorded, str):
        return False
    host, colon, port = recorded.rpartition(":")
    return recorded == str(server) or (bool(colon and host) and f"{endpoint_host(host)}:{port}" == str(server))


@dataclass(frozen=True)
class Job:
    """One rollout of the batch: env names or suites, a policy server and the RolloutConfig fields to set."""

    name: str
    env_name: str
    server: PolicyServerAddress
    config: Dict[str, Any] = field(default_factory=dict)

    def rollout_config(self) -> RolloutConfig:
        """The rollout settings of this job (its env_name and config; without an env_timeout_s, its vectorization's
        default, as for `rollout`)."""
        timeout = {"env_timeout_s": default_env_timeout(*_vectorization_and_n_envs(self.config))}
        return RolloutConfig(env_name=self.env_name, **{**timeout, **self.config})

    def server_with_token(self) -> PolicyServerAddress:
        """Its policy server with the API token read from `api_token_env` now, as the job runs (a done job that a
        resume keeps needs none); JobError naming the job for a variable not set, empty, or unlike 'api_token'."""
        if self.server.api_token_env is None:
            return self.server
        raw = {"api_token": self.server.api_token, "api_token_env": self.server.api_token_env}
        return dataclasses.replace(self.server, api_token=_token(self.name, raw), api_token_env=None)


def _server(name: str, raw: Any) -> PolicyServerAddress:
    if not isinstance(raw, Mapping):
        raise JobError(f"job {name!r}: 'policy_server' must be an object with 'host' and 'port', got {raw!r}")
    unknown = set(raw) - SERVER_KEYS
    if unknown:
        raise JobError(f"job {name!r}: unknown policy_server fields {sorted(unknown)}; allowed: {sorted(SERVER_KEYS)}")
    if "port" not in raw:
        raise JobError(f"job {name!r}: policy_server needs a 'port'")
    variable = raw.get("api_token_env")  # read when the job runs (Job.server_with_token)
    token = raw.get("api_token") if variable else _token(name, raw)
    if raw.get("client_key") and not raw.get("server_public_key"):
        raise JobError(f"job {name!r}: policy_server 'client_key' needs 'server_public_key'")
    port, timeout_ms = raw["port"], raw.get("timeout_ms", DEFAULT_TIMEOUT_MS)
    port, timeout_ms = (int(v) if isinstance(v, str) and ascii_digits(v.strip()) else v
                        for v in (port, timeout_ms))  # "5555"; not other digits, which int() takes or fails on
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise JobError(f"job {name!r}: policy_server 'port' must be an int from 1 to 65535, got {port!r}")
    if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int) or not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
        raise JobError(f"job {name!r}: policy_server 'timeout_ms' must be an int from 1 to {MAX_TIMEOUT_MS}, got {timeout_ms!r}")
    host = raw.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host.strip():
        raise JobError(f"job {name!r}: policy_server 'host' must be a host name or IP address, got {host!r}")
    try:  # as the client will judge it at the job's turn: a ':port' or scheme (the address the server prints, pasted
        check_host(host)  # whole), a malformed IPv6 address
    except ValueError:
        raise JobError(f"job {name!r}: policy_server 'host' {host!r} is not a host alone (a 'tcp://' scheme, a "
                       "':PORT', or a malformed IPv6 address); expected the host alone, with the port in 'port' (e.g. \"host\": \"127.0.0.1\", "
                       "\"port\": 5555)") from None
    return PolicyServerAddress(host, port, token, timeout_ms,
                               raw.get("server_public_key"), raw.get("client_key"), str(variable) if variable else None)


def _token(name: str, raw: Mapping[str, Any]) -> Optional[str]:
    """The job's API token: policy_server 'api_token', or the variable 'api_token_env' names (read now, as the job
    runs); JobError for the two given with different values, a variable that is not set, or a blank token (which
    would send none)."""
    token, variable = raw.get("api_token"), raw.get("api_token_env")
    source = "policy_server 'api_token'"
    if variable:
        from_env = os.environ.get(str(variable))
        if from_env is None:
            raise JobError(f"job {name!r}: environment variable {variable!r} (api_token_env) is not set")
        if token is not None and token != from_env:  # values not shown: they are secrets
            raise JobError(f"job {name!r}: policy_server 'api_token' and 'api_token_env' (${variable}) both given with "
                           "different values; give one of them")
        token, source = from_env, f"environment variable {variable!r} (api_token_env)"
    if token is not None and not str(token).strip():
        raise JobError(f"job {name!r}: {source} is empty: an unset variable? Leave it out to connect without a token")
    shape = None if token is None else token_shape(str(token))
    if shape is not None:  # the token itself never shown
        raise JobError(f"job {name!r}: {source} {shape}: gr00t-server refuses such a token at start-up, so no server "
                       "accepts it ('Invalid API token'); remove it")
    return token


def _set_once(who: str, target: Dict[str, Any], key: str, value: Any, given_as: Dict[str, str], field_name: str,
              job_name: Optional[str]) -> None:
    """target[key] = value, refusing a second, different value for the same setting within one layer."""
    if key in target and target[key] != value:
        if key in SECRET_SETTINGS:  # values not shown: they are secrets
            raise JobError(f"{who}: {given_as[key]!r} and {field_name!r} both given with different values (not shown: "
                           f"{key} is a secret); give one of them", job_name)
        raise JobError(f"{who}: {given_as[key]!r} ({target[key]!r}) and {field_name!r} ({value!r}) both given with "
                       "different values; give one of them", job_name)
    target[key] = value
    given_as.setdefault(key, field_name)


def _fold_into(who: str, base: Any, base_field: str, expected: str, extra: Sequence[Tuple[str, Any, str]],
               extra_field: str, job_name: Optional[str]) -> Dict[str, Any]:
    """The object `base` (given as `base_field`) with `extra`'s (key, value, the key as given under `extra_field`)
    set into it, refusing a second, different value for one key (from either)."""
    if not isinstance(base, Mapping):
        raise JobError(f"{who}: {base_field!r} must be {expected}, got {base!r}", job_name)
    folded, given_as = dict(base), {key: f"{base_field}.{key}" for key in base}
    for key, value, given in extra:
        _set_once(who, folded, key, value, given_as, f"{extra_field}.{given}", job_name)
    return folded


def _layer(who: str, raw: Mapping[str, Any], prefix: str = "", job_name: Optional[str] = None) -> Dict[str, Any]:
    """One layer (the defaults alone, or a job alone) in our field names: IsaacLab-Arena's fields (num_* counts,
    policy_config_dict, arena_env_args) and the top-level settings given in `overrides` are translated, and two
    different values for one setting within the layer are refused (a layer's aliases never beat its own fields)."""
    layer = {k: v for k, v in raw.items()
             if k not in ARENA_ALIASES and k not in ("policy_config_dict", "arena_env_args", "overrides")}
    given_as = {key: prefix + key for key in layer}
    overrides = raw.get("overrides")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise JobError(f"{who}: {prefix + 'overrides'!r} must be an object of rollout settings, got {overrides!r}", job_name)
    overrides = dict(overrides or {})
    for arena, ours in ARENA_ALIASES.items():
        if arena in raw:
            _set_once(who, layer, ours, raw[arena], given_as, prefix + arena, job_name)
    for key in TOP_LEVEL_SETTINGS:
        if key in overrides:
            _set_once(who, layer, key, overrides.pop(key), given_as, f"{prefix}overrides.{key}", job_name)
    config = raw.get("policy_config_dict")
    if config is not None:
        if not isinstance(config, Mapping):
            raise JobError(f"{who}: {prefix + 'policy_config_dict'!r} must be an object, got {config!r}", job_name)
        for key in config:
            if key not in ARENA_SERVER_KEYS:
                raise JobError(f"{who}: policy_config_dict key {key!r} has no meaning for a remote policy server; "
                               f"allowed: {sorted(ARENA_SERVER_KEYS)} (model settings belong to `gr00t-server serve`)",
                               job_name)
        server = [(ARENA_SERVER_KEYS[key], value, key) for key, value in config.items()]
        layer["policy_server"] = _fold_into(who, layer.get("policy_server", {}), f"{prefix}policy_server",
                                            "an object with 'host' and 'port'", server, f"{prefix}policy_config_dict",
                                            job_name)
    env_args = raw.get("arena_env_args")
    if env_args is not None:
        if not isinstance(env_args, Mapping):
            raise JobError(f"{who}: {prefix + 'arena_env_args'!r} must be an object, got {env_args!r}", job_name)
        env_args = dict(env_args)
        # Each of these names the env: two are two env names (the first won, the other went to the env as a keyword
        # argument), refused by _set_once when they differ
        for key in [key for key in ARENA_ENV_NAME_KEYS if key in env_args]:
            _set_once(who, layer, "env_name", env_args.pop(key), given_as, f"{prefix}arena_env_args.{key}", job_name)
        if env_args:
            try:  # named as given: the check of the folded env_kwargs would name a field the file does not have
                check_env_kwargs_finite(env_args, f"{prefix}arena_env_args")
            except ValueError as exc:
                raise JobError(f"{who}: {exc}", job_name) from None
            overrides["env_kwargs"] = _fold_into(who, overrides.get("env_kwargs", {}), f"{prefix}overrides.env_kwargs",
                                                 "an object of keyword arguments",
                                                 [(key, value, key) for key, value in env_args.items()],
                                                 f"{prefix}arena_env_args", job_name)
    layer["overrides"] = overrides
    return layer


def check_policy_type(name: str, policy_type: Any) -> None:
    """Arena's `policy_type`: accept the values that mean a GR00T policy (served by policy_server); refuse the rest."""
    text = str(policy_type) if isinstance(policy_type, str) else None
    if text is not None and (text in ARENA_GR00T_POLICY_NAMES
                             or ("." in text and text.rsplit(".", 1)[1] in ARENA_GR00T_POLICY_CLASSES)):
        return
    accepted = ", ".join([*ARENA_GR00T_POLICY_NAMES, *(f"<module>.{cls}" for cls in ARENA_GR00T_POLICY_CLASSES)])
    hint = ("serve the dataset with `gr00t-server serve --dataset-path` and evaluate that server" if text == "replay"
            else "gr00t-eval batch always evaluates the GR00T policy server in policy_server; leave policy_type out")
    raise JobError(f"job {name!r}: policy_type {policy_type!r} is not a GR00T policy server client; accepted: {accepted} "
                   f"({hint})", name)


# Whole-number settings and their least value, checked as `gr00t-eval rollout` checks its flags (a typo such as
# n_episodes 0 would otherwise run nothing and mark the job done). seed and max_episodes_rendered may also be null.
COUNT_MINIMUMS = {"n_episodes": 1, "max_episode_steps": 1, "n_envs": 0, "n_action_steps": 1, "seed": 0,
                  "max_episodes_rendered": 0, "steps_per_frame": 1, "video_fps": 1}
NULLABLE_COUNTS = ("seed", "max_episodes_rendered")


def check_counts(name: str, config: Mapping[str, Any]) -> None:
    """JobError naming the job and the field when a count setting is not a whole number at least its minimum (or
    env_timeout_s not a positive number of seconds, or other than the default where its envs run in this process:
    vectorization 'sync', or 'auto' with n_envs 1)."""
    for key, least in COUNT_MINIMUMS.items():
        if key not in config or (config[key] is None and key in NULLABLE_COUNTS):
            continue
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            where = key if key in JOB_KEYS else f"override {key}"
            raise JobError(f"job {name!r}: {where} must be a whole number >= {least}"
                           f"{' (0 = auto)' if key == 'n_envs' else ''}, got {value!r}", name)
    if isinstance(config.get("n_episodes"), int) and config["n_episodes"] > MAX_EPISODES:
        raise JobError(f"job {name!r}: n_episodes must be at most {MAX_EPISODES:,}, got {config['n_episodes']!r}", name)
    if isinstance(config.get("n_envs"), int) and config["n_envs"] > MAX_ENVS:  # one subprocess per env
        raise JobError(f"job {name!r}: n_envs must be at most {MAX_ENVS} (the most a run starts: one subprocess per "
                       f"env), got {config['n_envs']!r}", name)
    try:
        timeout = check_env_timeout(config.get("env_timeout_s"), "override env_timeout_s", no_limit="null")
        vectorization, n_envs = _vectorization_and_n_envs(config)
        check_env_timeout_applies(vectorization, timeout, "override env_timeout_s",
                                  "use vectorization 'async' (or 'auto' with n_envs > 1) for a time limit, or "
                                  "env_timeout_s null for none", n_envs=n_envs)
    except ValueError as exc:
        raise JobError(f"job {name!r}: {exc}", name) from None
    check_setting_types(name, config)


def check_setting_types(name: str, config: Mapping[str, Any]) -> None:
    """JobError for a non-count override of the wrong type: JSON's "false" is a string, and a string is true, so
    `"terminate_on_success": "false"` ran with it on while the saved config said 'false'."""
    from gr00t_client.chunking import MERGE_RULES

    from .rollout.config import CLIENT_CHUNKING_MODES

    choices = {"vectorization": ("auto", "sync", "async"), "client_chunking": CLIENT_CHUNKING_MODES,
               "chunk_merge": tuple(MERGE_RULES)}
    for key, value in config.items():
        problem = None
        if key == "terminate_on_success" and not isinstance(value, bool):
            problem = "true or false"
        elif key in choices and value not in choices[key]:
            problem = f"one of {', '.join(repr(c) for c in choices[key])}"
        elif key == "env_kwargs" and not isinstance(value, Mapping):
            problem = "an object of keyword arguments"
        elif key == "video_dir" and value is not None and (not isinstance(value, str) or not value.strip()
                                                            or "\0" in value):
            problem = "a folder path (without NUL characters), or null"
        elif key == "rtc_frozen_steps" and value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                                                   or value < 0):
            problem = "a whole number >= 0, or null"
        if problem is not None:
            raise JobError(f"job {name!r}: override {key} must be {problem}, got {value!r}", name)
    try:
        check_env_kwargs_finite(config.get("env_kwargs"), "override env_kwargs")
    except ValueError as exc:
        raise JobError(f"job {name!r}: {exc}", name) from None
    if config.get("client_chunking", "off") == "async" and isinstance(config.get("n_action_steps"), int) \
            and config["n_action_steps"] < 2:
        raise JobError(f"job {name!r}: override client_chunking 'async' needs n_action_steps >= 2 (a prefetch of a "
                       "one-step chunk always comes after its step); use 'sync'", name)
    if config.get("client_chunking", "off") != "async":  # as `rollout` refuses the same flags
        if config.get("rtc_frozen_steps") is not None:
            raise JobError(f"job {name!r}: override rtc_frozen_steps needs client_chunking 'async'", name)
        if config.get("chunk_merge", "newest") != "newest":
            raise JobError(f"job {name!r}: override chunk_merge {config['chunk_merge']!r} needs client_chunking 'async'", name)


# Settings that only shape a job's videos; max_episodes_rendered 0 renders none, so the others then need no folder
VIDEO_ONLY_SETTINGS = ("max_episodes_rendered", "steps_per_frame", "video_fps")


def check_video_settings_apply(name: str, config: Mapping[str, Any],
                               started: Optional[Mapping[str, Any]] = None) -> None:
    """JobError when a video-only setting is given to a job without a video_dir: a batch job writes no videos without
    one (rollout's OUTPUT_DIR/videos default has no batch counterpart), so the setting would be recorded in its
    job_config as if it applied. `started`: the job_config an earlier attempt of the batch recorded for the job (an
    earlier version ran it so): a job that began with these very settings resumes as it began, warned; any other
    stays refused until its entry is fixed."""
    if config.get("video_dir") or config.get("max_episodes_rendered") == 0:
        return
    unused = [key for key in VIDEO_ONLY_SETTINGS if config.get(key) is not None]
    if not unused:
        return
    given = ", ".join(f"{key} {config[key]!r}" for key in unused)
    if started is not None and all(started.get(key) == config[key] for key in unused):
        logger.warning("job %r: override %s only applies to videos, and the job names no video_dir, so it writes none; "
                       "an earlier attempt of this batch started the job with it, so it runs on as it began (add a "
                       "video_dir, or leave them out, in its jobs.json)", name, given)
        return
    raise JobError(f"job {name!r}: override {given} only applies to videos, and the job names no video_dir (a batch "
                   f"job writes no videos without one); add a video_dir override, or leave "
                   f"{' and '.join(unused)} out", name)


def parse_job(raw: Any, index: int, defaults: Optional[Mapping[str, Any]] = None, resumed: bool = False,
              started: Optional[Callable[[str], Optional[Mapping[str, Any]]]] = None) -> Job:
    """One job object over `defaults` -> Job; raises JobError naming the job and the bad field (`resumed`: read by a
    batch --resume, which takes the env timeout an earlier version took with vectorization "sync" as no limit;
    `started(name)`: the job_config an earlier attempt of that batch recorded for the job, or None; a job keeps the
    video settings it began with).

    Each layer's aliases are translated within it first (_layer), then the job's settings win over the defaults',
    setting by setting; `overrides` merge key by key, and an object-valued setting (policy_server, env_kwargs) that
    the job gives replaces the defaults' one as a whole.
    """
    if not isinstance(raw, Mapping):
        raise JobError(f"job #{index} must be an object, got {type(raw).__name__}")
    defaults = defaults or {}
    given_name = raw.get("name", defaults.get("name"))
    usable = given_name is None or (isinstance(given_name, str) and is_utf8(given_name))
    label = (given_name or f"job-{index}") if usable else None
    for part, layer in (("defaults", defaults), ("", raw)):
        refuse_surrogates(f"job {label!r}" if label else f"job #{index}", layer, part, label)
    if given_name is not None and (not isinstance(given_name, str) or not given_name.strip()):
        raise JobError(f"job #{index}: 'name' must be a non-empty string (or left out), got {given_name!r}")
    name = given_name or f"job-{index}"
    base, own = _layer(f"job {name!r}", defaults, "defaults.", name), _layer(f"job {name!r}", raw, "", name)
    merged = {**base, **own, "overrides": {**base["overrides"], **own["overrides"]}}
    unknown = set(merged) - JOB_KEYS
    if unknown:
        raise JobError(f"job {name!r}: unknown fields {sorted(unknown)}; allowed: {sorted(JOB_KEYS | set(ARENA_ALIASES) | {'policy_config_dict', 'arena_env_args'})}", name)
    if "policy_type" in merged:
        check_policy_type(name, merged["policy_type"])
    if not merged.get("env_name"):
        raise JobError(f"job {name!r}: 'env_name' (env names or suites, comma-separated) is required", name)
    if not isinstance(merged["env_name"], str):
        raise JobError(f"job {name!r}: 'env_name' must be a string (env names or suites, comma-separated), got "
                       f"{merged['env_name']!r}", name)
    if "\0" in merged["env_name"]:  # "\u0000" is valid JSON; its task's video folder failed when its turn came
        raise JobError(f"job {name!r}: 'env_name' is {merged['env_name']!r}, which holds a NUL character (\\u0000); "
                       "expected env names without NUL (no task's video folder may hold one)", name)
    if "policy_server" not in merged:
        raise JobError(f"job {name!r}: 'policy_server' ({{'host': ..., 'port': ...}}) is required", name)
    config = {k: merged[k] for k in TOP_LEVEL_SETTINGS if k in merged}
    for key, value in merged["overrides"].items():
        if key not in CONFIG_FIELDS:
            raise JobError(f"job {name!r}: override {key!r} is not a rollout setting; allowed: {sorted(CONFIG_FIELDS)}", name)
        config[key] = value
    if "video_dir" in own["overrides"] and own["overrides"]["video_dir"] is None:  # the job turns its videos off:
        for key in VIDEO_ONLY_SETTINGS:  # the video settings of `defaults` are not the job's
            if key not in own["overrides"]:
                config.pop(key, None)
    if resumed:
        config = resumed_job_env_timeout(name, config)
    check_counts(name, config)
    check_video_settings_apply(name, config, started=started(name) if started is not None else None)
    try:
        return Job(name, str(merged["env_name"]), _server(name, merged["policy_server"]), config)
    except JobError as exc:
        exc.job_name = name
        raise


def refuse_surrogates(who: str, value: Any, field: str = "", job_name: Optional[str] = None) -> None:
    """JobError naming the field when a string or field name in `value` holds a lone surrogate ("\\ud800" is valid
    JSON): it is no UTF-8 text, so the job's folder name, video folder or the results table would crash the batch."""
    if isinstance(value, str) and not is_utf8(value):
        raise JobError(f"{who}: {field or 'a field'!r} is {value!r}, which holds a lone surrogate (no UTF-8 text); "
                       "expected text (write the character itself, or both halves of its \\uXXXX pair)", job_name)
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner = f"{field}.{key}" if field else str(key)
            if isinstance(key, str) and not is_utf8(key):
                raise JobError(f"{who}: the field name {inner!r} holds a lone surrogate (no UTF-8 text); expected "
                               "text", job_name)
            refuse_surrogates(who, item, inner, job_name)
    elif isinstance(value, list):
        for number, item in enumerate(value):
            refuse_surrogates(who, item, f"{field}[{number}]", job_name)


def is_utf8(text: str) -> bool:
    """Whether `text` can be written as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_jobs(path: Union[str, Path], start_dir: Union[str, Path, None] = None, home_dir: Optional[str] = None,
              resumed: bool = False, started: Optional[Callable[[str], Optional[Mapping[str, Any]]]] = None,
              ) -> List[Union[Job, JobError]]:
    """Read a job file: {"defaults": {...}, "jobs": [...]} or a bare list; invalid jobs come back as JobError.

    Job names must be unique (they name the rows of the table and the jobs a resumed batch skips). A relative
    `video_dir` and key file (policy_server server_public_key, client_key) are made absolute against `start_dir`
    (default: the working directory), as rollout saves --video-dir, and a leading '~' is `home_dir` (default: this
    user's home folder). `resumed`, `started`: read by a batch --resume (parse_job).
    """
    try:
        data = loads_unique_keys(Path(path).read_bytes().decode("utf-8"))
    except RepeatedKeyError as exc:  # json.loads would keep the last value: two pasted `jobs` lists ran only the second
        raise JobError(f"{path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise JobError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:  # UTF-16 as PowerShell's `>` writes, Latin-1 from an editor
        raise JobError(f"{path}: not UTF-8 ({exc}); a job file must be UTF-8 JSON (save it as UTF-8)") from None
    except RecursionError:
        raise JobError(f"{path}: nested too deeply to read; a job file must be UTF-8 JSON of a list of jobs or an "
                       "object with 'jobs'") from None
    defaults: Mapping[str, Any] = {}
    if isinstance(data, Mapping):
        unknown = set(data) - {"defaults", "jobs"}
        if unknown or "jobs" not in data:
            raise JobError(f"{path}: a job file is a list of jobs or an object with 'jobs' (and optional 'defaults'); got keys {sorted(data)}")
        defaults, data = data.get("defaults", {}), data["jobs"]
        defaults = {} if defaults is None else defaults
    if not isinstance(defaults, Mapping):  # told once, about 'defaults', not once per job about each job
        raise JobError(f"{path}: 'defaults' must be an object of job fields, got {type(defaults).__name__}")
    unknown = set(defaults) - JOB_KEYS - set(ARENA_ALIASES) - {"policy_config_dict", "arena_env_args"}
    if unknown:
        raise JobError(f"{path}: 'defaults' has unknown fields {sorted(unknown)}; allowed: the fields of a job")
    _layer(f"{path}", defaults, "defaults.")  # two values for one setting in 'defaults': told once, naming the file
    if not isinstance(data, list):
        raise JobError(f"{path}: 'jobs' must be a list, got {type(data).__name__}")
    if not data:  # a generator that wrote no jobs must not pass as a batch that ran
        raise JobError(f"{path}: the job file lists no jobs; a batch needs at least one")
    jobs: List[Union[Job, JobError]] = []
    seen: Dict[str, Tuple[int, str]] = {}
    for index, raw in enumerate(data):
        raw_name = raw.get("name") if isinstance(raw, Mapping) else None
        raw_name = raw_name if is_utf8(str(raw_name)) else None  # a name no folder or table can hold
        try:
            job: Union[Job, JobError] = parse_job(raw, index, defaults, resumed, started)
        except (JobError, TypeError, ValueError) as exc:
            name = getattr(exc, "job_name", None) or (str(raw_name) if raw_name else None)
            job = exc if isinstance(exc, JobError) else JobError(f"job {name or '#' + str(index)!s}: {exc}", name)
            job.job_name = name
        name = job.name if isinstance(job, Job) else job.job_name
        repeated = None if name is None else repeated_job_name(name, index, seen)
        if repeated is not None:
            job = JobError(repeated, f"{name}#{index}")
        jobs.append(job)
    start_dir = start_dir or os.getcwd()
    jobs = separate_shared_video_dirs([absolute_key_files(absolute_video_dir(job, start_dir, home_dir), start_dir, home_dir)
                                       for job in jobs])
    jobs = [_with_usable_video_dir(job) for job in jobs]
    refuse_overlapping_video_dirs(jobs)
    return jobs


def absolute_video_dir(job: Union[Job, JobError], start_dir: Union[str, Path],
                       home_dir: Optional[str] = None) -> Union[Job, JobError]:
    """The job with its relative `video_dir` joined to `start_dir` and a leading '~' made `home_dir` (None: the home
    folder, as in a path flag): each attempt of a batch, wherever and by whomever it runs, writes the job's videos into
    one folder."""
    if not isinstance(job, Job) or not job.config.get("video_dir"):
        return job
    try:
        video_dir = str(Path(start_dir, home_expanded(str(job.config["video_dir"]), home_dir)).absolute())
    except HomeFolderUnknownError as exc:
        return JobError(f"job {job.name!r}: video_dir: {exc}", job.name)
    return dataclasses.replace(job, config={**job.config, "video_dir": video_dir})


def absolute_key_files(job: Union[Job, JobError], start_dir: Union[str, Path],
                       home_dir: Optional[str] = None) -> Union[Job, JobError]:
    """The job with the key files its policy_server names (server_public_key, client_key) made absolute as
    absolute_video_dir makes video_dir: a resume from another directory, or under another $HOME, reads the files the
    batch's first attempt read. A z85 key (which may hold '/' and '.') is kept as it is: a value is taken for a path
    only where that file exists or it has a path's form (a leading '~', or a .key / .key_secret file name)."""
    if not isinstance(job, Job):
        return job
    try:
        keys = {key: _absolute_key_file(getattr(job.server, key), start_dir, home_dir)
                for key in ("server_public_key", "client_key")}
    except HomeFolderUnknownError as exc:
        return JobError(f"job {job.name!r}: policy_server: {exc}", job.name)
    return dataclasses.replace(job, server=dataclasses.replace(job.server, **keys))


def _absolute_key_file(value: Optional[str], start_dir: Union[str, Path], home_dir: Optional[str]) -> Optional[str]:
    if not isinstance(value, str) or not value.strip():
        return value  # the client names a blank or a non-text key
    text = unwrapped_key_text(value)  # quotes an env file keeps, as the client reads the value
    path = Path(start_dir, home_expanded(text, home_dir))
    path_form = text.startswith("~") or (os.path.basename(text).endswith((".key", ".key_secret"))
                                         and not is_z85_key(text))
    return str(path.absolute()) if path_form or os.path.isfile(path) else value


def home_expanded(path: str, home_dir: Optional[str]) -> str:
    """`path` with a leading '~' (alone or before a '/') made `home_dir`, the home folder the batch's first attempt
    took ('~user' and None: home_expanded_path's, HomeFolderUnknownError where '~' stands for no folder)."""
    if home_dir is None or not (path == "~" or path.startswith(("~/", "~" + os.sep))):
        return home_expanded_path(path)
    return home_dir + path[1:]


def resumed_job_env_timeout(name: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """A resumed job's settings with an env_timeout_s that an earlier version took with vectorization "sync" (and
    did not keep: its envs run in this process) made None, with a warning: the job resumes as it ran."""
    try:
        timeout = check_env_timeout(config.get("env_timeout_s"), "override env_timeout_s", no_limit="null")
    except ValueError:  # check_counts names it
        return config
    vectorization, n_envs = _vectorization_and_n_envs(config)
    if env_timeout_applies(vectorization, timeout, n_envs=n_envs):
        return config
    logger.warning("job %r: its env_timeout_s %g cannot apply with vectorization %r and n_envs %s (its envs run in "
                   "this process, where a hung reset or step cannot be stopped); the resumed job runs with no limit, "
                   "as it ran before (set env_timeout_s null in its jobs.json to silence this)", name, timeout,
                   vectorization, n_envs)
    return {**config, "env_timeout_s": None}


def _vectorization_and_n_envs(config: Mapping[str, Any]) -> Tuple[Any, Any]:
    """A job's vectorization and n_envs, RolloutConfig's defaults where its settings give none: together they say
    whether its envs run in this process, where no env timeout applies (rollout.config.envs_in_process)."""
    return config.get("vectorization", RolloutConfig.vectorization), config.get("n_envs", RolloutConfig.n_envs)


def repeated_job_name(name: str, index: int, seen: Dict[str, Tuple[int, str]]) -> Optional[str]:
    """Why job #`index` cannot be called `name`: an earlier job in `seen` (run folder key -> its index and name) has
    that name or that run folder (jobs/<job_dir_name>, keyed by suites.one_folder_key: folders that differ only in case
    or Unicode normalization are one on macOS and Windows); None when neither is taken, and `name` is added to `seen`."""
    folder = job_dir_name(name)
    key = one_folder_key(folder)
    if key not in seen:
        seen[key] = (index, name)
        return None
    first, first_name = seen[key]
    if first_name == name:
        return f"job {name!r}: duplicate job name (job #{first} has it too); names must be unique"
    if job_dir_name(first_name) != folder:
        return (f"job {name!r}: its run folder jobs/{folder} is one with jobs/{job_dir_name(first_name)} of job #{first} "
                f"({first_name!r}): {why_one_folder(job_dir_name(first_name), folder)}; names must be unique as folder "
                "names there too")
    return (f"job {name!r}: its run folder jobs/{folder} is that of job #{first} ({first_name!r}); names must be unique "
            "as folder names too")


def check_unique_job_names(jobs: Sequence[Union[Job, JobError]]) -> None:
    """JobError, before any job runs, when two jobs share a name or a run folder: they would write one folder, and the
    results of a resumed batch are kept by name, so each would be reported with the other's."""
    seen: Dict[str, Tuple[int, str]] = {}
    for index, job in enumerate(jobs):
        repeated = repeated_job_name(job.name, index, seen) if isinstance(job, Job) else None
        if repeated is not None:
            raise JobError(repeated, job.name)


def separate_shared_video_dirs(jobs: List[Union[Job, JobError]]) -> List[Union[Job, JobError]]:
    """Jobs whose `video_dir` names the same folder write into a folder of their own under it
    (VIDEO_DIR/<job folder name>): each job numbers its episodes from 0, so they would overwrite each other's
    videos and point their results at the same files."""
    users: Dict[str, int] = {}
    for job in jobs:
        if isinstance(job, Job) and job.config.get("video_dir"):
            key = os.path.realpath(str(job.config["video_dir"]))
            users[key] = users.get(key, 0) + 1
    separated: List[Union[Job, JobError]] = []
    for job in jobs:
        if (isinstance(job, Job) and job.config.get("video_dir")
                and users[os.path.realpath(str(job.config["video_dir"]))] > 1):
            job = dataclasses.replace(job, config={**job.config,
                                                   "video_dir": str(Path(job.config["video_dir"]) / job_dir_name(job.name))})
        separated.append(job)
    return separated


def _with_usable_video_dir(job: Union[Job, JobError]) -> Union[Job, JobError]:
    """The job, or a JobError when its video_dir is (or lies under) a symbolic link to nothing or a symlink loop: that
    job fails alone, naming it, where resolving the folder stopped the whole batch with a bare RuntimeError."""
    from gr00t_client.cli_flags import broken_link_problem

    if not isinstance(job, Job) or not job.config.get("video_dir"):
        return job
    problem = broken_link_problem("override video_dir", job.config["video_dir"])
    return job if problem is None else JobError(f"job {job.name!r}: {problem}", job.name)


def refuse_overlapping_video_dirs(jobs: Sequence[Union[Job, JobError]]) -> None:
    """JobError when one job's video folder (after separate_shared_video_dirs) is, lies inside or holds another's: the
    jobs would overwrite each other's episode videos, and a job's --overwrite would delete the other's."""
    folders = [(job.name, Path(job.config["video_dir"]).resolve()) for job in jobs
               if isinstance(job, Job) and job.config.get("video_dir")]
    for index, (name, folder) in enumerate(folders):
        for other_name, other in folders[index + 1:]:
            relation = ("is" if folder == other else "lies inside" if other in folder.parents
                        else "holds" if folder in other.parents else None)
            if relation is not None:
                raise JobError(f"job {name!r} writes its videos to {folder}, which {relation} the video folder of job "
                               f"{other_name!r} ({other}): their episode videos would overwrite each other; give each "
                               "job a video_dir of its own beside the others (jobs naming the same video_dir are "
                               "given <video_dir>/<job folder name> each)", name)


def job_video_dirs(jobs: Sequence[Union[Job, JobError]]) -> List[Path]:
    """The video folders the valid jobs write into (after separate_shared_video_dirs)."""
    return [Path(job.config["video_dir"]) for job in jobs if isinstance(job, Job) and job.config.get("video_dir")]


def job_dir_name(name: str) -> str:
    """The folder of a job's run files: its name when that is a safe file name, else a slug plus a short hash."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:80]
    return slug if slug == name else f"{slug or 'job'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"

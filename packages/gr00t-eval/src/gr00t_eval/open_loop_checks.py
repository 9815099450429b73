"""What keeps an open-loop score sound: the policy follows the trajectory (its reset, the episode and
step it reports), its action chunks fit the dataset's keys, and the run's action keys and steps are sound."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from gr00t_client import BasePolicy, EmbodimentTag, ModalityConfig
from gr00t_client.embodiment import names_tag
from gr00t_client.wire_errors import lone_surrogate_at, lone_surrogate_text

from .action_steps import check_consecutive_action_deltas
from .dataset import LeRobotDataset
from .dataset.identity import data_sha256, meta_sha256, replayed_data_files, unhashed_meta_files
from .policy_identity import replay_count, serves_replay
from .reported_position import is_flag, is_position
from .server_busy import BUSY_RETRY_FIRST_S, BUSY_RETRY_TOTAL_S, asked_while_busy

logger = logging.getLogger("gr00t_eval.open_loop")  # the open-loop evaluation's one logger, whichever of its modules logs


class TrajectoryError(RuntimeError):
    """A trajectory that cannot be scored soundly (the policy is not at its episode or step); the run goes on without it."""


def check_sendable_language(texts: Sequence[str], key: str, steps: Sequence[int]) -> None:
    """TrajectoryError when the text of language `key` at one of `steps` holds a lone surrogate (a converter's JSON
    "\\udcff" for a non-UTF-8 byte), which no wire carries: the client refused the request and the run stopped."""
    for step in steps:
        surrogate = lone_surrogate_at(texts[step])
        if surrogate is not None:
            raise TrajectoryError(f"its language {key!r} at step {step} cannot be sent: "
                                  + lone_surrogate_text(texts[step], surrogate))


def check_policy_position(info: Any, traj_id: int, step: int, execution_horizon: int,
                          dataset_episode: Optional[int] = None) -> None:
    """TrajectoryError when the policy's info reports an `episode_index` or `current_step` other than traj_id, step, or
    (a replay) a `dataset_episode_index` other than `dataset_episode`, the trajectory's own episode_index (None: not
    checked): a replay of a split or another copy is at the same position in another episode."""
    if not isinstance(info, Mapping):
        return
    episode, current = info.get("episode_index"), info.get("current_step")
    if is_position(episode) and episode != traj_id:
        raise TrajectoryError(f"the policy reports episode {episode} while the evaluation is at trajectory {traj_id} "
                              "(does the server replay another copy of the dataset?)")
    replayed = info.get("dataset_episode_index")
    if dataset_episode is not None and is_position(replayed) and replayed != dataset_episode:
        raise TrajectoryError(f"the policy replays the recording's episode_index {replayed} as trajectory {traj_id}, "
                              f"which is episode_index {dataset_episode} of the dataset evaluated (does the server "
                              "replay a split or another copy of the dataset?)")
    if is_position(current) and current != step:
        mismatch = horizon_mismatch(info, execution_horizon)
        if mismatch is not None:
            raise TrajectoryError(f"the policy reports step {current} while the evaluation is at step {step}: {mismatch}")
        raise TrajectoryError(f"the policy reports step {current} while the evaluation is at step {step} (start the server "
                              f"with --execution-horizon {execution_horizon}, or pass the server's here)")


def horizon_mismatch(info: Mapping[str, Any], execution_horizon: int) -> Optional[str]:
    """What to change when the policy's info reports an `execution_horizon` (a replay's steps per call) other than
    this run's; None when it reports none or the same."""
    served = info.get("execution_horizon")
    if not is_position(served) or served == execution_horizon:
        return None
    return (f"the server advances {served} steps per call and this run {execution_horizon} (start the server with "
            f"--execution-horizon {execution_horizon}, or run with --execution-horizon {served})")


def check_policy_episode(info: Any, episode_length: int, step: int, last_step: Optional[int],
                         execution_horizon: Optional[int] = None) -> None:
    """TrajectoryError when the policy's info reports an `episode_length` other than the recording's, or
    `episode_done` at `step` before `last_step`, the evaluation's last query (None: a reset, which serves no step).
    A replay of a trimmed or stale copy of the episode pads its chunks past its end with its last action; one that
    advances more steps per call than `execution_horizon` is done early too, and the error says so."""
    if not isinstance(info, Mapping):
        return
    served, done = info.get("episode_length"), info.get("episode_done")
    if is_position(served) and served != episode_length:
        raise TrajectoryError(f"the policy does not follow this recording: it replays an episode of {served} steps, the "
                              f"dataset's has {episode_length} (does the server replay another copy of the dataset?)")
    if last_step is not None and is_flag(done) and done and step < last_step:
        mismatch = None if execution_horizon is None else horizon_mismatch(info, execution_horizon)
        if mismatch is not None:
            raise TrajectoryError(f"the policy reports its episode done at step {step}, before the evaluation's last "
                                  f"query at step {last_step}: {mismatch}")
        raise TrajectoryError(f"the policy does not follow this recording: it reports its episode done at step {step}, "
                              f"and the dataset's episode of {episode_length} steps is queried up to step {last_step}")


def reset_policy(policy: BasePolicy, traj_id: int, execution_horizon: int, episode_length: Optional[int] = None,
                 dataset_episode: Optional[int] = None) -> None:
    """Reset the policy to trajectory `traj_id`, step 0; TrajectoryError when it refuses, lands elsewhere (another
    position, or another episode_index than `dataset_episode`) or reports an episode of another length than
    `episode_length` (None: not checked).

    A stateless model ignores the options; a server without a reset endpoint is evaluated without one. A
    server that is gone (ConnectionError, TimeoutError) ends the run. A reset the server refuses busy (not run) is
    asked again for a while (server_busy.asked_while_busy).
    """
    options = {"episode_index": int(traj_id), "step_index": 0}
    try:
        info = asked_while_busy(lambda: policy.reset(options=options), BUSY_RETRY_FIRST_S, BUSY_RETRY_TOTAL_S,
                                f"the reset to trajectory {traj_id}")
    except (ConnectionError, TimeoutError):
        raise
    except Exception as exc:  # noqa: BLE001 - a refused reset errors this trajectory only
        if "Unknown endpoint: reset" in str(exc):
            logger.warning("the policy server has no reset endpoint; evaluating trajectory %d without a reset", traj_id)
            return
        raise TrajectoryError(f"policy reset failed: {exc}") from exc
    check_policy_position(info, traj_id, 0, execution_horizon, dataset_episode)
    if episode_length is not None:
        check_policy_episode(info, episode_length, 0, None)


def _chunk(action: Mapping[str, Any], keys: Sequence[str], key_dims: Mapping[str, int], step: int,
           execution_horizon: int) -> Dict[str, np.ndarray]:
    """The policy's action chunk per key, (H, D) or (H,), checked against the dataset's width of each key, for at
    least `execution_horizon` steps and for finite values: TrajectoryError otherwise (only the widths' total would be
    checked when the keys are joined, so a policy's 2 + 2 against a dataset's 3 + 1 was scored column against the
    wrong column; a shorter chunk ended the whole run with an IndexError). One observation row is sent, so a batched
    chunk must have one row: row 0 of a (2, H, D) reply was scored as if it were the answer."""
    out = {}
    for key in keys:
        value = action.get(key, action.get(f"action.{key}"))
        if value is None:  # a KeyError ended the whole run
            raise TrajectoryError(f"the policy's action has no '{key}' (nor 'action.{key}'); got keys {sorted(action)}")
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":  # strings ended the whole run with numpy's "could not convert string to float"
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has dtype {value.dtype}; expected numbers "
                                  "(a float, int or bool array)")
        value = value.astype(np.float64)
        if value.ndim == 3 and value.shape[0] != 1:
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has shape {value.shape}; expected "
                                  f"(1, {value.shape[1]}, {value.shape[2]}), one row for the one observation row sent")
        value = value[0] if value.ndim == 3 else value  # strip the batch dim
        width = value.shape[-1] if value.ndim == 2 else 1
        if value.ndim not in (1, 2) or width != key_dims[key]:
            raise TrajectoryError(f"the policy's action '{key}' has shape {value.shape} (batch row stripped); the dataset's "
                                  f"'{key}' has {key_dims[key]} values per step, so a chunk must be (horizon, {key_dims[key]})")
        if value.shape[0] < execution_horizon:
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has {value.shape[0]} steps, and "
                                  f"--execution-horizon {execution_horizon} uses {execution_horizon} of each chunk (the "
                                  "policy's modality config promises more than it returns?)")
        if not np.isfinite(value).all():
            rows = sorted({int(r) for r in np.flatnonzero(~np.isfinite(value.reshape(value.shape[0], -1)).all(axis=1))})
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has non-finite values (NaN or inf) in chunk "
                                  f"rows {rows[:8]}; nothing can be scored against them")
        beyond = np.abs(value) > np.finfo(np.float32).max  # as rollout refuses them: its squared error overflowed
        if beyond.any():
            rows = sorted({int(r) for r in np.flatnonzero(beyond.reshape(value.shape[0], -1).any(axis=1))})
            raise TrajectoryError(f"the policy's action '{key}' at step {step} has values beyond float32's range "
                                  f"(|value| <= {np.finfo(np.float32).max:.4g}) in chunk rows {rows[:8]}; expected "
                                  "actions a float32 policy can send")
        out[key] = value
    return out


def dataset_action_keys(requested: Sequence[str], dataset_keys: Sequence[str]) -> List[str]:
    """The dataset action keys that `modality_keys` (--modality-keys) name, each by its own name or by its flat spelling
    `action.<key>` (a sim-wrapper server's name for it); ValueError naming the dataset's keys for any it does not have."""
    keys, missing = [], []
    for key in requested:
        if key in dataset_keys:
            keys.append(key)
        elif key.startswith("action.") and key[len("action."):] in dataset_keys:
            keys.append(key[len("action."):])
        else:
            missing.append(key)
    if missing:
        raise ValueError(f"action keys {missing} are not in the dataset; it has {list(dataset_keys)} (also taken as "
                         "action.<key>)")
    spellings: Dict[str, List[str]] = {}
    for given, key in zip(requested, keys):
        spellings.setdefault(key, []).append(given)
    repeated = {key: given for key, given in spellings.items() if len(given) > 1}
    if repeated:  # "gripper action.gripper" is one key twice: the per-key dims are a dict, the arrays would double
        raise ValueError(f"modality_keys names {', '.join(map(repr, repeated))} more than once "
                         f"({'; '.join(' and '.join(given) for given in repeated.values())}); name each action key once")
    return keys


DEFAULT_EXECUTION_HORIZON = 16  # the reference's default: at most this many steps of each chunk when none is given


def execution_horizon_for(action: ModalityConfig, execution_horizon: Optional[int]) -> int:
    """`execution_horizon` as given; for None, the policy's action horizon up to DEFAULT_EXECUTION_HORIZON."""
    return min(action.horizon, DEFAULT_EXECUTION_HORIZON) if execution_horizon is None else execution_horizon


def replay_execution_horizon(served: Optional[Mapping[str, Any]], execution_horizon: Optional[int],
                             report: Callable[[str], None] = logger.info) -> Optional[int]:
    """`execution_horizon` as given; for None against a replay (`served`, a policy record, replays recorded steps by
    its own count), the replay's own (its identity's execution_horizon), said with `report`: the default 16 errored
    every trajectory of a replay served with another."""
    served_horizon = replay_count(served, "execution_horizon")
    if execution_horizon is None and served_horizon is not None:
        report(f"Execution horizon: {served_horizon}, the replay server's (it advances {served_horizon} recorded steps "
               "per call; --execution-horizon was left out)")
        return served_horizon
    return execution_horizon


def check_replays_dataset(served: Optional[Mapping[str, Any]], dataset: LeRobotDataset) -> None:
    """ValueError naming both when the replay `served` (a policy record) reports the data hash of another dataset than
    `dataset`, the one scored against (a split, another export, the same meta/ files with other actions): every
    trajectory would be scored against another recording's actions. Hashed as the replay hashes its own, so a copy
    of the same files elsewhere passes. The data hash decides (its scheme never changed): the same data with other
    meta/ files (one re-saved, or hashed by an older gr00t-server, which left out fewer files) is a warning, as is a
    replay that reports only the meta/ hash; policies that report no dataset hashes (a model, an older replay) pass."""
    if not serves_replay(served):
        return
    identity = served["identity"]  # type: ignore[index]
    reported_data, reported_meta = identity.get("dataset_data_sha256"), identity.get("dataset_meta_sha256")
    if isinstance(reported_data, str):
        own_data = _data_sha256_said(dataset)  # an unreadable file: the OSError names it
        if own_data != reported_data:
            raise ValueError(f"the replay server serves another dataset than {dataset.root} (--dataset-path): it "
                             f"reports dataset_data_sha256 {reported_data}, and {dataset.root} has dataset_data_sha256 "
                             f"{own_data}, so every trajectory would be scored against another recording's actions (a "
                             "split, another export, or the same episodes with other actions?); evaluate the dataset "
                             "the server replays, or serve this one")
        logger.debug("dataset_data_sha256 of %s matches the replay server's: %s", dataset.root, own_data)
    if not isinstance(reported_meta, str):
        return
    own_meta = meta_sha256(dataset.root)
    if not isinstance(reported_data, str):
        logger.warning("the replay server reports no dataset_data_sha256 (an older gr00t-server): its recorded actions "
                       "are not compared with those of %s (--dataset-path) before the run, only each trajectory's "
                       "episode_index; its meta/ files %s (dataset_meta_sha256 %s, %s's %s)", dataset.root,
                       "match" if own_meta == reported_meta else "differ", reported_meta, dataset.root, own_meta)
    elif own_meta != reported_meta:
        left_out = unhashed_meta_files(dataset.root)
        older = (f" (an older gr00t-server hashed some of those this version leaves out: {', '.join(left_out[:8])})"
                 if left_out else "")
        logger.warning("meta/ files differ between %s (--dataset-path) and the dataset the replay server serves "
                       "(dataset_meta_sha256 %s, the server's %s): a file re-saved or edited, or a server that hashes "
                       "meta/ otherwise%s; the recorded actions are the same (dataset_data_sha256 %s), so the run goes "
                       "on", dataset.root, own_meta, reported_meta, older, reported_data)


def _data_sha256_said(dataset: LeRobotDataset) -> str:
    """data_sha256 of `dataset`'s replayed data files, said first in a line: all of them are read, whatever the
    trajectories evaluated (on a large dataset, minutes before the first one)."""
    files = list(dict.fromkeys(replayed_data_files(dataset)))
    size = sum(os.path.getsize(path) for path in files)
    logger.info("hashing %d data files (%s bytes) of %s to compare them with the dataset the replay server serves",
                len(files), f"{size:,}", dataset.root)
    return data_sha256(files)


def check_replay_execution_horizon(served: Optional[Mapping[str, Any]], execution_horizon: int,
                                   action_horizon: Optional[int] = None) -> None:
    """ValueError naming both when the replay `served` advances another number of recorded steps per call than
    `execution_horizon`: every trajectory errored on it, after querying the server. A replay served with
    `execution_horizon` is advised only where one can be (1 .. `action_horizon`, the chunk's length)."""
    served_horizon = replay_count(served, "execution_horizon")
    if served_horizon is not None and served_horizon != execution_horizon:
        servable = execution_horizon >= 1 and (action_horizon is None or execution_horizon <= action_horizon)
        other = f", or serve the replay with --execution-horizon {execution_horizon}" if servable else ""
        raise ValueError(f"execution_horizon (--execution-horizon) is {execution_horizon}, but the server replays "
                         f"recorded steps by its own count and advances {served_horizon} per call, so every trajectory "
                         f"would error; pass --execution-horizon {served_horizon} (or leave it out to use the "
                         f"server's){other}")


def check_action_steps(action: ModalityConfig, execution_horizon: int) -> None:
    """ValueError unless 1 <= execution_horizon <= the policy's action horizon and its action delta_indices are
    0..H-1 (as the reference checks): the scores compare chunk element j with the step j after the query, so a
    chunk of other steps ([0, 2, 4, 6], or one starting at 1) would be scored against the wrong ground truth."""
    horizon = action.horizon
    if not 1 <= execution_horizon <= horizon:
        raise ValueError(f"execution_horizon must be in [1, {horizon}] (the policy's action horizon), got "
                         f"{execution_horizon}: pass --execution-horizon {horizon} or less, or leave it out to use "
                         f"the policy's, up to {DEFAULT_EXECUTION_HORIZON}")
    check_consecutive_action_deltas(
        action.delta_indices, "open-loop scores would compare each action with another step's ground truth")


def evaluated_embodiment(asked: Optional[str], served: Optional[str]) -> Optional[str]:
    """The embodiment a run evaluates: the served one, which `asked` (a tag as typed) must name as serve matches a
    checkpoint's tag; `asked` as a built-in tag for a server that names none; None (unknown) when neither says."""
    if asked is None:
        return served
    if served is None:
        try:
            return EmbodimentTag.resolve(asked).value
        except ValueError as exc:
            known = ", ".join(member.value for member in EmbodimentTag)
            raise ValueError(f"{str(exc).splitlines()[0]} (--embodiment-tag): the server does not say which embodiment "
                             f"it serves, so the tag must be a built-in one; known tags: {known}") from None
    if not names_tag(asked, served):
        raise ValueError(f"the server serves embodiment {served!r} and this run asks for {asked!r} (--embodiment-tag); "
                         "serve that embodiment, or leave the flag out to evaluate the served one")
    return served

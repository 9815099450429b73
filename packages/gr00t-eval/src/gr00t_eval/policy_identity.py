"""Which policy a run evaluated, as the server describes it, so results of different policies are never combined.

`get_server_info` names the policy's class, embodiment, modality configs and (gr00t-server) its `policy_identity`:
a hash of the checkpoint's config and a fingerprint of its weights, or hashes of a replay dataset's meta and data
files. Results, run files and batch jobs record that as `policy` with a `fingerprint` of it all; `merge` refuses
shards of different fingerprints, and a resumed run or job checks that its server still serves the policy its first
attempt did.
A server that gives no info (the reference's) is recorded as None, and None is compared with nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from gr00t_client.embodiment import EmbodimentTag, names_tag
from gr00t_client.peer_text import shown_text

logger = logging.getLogger(__name__)

RECORDED_TEXT_CHARS = 1000  # each text of a server's get_server_info kept in results.json and run.json
RECORDED_VALUE_CHARS = 10_000  # each of its policy_class, embodiment_tag and policy_identity there, as JSON


class ServedPolicyChanged(ConnectionError):
    """The server a run evaluates now serves another policy (restarted with another checkpoint behind the same
    address): the run stops as for a server gone, keeping the episodes finished against the first."""


def policy_record(client: Any) -> Optional[Dict[str, Any]]:
    """{policy_class, embodiment_tag, identity, fingerprint} of what `client`'s server serves; None when it gives no
    info (a reference server, an in-process policy)."""
    if not callable(getattr(client, "get_server_info", None)):
        return None
    try:
        return record_from_info(_served_info(client))
    except (TimeoutError, ConnectionError) as exc:
        logger.debug("no server info to record the policy from: %s", exc)
        return None


def server_info(client: Any) -> Any:
    """`client`'s get_server_info reply, for a run that learns all it needs from one question (its policy record,
    the observation format); None for an in-process policy, a server that cannot say (the reference's), or one that
    did not answer (warned: a restart with another checkpoint during the run will then go unnoticed)."""
    if not callable(getattr(client, "get_server_info", None)):
        return None
    try:
        return _served_info(client)
    except (TimeoutError, ConnectionError) as exc:
        logger.warning("could not ask %s which policy it serves (%s): a restart with another checkpoint during this "
                       "run will not be noticed", getattr(client, "address", "the server"), exc)
        return None


# The reference server's answer to an endpoint it does not have: a server that cannot say which policy it serves.
NO_INFO_ENDPOINT = "Unknown endpoint: get_server_info"


def _served_info(client: Any) -> Any:
    """`client`'s get_server_info reply; None from a server that cannot say (the reference's has no such endpoint)
    or whose get_server_info fails (warned). A timeout or lost connection is raised as it is: the caller decides
    what an unreachable server means."""
    try:
        return client.get_server_info()
    except (TimeoutError, ConnectionError):
        raise
    except Exception as exc:  # noqa: BLE001 - an error reply: nothing to learn from this server
        server_message = str(getattr(exc, "server_message", ""))
        if "Unauthorized" in server_message:
            raise  # a wrong or missing token: every request of the run would be refused the same way
        if server_message.startswith(NO_INFO_ENDPOINT):
            logger.debug("get_server_info failed: %s", exc)
        else:
            logger.warning("%s answered get_server_info with an error (%s): the policy it serves is not recorded, "
                           "so merge and a resumed run cannot check that results come from one policy",
                           getattr(client, "address", "the server"), shown_text(server_message or str(exc), 300))
        return None


# gr00t-server's policies that take only the nested observation ({"video": {...}, ...}) and give nested actions: served
# without --use-sim-policy-wrapper (which reports its own class), every request of a rollout is refused
NESTED_ONLY_POLICIES = ("Gr00tPolicy", "ReplayPolicy")


def check_takes_flat_observations(record: Optional[Mapping[str, Any]]) -> None:
    """ValueError naming the fix when a policy record (policy_record) is a gr00t-server policy served without the sim
    wrapper: a rollout's flat observations would be refused one episode after another. Other policies pass."""
    served = (record or {}).get("policy_class")
    if served in NESTED_ONLY_POLICIES:
        raise ValueError(f"the policy server serves {served} without the sim wrapper: it takes nested observations "
                         "({'video': {...}, 'state': {...}, 'language': {...}}), and a rollout sends the flat form "
                         "('video.<camera>', 'state.<key>' keys) that a server started with --use-sim-policy-wrapper "
                         "takes; restart the server with --use-sim-policy-wrapper")


def serves_replay(record: Optional[Mapping[str, Any]]) -> bool:
    """True when a policy record (policy_record) is a gr00t-server replay of a dataset (its identity's kind "replay")."""
    identity = (record or {}).get("identity")
    return isinstance(identity, Mapping) and identity.get("kind") == "replay"


def replay_count(record: Optional[Mapping[str, Any]], name: str) -> Optional[int]:
    """A whole number a replay server reports in its identity (`execution_horizon`: recorded steps it advances per
    call; `episodes`: episodes recorded); None for other policies, or a replay that reports none."""
    if not serves_replay(record):
        return None
    value = record["identity"].get(name)  # type: ignore[index]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def check_serves_env_embodiments(record: Optional[Mapping[str, Any]], env_names: Iterable[str]) -> None:
    """ValueError, before any episode, naming both tags and the fix when an env's embodiment (its prefix's tag) is a
    built-in tag other than the one `record`'s server serves: its episodes would run another embodiment's projector
    and statistics. A checkpoint's own tag (no built-in name, so no env prefix can map to it) is warned about once.
    Not checked: servers that report no tag, and replays (their tag names only a modality config)."""
    served = (record or {}).get("embodiment_tag")
    if not isinstance(served, str) or serves_replay(record):
        return
    from .rollout.config import split_env_name
    from .rollout.envs import embodiment_for_env

    # By a member's name or value only, as the server reports a tag: an N1.6-era checkpoint's own 'libero_panda' is not
    # libero_sim (EmbodimentTag.resolve reads names in any case)
    served_tag: Optional[EmbodimentTag] = EmbodimentTag.__members__.get(served.strip()) or next(
        (member for member in EmbodimentTag if member.value.casefold() == served.strip().casefold()), None)
    for env_name in env_names:
        try:
            env_tag = embodiment_for_env(env_name)
        except ValueError:
            continue  # an unknown prefix: the task fails on its own, naming the fix
        if env_tag == served_tag:
            continue
        prefix = split_env_name(env_name)[0]
        mismatch = (f"env {env_name} is a {env_tag.value} env (its prefix {prefix!r} maps to {env_tag.value}), and the "
                    f"policy server serves embodiment {served!r}")
        if served_tag is None:
            _warn_once(f"{mismatch}, a tag of its checkpoint that no env prefix can map to: nothing checks that the "
                       "env is that robot")
            continue
        raise ValueError(f"{mismatch}: its episodes would be scored with another embodiment's projector and "
                         f"statistics; serve --embodiment-tag {env_tag.value}, or, if the env is that robot, map its "
                         f"prefix with --env-prefix {prefix}={served_tag.value}")


_WARNED: set = set()


def _warn_once(message: str) -> None:
    """A warning logged once per process (the rollout CLI checks before its run, and run_suite again)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)


def record_from_info(info: Any) -> Optional[Dict[str, Any]]:
    """policy_record's record from a get_server_info reply; None when it names no policy."""
    if not isinstance(info, Mapping) or "policy_class" not in info:
        return None
    record = {"policy_class": info.get("policy_class"), "embodiment_tag": info.get("embodiment_tag"),
              "identity": info.get("policy_identity")}
    record["fingerprint"] = _fingerprint(record, info.get("modality_configs"))
    # The fingerprint an older gr00t-server (no policy_identity, i.e. no checkpoint hash) gave the same policy.
    record["fingerprint_without_identity"] = _fingerprint({**record, "identity": None}, info.get("modality_configs"))
    identity = record["identity"]
    if isinstance(identity, Mapping) and "processor_sha256" in identity:
        # The fingerprint a gr00t-server that did not hash the processor files yet gave the same checkpoint.
        later = ("processor_sha256", "preprocessor_sha256", "tokenizer_sha256")
        older = {k: v for k, v in identity.items() if k not in later}
        record["fingerprint_without_processor"] = _fingerprint({**record, "identity": older}, info.get("modality_configs"))
    if isinstance(identity, Mapping) and "preprocessor_sha256" in identity:
        # The fingerprint a gr00t-server that did not hash preprocessor_config.json yet gave the same checkpoint.
        older = {k: v for k, v in identity.items() if k not in ("preprocessor_sha256", "tokenizer_sha256")}
        record["fingerprint_without_preprocessor"] = _fingerprint({**record, "identity": older},
                                                                  info.get("modality_configs"))
    if isinstance(identity, Mapping) and "dataset_data_sha256" in identity:
        # The fingerprint a gr00t-server that hashed a replay's meta/ files but not its data files gave the same replay.
        older = {k: v for k, v in identity.items() if k != "dataset_data_sha256"}
        record["fingerprint_without_data"] = _fingerprint({**record, "identity": older}, info.get("modality_configs"))
    if isinstance(identity, Mapping) and "tokenizer_sha256" in identity:
        # The fingerprint a gr00t-server that did not hash the tokenizer and chat template yet gave the same checkpoint.
        older = {k: v for k, v in identity.items() if k != "tokenizer_sha256"}
        record["fingerprint_without_tokenizer"] = _fingerprint({**record, "identity": older}, info.get("modality_configs"))
    record.update(_fingerprints_by_older_tag(record, info.get("modality_configs")))
    runtime = info.get("runtime")
    if isinstance(runtime, Mapping) and runtime:
        # What computed the actions (a gr00t-server's dtype, device, inference mode): not in the fingerprint, so that
        # records of servers that did not report it keep matching; same_policy compares its dtype and inference mode
        record["runtime"] = _recorded(dict(runtime))
    # fingerprinted whole, recorded bounded: results.json and run.json keep what a server said, not megabytes of it
    return {**record, **{name: _recorded(record[name]) for name in ("policy_class", "embodiment_tag", "identity")}}


def _fingerprints_by_older_tag(record: Mapping[str, Any], modality_configs: Any) -> Dict[str, Any]:
    """The fingerprints a gr00t-server that reported the tag PolicyServer was given (none, or as typed) rather than
    its policy's own gave the same policy: `fingerprint_without_tag`, and `fingerprints_by_tag_spelling` for the other
    spellings of its tag (a built-in tag's name and value in either case)."""
    tag = record.get("embodiment_tag")
    if not isinstance(tag, str):
        return {}
    spellings = {tag.lower(), tag.upper()}
    with contextlib.suppress(ValueError):
        builtin = EmbodimentTag.resolve(tag)
        spellings |= {builtin.name, builtin.name.lower(), builtin.value, builtin.value.upper()}
    spellings.discard(tag)
    return {"fingerprint_without_tag": _fingerprint({**record, "embodiment_tag": None}, modality_configs),
            "fingerprints_by_tag_spelling": sorted(_fingerprint({**record, "embodiment_tag": spelling}, modality_configs)
                                                   for spelling in spellings)}


def _same_tag(old_tag: Any, new_tag: Any) -> bool:
    """Whether `old_tag`, as an older server reported it, is none or a spelling of `new_tag`, the policy's own."""
    if old_tag is None:
        return True
    return isinstance(old_tag, str) and isinstance(new_tag, str) and names_tag(old_tag, new_tag)


def _recorded_before_own_tag(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True when `old` was recorded by a server that reported the tag it was given (none, or another spelling of the
    tag) where `new`'s reports the policy's own, and matches `new` on all else."""
    old_tag, fingerprint = old.get("embodiment_tag"), old.get("fingerprint")
    if old_tag == new.get("embodiment_tag") or not _same_tag(old_tag, new.get("embodiment_tag")):
        return False
    if old_tag is None:
        return new.get("fingerprint_without_tag") == fingerprint
    return fingerprint in (new.get("fingerprints_by_tag_spelling") or ())


def _recorded(value: Any) -> Any:
    """A value of a server's get_server_info as recorded: each text in it (keys too) cut to RECORDED_TEXT_CHARS and
    escaped (gr00t_client.peer_text), and the whole, as JSON, to RECORDED_VALUE_CHARS (past that, its JSON text cut)."""
    recorded = _recorded_texts(value)
    described = json.dumps(recorded, sort_keys=True, default=str)
    return recorded if len(described) <= RECORDED_VALUE_CHARS else shown_text(described, RECORDED_VALUE_CHARS)


def _recorded_texts(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {_recorded_texts(str(key)): _recorded_texts(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_recorded_texts(item) for item in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[:RECORDED_TEXT_CHARS])  # its repr, not megabytes of it
    return shown_text(str(value), RECORDED_TEXT_CHARS)


def _fingerprint(record: Mapping[str, Any], modality_configs: Any) -> str:
    described = json.dumps({"policy_class": record.get("policy_class"), "embodiment_tag": record.get("embodiment_tag"),
                            "identity": record.get("identity"), "modality_configs": modality_configs},
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def describe(record: Optional[Mapping[str, Any]]) -> str:
    """'ReplayPolicy for libero_sim (replay, dataset_meta_sha256 ..., fingerprint ...)' for messages: the tag too, as
    one checkpoint served for two embodiments is two policies with the same files."""
    if not record:
        return "an unknown policy"
    identity = record.get("identity") or {}
    details = ", ".join(f"{k} {v}" for k, v in identity.items()) if isinstance(identity, Mapping) else str(identity)
    tag = f" for {record['embodiment_tag']}" if record.get("embodiment_tag") else ""
    runtime = record.get("runtime")
    computed = "".join(f", {name.replace('_', ' ')} {runtime[name]}" for name in COMPARED_RUNTIME
                       if isinstance(runtime, Mapping) and name in runtime)
    return (f"{record.get('policy_class')}{tag} ({details + ', ' if details else ''}fingerprint "
            f"{record.get('fingerprint')}{computed})")


# What computed a policy's actions that makes it another policy to a run: the same weights in float16 or by ONNX
# Runtime round the actions otherwise. The device is recorded, not compared (fp32 on a CPU or a GPU: the same policy).
COMPARED_RUNTIME = ("dtype", "inference_mode")


def _computed_otherwise(first: Mapping[str, Any], second: Mapping[str, Any]) -> bool:
    """True when both records say what computed their actions and differ in a COMPARED_RUNTIME field; a record
    without one (an older run, or a server or policy that does not report it) is compared with nothing."""
    old, new = first.get("runtime"), second.get("runtime")
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return False
    return any(name in old and name in new and old[name] != new[name] for name in COMPARED_RUNTIME)


def runtime_difference(now: Optional[Mapping[str, Any]], then: Optional[Mapping[str, Any]], now_where: str,
                       then_where: str) -> Optional[Tuple[str, str]]:
    """For two records of one policy (they match on all but `runtime`) computed in another dtype or inference mode:
    what differs ('dtype bfloat16 {now_where} and float32 {then_where}'), for a refusal to say first, and the
    gr00t-server flags that compute `then`'s ('--dtype float32'); None for any other pair (another checkpoint too)."""
    if not now or not then or not _computed_otherwise(now, then):
        return None
    if not same_policy(_without_runtime(now), _without_runtime(then)):
        return None
    ran, runs = then["runtime"], now["runtime"]
    differing = [name for name in COMPARED_RUNTIME if name in ran and name in runs and ran[name] != runs[name]]
    what = ", ".join(f"{name.replace('_', ' ')} {runs[name]} {now_where} and {ran[name]} {then_where}"
                     for name in differing)
    return what, " ".join(f"--{name.replace('_', '-')} {ran[name]}" for name in differing)


def _without_runtime(record: Mapping[str, Any]) -> Dict[str, Any]:
    return {name: value for name, value in record.items() if name != "runtime"}


def same_policy(first: Optional[Mapping[str, Any]], second: Optional[Mapping[str, Any]]) -> bool:
    """False only when both are known and their fingerprints differ (or one names none). A record from a server that reported no
    checkpoint identity (an older gr00t-server) matches on what it did report: class, tag and modality configs; one
    whose identity had no processor (or preprocessor_config.json, or tokenizer) hash yet, or a replay's without a
    data hash, on the rest of it (a replay's with a warning: its recorded actions go unchecked); one from a server
    that reported no tag, or another spelling of the policy's own, on all but the tag. Records of the same weights
    computed in another dtype or inference mode (`runtime`, where both report it) are two policies."""
    if not first or not second:
        return True
    if _computed_otherwise(first, second):
        return False
    if not isinstance(first.get("fingerprint"), str) or not isinstance(second.get("fingerprint"), str):
        return False  # every record names one: two without (a hand-made or damaged file's) matched each other's None
    if first.get("fingerprint") == second.get("fingerprint"):
        return True
    for old, new in ((first, second), (second, first)):
        if not old.get("identity") and new.get("fingerprint_without_identity") == old.get("fingerprint"):
            return True
        old_identity = old.get("identity")
        if (isinstance(old_identity, Mapping) and "processor_sha256" not in old_identity
                and new.get("fingerprint_without_processor") == old.get("fingerprint")):
            return True  # recorded before processor files were hashed: matches on the weights and config it had
        if (isinstance(old_identity, Mapping) and "processor_sha256" in old_identity
                and "preprocessor_sha256" not in old_identity
                and new.get("fingerprint_without_preprocessor") == old.get("fingerprint")):
            return True  # recorded before preprocessor_config.json was hashed
        if (isinstance(old_identity, Mapping) and "processor_sha256" in old_identity
                and "tokenizer_sha256" not in old_identity
                and new.get("fingerprint_without_tokenizer") == old.get("fingerprint")):
            return True  # recorded before the tokenizer and chat template were hashed
        if _recorded_before_data_hash(old, new) or _recorded_before_own_tag(old, new):
            return True
    return False


def identifies_more(policy: Mapping[str, Any], first_policy: Mapping[str, Any]) -> bool:
    """Whether `policy` (matched by same_policy) names more than `first_policy`, an older server's record, did (a
    resume, of a rollout or a batch job, then records `policy`, so a later resume is held to it): a
    checkpoint identity where it had none, or hashes it lacked (processor files, preprocessor_config.json, tokenizer,
    a replay's data files), which it matched without, the policy's own tag where it had none or another spelling, or
    what computes its actions (`runtime`) where it had none, with no less identity."""
    if policy.get("embodiment_tag") is not None and policy.get("embodiment_tag") != first_policy.get("embodiment_tag"):
        return True
    identity, first_identity = policy.get("identity"), first_policy.get("identity")
    adds_runtime = bool(policy.get("runtime")) and not first_policy.get("runtime")
    if not first_identity:
        return bool(identity) or adds_runtime
    if not isinstance(identity, Mapping) or not isinstance(first_identity, Mapping):
        return False
    return set(identity) > set(first_identity) or (adds_runtime and set(identity) >= set(first_identity))


def _recorded_before_data_hash(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """True, warning once that its actions go unchecked, when `old` is a replay recorded before replays hashed their
    data files and `new` is the same replay (meta/ files, episodes, horizon) with that hash: nothing recorded then
    tells two recordings with the same meta/ files apart."""
    old_identity = old.get("identity")
    if (not isinstance(old_identity, Mapping) or old_identity.get("kind") != "replay"
            or "dataset_data_sha256" in old_identity or new.get("fingerprint_without_data") != old.get("fingerprint")):
        return False
    _warn_once(f"{describe(old)} was recorded before replays hashed their data files: it matches {describe(new)} on "
               "its meta/ files alone, and its recorded actions are not compared (a dataset with the same meta/ files "
               "and other actions would pass as the same policy)")
    return True


def pins_checkpoint(record: Optional[Mapping[str, Any]]) -> bool:
    """Whether a policy record names a checkpoint identity; one that does not (an older gr00t-server, which reports
    no policy_identity, or a policy of one's own without identity()) is matched on class, tag and modality configs."""
    return not record or bool(record.get("identity"))


# Why a record without identity pins less than it seems, said by warn_unpinned and by merge (unpinned_shards_text)
UNPINNED_CONSEQUENCE = ("same_policy can only compare its class, tag and modality configs, so another checkpoint of the "
                        "same configs cannot be detected")
UNPINNED_FIX = ("upgrade gr00t-server to pin the checkpoint (a policy of one's own: give it identity(), "
                "docs/serving.md)")


def warn_unpinned(client: Any, record: Optional[Mapping[str, Any]]) -> None:
    """Warn once, at a run's start, when the server behind `client` reports no checkpoint identity for `record`: a
    restart with another checkpoint of the same configs would go unnoticed, its episodes scored as this run's."""
    if pins_checkpoint(record):
        return
    _warn_once(f"the server at {getattr(client, 'address', '?')} reports no checkpoint identity (policy_identity) for "
               f"{describe(record)}, as an older gr00t-server (before 2026-12-02) does: {UNPINNED_CONSEQUENCE}, and a "
               f"restart with another checkpoint during this run would have its episodes scored as this run's; "
               f"{UNPINNED_FIX}")


def unpinned_shards_text(names: Iterable[str]) -> str:
    """merge's warning for shards whose records hold no checkpoint identity (pooled by class, tag and configs)."""
    return (f"{', '.join(names)} record a policy that reports no checkpoint identity (run against an older gr00t-server, "
            f"before 2026-12-02, which reports no policy_identity, or a policy of one's own without identity()): "
            f"{UNPINNED_CONSEQUENCE}, and shards run against another checkpoint are pooled as this policy's; "
            f"{UNPINNED_FIX}")


def check_serves(client: Any, record: Mapping[str, Any]) -> None:
    """ServedPolicyChanged unless `client`'s server serves `record`'s policy now (asked with get_server_info; a
    timeout or lost connection is raised as it is, for the run's liveness rules to judge)."""
    now = record_from_info(_served_info(client))  # None (a server that cannot say, a reference one now): not the same
    if now is not None and same_policy(record, now):
        return
    where = f"the server at {getattr(client, 'address', '?')}"
    computed = runtime_difference(now, record, "on the server", "in this run")
    if computed is not None:
        raise ServedPolicyChanged(f"{where} now computes this run's policy otherwise: {computed[0]} (it was restarted "
                                  f"with other flags?); it serves {describe(now)}, and this run evaluates "
                                  f"{describe(record)}; restart it with {computed[1]} to go on")
    raise ServedPolicyChanged(f"{where} now serves {describe(now)}, and this run evaluates {describe(record)} (it was "
                              "restarted with another checkpoint, dataset or dtype?)")


@contextlib.contextmanager
def pinned_policy(client: Any, record: Optional[Mapping[str, Any]] = None) -> Iterator[None]:
    """While the block runs, `client` (a PolicyClient) checks after each reconnection or lost reply that its server
    still serves `record`'s policy (default: what it serves now), so that episodes after a restart with another
    checkpoint are never scored as the first's: ServedPolicyChanged from the reset or get_action that met another.
    Does nothing for a client that already holds a pin (an outer block's), an in-process policy, or a server that
    gives no info (the reference's; nothing to compare), and warns when the server cannot be asked now, or reports no
    checkpoint identity (warn_unpinned). The check costs one get_server_info per reconnection."""
    watch = getattr(client, "on_new_server", None)
    if not callable(watch) or getattr(client, "new_server_check", None) is not None:
        yield
        return
    if record is None:
        record = record_from_info(server_info(client))  # warns when the server cannot be asked now
    if record is None:
        yield
        return
    warn_unpinned(client, record)
    pinned = dict(record)
    watch(lambda current: check_serves(current, pinned))
    try:
        yield
    finally:
        watch(None)

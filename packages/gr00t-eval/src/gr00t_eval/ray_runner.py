"""Run a rollout's shards as Ray tasks (`rollout --ray-address auto|HOST:PORT|local`), merged into one result.

Each Ray task runs one shard with its own env workers and its own PolicyClient; policy servers are assigned
to shards round-robin. A shard is a Ray generator that sends every episode to the driver as it is scored, so
the driver's episode log keeps it through an interrupt, and `rollout --resume DIR` (with or without Ray)
runs only what is missing or errored. Needs the optional extra: pip install 'gr00t-eval[ray]'.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from gr00t_client.cli_signals import stop_signals_held
from gr00t_client.client import endpoint_host

from .metrics import EpisodeOutcome
from .policy_identity import check_serves, describe, pinned_policy, record_from_info, same_policy, server_info
from .ray_connect import import_ray, init_ray, shutdown_ray
from .rollout.config import RolloutConfig, check_rollout_config, check_whole_number
from .run_stop import interrupts_deferred, sigterm_as_interrupt
from .shard import (ShardSpec, _checked_done, format_missing, merge_results, results_from_outcomes, run_suite,
                    seeds_known, shard_ranges)
from .suites import INCOMPLETE, Task, resolve_auto_n_envs, resolve_tasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerAddress:
    """One policy server a shard may talk to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{endpoint_host(self.host)}:{self.port}"  # an IPv6 literal bracketed, as its port follows


TCP_SCHEME = "tcp://"  # the server prints "listening on tcp://HOST:PORT", and that address is pasted as a host


def parse_servers(hosts: str, default_port: int, port_given: bool = False, host_flag: str = "--policy-client-host",
                  port_flag: str = "--policy-client-port") -> List[ServerAddress]:
    """'h1,h2:5556' -> [h1:default_port, h2:5556] (entries without a port use `default_port`). An IPv6 address
    takes a port only in brackets ('[::1]:5556'); unbracketed ('::1', '2001:db8::1') it is a host (its last group
    was taken for a port: '::1' connected to host ':' port 1). `port_given`: the port flag was on the command
    line, and an entry naming another port is refused (it was run against the entry's, the flag silently ignored).
    Errors name `host_flag` and `port_flag` (rollout's by default; open-loop's are --host and --port). A leading
    'tcp://' (the address the server prints) is dropped; an entry with an empty host or port is refused."""
    servers = []
    for item in (part.strip() for part in str(hosts).split(",")):
        if not item:
            continue
        address = item[len(TCP_SCHEME):] if item.lower().startswith(TCP_SCHEME) else item
        host, sep, port = address.rpartition(":")
        if address.count(":") > 1 and not address.startswith("["):
            servers.append(ServerAddress(address, int(default_port)))
            continue
        if not address or (sep and not (host and port)):  # ':5555' went on as a host, which PolicyClient refused
            raise ValueError(f"{host_flag} entry {item!r}: the {'port' if address and host else 'host'} is empty; "
                             "expected HOST or HOST:PORT")
        if sep and port.isdigit() and not port.isascii():  # a superscript failed int(); Arabic-Indic digits passed it
            raise ValueError(f"{host_flag} entry {item!r}: port {port!r} is not written in the digits 0-9; expected "
                             "HOST or HOST:PORT")
        if sep and port.isdigit():
            if port_given and int(port) != int(default_port):
                raise ValueError(f"{host_flag} entry {item!r} names port {int(port)} and {port_flag} is "
                                 f"{default_port}; give the port once, in the entry or with {port_flag}")
            servers.append(ServerAddress(host, int(port)))
        else:
            servers.append(ServerAddress(address, int(default_port)))
        if not 1 <= servers[-1].port <= 65535:
            raise ValueError(f"{host_flag} entry {item!r}: port {servers[-1].port} is not from 1 to 65535")
    if not servers:
        raise ValueError(f"{host_flag} must name at least one host, got {hosts!r}")
    return servers


def _progress(line: str) -> None:
    """One progress line in the log (Ray runs take minutes; the user sees them move: gr00t-eval logs INFO to stderr
    by default). It was printed as well, and so shown twice."""
    logger.info("%s", line)


def run_shard_task(env_spec: str, config: Dict[str, Any], shard: Tuple[int, int], server: Tuple[str, int],
                   api_token: Optional[str], timeout_ms: int, curve_keys: Optional[Tuple[str, Optional[str]]] = None,
                   done: Sequence[Dict[str, Any]] = (), policy: Optional[Dict[str, Any]] = None,
                   registrations: Optional[Dict[str, Any]] = None) -> Iterator[Dict[str, Any]]:
    """The body of one Ray task (a Ray generator): run shard `shard` of the plan against `server`.

    Yields {"policy": record} once it knows what its server serves (None: a server that cannot say), {"episode":
    entry} the moment each episode is scored (the driver logs it, so an interrupted run keeps it), then {"results":
    results}, whose "policy" is that record: the driver refuses to pool shards that served different policies.
    `done`: per-episode entries of an earlier run; the finished ones are kept, the rest run. `curve_keys`: (server
    public, client secret or None) z85 keys for a CURVE server.
    `policy`: the run's policy record (what the driver found every server serving): a shard that starts later
    against a server now serving another fails at once (ServedPolicyChanged), and one that meets another mid-way
    stops there; None (the driver could not ask) pins what the server serves when the shard starts.
    `registrations`: the driver's --env-import, --env-prefix and --env-adapter, applied in this worker first (a
    worker is a fresh process: a user's adapter replacing a built-in prefix was silently the built-in env here).
    """
    items: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
    box: Dict[str, Any] = {}

    def work() -> None:  # run_suite reports through a callback; a thread turns it into this generator's items
        from gr00t_client import PolicyClient

        server_key, client_key = curve_keys or (None, None)
        try:
            if registrations:
                import argparse

                from .cli import apply_env_registrations

                apply_env_registrations(argparse.Namespace(**registrations))
            with PolicyClient(server[0], server[1], timeout_ms=timeout_ms, api_token=api_token,
                              server_public_key=server_key, client_secret_key=client_key) as client:
                try:
                    client.call_endpoint("ping", requires_input=False)
                except (TimeoutError, ConnectionError) as exc:  # the client's words name the server and why
                    raise ConnectionError(str(exc)) from None
                if policy is not None:  # the server may have been restarted since the driver asked it
                    check_serves(client, policy)
                # What this shard holds its server to; with no run-wide policy, what the server serves now, which
                # the driver compares across shards (two servers may serve two checkpoints).
                box["policy"] = dict(policy) if policy is not None else record_from_info(server_info(client))
                items.put({"policy": box["policy"]})
                with pinned_policy(client, box["policy"]):
                    box["results"] = run_suite(client, env_spec, RolloutConfig(**config), ShardSpec(*shard),
                                               on_episode=lambda outcome: items.put({"episode": outcome.to_json_dict()}),
                                               done=[EpisodeOutcome.from_json_dict(entry) for entry in done])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the task below, so Ray reports it for this shard
            box["error"] = exc
        finally:
            items.put(None)

    logging.basicConfig(level=logging.INFO)
    thread = threading.Thread(target=work, name=f"shard-{shard[0]}of{shard[1]}", daemon=True)
    thread.start()
    while True:
        item = items.get()
        if item is None:
            break
        yield item
    thread.join()
    if "error" in box:
        raise box["error"]
    results = box["results"]
    results.setdefault("config", {})["policy_server"] = f"{endpoint_host(server[0])}:{server[1]}"
    results["policy"] = box["policy"]
    import ray

    results["ray_node_id"] = ray.get_runtime_context().get_node_id()  # which node of the cluster ran this shard
    yield {"results": results}


def default_shard_count(n_items: int, n_servers: int, cluster_cpus: int) -> int:
    """One shard per CPU of the cluster (at least one per server), never more shards than episodes."""
    return max(1, min(n_items, max(n_servers, cluster_cpus)))


def _done_in(tasks: Sequence[Task], n_episodes: int, shard: ShardSpec,
             finished: Mapping[Tuple[str, int], EpisodeOutcome]) -> Tuple[List[EpisodeOutcome], int]:
    """The finished outcomes that fall in `shard`, and how many episodes the shard plans."""
    ranges = shard_ranges(tasks, n_episodes, shard)
    mine = [finished[(task, i)] for task, episodes in ranges.items() for i in episodes if (task, i) in finished]
    return mine, sum(len(episodes) for episodes in ranges.values())


def _checked_ray_args(config: RolloutConfig, servers: Sequence[ServerAddress], n_shards: Any,
                      cpus_per_shard: Any) -> List[ServerAddress]:
    """`servers` as a list; ValueError naming the argument or config field no run can take, before Ray starts (an
    n_shards of True ran its shard, then merge refused [0, True] and the episodes were lost; [] or 0 divided by 0)."""
    check_rollout_config(config, auto_n_envs=True)
    servers = list(servers)
    if not servers:
        raise ValueError("servers must list at least one ServerAddress (shard i talks to servers[i % len(servers)]), "
                         "got none")
    check_whole_number(n_shards, "n_shards", 0, " (0: one per cluster CPU)")
    if isinstance(cpus_per_shard, bool) or not isinstance(cpus_per_shard, numbers.Real) \
            or not 0 < cpus_per_shard < float("inf"):  # NaN too
        raise ValueError(f"cpus_per_shard must be a finite number > 0, got {cpus_per_shard!r}")
    return servers


def run_with_ray(env_spec: str, config: RolloutConfig, servers: Sequence[ServerAddress], address: str = "local",
                 n_shards: int = 0, api_token: Optional[str] = None, timeout_ms: int = 15000,
                 cpus_per_shard: float = 1.0, curve_keys: Optional[Tuple[str, Optional[str]]] = None,
                 done: Sequence[EpisodeOutcome] = (),
                 on_episode: Optional[Callable[[EpisodeOutcome], None]] = None,
                 policy: Optional[Mapping[str, Any]] = None,
                 registrations: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Split the plan into shards, run them as Ray tasks against `servers` (round-robin), return the merged results.

    Each scored episode reaches the driver (and `on_episode`) as it finishes. `done` holds the outcomes of an
    earlier run of the same plan (a resume): shards whose episodes all finished are not started, the others
    run only their missing and errored episodes. Ctrl-C/SIGTERM cancels the running shards and returns what
    finished with "status": "interrupted"; a shard that fails keeps the episodes it streamed ("aborted"). Shards that
    raised or ended aborted are listed in `failed_shards` with why.
    `policy`: the run's policy record, which every shard holds its server to (run_shard_task); `registrations`: the
    env registrations every shard applies first (run_shard_task).
    """
    servers = _checked_ray_args(config, servers, n_shards, cpus_per_shard)
    if config.seed is None:
        raise ValueError("--ray-address needs --seed: shards must agree on every episode's seed to merge into one run")
    if config.n_envs == 0:  # auto inside a shard: 70 % of the CPUs Ray reserved for it, not of the whole node
        # resolved once, so that the shards that run and those an earlier run finished record the same plan
        config = resolve_auto_n_envs(config, config.n_episodes, cores=max(1, int(cpus_per_shard)))
    ray = import_ray()
    tasks, _ = resolve_tasks(env_spec)
    n_items = len(tasks) * config.n_episodes
    # held to the checks run_suite makes (a shard all of whose episodes are done never runs one)
    done = _checked_done(done, config, seeds_known(policy), True, tasks)
    finished = {(str(o.extras.get("task")), o.episode_index): o for o in done if o.error is None}
    shard_results: Dict[int, Dict[str, Any]] = {}
    failed: Dict[str, str] = {}
    running: Dict[Any, int] = {}
    started = init_ray(address)  # the SIGTERM handler below replaces Ray's right after
    try:
        # ray.init() replaced the SIGTERM handler with its own sys.exit; SIGTERM must stop the run like Ctrl-C.
        with sigterm_as_interrupt():
            largest = max((node.get("Resources", {}).get("CPU", 0) for node in ray.nodes() if node.get("Alive")),
                          default=0)
            if cpus_per_shard > largest:  # Ray keeps such a task pending for ever, without a word to the driver
                from .cli_errors import UsageError

                raise UsageError(f"--ray-cpus-per-shard {cpus_per_shard:g}: the largest node of this Ray cluster has "
                                 f"{largest:g} CPUs, so no shard could ever be scheduled; pass at most {largest:g}")
            if n_shards <= 0:
                cluster_cpus = int(ray.cluster_resources().get("CPU", 1) // cpus_per_shard)
                n_shards = default_shard_count(n_items, len(servers), cluster_cpus)
            n_shards = min(n_shards, n_items)
            if n_shards < len(servers):  # round-robin: shard i talks to servers[i % len(servers)]
                _progress(f"Ray: {n_shards} shards use only {n_shards} of the {len(servers)} servers; unused: "
                          f"{', '.join(map(str, servers[n_shards:]))}")
                servers = servers[:n_shards]
            specs = [ShardSpec(index, n_shards) for index in range(n_shards)]
            kept = {spec.index: _done_in(tasks, config.n_episodes, spec, finished)[0] for spec in specs}
            streamed: Dict[int, Dict[Tuple[str, int], EpisodeOutcome]] = {spec.index: {} for spec in specs}
            served: Dict[int, Optional[Dict[str, Any]]] = {}  # the policy each started shard holds its server to
            submitted_at: Dict[int, float] = {}

            def partial(index: int, status: str, reason: str) -> Dict[str, Any]:
                """What shard `index` finished, with the time it ran, for a shard that ended without its results."""
                outcomes = [*kept[index], *streamed[index].values()]
                results = results_from_outcomes(env_spec, config, specs[index], outcomes, status, reason)
                results["config"]["policy_server"] = str(servers[index % len(servers)])  # as a finished shard says
                results["policy"] = served.get(index)
                elapsed = time.monotonic() - submitted_at[index] if index in submitted_at else 0.0
                return _with_eval_s(results, elapsed, shard_ranges(tasks, config.n_episodes, specs[index]))

            try:
                _submit_shards(ray, env_spec, config, servers, specs, tasks, kept, cpus_per_shard, api_token, timeout_ms,
                               curve_keys, shard_results, running, submitted_at, policy, registrations)
                _progress(f"Ray: running {len(running)} of {n_shards} shards ({n_items - len(finished)} of {n_items} "
                          f"episodes left) against {', '.join(map(str, servers))}")
                while running:  # a timeout keeps Ctrl-C prompt; shards report in whatever order they finish
                    ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                    for generator in ready:
                        index = running[generator]
                        item = _next_item(ray, generator)
                        if "policy" in item:
                            served[index] = item["policy"]
                            continue
                        if "episode" in item:
                            outcome = EpisodeOutcome.from_json_dict(item["episode"])
                            streamed[index][(str(outcome.extras.get("task")), outcome.episode_index)] = outcome
                            if on_episode is not None:
                                on_episode(outcome)
                            continue
                        del running[generator]
                        if "results" in item:
                            shard_results[index] = item["results"]
                            ended = f"shard {index}/{n_shards} {_shard_ending(item['results'])}"
                            if item["results"].get("status") == "aborted":  # its server gone mid-run: failed too
                                failed[f"{index}/{n_shards}"] = f"aborted: {item['results'].get('stop_reason')}"
                        else:
                            failed[f"{index}/{n_shards}"] = item["error"]
                            shard_results[index] = partial(index, "aborted", f"failed: {item['error']}")
                            ended = f"shard {index}/{n_shards} FAILED: {item['error']}"
                        _progress(f"Ray: {ended} ({_tally(shard_results, n_shards, n_items)})")
            except KeyboardInterrupt:
                with interrupts_deferred():  # a second Ctrl-C must not lose the results of the first
                    _progress(f"Ray: interrupted; cancelling {len(running)} running shards (finished episodes are kept)")
                    for index in running.values():  # the results first, then the cancelling that may take a while
                        shard_results[index] = partial(index, "interrupted", "cancelled by SIGINT, SIGTERM or SIGHUP")
                    for spec in specs:  # not submitted yet: all its episodes (but those of an earlier run) not run
                        if spec.index not in shard_results:
                            shard_results[spec.index] = partial(spec.index, "interrupted",
                                                                "not started: stopped by SIGINT, SIGTERM or SIGHUP")
                    for generator in running:
                        try:
                            ray.cancel(generator, force=True)
                        except (KeyboardInterrupt, Exception) as exc:  # noqa: BLE001 - the shard's results are kept
                            logger.warning("could not cancel a Ray shard: %s", exc)
                    if started:
                        started = False
                        shutdown_ray(ray)
    finally:
        if started:
            with interrupts_deferred():
                shutdown_ray(ray)
    ordered = [shard_results[index] for index in sorted(shard_results)]
    names = [f"shard {r['plan']['shard'][0]}/{n_shards}" for r in ordered]
    # Failed and cancelled shards leave episodes in no shard's results; they are reported as not run, never lost.
    conflict = _policy_conflict(ordered, names)
    if conflict:  # merge refuses such shards; the run keeps its episodes but is no result of one policy
        ordered = [{k: v for k, v in results.items() if k != "policy"} for results in ordered]
    merged = merge_results(ordered, allow_missing=True, names=names)
    merged["stop_reason"] = _stop_reason(ordered, names, merged["missing_episodes"])
    if conflict:
        merged["status"] = "aborted"
        merged["stop_reason"] = "; ".join(filter(None, [conflict, merged["stop_reason"]]))
        merged["policy_conflict"] = True  # its episodes are two policies': a resume would pool them (refused)
    merged["config"].pop("policy_server", None)
    merged["config"].update(ray_address=address, ray_shards=n_shards, policy_servers=[str(s) for s in servers])
    merged["failed_shards"] = failed
    merged["shard_nodes"] = {f"{r['plan']['shard'][0]}/{n_shards}": r["ray_node_id"] for r in ordered if r.get("ray_node_id")}
    return merged


def _submit_shards(ray: Any, env_spec: str, config: RolloutConfig, servers: Sequence[ServerAddress],
                   specs: Sequence[ShardSpec], tasks: Sequence[Task], kept: Mapping[int, List[EpisodeOutcome]],
                   cpus_per_shard: float, api_token: Optional[str], timeout_ms: int,
                   curve_keys: Optional[Tuple[str, Optional[str]]], shard_results: Dict[int, Dict[str, Any]],
                   running: Dict[Any, int], submitted_at: Dict[int, float],
                   policy: Optional[Mapping[str, Any]] = None, registrations: Optional[Dict[str, Any]] = None) -> None:
    """Start a Ray task per shard with episodes left (a shard all finished earlier gets its results at once)."""
    payload = dataclasses.asdict(config)
    remote = ray.remote(num_cpus=cpus_per_shard, max_retries=0)(run_shard_task)
    for spec in specs:
        planned = sum(len(episodes) for episodes in shard_ranges(tasks, config.n_episodes, spec).values())
        server = servers[spec.index % len(servers)]
        if len(kept[spec.index]) == planned:  # every episode of this shard finished earlier: nothing to start
            results = results_from_outcomes(env_spec, config, spec, kept[spec.index])
            # as a shard that ran says: the resume checked the run's server against the policy its episodes ran
            results["config"]["policy_server"] = str(server)
            results["policy"] = dict(policy) if policy is not None else None
            shard_results[spec.index] = results
            continue
        with stop_signals_held():  # a Ctrl-C in .remote() (the first exports the function: a second) acts once the
            submitted_at[spec.index] = time.monotonic()  # task is in `running`, for the interrupt to cancel it
            running[remote.remote(env_spec, payload, (spec.index, spec.count), (server.host, server.port), api_token,
                                  timeout_ms, curve_keys, [o.to_json_dict() for o in kept[spec.index]],
                                  dict(policy) if policy is not None else None, registrations)] = spec.index


def _next_item(ray: Any, generator: Any) -> Dict[str, Any]:
    """The next item a shard's generator sent: {"episode": ...}, {"results": ...} or {"error": why it failed}."""
    try:
        return ray.get(next(generator))
    except StopIteration:  # the task ended without its results item (should not happen)
        return {"error": "the Ray task ended without results"}
    except Exception as exc:  # noqa: BLE001 - keep the other shards and this one's streamed episodes
        cause = getattr(exc, "cause", None) or exc
        return {"error": f"{type(cause).__name__}: {cause}"}


def _shard_ending(results: Mapping[str, Any]) -> str:
    """How a shard that sent its results ended: 'done: 2 episodes', 'ended aborted: <why>', its failed tasks."""
    episodes = results.get("per_episode", [])
    n_errored = sum(1 for entry in episodes if entry.get("error"))
    status = results.get("status", "complete")
    # "incomplete": it ran to its end with failed tasks, each named below
    text = "done" if status in ("complete", INCOMPLETE) else f"ended {status}: {results.get('stop_reason')}"
    text += f"; {len(episodes)} episodes" + (f" ({n_errored} errored)" if n_errored else "")
    for task, reason in results.get("failed_tasks", {}).items():
        text += f"; task {task} FAILED: {reason}"
    return text


def _tally(shard_results: Mapping[int, Mapping[str, Any]], n_shards: int, n_items: int) -> str:
    """'1/2 shards ended, 3/8 episodes finished, 1 errored' over the shards that ended so far."""
    episodes = [entry for results in shard_results.values() for entry in results.get("per_episode", [])]
    n_errored = sum(1 for entry in episodes if entry.get("error"))
    return (f"{len(shard_results)}/{n_shards} shards ended, {len(episodes) - n_errored}/{n_items} episodes finished"
            + (f", {n_errored} errored" if n_errored else ""))


def _with_eval_s(results: Dict[str, Any], seconds: float, ranges: Mapping[str, range]) -> Dict[str, Any]:
    """Give a shard's partial results the wall time it ran, split over its tasks by planned episodes."""
    planned = sum(len(episodes) for episodes in ranges.values())
    for task, episodes in ranges.items():
        if task in results["per_task"] and planned:
            results["per_task"][task]["eval_s"] = seconds * len(episodes) / planned
    results["overall"]["eval_s"] = seconds
    return results


def _stop_reason(ordered: Sequence[Mapping[str, Any]], names: Sequence[str], missing: Sequence[str]) -> Optional[str]:
    """Why a Ray run is not complete, naming shards as 'shard i/N' (merge's own reason speaks of files and flags)."""
    reasons = [f"{name} {r['status']}: {r.get('stop_reason')}" for name, r in zip(names, ordered)
               if r.get("status", "complete") != "complete"]
    if missing:
        reasons.append(f"{len(missing)} episodes did not run ({format_missing(missing, shown=4)})")
    return "; ".join(reasons) or None


def _policy_conflict(ordered: Sequence[Mapping[str, Any]], names: Sequence[str]) -> Optional[str]:
    """Why shards that served different policies (servers the driver could not ask, so no run-wide policy pinned
    them) are not one run's results; None when they agree, as merge_results checks."""
    for index, results in enumerate(ordered):
        for first_index in range(index):
            first = ordered[first_index]
            if not same_policy(first.get("policy"), results.get("policy")):
                return (f"{names[index]} ran against another policy than {names[first_index]}: "
                        f"{describe(results.get('policy'))} at {results['config'].get('policy_server')}, not "
                        f"{describe(first.get('policy'))} at {first['config'].get('policy_server')}; one run evaluates "
                        "one policy, so its episodes are not one success rate (serve the same checkpoint or dataset on "
                        "every server and run again)")
    return None

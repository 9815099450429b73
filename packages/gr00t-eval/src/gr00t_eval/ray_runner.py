"""Run a rollout's shards as Ray tasks (`rollout --ray-address auto|HOST:PORT|local`), merged into one result.

Each Ray task runs one shard with its own env workers and its own PolicyClient; policy servers are assigned
to shards round-robin. A shard is a Ray generator that sends every episode to the driver as it is scored, so
the driver's episode log keeps it through an interrupt, and `rollout --resume DIR` (with or without Ray)
runs only what is missing or errored. Needs the optional extra: pip install 'gr00t-eval[ray]'.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from .extras import MissingExtraError
from .metrics import EpisodeOutcome
from .rollout.runner import RolloutConfig
from .shard import ShardSpec, merge_results, results_from_outcomes, run_suite, shard_ranges
from .suites import Task, auto_n_envs, resolve_tasks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerAddress:
    """One policy server a shard may talk to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_servers(hosts: str, default_port: int) -> List[ServerAddress]:
    """'h1,h2:5556' -> [h1:default_port, h2:5556] (entries without a port use `default_port`)."""
    servers = []
    for item in (part.strip() for part in str(hosts).split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if sep and port.isdigit() and host:
            servers.append(ServerAddress(host, int(port)))
        else:
            servers.append(ServerAddress(item, int(default_port)))
        if not 1 <= servers[-1].port <= 65535:
            raise ValueError(f"--policy-client-host entry {item!r}: port {servers[-1].port} is not from 1 to 65535")
    if not servers:
        raise ValueError(f"--policy-client-host must name at least one host, got {hosts!r}")
    return servers


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingExtraError(f"--ray-address needs Ray ({exc}); install it with: pip install 'gr00t-eval[ray]'") from exc
    return ray


def _progress(line: str) -> None:
    """One progress line on stderr (Ray runs take minutes; the user sees them move) and in the log."""
    print(line, file=sys.stderr, flush=True)
    logger.info("%s", line)


def init_ray(address: str) -> bool:
    """Connect to (`auto`, `HOST:PORT`, `ray://...`) or start (`local`) Ray unless it is up; True if we started it."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    _progress(f"Ray: {'starting a local runtime' if address == 'local' else 'connecting to ' + address} ...")
    if address == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def run_shard_task(env_spec: str, config: Dict[str, Any], shard: Tuple[int, int], server: Tuple[str, int],
                   api_token: Optional[str], timeout_ms: int, curve_keys: Optional[Tuple[str, Optional[str]]] = None,
                   done: Sequence[Dict[str, Any]] = ()) -> Iterator[Dict[str, Any]]:
    """The body of one Ray task (a Ray generator): run shard `shard` of the plan against `server`.

    Yields {"episode": entry} the moment each episode is scored (the driver logs it, so an interrupted run
    keeps it), then {"results": results}. `done`: per-episode entries of an earlier run; the finished ones are
    kept, the rest run. `curve_keys`: (server public, client secret or None) z85 keys for a CURVE server.
    """
    scored: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
    box: Dict[str, Any] = {}

    def work() -> None:  # run_suite reports through a callback; a thread turns it into this generator's items
        from gr00t_client import PolicyClient

        server_key, client_key = curve_keys or (None, None)
        try:
            with PolicyClient(server[0], server[1], timeout_ms=timeout_ms, api_token=api_token,
                              server_public_key=server_key, client_secret_key=client_key) as client:
                if not client.ping():
                    raise ConnectionError(f"policy server at {server[0]}:{server[1]} did not answer ping within {timeout_ms} ms")
                box["results"] = run_suite(client, env_spec, RolloutConfig(**config), ShardSpec(*shard),
                                           on_episode=lambda outcome: scored.put(outcome.to_json_dict()),
                                           done=[EpisodeOutcome.from_json_dict(entry) for entry in done])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the task below, so Ray reports it for this shard
            box["error"] = exc
        finally:
            scored.put(None)

    logging.basicConfig(level=logging.INFO)
    thread = threading.Thread(target=work, name=f"shard-{shard[0]}of{shard[1]}", daemon=True)
    thread.start()
    while True:
        entry = scored.get()
        if entry is None:
            break
        yield {"episode": entry}
    thread.join()
    if "error" in box:
        raise box["error"]
    results = box["results"]
    results.setdefault("config", {})["policy_server"] = f"{server[0]}:{server[1]}"
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


def run_with_ray(env_spec: str, config: RolloutConfig, servers: Sequence[ServerAddress], address: str = "local",
                 n_shards: int = 0, api_token: Optional[str] = None, timeout_ms: int = 15000,
                 cpus_per_shard: float = 1.0, curve_keys: Optional[Tuple[str, Optional[str]]] = None,
                 done: Sequence[EpisodeOutcome] = (),
                 on_episode: Optional[Callable[[EpisodeOutcome], None]] = None) -> Dict[str, Any]:
    """Split the plan into shards, run them as Ray tasks against `servers` (round-robin), return the merged results.

    Each scored episode reaches the driver (and `on_episode`) as it finishes. `done` holds the outcomes of an
    earlier run of the same plan (a resume): shards whose episodes all finished are not started, the others
    run only their missing and errored episodes. Ctrl-C/SIGTERM cancels the running shards and returns what
    finished with "status": "interrupted"; a shard that fails keeps the episodes it streamed ("aborted").
    """
    if config.seed is None:
        raise ValueError("--ray-address needs --seed: shards must agree on every episode's seed to merge into one run")
    ray = _import_ray()
    started = init_ray(address)
    tasks, _ = resolve_tasks(env_spec)
    n_items = len(tasks) * config.n_episodes
    finished = {(str(o.extras.get("task")), o.episode_index): o for o in done if o.error is None}
    shard_results: Dict[int, Dict[str, Any]] = {}
    failed: Dict[str, str] = {}
    try:
        if n_shards <= 0:
            n_shards = default_shard_count(n_items, len(servers), int(ray.cluster_resources().get("CPU", 1) // cpus_per_shard))
        n_shards = min(n_shards, n_items)
        payload = dataclasses.asdict(config)
        if config.n_envs == 0:  # auto inside a shard: 70 % of the CPUs Ray reserved for it, not of the whole node
            payload["n_envs"] = auto_n_envs(config.n_episodes, cores=max(1, int(cpus_per_shard)))
        remote = ray.remote(num_cpus=cpus_per_shard, max_retries=0)(run_shard_task)
        specs = [ShardSpec(index, n_shards) for index in range(n_shards)]
        kept: Dict[int, List[EpisodeOutcome]] = {}
        running: Dict[Any, int] = {}
        for spec in specs:
            kept[spec.index], planned = _done_in(tasks, config.n_episodes, spec, finished)
            if len(kept[spec.index]) == planned:  # every episode of this shard finished earlier: nothing to start
                shard_results[spec.index] = results_from_outcomes(env_spec, config, spec, kept[spec.index])
                continue
            server = servers[spec.index % len(servers)]
            running[remote.remote(env_spec, payload, (spec.index, n_shards), (server.host, server.port), api_token,
                                  timeout_ms, curve_keys, [o.to_json_dict() for o in kept[spec.index]])] = spec.index
        n_left = n_items - len(finished)
        _progress(f"Ray: running {len(running)} of {n_shards} shards ({n_left} of {n_items} episodes left) against "
                  f"{', '.join(map(str, servers))}")
        streamed: Dict[int, Dict[Tuple[str, int], EpisodeOutcome]] = {spec.index: {} for spec in specs}

        def partial(index: int, status: str, reason: str) -> Dict[str, Any]:
            outcomes = [*kept[index], *streamed[index].values()]
            return results_from_outcomes(env_spec, config, specs[index], outcomes, status, reason)

        try:
            while running:  # a timeout keeps Ctrl-C prompt; shards report in whatever order they finish
                ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
                for generator in ready:
                    index = running[generator]
                    try:
                        item = ray.get(next(generator))
                    except StopIteration:  # the task ended without its results item (should not happen)
                        item = {"error": "the Ray task ended without results"}
                    except Exception as exc:  # noqa: BLE001 - keep the other shards and this one's streamed episodes
                        cause = getattr(exc, "cause", None) or exc
                        item = {"error": f"{type(cause).__name__}: {cause}"}
                    if "episode" in item:
                        outcome = EpisodeOutcome.from_json_dict(item["episode"])
                        streamed[index][(str(outcome.extras.get("task")), outcome.episode_index)] = outcome
                        if on_episode is not None:
                            on_episode(outcome)
                        continue
                    del running[generator]
                    if "results" in item:
                        shard_results[index] = item["results"]
                        _progress(f"Ray: shard {index}/{n_shards} done ({len(shard_results)}/{n_shards} shards, "
                                  f"{sum(len(r['per_episode']) for r in shard_results.values())}/{n_items} episodes)")
                    else:
                        failed[f"{index}/{n_shards}"] = item["error"]
                        shard_results[index] = partial(index, "aborted", f"shard {index}/{n_shards} failed: {item['error']}")
                        _progress(f"Ray: shard {index}/{n_shards} FAILED: {item['error']}")
        except KeyboardInterrupt:
            _progress(f"Ray: interrupted; cancelling {len(running)} running shards (finished episodes are kept)")
            for generator, index in running.items():
                ray.cancel(generator, force=True)
                shard_results[index] = partial(index, "interrupted", "interrupted (SIGINT/SIGTERM)")
    finally:
        if started:
            ray.shutdown()
    ordered = [shard_results[index] for index in sorted(shard_results)]
    incomplete = any(r.get("status", "complete") != "complete" for r in ordered)
    merged = merge_results(ordered, allow_missing=bool(failed) or incomplete)
    merged["config"].pop("policy_server", None)
    merged["config"].update(ray_address=address, ray_shards=n_shards, policy_servers=[str(s) for s in servers])
    merged["failed_shards"] = failed
    merged["n_not_run"] = len(merged["missing_episodes"])
    merged["shard_nodes"] = {f"{r['plan']['shard'][0]}/{n_shards}": r["ray_node_id"] for r in ordered if r.get("ray_node_id")}
    return merged

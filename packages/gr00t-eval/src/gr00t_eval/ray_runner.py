"""Run a rollout's shards as Ray tasks (`rollout --ray-address auto|HOST:PORT|local`), merged into one result.

Each Ray task runs one shard with its own env workers and its own PolicyClient; policy servers are assigned
to shards round-robin. Needs the optional extra: pip install 'gr00t-eval[ray]'.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .extras import MissingExtraError
from .rollout.runner import RolloutConfig
from .shard import ShardSpec, merge_results, run_suite
from .suites import auto_n_envs, resolve_tasks

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
                   api_token: Optional[str], timeout_ms: int,
                   curve_keys: Optional[Tuple[str, Optional[str]]] = None) -> Dict[str, Any]:
    """The body of one Ray task: connect to `server`, run shard `shard` of the plan, return its results.

    `curve_keys`: (server public, client secret or None) z85 strings for a CURVE server, read by the driver.
    """
    from gr00t_client import PolicyClient

    logging.basicConfig(level=logging.INFO)
    server_key, client_key = curve_keys or (None, None)
    with PolicyClient(server[0], server[1], timeout_ms=timeout_ms, api_token=api_token,
                      server_public_key=server_key, client_secret_key=client_key) as client:
        if not client.ping():
            raise ConnectionError(f"policy server at {server[0]}:{server[1]} did not answer ping within {timeout_ms} ms")
        results = run_suite(client, env_spec, RolloutConfig(**config), ShardSpec(*shard))
    results.setdefault("config", {})["policy_server"] = f"{server[0]}:{server[1]}"
    import ray

    results["ray_node_id"] = ray.get_runtime_context().get_node_id()  # which node of the cluster ran this shard
    return results


def default_shard_count(n_items: int, n_servers: int, cluster_cpus: int) -> int:
    """One shard per CPU of the cluster (at least one per server), never more shards than episodes."""
    return max(1, min(n_items, max(n_servers, cluster_cpus)))


def run_with_ray(env_spec: str, config: RolloutConfig, servers: Sequence[ServerAddress], address: str = "local",
                 n_shards: int = 0, api_token: Optional[str] = None, timeout_ms: int = 15000,
                 cpus_per_shard: float = 1.0, curve_keys: Optional[Tuple[str, Optional[str]]] = None) -> Dict[str, Any]:
    """Split the plan into shards, run them as Ray tasks against `servers` (round-robin), return the merged results."""
    if config.seed is None:
        raise ValueError("--ray-address needs --seed: shards must agree on every episode's seed to merge into one run")
    ray = _import_ray()
    started = init_ray(address)
    try:
        tasks, _ = resolve_tasks(env_spec)
        n_items = len(tasks) * config.n_episodes
        if n_shards <= 0:
            n_shards = default_shard_count(n_items, len(servers), int(ray.cluster_resources().get("CPU", 1) // cpus_per_shard))
        n_shards = min(n_shards, n_items)
        payload = dataclasses.asdict(config)
        if config.n_envs == 0:  # auto inside a shard: 70 % of the CPUs Ray reserved for it, not of the whole node
            payload["n_envs"] = auto_n_envs(config.n_episodes, cores=max(1, int(cpus_per_shard)))
        remote = ray.remote(num_cpus=cpus_per_shard, max_retries=0)(run_shard_task)
        refs = []
        for index in range(n_shards):
            server = servers[index % len(servers)]
            refs.append(remote.remote(env_spec, payload, (index, n_shards), (server.host, server.port), api_token, timeout_ms,
                                      curve_keys))
        _progress(f"Ray: running {n_shards} shards ({n_items} episodes) against {', '.join(map(str, servers))}")
        shard_results, failed = [], {}
        index_of = {ref: index for index, ref in enumerate(refs)}
        waiting, episodes_done = list(refs), 0
        while waiting:  # report each shard as it finishes, in whatever order they finish
            ready, waiting = ray.wait(waiting, num_returns=1)
            index = index_of[ready[0]]
            try:
                results = ray.get(ready[0])
                shard_results.append(results)
                episodes_done += len(results.get("per_episode", []))
                _progress(f"Ray: shard {index}/{n_shards} done ({n_shards - len(waiting)}/{n_shards} shards, "
                          f"{episodes_done}/{n_items} episodes)")
            except Exception as exc:  # noqa: BLE001 - keep the other shards' episodes; report the lost ones
                cause = getattr(exc, "cause", None) or exc
                failed[f"{index}/{n_shards}"] = f"{type(cause).__name__}: {cause}"
                _progress(f"Ray: shard {index}/{n_shards} FAILED: {failed[f'{index}/{n_shards}']}")
    finally:
        if started:
            ray.shutdown()
    if not shard_results:
        raise RuntimeError(f"every Ray shard failed: {failed}")
    merged = merge_results(shard_results, allow_missing=bool(failed))
    merged["config"].pop("policy_server", None)
    merged["config"].update(ray_address=address, ray_shards=n_shards, policy_servers=[str(s) for s in servers])
    merged["failed_shards"] = failed
    merged["shard_nodes"] = {f"{r['plan']['shard'][0]}/{n_shards}": r.get("ray_node_id") for r in shard_results}
    return merged

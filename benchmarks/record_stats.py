"""What `gr00t-eval record` pays per episode to keep meta/stats.json current, as the dataset grows.

The writer rewrites stats.json after every episode, so an interrupted recording stays loadable. Recomputing the
statistics from every row so far (`column_stats` of the whole column, as the writer did) costs in proportion to the
rows already recorded: quadratic over a recording. `RunningColumnStats` merges each episode in. Both run side by
side in one process on the same episodes (state and action columns of Meta-World's widths, 150 steps each); the
table prints, at each checkpoint, the milliseconds one episode's statistics cost with each and their ratio.

    python benchmarks/record_stats.py                    # 400 episodes, about a minute
    python benchmarks/record_stats.py --episodes 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _args import positive_int  # noqa: E402
from gr00t_eval.dataset.stats import RunningColumnStats, column_stats  # noqa: E402

COLUMNS = {"observation.state": 39, "action": 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=positive_int, default=400)
    parser.add_argument("--steps", type=positive_int, default=150, help="rows per episode (default 150)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = {name: [] for name in COLUMNS}
    running = {name: RunningColumnStats() for name in COLUMNS}
    checkpoints = {max(1, args.episodes * k // 8) for k in range(1, 9)}
    print(f"{'episodes':>8} {'rows':>9} {'whole column ms':>16} {'running ms':>11} {'ratio':>7}")
    total_whole = total_running = 0.0
    for episode in range(1, args.episodes + 1):
        batch = {name: rng.normal(size=(args.steps, dims)) for name, dims in COLUMNS.items()}
        start = time.perf_counter()
        for name, values in batch.items():
            rows[name].append(values)
            whole = column_stats(np.concatenate(rows[name]))
        whole_s = time.perf_counter() - start
        start = time.perf_counter()
        for name, values in batch.items():
            running[name].add(values)
            current = running[name].stats()
        running_s = time.perf_counter() - start
        assert current["q99"] == whole["q99"] and current["min"] == whole["min"]  # same numbers, not an estimate
        total_whole += whole_s
        total_running += running_s
        if episode in checkpoints:
            print(f"{episode:>8} {episode * args.steps:>9} {whole_s * 1e3:>16.2f} {running_s * 1e3:>11.2f} "
                  f"{whole_s / running_s:>6.1f}x")
    print(f"total over {args.episodes} episodes: whole column {total_whole:.1f} s, running {total_running:.1f} s "
          f"({total_whole / total_running:.1f}x)")


if __name__ == "__main__":
    main()

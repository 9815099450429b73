"""Record claims of recordings that did not finish, for the tests of the warnings every reader of such a dataset gives
(the replay server, make-test-checkpoint, open-loop)."""

import subprocess
import sys
from pathlib import Path

from gr00t_eval.dataset.overwrite import RECORD_CLAIM
from gr00t_eval.run_claim import finish_claim, take_claim


def killed_recording(dataset, n_episodes):
    """Give `dataset` the claim of a recording of `n_episodes` whose process took it and was killed (kill -9, OOM):
    the claim says finished: false, and its process is gone."""
    subprocess.run([sys.executable, "-c", "import os, sys; from pathlib import Path; "
                    "from gr00t_eval.dataset.overwrite import RECORD_CLAIM; from gr00t_eval.run_claim import take_claim; "
                    "take_claim(Path(sys.argv[1]), RECORD_CLAIM, {'n_episodes': int(sys.argv[2])}, flag='--output'); "
                    "os._exit(0)", str(dataset), str(n_episodes)], check=True, timeout=120)


def stopped_recording(dataset, n_episodes):
    """Give `dataset` the claim of a recording of `n_episodes` stopped by Ctrl-C, SIGTERM or an error: its claim is
    closed (finished), as every outcome closes it."""
    claim = take_claim(Path(dataset), RECORD_CLAIM, {"n_episodes": n_episodes}, flag="--output")
    finish_claim(claim, "interrupted")

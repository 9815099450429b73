"""A process holding a claim of a folder, for the tests of claims judged from elsewhere (another pid namespace)."""

import os
import signal
import subprocess

# `python -c CLAIMANT FOLDER`: claims FOLDER as claim.json, says "claimed", then runs on for two minutes
CLAIMANT = """
import sys, time
from gr00t_eval.run_claim import claim_output_dir
claim_output_dir(sys.argv[1], "claim.json", {"settings": 1})
print("claimed", flush=True)
time.sleep(120)
"""


def end(process: subprocess.Popen) -> None:
    """Kill a claimant started in a session of its own, with what it started, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(30)

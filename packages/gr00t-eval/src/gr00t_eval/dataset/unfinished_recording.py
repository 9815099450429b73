"""Whether a dataset's recording ended without finishing: its record claim says finished: false and the recording's
process is gone (kill -9, an OOM kill), so the dataset holds only the episodes it finished. Read by the replay server
and make-test-checkpoint --dataset-path, and by open-loop of the dataset it scores, which would otherwise take it as
whole."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..run_claim import holder_gone, read_holder
from .overwrite import RECORD_CLAIM


def unfinished_recording_warning(root: Path, n_listed: int) -> Optional[str]:
    """'dataset ROOT was recorded by a run that ended without finishing (N of M episodes) ...' when the recording of
    the dataset at `root` (which lists `n_listed` episodes) ended without finishing (killed), or stopped (Ctrl-C,
    SIGTERM, an error) with fewer episodes than it was asked for; None for a whole recording, one still running, or a
    dataset without a record claim."""
    claim = root / RECORD_CLAIM
    holder = read_holder(claim)
    if holder is None or (not holder.finished and not holder_gone(holder, claim)):
        return None  # no claim, or a recording still running (the replay says so itself)
    try:
        planned = json.loads(claim.read_text()).get("n_episodes")
    except (OSError, ValueError, AttributeError):
        planned = None
    planned = planned if isinstance(planned, int) and not isinstance(planned, bool) else None
    if planned is not None and n_listed >= planned:
        return None  # every episode asked for is there (killed after its last one)
    if holder.finished:  # stopped by Ctrl-C, SIGTERM or an error: its claim is closed, its episodes fewer
        if planned is None:
            return None
        return (f"dataset {root} was recorded by a run that stopped before finishing ({n_listed} of {planned} "
                f"episodes: interrupted, or an episode failed); it holds only the episodes finished before it stopped: "
                "record it again with --overwrite for the whole set")
    of = f" of {planned}" if planned is not None else ""
    return (f"dataset {root} was recorded by a run that ended without finishing ({n_listed}{of} episodes): its "
            f"{RECORD_CLAIM} names {holder.describe()}, now gone (killed?); it holds only the episodes finished before "
            "it stopped: record it again with --overwrite for the whole set")

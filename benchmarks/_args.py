"""Argument types shared by the benchmarks: counts and durations of 0 or less are usage errors, not tracebacks."""

from __future__ import annotations

import argparse
import math
import re
from typing import List


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (argparse prints "argument --rounds: must be >= 1, got 0" and exits 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0, such as seconds of a run."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def port_number(text: str) -> int:
    """argparse type of --port: a TCP port a client can connect to, 1 to 65535, in the digits 0-9 (the programs'
    shared port type)."""
    from gr00t_client.cli_flags import port_number as digits_port

    value = digits_port("--port")(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0, such as untimed warm-up calls."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0, such as milliseconds a sleep policy spends per call."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def device_name(text: str) -> str:
    """argparse type: a torch device this benchmark can run on: cpu, cuda or cuda:N."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")
    return text


def positive_ints(text: str) -> List[int]:
    """argparse type: comma-separated ints >= 1, such as the client counts of a sweep ("1,2,4")."""
    return [positive_int(item.strip()) for item in text.split(",")]

"""Built-in env adapters (Meta-World, PushT); each imports its simulator lazily."""

import numbers
from typing import Any

MAX_IMAGE_SIZE = 1024  # square camera images; a recorded episode holds every frame in memory (500 x 3 MiB at 1024)


def checked_image_size(image_size: Any) -> int:
    """`image_size` as an int from 1 to MAX_IMAGE_SIZE; ValueError naming it otherwise (0 or a negative size failed
    deep in the renderer, a huge one allocated frames of hundreds of MB)."""
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image_size must be an int from 1 to {MAX_IMAGE_SIZE} pixels, got {image_size!r}")
    return int(image_size)

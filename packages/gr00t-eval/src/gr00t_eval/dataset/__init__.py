"""LeRobot dataset reader and writer (v2.1 and v3.0 layouts, GR00T's meta/modality.json)."""

from .episode import Episode
from .errors import DatasetColumnNotFoundError, DatasetError, DatasetFileNotFoundError
from .modality import ArrayGroup, DatasetModality, LanguageGroup, VideoGroup
from .reader import LeRobotDataset
from .stats import STAT_NAMES, column_stats
from .video import available_codecs, decode_frames_at
from .writer import DatasetWriter

__all__ = [
    "ArrayGroup",
    "DatasetColumnNotFoundError",
    "DatasetError",
    "DatasetFileNotFoundError",
    "DatasetModality",
    "DatasetWriter",
    "Episode",
    "LanguageGroup",
    "LeRobotDataset",
    "STAT_NAMES",
    "VideoGroup",
    "available_codecs",
    "column_stats",
    "decode_frames_at",
]

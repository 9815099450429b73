"""Which frames of a shared v3.0 video are an episode's: those its segment shows, counted from the episodes before it
in the file. A frame missing inside a segment, a late frame, a late first frame of the file and a 29.97 frames/s video
whose segments were written at fps 30 each moved steps onto other steps' (or episodes') frames without a word; a
NaN fps passed every check against it. Real datasets and mp4s, every frame a solid colour that names its episode
and step."""

import json
import math
from fractions import Fraction

import av
import numpy as np
import pytest

from eval.dataset_factory import episode_frames, frame_colour, make_dataset
from gr00t_eval.dataset import DatasetError, LeRobotDataset

VIDEO = "videos/observation.images.image/chunk-000/file-000.mp4"


def shared_v3_dataset(tmp_path, lengths, fps):
    return make_dataset(tmp_path / "ds", lengths=lengths, cameras=("image",), fps=fps, size=(16, 16), layout="v3.0",
                        episodes_per_file=len(lengths))


def rewrite_video(path, frames, rate, time_base, pts):
    """Write `frames` to `path`, frame i shown at pts[i] (in `time_base`)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = stream.height = frames.shape[1]
        stream.pix_fmt, stream.options = "yuv420p", {"crf": "10", "bf": "0", "g": "8"}
        stream.codec_context.time_base = time_base
        for image, shown_at in zip(frames, pts):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = shown_at, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def all_frames(lengths):
    return np.concatenate([episode_frames(e, 0, n, (16, 16)) for e, n in enumerate(lengths)])


def nearest_step(frame, episodes):
    """(episode, step % 64) whose solid colour is nearest to a decoded frame (colours repeat every 64 steps)."""
    colour = frame.reshape(-1, 3).mean(0)
    return min(((e, t) for e in episodes for t in range(64)),
               key=lambda et: float(np.abs(colour - frame_colour(et[0], 0, et[1])).sum()))


def test_a_frame_missing_inside_a_shared_v3_segment_is_refused_naming_the_file_camera_episode_and_both_counts(tmp_path):
    """One frame of 240 missing is within the 1% rate check: steps after it got the next frame, the last step episode
    1's first frame. Refused in the words of a v2.x video of its own (the message named neither the camera nor the
    frames expected)."""
    lengths = (120, 120)
    root = shared_v3_dataset(tmp_path, lengths, fps=10)
    kept = [i for i in range(240) if i != 20]  # the others keep their own times
    rewrite_video(root / VIDEO, all_frames(lengths)[kept], 10, Fraction(1, 1000), [100 * i for i in kept])
    dataset = LeRobotDataset(root)
    with pytest.raises(DatasetError, match=r"file-000\.mp4 \(camera 'observation\.images\.image', episode 0\): its "
                                           r"video segment 0\.\.12 s holds 119 frames and the episode has 120 steps "
                                           r"\(a frame dropped\?\); expected 120 frames, one per step"):
        dataset.episode(0).frames("image", [0, 119])


def test_the_episode_after_a_missing_frame_is_refused_rather_than_given_frames_counted_across_the_gap(tmp_path):
    """Its frames by time and by the steps before it in the file disagree: which frame is its step 0 cannot be told."""
    lengths = (120, 120)
    root = shared_v3_dataset(tmp_path, lengths, fps=10)
    kept = [i for i in range(240) if i != 20]
    rewrite_video(root / VIDEO, all_frames(lengths)[kept], 10, Fraction(1, 1000), [100 * i for i in kept])
    with pytest.raises(DatasetError, match=r"\(camera 'observation\.images\.image', episode 1\): its video segment 12\.\.24 s starts at frame 119 of the "
                                           r"file by the frames' times, and the episodes before it in the file have "
                                           r"120 steps"):
        LeRobotDataset(root).episode(1).frames("image", [0])


@pytest.mark.parametrize("late_frame", [39, 0], ids=["last-frame-of-episode-0", "first-frame-of-the-file"])
def test_a_frame_that_came_late_does_not_shift_the_episodes_after_it_in_a_shared_v3_video(tmp_path, late_frame):
    """Shown 0.6 interval late, episode 0's last frame gave episode 1's step 0 that frame and each step the one before
    its own; a late first frame of the file (taken as its origin) shifted every later episode a frame on."""
    lengths = (40, 40)
    root = shared_v3_dataset(tmp_path, lengths, fps=10)
    pts = [100 * i + (60 if i == late_frame else 0) for i in range(80)]
    rewrite_video(root / VIDEO, all_frames(lengths), 10, Fraction(1, 1000), pts)
    dataset = LeRobotDataset(root)
    for episode in (0, 1):
        frames = dataset.episode(episode).frames("image", [0, 1, 20, 39])
        assert [nearest_step(f, [0, 1]) for f in frames] == [(episode, 0), (episode, 1), (episode, 20), (episode, 39)]


def test_a_29_97_video_whose_segments_were_written_at_fps_30_gives_each_episode_frame_k(tmp_path):
    """Segments at k * 200 / 30 s (as a converter counting frames writes them): from episode 3 on, step 0 got the
    previous episode's last frame and each step the frame before its own."""
    lengths = (200,) * 4
    root = shared_v3_dataset(tmp_path, lengths, fps=30)
    rewrite_video(root / VIDEO, all_frames(lengths), Fraction(30000, 1001), Fraction(1, 30000),
                  [1001 * i for i in range(800)])
    dataset = LeRobotDataset(root)
    for episode in range(4):
        frames = dataset.episode(episode).frames("image", [0, 100, 199])
        assert [nearest_step(f, range(4)) for f in frames] == [(episode, 0), (episode, 100 % 64), (episode, 199 % 64)]


def test_a_29_97_video_drifting_a_whole_frame_from_segments_written_at_fps_30_is_refused_not_read_a_frame_off(tmp_path):
    """By frame 1000 the video is a frame behind the segments' times: episode 4 was given frames 799..998."""
    lengths = (200,) * 5
    root = shared_v3_dataset(tmp_path, lengths, fps=30)
    rewrite_video(root / VIDEO, all_frames(lengths), Fraction(30000, 1001), Fraction(1, 30000),
                  [1001 * i for i in range(1000)])
    with pytest.raises(DatasetError, match=r"\(camera 'observation\.images\.image', episode 4\): its video segment "
                                           r"26\.6667\.\.33\.3333 s holds 199 frames and the episode has 200 steps "
                                           r"\(a frame dropped\?\); expected 200 frames, one per step"):
        LeRobotDataset(root).episode(4).frames("image", [0])


@pytest.mark.parametrize("fps", [math.nan, math.inf], ids=["NaN", "Infinity"])
def test_an_fps_that_is_no_finite_number_is_refused_naming_info_json_and_the_value(tmp_path, fps):
    """Python's json reads NaN and Infinity; NaN passed `fps <= 0` and then every frame-rate check against it."""
    root = make_dataset(tmp_path / "ds", lengths=(6,), cameras=("image",), size=(16, 16))
    info_path = root / "meta/info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["fps"] = fps
    info_path.write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(DatasetError,
                       match=rf"meta/info\.json: field 'fps' must be a positive finite number, got {fps!r}"):
        LeRobotDataset(root)


V2_VIDEO = "videos/chunk-000/observation.images.image/episode_000000.mp4"


@pytest.mark.parametrize("padded", [False, True], ids=["199-frames", "padded-to-200"])
def test_a_frame_missing_inside_a_v2_episode_video_is_refused_naming_the_frame_and_the_gap(tmp_path, padded):
    """199 frames for 200 steps (within the 1% rate check) only warned of the count, and every step after the gap got
    the next step's frame; with a frame appended at the end the count matched and nothing was said."""
    root = make_dataset(tmp_path / "ds", lengths=(200,), cameras=("image",), fps=10, size=(16, 16))
    shown = [i for i in range(200) if i != 100] + ([200] if padded else [])
    frames = episode_frames(0, 0, 200, (16, 16))[[min(i, 199) for i in shown]]
    rewrite_video(root / V2_VIDEO, frames, 10, Fraction(1, 1000), [100 * i for i in shown])
    with pytest.raises(DatasetError, match=r"episode_000000\.mp4 \(camera 'observation\.images\.image', episode 0\): "
                                           r"its frame 100 is shown at 10\.1 s, 2\.00 frame intervals after frame 99 "
                                           r"\(9\.9 s\) at fps 10"):
        LeRobotDataset(root).episode(0).frames("image", [101])


@pytest.mark.parametrize("late_frame", [6, 7])
def test_a_v2_frame_nine_tenths_of_an_interval_late_is_read_wherever_it_falls(tmp_path, late_frame):
    """The documented "a frame up to nine tenths of an interval late is no gap" was refused by float rounding at some
    positions (frame 7 at fps 10 on a 1 ms clock: "1.90 frame intervals")."""
    root = make_dataset(tmp_path / "ds", lengths=(12,), cameras=("image",), fps=10, size=(16, 16))
    pts = [100 * i + (90 if i == late_frame else 0) for i in range(12)]
    rewrite_video(root / V2_VIDEO, episode_frames(0, 0, 12, (16, 16)), 10, Fraction(1, 1000), pts)
    decoded = LeRobotDataset(root).episode(0).frames("image", list(range(12)))
    assert [nearest_step(f, [0]) for f in decoded] == [(0, s) for s in range(12)]


def test_a_v2_episode_video_one_frame_short_is_refused_naming_both_counts(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(20,), cameras=("image",), fps=10, size=(16, 16))
    rewrite_video(root / V2_VIDEO, episode_frames(0, 0, 19, (16, 16)), 10, Fraction(1, 1000), [100 * i for i in range(19)])
    with pytest.raises(DatasetError, match=r"the video holds 19 frames and the episode has 20 steps \(a frame dropped\?\)"
                                           r"; expected 20 frames, or 21 with one trailing the last step"):
        LeRobotDataset(root).episode(0).frames("image", [0])


def test_one_trailing_frame_after_a_v2_episode_s_last_step_leaves_each_step_its_own_frame(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=(20,), cameras=("image",), fps=10, size=(16, 16))
    frames = episode_frames(0, 0, 21, (16, 16))
    rewrite_video(root / V2_VIDEO, frames, 10, Fraction(1, 1000), [100 * i for i in range(21)])
    decoded = LeRobotDataset(root).episode(0).frames("image", list(range(20)))
    assert [nearest_step(f, [0]) for f in decoded] == [(0, s) for s in range(20)]


def test_segment_times_of_a_shared_v3_video_all_one_frame_late_are_refused_for_every_episode_naming_the_offset(tmp_path):
    """As a converter counting the first frame at 1/fps writes them: the gap before the first segment skipped the
    check of the frames before each, and every episode but the file's last got each step the next step's frame."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    lengths = (6, 9, 4)
    root = shared_v3_dataset(tmp_path, lengths, fps=10)
    [episodes] = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    table = pq.read_table(episodes)
    for column in table.column_names:
        if column.endswith(("/from_timestamp", "/to_timestamp")):
            table = table.set_column(table.column_names.index(column), column, pc.add(table.column(column), 0.1))
    pq.write_table(table, episodes)
    dataset = LeRobotDataset(root)
    for episode in range(3):
        with pytest.raises(DatasetError, match=rf"file-000\.mp4 \(camera 'observation\.images\.image', episode {episode}\): the video "
                                               r"segments of the "
                                               r"episodes in this file start at 0\.1 s, 1\.0 frames after its first "
                                               r"frame, and end at 2 s, 1\.0 frames past its last \(19 frames at fps 10\)"):
            dataset.episode(episode).frames("image", [0])


def inserted_frame_video(root, video, steps, keep_last_step):
    """Episode 0's video with one extra frame half an interval after step 30's (a variable-frame-rate recording, or a
    camera driver that emitted a frame twice); without the last step's frame where not `keep_last_step`."""
    shown = [100 * k for k in range(steps)]
    shown.insert(31, 3050)
    order = list(range(31)) + [30] + list(range(31, steps))
    if not keep_last_step:
        shown, order = shown[:-1], order[:-1]
    rewrite_video(root / video, episode_frames(0, 0, steps, (16, 16))[order], 10, Fraction(1, 1000), shown)


@pytest.mark.parametrize("steps, keep_last_step", [(100, True), (300, False)],
                         ids=["101-frames-for-100-steps", "last-step-s-frame-lost"])
def test_a_frame_inserted_inside_a_v2_episode_video_is_refused_naming_the_frame(tmp_path, steps, keep_last_step):
    """101 frames passed as one trailing the last step, and with the last step's frame lost the count matched (300
    steps: its rate within the 1% check): step 31 got the inserted frame and every later step the frame of the step
    before, without a word."""
    root = make_dataset(tmp_path / "ds", lengths=(steps,), cameras=("image",), fps=10, size=(16, 16))
    inserted_frame_video(root, V2_VIDEO, steps, keep_last_step)
    with pytest.raises(DatasetError, match=r"episode_000000\.mp4 \(camera 'observation\.images\.image', episode 0\): "
                                           r"its frame 31 is shown at 3\.05 s, 0\.50 frame intervals after frame 30 "
                                           r"\(3 s\), and the frames from it on come an interval early at fps 10"):
        LeRobotDataset(root).episode(0).frames("image", [60])


def test_a_frame_inserted_inside_a_v3_segment_whose_last_frame_was_lost_is_refused_naming_the_frame(tmp_path):
    """As many frames as steps are shown in the segment, so its count passed, and steps 31 on were each given the
    frame before their own."""
    root = shared_v3_dataset(tmp_path, (300,), fps=10)
    inserted_frame_video(root, VIDEO, 300, keep_last_step=False)
    with pytest.raises(DatasetError, match=r"file-000\.mp4 \(camera 'observation\.images\.image', episode 0\): "
                                           r"its frame 31 is shown at 3\.05 s, 0\.50 frame intervals after frame 30"):
        LeRobotDataset(root).episode(0).frames("image", [60])


def test_a_v2_episode_video_cut_short_is_refused_as_cut_short_naming_the_frames_its_header_declares(tmp_path):
    """Index first (+faststart, as hub uploads are) and cut at 60% of its bytes, as an interrupted copy leaves it: the
    error asked whether it was "the video of another episode?"."""
    root = make_dataset(tmp_path / "ds", lengths=(60,), cameras=("image",), fps=10, size=(16, 16))
    path = root / V2_VIDEO
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width = stream.height = 16
        stream.pix_fmt, stream.options = "yuv420p", {"g": "8"}
        for image in episode_frames(0, 0, 60, (16, 16)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * 0.6)])
    with pytest.raises(DatasetError, match=r"episode_000000\.mp4 \(camera 'observation\.images\.image', episode 0\): "
                                           r"the file holds \d+ of the 60 frames its header declares: cut short"):
        LeRobotDataset(root).episode(0).frames("image", [0])


@pytest.mark.parametrize("steps, tick", [(1000, 1001), (300, 1006)], ids=["29.97-fps-1000-steps", "29.82-fps-300-steps"])
def test_a_v2_episode_video_slightly_off_fps_gives_step_k_frame_k_however_long(tmp_path, steps, tick):
    """Its frames evenly spaced at 29.97 (or 29.82, within the 1% rate check) frames/s under fps 30, one per step by
    index: laid on an fps grid they drifted out of their steps' intervals (after 900 steps at 29.97, 150 at 29.82) and
    the video was refused as dropping a frame; a file of its own is paired by index, at its own cadence."""
    root = make_dataset(tmp_path / "ds", lengths=(steps,), cameras=("image",), fps=30, size=(16, 16))
    rewrite_video(root / V2_VIDEO, episode_frames(0, 0, steps, (16, 16)), Fraction(30000, tick), Fraction(1, 30000),
                  [tick * i for i in range(steps)])
    asked = [0, steps // 2, steps - 1]
    frames = LeRobotDataset(root).episode(0).frames("image", asked)
    assert [nearest_step(frame, [0]) for frame in frames] == [(0, step % 64) for step in asked]


def test_a_frame_inserted_in_a_v2_episode_video_slightly_off_fps_is_refused_at_its_own_cadence(tmp_path):
    """At 29.97 frames/s the intervals follow the video's cadence, and a frame inserted half-way between two is still
    named."""
    steps, tick = 200, 1001
    shown = [tick * k for k in range(steps)]
    shown.insert(101, tick * 100 + tick // 2)
    order = list(range(101)) + [100] + list(range(101, steps))
    root = make_dataset(tmp_path / "ds", lengths=(steps,), cameras=("image",), fps=30, size=(16, 16))
    rewrite_video(root / V2_VIDEO, episode_frames(0, 0, steps, (16, 16))[order], Fraction(30000, tick),
                  Fraction(1, 30000), shown)
    with pytest.raises(DatasetError, match=r"its frame 101 is shown at .*, 0\.50 frame intervals after frame 100 .*come an "
                                           r"interval early at the 29\.97 frames/s its frames are shown at \(fps 30"):
        LeRobotDataset(root).episode(0).frames("image", [150])


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_frames_shown_with_jitter_give_step_k_frame_k(tmp_path, layout):
    """Each frame up to a quarter of an interval early or late (a capture clock's jitter), one per step: a frame a
    tenth of an interval early fell into the step before's interval and the video was refused as holding a frame
    inserted."""
    lengths = (120, 120) if layout == "v3.0" else (120,)
    rng = np.random.default_rng(1)
    pts = [50 + 100 * i + int(jitter) for i, jitter in enumerate(rng.integers(-25, 26, sum(lengths)))]
    if layout == "v3.0":
        root = shared_v3_dataset(tmp_path, lengths, fps=10)
        rewrite_video(root / VIDEO, all_frames(lengths), 10, Fraction(1, 1000), pts)
    else:
        root = make_dataset(tmp_path / "ds", lengths=lengths, cameras=("image",), fps=10, size=(16, 16))
        rewrite_video(root / V2_VIDEO, episode_frames(0, 0, 120, (16, 16)), 10, Fraction(1, 1000), pts)
    dataset = LeRobotDataset(root)
    for episode in range(len(lengths)):
        frames = dataset.episode(episode).frames("image", [0, 1, 60, 119])
        assert [nearest_step(f, range(len(lengths))) for f in frames] == [(episode, 0), (episode, 1), (episode, 60),
                                                                          (episode, 119 % 64)]


@pytest.mark.parametrize("at", [1, 4])
@pytest.mark.parametrize("change", ["inserted", "dropped"])
def test_a_frame_inserted_or_dropped_among_the_first_frames_is_refused_naming_it(tmp_path, change, at):
    """Judged from an origin the first nine frames set, a break among them moved the origin with it, and every later
    step got a neighbouring step's frame in silence (R50)."""
    steps = 100
    order = list(range(steps + 1))
    shown = [100 * k for k in range(steps + 1)]
    if change == "inserted":  # a repeat of the frame before, half an interval after it; the last frame lost
        order, shown = order[:at] + [at - 1] + order[at:steps], shown[:at] + [100 * at - 50] + shown[at:steps]
    else:
        order, shown = order[:at] + order[at + 1:], shown[:at] + shown[at + 1:]
    root = make_dataset(tmp_path / "ds", lengths=(steps,), cameras=("image",), fps=10, size=(16, 16))
    rewrite_video(root / V2_VIDEO, episode_frames(0, 0, steps + 1, (16, 16))[order], 10, Fraction(1, 1000), shown)
    gap = "0.50" if change == "inserted" else "2.00"
    with pytest.raises(DatasetError, match=rf"its frame {at} is shown at .*, {gap} frame intervals after frame {at - 1}"):
        LeRobotDataset(root).episode(0).frames("image", [50])


def test_frames_that_pause_among_the_first_frames_still_give_step_k_frame_k(tmp_path):
    """From frame 4 on every frame 0.6 of an interval late (a pause in a variable-frame-rate recording): step 0 was
    taken as the frame nearest an origin those frames moved, frame 1, and every step got the next step's frame."""
    steps = 100
    root = make_dataset(tmp_path / "ds", lengths=(steps,), cameras=("image",), fps=10, size=(16, 16))
    rewrite_video(root / V2_VIDEO, episode_frames(0, 0, steps, (16, 16)), 10, Fraction(1, 1000),
                  [100 * k + (60 if k >= 4 else 0) for k in range(steps)])
    asked = [0, 1, 4, 50, 99]
    frames = LeRobotDataset(root).episode(0).frames("image", asked)
    assert [nearest_step(frame, [0]) for frame in frames] == [(0, step % 64) for step in asked]


def test_a_shared_v3_video_s_segment_frames_are_checked_once_per_segment_however_often_they_are_read(tmp_path,
                                                                                                  monkeypatch):
    """Every frames() call of a segment ran its count and pace checks again over its frames' times: a long open-loop
    re-read them at every step."""
    root = shared_v3_dataset(tmp_path, (12, 9), fps=10)
    checked = []
    real_check = LeRobotDataset._check_frames_keep_pace

    def counted_check(self, where, times, rate, first=0):
        checked.append((where, first))
        return real_check(self, where, times, rate, first)

    monkeypatch.setattr(LeRobotDataset, "_check_frames_keep_pace", counted_check)
    dataset = LeRobotDataset(root)
    for episode, steps in ((0, [0]), (0, [3, 4]), (1, [0]), (0, [11]), (1, [8]), (1, [2])):
        frames = dataset.episode(episode).frames("image", steps)
        assert [nearest_step(f, [0, 1]) for f in frames] == [(episode, s) for s in steps]
    assert sorted(first for _where, first in checked) == [0, 12]  # one check per segment: episode 0's, episode 1's


def test_a_refused_v3_segment_is_refused_on_every_read(tmp_path):
    """Checked once means passed once: a segment that failed its check is not taken as checked."""
    lengths = (120, 120)
    root = shared_v3_dataset(tmp_path, lengths, fps=10)
    kept = [i for i in range(240) if i != 20]
    rewrite_video(root / VIDEO, all_frames(lengths)[kept], 10, Fraction(1, 1000), [100 * i for i in kept])
    dataset = LeRobotDataset(root)
    for _ in range(2):
        with pytest.raises(DatasetError, match=r"its video segment 0\.\.12 s holds 119 frames"):
            dataset.episode(0).frames("image", [0])

"""Writing on a full disk (a file size limit, RLIMIT_FSIZE, stands in for it: writes fail with EFBIG where a full disk
gives ENOSPC): an error naming the file and what was kept, never a crash, a half line or a leftover file."""

import json
import os
import shlex
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file size limits (RLIMIT_FSIZE)")

_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
    """
)


def run_limited(limit: int, body: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LIMITED + textwrap.dedent(body), str(limit), *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


def test_an_mp4_whose_write_fails_raises_instead_of_crashing_the_process(tmp_path):
    # The writer's own pattern: try: write / finally: close. The close muxed into the broken container again, and
    # PyAV died of a segmentation fault: no message, and the writer's cleanup of partial files never ran.
    body = """
    import numpy as np
    from pathlib import Path
    from gr00t_eval.dataset.video import Mp4Encoder
    encoder = Mp4Encoder(Path(sys.argv[2]), 20)
    frames = np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    try:
        try:
            encoder.write(frames)
        finally:
            encoder.close()
    except OSError as exc:
        print("raised", exc.errno)
    """
    for limit in (0, 2000):
        result = run_limited(limit, body, str(tmp_path / f"episode_{limit}.mp4"))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "raised 27" in result.stdout  # EFBIG


ROLLOUT_UNDER_LIMIT = """
sys.path.insert(0, sys.argv[2])
from gr00t_eval.cli import main
sys.exit(main(["--log-level", "WARNING", "rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures",
               "--policy-client-port", sys.argv[3], "--output-dir", sys.argv[4], "--timeout-ms", "5000", "--n-episodes",
               "40", "--seed", "3", "--n-envs", "1", "--n-action-steps", "2", "--max-episode-steps", "6", "--no-video",
               "--vectorization", "sync"]))
"""


def test_a_rollout_that_fills_the_disk_says_what_it_kept_and_its_resume_loses_no_episode(tmp_path):
    from eval.scale_fixtures import policy_server

    from gr00t_eval.cli import main
    from gr00t_eval.run_dir import EpisodeLog

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "run"
    with policy_server() as server:
        # the episode log outgrows the limit mid-run, its last line cut short as a full disk cuts it
        result = run_limited(4000, ROLLOUT_UNDER_LIMIT, tests, str(server.port), str(out))
        assert result.returncode == 2, result.stdout + result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert "File too large" in error and "the run stopped there" in error, error
        assert f"kept in {out / 'episodes.jsonl'}" in error and f"gr00t-eval rollout --resume {out}" in error
        logged = (out / "episodes.jsonl").read_bytes()
        assert not logged.endswith(b"\n")  # the line being written when the limit was hit is cut
        kept = len(EpisodeLog(out / "episodes.jsonl").read())
        assert 0 < kept < 40 and f"the {kept} episodes scored before it are kept" in error
        assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]  # no leftover temporaries
        assert main(["--log-level", "WARNING", "rollout", "--resume", str(out), "--policy-client-port",
                     str(server.port), "--timeout-ms", "5000", "--env-import", "eval.scale_fixtures"]) == 0
    entries = EpisodeLog(out / "episodes.jsonl").read()
    assert sorted(e["episode_index"] for e in entries) == list(range(40))  # the first resumed one too
    assert json.loads((out / "results.json").read_text())["overall"]["n_episodes"] == 40


_SUITE_UNDER_LIMIT = ROLLOUT_UNDER_LIMIT.replace('"walkto/slow"', '"walkto/slow,walkto/fast"').replace(
    '"--log-level", "WARNING"', '"--log-level", "INFO"')


def test_a_full_disk_in_one_task_stops_the_run_instead_of_failing_the_task_and_starting_the_next(tmp_path):
    # The suite took the log's write error for a task that failed, started the next task (an env built, episodes run
    # and lost the same way) and then said "the run stopped there".
    from eval.scale_fixtures import policy_server

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "run"
    with policy_server() as server:
        result = run_limited(4000, _SUITE_UNDER_LIMIT, tests, str(server.port), str(out))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "File too large" in result.stderr.strip().splitlines()[-1] and "the run stopped there" in result.stderr
    assert "task walkto/slow failed" not in result.stderr
    assert "task walkto/fast: episodes" not in result.stderr  # the second task never started


_BATCH_UNDER_LIMIT = """
sys.path.insert(0, sys.argv[2])
import eval.scale_fixtures  # registers the walkto envs
from gr00t_eval.cli import main
sys.exit(main(["--log-level", "INFO", "batch", "--jobs", sys.argv[3], "--output-dir", sys.argv[4]]))
"""


def test_a_full_disk_in_one_batch_job_stops_the_batch_instead_of_starting_the_next_job(tmp_path):
    from eval.scale_fixtures import policy_server

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "batch"
    with policy_server() as server:
        settings = {"n_episodes": 40, "n_envs": 1, "max_episode_steps": 6, "seed": 3,
                    "overrides": {"n_action_steps": 2, "vectorization": "sync"}}
        jobs = [{"name": name, "env_name": "walkto/slow", "policy_server": {"port": server.port}, **settings}
                for name in ("first", "second")]
        (tmp_path / "jobs.json").write_text(json.dumps({"jobs": jobs}))
        result = run_limited(4000, _BATCH_UNDER_LIMIT, tests, str(tmp_path / "jobs.json"), str(out))
    assert result.returncode != 0, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "File too large" in last and "the batch stopped there" in last, last
    assert f"gr00t-eval batch --resume {out}" in last
    assert "job first failed" not in result.stderr and "job 2/2" not in result.stderr  # the second job never started


_COMMAND_UNDER_LIMIT = """
sys.path.insert(0, sys.argv[2])
import eval.scale_fixtures  # registers the walkto envs
from gr00t_eval.cli import main
sys.exit(main(["--log-level", "WARNING", *sys.argv[3:]]))
"""


@pytest.mark.parametrize("command, folder", [("batch", "-b sp"), ("rollout", "-run")])
def test_the_printed_resume_command_names_the_folder_when_pasted_into_a_shell(tmp_path, command, folder):
    """batch printed --resume DIR unquoted (a folder with a space was two words), and neither batch nor rollout
    guarded a relative folder starting with '-' (argparse read it as an option: 'expected one argument')."""
    from eval.scale_fixtures import policy_server

    from gr00t_eval.cli import build_parser

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    settings = {"n_episodes": 40, "n_envs": 1, "max_episode_steps": 6, "seed": 3}
    with policy_server() as server:
        if command == "batch":
            (tmp_path / "jobs.json").write_text(json.dumps({"jobs": [
                {"name": "first", "env_name": "walkto/slow", "policy_server": {"port": server.port}, **settings,
                 "overrides": {"n_action_steps": 2, "vectorization": "sync"}}]}))
            argv = ["batch", "--jobs", "jobs.json", f"--output-dir={folder}"]
        else:
            argv = ["rollout", "--env-name", "walkto/slow", "--env-import", "eval.scale_fixtures",
                    "--policy-client-port", str(server.port), f"--output-dir={folder}", "--timeout-ms", "5000",
                    "--no-video", "--n-action-steps", "2", "--vectorization", "sync",
                    *(f"--{key.replace('_', '-')}={value}" for key, value in settings.items())]
        result = run_limited(4000, _COMMAND_UNDER_LIMIT, tests, *argv, cwd=tmp_path)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and f"continue with: gr00t-eval {command} --resume " in last, result.stderr
    pasted = shlex.split(last.split("continue with: ", 1)[1])[1:4]  # as a shell splits the printed command
    assert pasted[:2] == [command, "--resume"], last
    args = build_parser().parse_args(pasted)
    assert (tmp_path / args.resume).resolve() == (tmp_path / folder).resolve()


def test_an_episode_log_line_cut_short_does_not_swallow_the_next_entry(tmp_path):
    from gr00t_eval.run_dir import EpisodeLog

    log = EpisodeLog(tmp_path / "episodes.jsonl")
    log.append({"task": "t", "episode_index": 0, "success": True})
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"task": "t", "episode_index": 1, "succ')  # a full disk stopped this line
    log.append({"task": "t", "episode_index": 1, "success": False})
    assert [(e["episode_index"], e["success"]) for e in log.read()] == [(0, True), (1, False)]


@pytest.mark.parametrize("limit", [0, 300], ids=["nothing written", "public key written"])
def test_a_keygen_that_cannot_write_leaves_no_key_file_a_retry_would_refuse(tmp_path, limit):
    # 300 bytes: server.key (285) is written and server.key_secret (320) is not; the public key goes too (a key
    # whose secret never existed was left to be handed out, and a retry refused as existing)
    body = """
    from gr00t_server.curve import generate_certificates
    try:
        generate_certificates(sys.argv[2], "server")
    except OSError as exc:
        print("raised", exc.errno)
    """
    result = run_limited(limit, body, str(tmp_path / "keys"))
    assert "raised 27" in result.stdout, result.stdout + result.stderr
    assert list((tmp_path / "keys").iterdir()) == []
    from gr00t_server.curve import generate_certificates

    public, secret = generate_certificates(tmp_path / "keys", "server")  # the retry, with room, is not refused
    assert public.stat().st_size > 0 and secret.stat().st_size > 0


def test_make_test_checkpoint_that_cannot_write_its_weights_is_one_line(tmp_path):
    body = """
    from gr00t_server.cli import main
    sys.exit(main(["make-test-checkpoint", sys.argv[2], "--size", "tiny"]))
    """
    result = run_limited(20000, body, str(tmp_path / "ckpt"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"error: writing the weights into {tmp_path / 'ckpt'} failed" in result.stderr


def test_a_recording_that_cannot_write_says_what_the_folder_holds(tmp_path):
    pytest.importorskip("metaworld")
    body = """
    from gr00t_eval.cli import main
    sys.exit(main(["record", "--env-name", "metaworld/reach-v3", "--episodes", "2", "--output", sys.argv[2],
                   "--max-episode-steps", "20", "--image-size", "64"]))
    """
    result = run_limited(4000, body, str(tmp_path / "dataset"))  # an episode file is ~5 kB
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "File too large" in line and "recording stopped;" in line and "loadable dataset)" in line, line
    assert not [p for p in (tmp_path / "dataset").rglob("*") if p.name.startswith(".partial-")]


_META_REWRITE_UNDER_LIMIT = """
import json
from pathlib import Path
import numpy as np
from gr00t_eval.dataset import DatasetWriter
root = Path(sys.argv[2])
writer = DatasetWriter(root, fps=10)
rng = np.random.default_rng(0)
for index in range(200):
    arm = rng.normal(size=(5, 4)).astype(np.float32)
    writer.add_episode({"cam": np.zeros((5, 16, 16, 3), np.uint8)}, {"arm": arm}, {"arm": arm}, "t")
    meta = {path.name: path.read_bytes() for path in (root / "meta").iterdir()} if index else {}
    try:
        writer.write_meta()
    except OSError as exc:
        changed = [name for name, text in meta.items() if (root / "meta" / name).read_bytes() != text]
        added = sorted({path.name for path in (root / "meta").iterdir()} - set(meta))
        print("raised", exc.errno, "changed", changed, "added", added)
        break
"""


def test_a_meta_rewrite_that_fills_the_disk_names_the_file_it_was_writing(tmp_path):
    # a write that fails as the file is closed names no file: 'No space left on device: recording stopped'
    root = tmp_path / "ds"
    body = _META_REWRITE_UNDER_LIMIT.replace('print("raised", exc.errno,',
                                             'print("raised", exc.errno, "file", exc.filename,')
    result = run_limited(30 * 1024, body, str(root))
    assert f"raised 27 file {root / 'meta'}{os.sep}" in result.stdout, result.stdout + result.stderr[-2000:]


def test_an_episode_data_file_that_fills_the_disk_names_the_file_it_was_writing(tmp_path):
    # pyarrow's error names no file (and some pyarrow versions give its errno only in the text)
    body = """
    import numpy as np
    from gr00t_eval.dataset import DatasetWriter
    writer = DatasetWriter(sys.argv[2], fps=10)
    arm = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)  # ~16 kB of parquet
    try:
        writer.add_episode({"cam": np.zeros((500, 16, 16, 3), np.uint8)}, {"arm": arm}, {"arm": arm}, "t")
    except OSError as exc:
        print("raised", exc.errno, "file", exc.filename, "|", exc.strerror)
    """
    root = tmp_path / "ds"
    result = run_limited(4000, body, str(root))
    partial = root / "data" / "chunk-000" / ".partial-episode_000000.parquet"
    assert f"raised 27 file {partial} | File too large" in result.stdout, result.stdout + result.stderr[-2000:]


def test_a_meta_rewrite_that_fills_the_disk_leaves_every_meta_file_as_it_was(tmp_path):
    # meta/ was rewritten file by file: stats.json and episodes.jsonl counted the episode, info.json did not
    result = run_limited(30 * 1024, _META_REWRITE_UNDER_LIMIT, str(tmp_path / "ds"))
    assert "raised 27" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "changed [] added []" in result.stdout, result.stdout


def test_a_recording_whose_meta_rewrite_fills_the_disk_keeps_only_files_that_agree_with_its_count(tmp_path):
    pytest.importorskip("metaworld")
    import re

    import numpy as np
    import pyarrow.parquet as pq

    from gr00t_eval.dataset import LeRobotDataset

    body = """
    from gr00t_eval.cli import main
    sys.exit(main(["record", "--env-name", "metaworld/reach-v3", "--episodes", "30", "--output", sys.argv[2],
                   "--max-episode-steps", "5", "--image-size", "32"]))
    """
    root = tmp_path / "dataset"
    result = run_limited(60 * 1024, body, str(root))  # episodes_stats.jsonl (~5 kB an episode) outgrows it first
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    kept = int(re.search(r"holds the (\d+) episodes finished before it \(a loadable dataset\)", line).group(1))
    counts = {
        "info.json": json.loads((root / "meta" / "info.json").read_text())["total_episodes"],
        "episodes.jsonl": len((root / "meta" / "episodes.jsonl").read_text().splitlines()),
        "episodes_stats.jsonl": len((root / "meta" / "episodes_stats.jsonl").read_text().splitlines()),
        "data/": len(list(root.glob("data/*/*.parquet"))),
        "videos/": len(list(root.glob("videos/*/*/*.mp4"))),
    }
    assert counts == dict.fromkeys(counts, kept), (line, counts)
    actions = np.concatenate([np.array(pq.read_table(path).column("action").to_pylist())
                              for path in sorted(root.glob("data/*/*.parquet"))])
    stats = json.loads((root / "meta" / "stats.json").read_text())
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(axis=0), atol=1e-6)
    assert LeRobotDataset(root).num_episodes == kept


_V3_FILE_BROKEN_UNDER_LIMIT = """
import numpy as np
from gr00t_eval.dataset import DatasetWriter
rng = np.random.default_rng(0)
def episode(length):
    zeros = {"arm": np.zeros((length, 2), np.float32)}
    return dict(frames={"cam": rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8)}, states=zeros, actions=zeros,
                task="t")
writer = DatasetWriter(sys.argv[2], fps=10, layout="v3.0", episodes_per_file=4)
for _ in range(10):  # files 0 and 1 complete, two episodes into file 2
    writer.add_episode(**episode(10))
try:
    writer.add_episode(**episode(80))  # file 2's mp4 outgrows the limit
except OSError as exc:
    print("refused:", exc)
print("holds", writer.n_episodes)
for _ in range(3):  # the file is started anew
    writer.add_episode(**episode(10))
writer.finalize()
"""


def test_a_v3_file_whose_video_write_fails_drops_its_episodes_loudly_and_the_dataset_stays_readable(tmp_path):
    # the shared mp4 was released without its trailer: finalize() listed its episodes, none of them decodable
    from gr00t_eval.dataset import LeRobotDataset

    root = tmp_path / "ds"
    result = run_limited(200 * 1024, _V3_FILE_BROKEN_UNDER_LIMIT, str(root))
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    video = root / "videos" / "observation.images.cam" / "chunk-000" / "file-002.mp4"
    assert f"refused: [Errno 27] {video}: File too large;" in result.stdout, result.stdout
    assert "the 2 episode(s) already in it (episodes 8..9) are lost" in result.stdout
    assert "holds 8" in result.stdout
    dataset = LeRobotDataset(root)
    assert dataset.num_episodes == 11
    for index in range(dataset.num_episodes):
        assert dataset.episode(index).frames(dataset.video_keys[0], [0]) is not None


def test_a_batch_copy_of_a_private_job_file_is_never_readable_by_others_even_when_its_write_fails(tmp_path):
    # The copy was written with the umask's mode (0644) and chmod-ed to the job file's 0600 only afterwards: a write
    # that failed part-way left the inline token readable by every user of the machine.
    jobs = tmp_path / "jobs.json"
    job = {"name": "j", "env_name": "walkto/fast", "policy_server": {"port": 9, "api_token": "inline-secret-token"}}
    jobs.write_text(json.dumps({"jobs": [job]}) + " " * 200_000)  # larger than the limit below
    jobs.chmod(0o600)
    out = tmp_path / "batch"
    body = """
    import os
    os.umask(0o022)
    from gr00t_eval.cli import main
    sys.exit(main(["batch", "--jobs", sys.argv[2], "--output-dir", sys.argv[3]]))
    """
    result = run_limited(100_000, body, str(jobs), str(out))
    assert result.returncode != 0 and "File too large" in result.stderr, result.stdout + result.stderr
    # written aside with the job file's mode from its first byte, and the part written removed: nothing left to read
    assert [path.name for path in out.iterdir() if "jobs" in path.name] == []

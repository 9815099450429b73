"""A replay whose dataset is re-recorded under it (`gr00t-eval record --overwrite` into the folder it serves) refuses
every episode it has not read yet, naming the dataset and saying to restart: it served the new recording's actions cut
to the old lengths, under the old seeds (one seed's actions played in another seed's scene, a plausible failure)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import zmq

from eval.dataset_factory import episode_frames, expected_actions, expected_states, make_dataset
from gr00t_client import PolicyClient, codec
from gr00t_eval.dataset import DatasetError, DatasetWriter, LeRobotDataset
from gr00t_server.modality_configs import derive_from_dataset
from gr00t_server.policies import ReplayPolicy
from serving import running_server

LENGTHS = (6, 9, 4)
NEW_LENGTHS = (8, 12, 7)  # the re-recording: other lengths, other actions (episode e holds episode e + 10's), seeds 200+e


def rerecord(root, layout="v2.1"):
    """Record another dataset into `root` in place, as `gr00t-eval record --overwrite` does."""
    with DatasetWriter(root, 10, layout=layout, overwrite=True) as writer:
        for episode, length in enumerate(NEW_LENGTHS):
            writer.add_episode({"image": episode_frames(episode, 0, length)}, expected_states(episode, length),
                               expected_actions(episode + 10, length), "pick the red cube",
                               metadata={"seed": 200 + episode})


def replay(root):
    """A ReplayPolicy started on the folder, as `gr00t-server serve --dataset-path root` makes it."""
    return ReplayPolicy(root, derive_from_dataset(LeRobotDataset(root), action_horizon=4), execution_horizon=2)


def session(name, **options):
    return {"_session_id": name, **options}


def changed(root):
    return f"dataset {root} changed on disk since this server loaded it (meta/"


@pytest.mark.parametrize("layout", ["v2.1", "v3.0"])
def test_episodes_not_yet_read_are_refused_after_a_rerecording_and_nothing_new_is_served(tmp_path, layout):
    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",), layout=layout)
    policy = replay(root)
    policy.reset(session("robot", episode_index=2))
    policy.get_action(None, session("robot"))
    rerecord(root, layout)
    for episode in (0, 1):
        with pytest.raises(DatasetError) as refused:
            policy.reset(session("robot", episode_index=episode))
        assert changed(root) in str(refused.value) and "restart the server to serve the new recording" in str(refused.value)
    with pytest.raises(DatasetError, match="changed on disk since this server loaded it"):
        policy.get_action(None, session("never reset"))  # episode 0, never read: refused at get_action too
    # The episode read before the change is the recording loaded, whole: its actions, length and seed, none new.
    policy.reset(session("robot", episode_index=2))
    action, info = policy.get_action(None, session("robot"))
    np.testing.assert_array_equal(action["arm"][0], expected_actions(2, LENGTHS[2])["arm"][[0, 1, 2, 3]])
    assert (info["episode_length"], info["seed"]) == (LENGTHS[2], 102)


def test_a_data_file_rewritten_alone_is_noticed_naming_it(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    policy = replay(root)
    path = LeRobotDataset(root).episode_data_path(1)
    table = pq.read_table(path)
    os.remove(path)  # replaced by a file of other actions, as a tool that rewrites one episode does
    pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", table.column("observation.state")), path)
    with pytest.raises(DatasetError) as refused:
        policy.reset({"episode_index": 1})
    assert f"({path.relative_to(root).as_posix()} rewritten)" in str(refused.value)
    with pytest.raises(DatasetError, match="episode_000001.parquet rewritten"):
        policy.reset({"episode_index": 0})  # the dataset is no longer the one loaded: its other episodes too


def test_hidden_files_coming_and_going_in_meta_are_no_change_of_the_dataset(tmp_path):
    # vim's swap file while info.json is only read, a Finder's .DS_Store: no reader reads them; one that came and
    # went made every episode not yet read refused until a restart, and changed the dataset's identity.
    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    policy = replay(root)
    identity = policy.identity()["dataset_meta_sha256"]
    swap, finder = root / "meta" / ".info.json.swp", root / "meta" / ".DS_Store"
    swap.write_bytes(b"swap")
    finder.write_bytes(b"finder")
    notebook = root / "meta" / ".ipynb_checkpoints" / "info-checkpoint.json"  # Jupyter's, on opening info.json
    notebook.parent.mkdir()
    notebook.write_text("{}")
    policy.reset({"episode_index": 1})
    swap.unlink()
    policy.reset({"episode_index": 2})
    assert replay(root).identity()["dataset_meta_sha256"] == identity


@pytest.mark.parametrize("name", ["relative_stats.json", "episodes_stats.jsonl", "stats.json"])
def test_statistics_files_written_under_a_served_replay_are_no_change_of_the_dataset(tmp_path, name):
    """GR00T's stats tooling writes meta/relative_stats.json next to stats.json: every episode not yet read was then
    refused as 'changed on disk (meta/relative_stats.json added)', though a replay reads no statistics."""
    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    policy = replay(root)
    identity = policy.identity()["dataset_meta_sha256"]
    with running_server(policy) as server, PolicyClient(port=server.port, timeout_ms=10000) as client:
        client.reset({"episode_index": 0})
        client.get_action({})
        path = root / "meta" / name
        path.write_text(path.read_text() + "\n" if path.exists() else '{"action": {}}')
        for episode in (1, 2):
            assert client.reset({"episode_index": episode})["episode_index"] == episode
            action, _ = client.get_action({})
            np.testing.assert_array_equal(action["arm"][0], expected_actions(episode, LENGTHS[episode])["arm"][[0, 1, 2, 3]])
    assert replay(root).identity()["dataset_meta_sha256"] == identity



def test_a_replay_of_a_path_starting_with_tilde_notices_a_rerecording_of_the_home_folders_dataset(tmp_path, home):
    """It served $HOME/ds but watched ./~/ds (a stale folder, or none): the re-recording was served unnoticed."""
    root = make_dataset(home / "ds", lengths=LENGTHS, cameras=("image",))
    policy = replay("~/ds")
    assert policy.dataset.root == root
    rerecord(root)
    with pytest.raises(DatasetError) as refused:
        policy.reset({"episode_index": 1})
    assert changed(root) in str(refused.value)

def test_a_served_replay_answers_the_change_as_an_error_reply_naming_the_dataset(tmp_path):
    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    with running_server(replay(root)) as server:
        rerecord(root)
        with zmq.Context.instance().socket(zmq.REQ) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{server.port}")
            for endpoint, data in (("reset", {"options": {"episode_index": 1}}), ("get_action", {"observation": {}})):
                sock.send(codec.encode({"endpoint": endpoint, "session_id": "robot", "data": data}))
                assert sock.poll(10000), f"no reply to {endpoint}"
                reply = codec.decode(sock.recv())
                assert isinstance(reply, dict) and changed(root) in reply.get("error", ""), (endpoint, reply)
                assert "restart the server" in reply["error"]


def test_an_unchanged_dataset_replays_every_episode_and_cached_requests_touch_no_file(tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    policy = replay(root)
    for episode, length in enumerate(LENGTHS):
        policy.reset(session("robot", episode_index=episode))
        action, info = policy.get_action(None, session("robot"))
        np.testing.assert_array_equal(action["arm"][0], expected_actions(episode, length)["arm"][[0, 1, 2, 3]])
        assert info["seed"] == 100 + episode
    stats = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *args, **kwargs: stats.append(args) or real_stat(*args, **kwargs))
    for episode in range(len(LENGTHS)):  # every episode read: the check runs on reads from disk, not per request
        policy.reset(session("robot", episode_index=episode))
        for _ in range(20):
            policy.get_action(None, session("robot"))
    assert stats == []


def test_a_rerecording_while_serve_loads_its_modality_config_is_refused(tmp_path):
    """`serve --dataset-path D --modality-config-path cfg.py` read D's episode list, then ran cfg.py (user code, can
    take seconds), and only then took the files' signatures: a re-recording in between became the baseline, and
    episode 0 served the new recording's actions under the old seed, unrefused."""
    from gr00t_server.cli import _replay_policy, build_parser

    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    config = tmp_path / "cfg.py"  # re-records the dataset as it is loaded: the gap made deterministic
    config.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
        "from test_replay_dataset_changed_on_disk import rerecord\n"
        "from gr00t_client.modality import ModalityConfig\n"
        "from gr00t_server.modality_configs import register_modality_config\n"
        f"rerecord({str(root)!r})\n"
        "register_modality_config('rerecorded_tag', {\n"
        "    'video': ModalityConfig(delta_indices=[0], modality_keys=['image']),\n"
        "    'state': ModalityConfig(delta_indices=[0], modality_keys=['arm', 'gripper']),\n"
        "    'action': ModalityConfig(delta_indices=[0, 1, 2, 3], modality_keys=['arm', 'gripper']),\n"
        "})\n")
    args = build_parser().parse_args(["serve", "--dataset-path", str(root), "--modality-config-path", str(config)])
    policy, _ = _replay_policy(args, None)
    with pytest.raises(DatasetError) as refused:
        policy.reset(session("robot", episode_index=0))
    assert changed(root) in str(refused.value)


def test_a_modality_config_in_meta_byte_compiled_and_a_relative_path_left_by_a_chdir_are_no_change(tmp_path,
                                                                                                 monkeypatch):
    """Both refused every reset of an unchanged dataset once serve took the signatures before running the config: a
    cfg.py kept in meta/ left meta/__pycache__/cfg.cpython-*.pyc when imported, and a relative --dataset-path named
    other files once the config changed directory to read its neighbours."""
    from gr00t_server.cli import _replay_policy, build_parser

    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    config = root / "meta" / "cfg.py"
    config.write_text(
        "import os\n"
        "from gr00t_client.modality import ModalityConfig\n"
        "from gr00t_server.modality_configs import register_modality_config\n"
        "os.chdir(os.path.dirname(os.path.abspath(__file__)))  # reads its neighbour files\n"
        "register_modality_config('meta_kept_tag', {\n"
        "    'video': ModalityConfig(delta_indices=[0], modality_keys=['image']),\n"
        "    'state': ModalityConfig(delta_indices=[0], modality_keys=['arm', 'gripper']),\n"
        "    'action': ModalityConfig(delta_indices=[0, 1, 2, 3], modality_keys=['arm', 'gripper']),\n"
        "})\n")
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setattr("sys.dont_write_bytecode", False)
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["serve", "--dataset-path", "ds", "--modality-config-path", str(config)])
    policy, _ = _replay_policy(args, None)
    assert any((root / "meta" / "__pycache__").glob("cfg.*.pyc"))  # the import wrote its byte code there
    for episode in range(len(LENGTHS)):
        policy.reset(session("robot", episode_index=episode))  # not refused as 'changed on disk'


# A replay that reads episode 0, then resets to episode 2 (never read) with no descriptor left, then again once they
# are free: prints what each of the two resets came to, one line each.
_OUT_OF_DESCRIPTORS_REPLAY = """
import logging, os, resource, sys
from gr00t_eval.dataset import LeRobotDataset
from gr00t_server.modality_configs import derive_from_dataset
from gr00t_server.policies import ReplayPolicy
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
root = sys.argv[1]
policy = ReplayPolicy(root, derive_from_dataset(LeRobotDataset(root), action_horizon=4), execution_horizon=2)
policy.reset({"_session_id": "robot", "episode_index": 0})
policy.get_action(None, {"_session_id": "robot"})

def reset_to_episode_2():
    try:
        policy.reset({"_session_id": "robot", "episode_index": 2})
        policy.get_action(None, {"_session_id": "robot"})
        return "served"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".replace(chr(10), " ")

held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
out_of_descriptors = reset_to_episode_2()
for fd in held:
    os.close(fd)
print(out_of_descriptors)
print(reset_to_episode_2())
"""


def test_a_replay_out_of_descriptors_is_not_marked_changed_on_disk_and_serves_once_they_are_free(tmp_path):
    """At the open-file limit the change check's listing of meta/ read nothing, every meta file read as removed, and
    the replay refused every episode not yet read as 'changed on disk' until restarted. A check that cannot look is
    skipped, naming why, and the next one judges again."""
    import subprocess
    import sys

    root = make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    done = subprocess.run([sys.executable, "-c", _OUT_OF_DESCRIPTORS_REPLAY, str(root)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out_of_descriptors, afterwards = done.stdout.splitlines()
    assert "changed on disk" not in out_of_descriptors, out_of_descriptors
    assert afterwards == "served", done.stderr[-3000:]
    assert "Too many open files" in done.stderr, done.stderr[-3000:]


def test_a_replay_of_a_path_through_dotdot_keeps_serving_after_its_start_folder_is_renamed(tmp_path, monkeypatch):
    """`serve --dataset-path ../ds` started in run/: its root was kept as run/../ds, which the kernel no longer
    resolves once run/ is renamed (a deploy's release folder), and every episode not yet read was refused as the
    dataset 'changed on disk (meta/episodes.jsonl removed)' though nothing in it changed."""
    from gr00t_server.cli import _replay_policy, build_parser

    make_dataset(tmp_path / "ds", lengths=LENGTHS, cameras=("image",))
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    from gr00t_client import EmbodimentTag

    args = build_parser().parse_args(["serve", "--dataset-path", "../ds"])
    policy, _ = _replay_policy(args, EmbodimentTag.NEW_EMBODIMENT)
    policy.reset(session("robot", episode_index=0))
    os.rename(tmp_path / "run", tmp_path / "run.old")
    for episode in (1, 2):
        policy.reset(session("robot", episode_index=episode))
        action, info = policy.get_action(None, session("robot"))
        np.testing.assert_array_equal(action["arm"][0][:4], expected_actions(episode, LENGTHS[episode])["arm"][:4])
        assert info["episode_length"] == LENGTHS[episode]

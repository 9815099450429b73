"""A key given twice in one object of a checkpoint's JSON file: refused at load naming the file, the key and where it
is, rather than read as its last value (relative actions decoded as absolute, another robot's statistics)."""

import pytest


def _with_line_after(path, line, added):
    """`path` with `added` written on the line after its first line that holds `line` (a hand edit)."""
    text = path.read_text()
    at = text.index(line)
    end = text.index("\n", at)
    path.write_text(text[:end] + "\n" + added + text[end:])


def test_a_processor_config_key_given_twice_is_refused_naming_the_file_and_key(copy_of, serve_error):
    checkpoint = copy_of()
    path = checkpoint / "processor_config.json"
    _with_line_after(path, '"use_relative_action": true', '"use_relative_action": false,')
    err = serve_error(checkpoint)
    assert f"{path}: key 'use_relative_action' is given twice in one object (at " in err, err


def test_statistics_given_twice_for_one_key_are_refused_naming_where_they_are(copy_of, serve_error):
    checkpoint = copy_of()
    path = checkpoint / "statistics.json"
    text = path.read_text()
    at = text.index('"gripper"')
    path.write_text(text[:at] + '"gripper": {"q99": [61.1]}, ' + text[at:])
    err = serve_error(checkpoint)
    assert f"{path}: key 'gripper' is given twice in one object (at new_embodiment." in err, err


@pytest.mark.parametrize("raw, expected", [
    ('{"a": 1, "a": 2}', "key 'a' is given twice in one object; give each key once"),
    ('{"x": [{"b": 1}, {"b": 1, "b": 1}]}', "key 'b' is given twice in one object (at x[1]); give each key once"),
])
def test_the_json_reader_refuses_a_key_given_twice_naming_the_file_key_and_place(tmp_path, raw, expected):
    from gr00t_server.checkpoint_json import read_checkpoint_json

    path = tmp_path / "config.json"
    path.write_text(raw)
    with pytest.raises(ValueError) as info:
        read_checkpoint_json(path)
    assert str(info.value) == f"{path}: {expected}", str(info.value)


def test_the_json_reader_names_a_file_nested_too_deeply_to_read(tmp_path):
    """A RecursionError out of json.loads crashed `serve` with a traceback naming no file."""
    from gr00t_server.checkpoint_json import read_checkpoint_json

    path = tmp_path / "statistics.json"
    path.write_text('{"new_embodiment": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match=rf"^{path} is nested too deeply to read"):
        read_checkpoint_json(path)

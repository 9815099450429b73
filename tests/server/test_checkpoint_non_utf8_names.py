"""Checkpoint folders whose name on disk is not UTF-8 (a Latin-1 byte from an old tool under a UTF-8 locale, or any
non-ASCII name under a Latin-1 locale): the tokenizers library opens UTF-8 paths only, and serve blamed intact tokenizer
files ('copy them again from the backbone'), while make-test-checkpoint stopped half-way with a bare codec error. Both
refuse such a folder up front, naming it and saying to rename it. Real folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from latin1_locale import latin1_locale_env

LATIN1_NAME = os.fsdecode(b"caf\xe9")  # 'caf\udce9' under a UTF-8 locale


def test_serving_a_checkpoint_in_a_folder_whose_name_is_not_utf8_names_the_folder_not_its_files(tiny_checkpoint,
                                                                                                 tmp_path, serve_error):
    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / LATIN1_NAME)
    err = serve_error(checkpoint)
    assert f"{tmp_path}/caf\\xe9: its name is not UTF-8 on disk" in err, err
    assert "rename" in err and "copy them again" not in err


def test_make_test_checkpoint_refuses_a_folder_whose_name_is_not_utf8_before_writing_anything(tmp_path):
    from gr00t_server.test_checkpoint import make_test_checkpoint

    refusal = r"checkpoint folder .*/caf\\xe9/ckpt: the name of .*/caf\\xe9 is not UTF-8 on disk .*rename"
    with pytest.raises(ValueError, match=refusal):
        make_test_checkpoint(tmp_path / LATIN1_NAME / "ckpt")
    assert os.listdir(tmp_path) == []


def test_under_a_latin1_locale_a_tokenizer_folder_with_a_non_ascii_name_is_refused_naming_it(tiny_checkpoint, tmp_path):
    """'No such file or directory (os error 2); copy them again from the backbone' for files that were there."""
    env = latin1_locale_env(tmp_path)
    if env is None:
        pytest.skip("localedef cannot build de_DE.ISO-8859-1 here")
    probe = textwrap.dedent("""
        import shutil, sys
        from pathlib import Path
        from gr00t_server.processing.tokenizer import load_tokenizer
        assert sys.getfilesystemencoding() == "iso8859-1", sys.getfilesystemencoding()
        folder = shutil.copytree(sys.argv[1], Path(sys.argv[2]) / "caf\\u00e9")
        try:
            load_tokenizer(folder)
        except ValueError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", probe, str(tiny_checkpoint), str(tmp_path)], env=env,
                          capture_output=True, encoding="latin-1", timeout=120)
    assert done.stdout.startswith(f"the tokenizer folder {tmp_path}/caf\\xe9: its name is not UTF-8 on disk"), done
    assert "copy them again" not in done.stdout


def test_a_relative_checkpoint_path_inside_a_working_folder_whose_name_is_not_utf8_is_accepted(tmp_path, monkeypatch):
    """The libraries get the relative path, which is UTF-8: the check of the absolute one refused what worked."""
    from gr00t_server.processing.tokenizer import load_tokenizer
    from gr00t_server.test_checkpoint import make_test_checkpoint

    working = tmp_path / LATIN1_NAME
    working.mkdir()
    monkeypatch.chdir(working)
    make_test_checkpoint("ckpt")
    assert load_tokenizer("ckpt") is not None


def test_export_into_and_serving_from_an_export_folder_whose_name_is_not_utf8_are_refused_naming_it(tiny_checkpoint,
                                                                                                 tmp_path, capsys):
    """torch's ONNX exporter failed after the model loaded with a TypeError and 326 KB of traceback; onnxruntime said
    only 'incompatible constructor arguments'."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from gr00t_server import cli

    output = tmp_path / LATIN1_NAME / "onnx"
    assert cli.main(["export", "--model-path", str(tiny_checkpoint), "--output", str(output), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"--output {tmp_path}/caf\\xe9/onnx: the name of {tmp_path}/caf\\xe9 is not UTF-8 on disk (torch's ONNX " \
           "exporter opens UTF-8 paths only)" in err, err
    assert err.count("\n") == 1 and not output.exists()
    output.mkdir(parents=True)
    assert cli.main(["serve", "--model-path", str(tiny_checkpoint), "--embodiment-tag", "new_embodiment", "--device",
                     "cpu", "--inference-mode", "onnxruntime", "--onnx-dir", str(output), "--no-warmup"]) == 2
    err = capsys.readouterr().err
    assert "--onnx-dir" in err and "is not UTF-8 on disk (onnxruntime opens UTF-8 paths only)" in err, err

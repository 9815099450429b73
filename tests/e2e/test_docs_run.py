"""Docs that run: every python/bash/sh/console block of README.md and docs/*.md is executed as written (see
docs_runner.py for the directives and rewrites), one test per block named `<file>:<line>`; blocks marked
`<!-- docs-test: skip REASON -->` are reported as skipped with their name and reason, never silently."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Iterator

import pytest
from docs_runner import DocBlock, DocSession, DocsTestError, documents, extract_blocks, ordered_blocks

ALL_BLOCKS = [block for doc in documents() if doc.is_file() for block in ordered_blocks(doc)]


def test_every_docs_test_directive_is_understood():
    errors = [error for block in ALL_BLOCKS for error in block.directive_errors()]
    assert not errors, "\n".join(errors)


def test_extractor_reads_directives_right_before_a_block(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text\n<!-- docs-test: skip gpu -->\n\n```bash\necho hi\n```\n\n```json\n{}\n```\n```python\nprint(1)\n```\n")
    blocks = extract_blocks(doc)
    assert [(b.line, b.lang, b.skip_reason) for b in blocks] == [(4, "bash", "gpu"), (11, "python", None)]


@pytest.fixture(scope="module")
def sessions(tmp_path_factory) -> Iterator[Dict[Path, DocSession]]:
    opened: Dict[Path, DocSession] = {}
    yield opened
    for session in opened.values():
        session.stop_servers()
        shutil.rmtree(session.root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.sim
@pytest.mark.parametrize("block", ALL_BLOCKS, ids=[block.name for block in ALL_BLOCKS])
def test_docs_block_runs_as_written(block: DocBlock, sessions: Dict[Path, DocSession], tmp_path_factory) -> None:
    if block.skip_reason:
        pytest.skip(f"{block.name} ({block.lang}) marked skip: {block.skip_reason}")
    session = sessions.get(block.doc)
    if session is None:
        session = sessions[block.doc] = DocSession(block.doc, tmp_path_factory.mktemp(block.doc.stem))
    earlier_failures = list(session.failed)
    try:
        session.run_through(block)
    except DocsTestError as exc:
        earlier = f"\n(earlier failed blocks of this document: {', '.join(earlier_failures)})" if earlier_failures else ""
        pytest.fail(f"{exc}{earlier}", pytrace=False)

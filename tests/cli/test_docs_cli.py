"""The ``headway`` examples of docs/cli.md and docs/batch.md run as written.

Each ```console block after a ``<!-- doc-example -->`` comment runs against a FakeAPI
standing in for ``http://127.0.0.1:8000``, in a folder holding the ``<!-- doc-input -->``
files of both (``requests.jsonl``...); lines after a command are its exact standard output.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from headway.cli import cli

from .conftest import ThreadedFakeAPI

DOCS = Path(__file__).resolve().parents[2] / "docs"
DOC_URL = "http://127.0.0.1:8000"
_BLOCK = re.compile(r"<!-- doc-example -->\n```console\n(.*?)```", re.S)
_INPUT = re.compile(r"<!-- doc-input: (\S+) -->\n```json\n(.*?)```", re.S)


def _examples() -> list[tuple[str, str]]:
    out = []
    for name in ("cli.md", "batch.md"):
        for i, block in enumerate(_BLOCK.findall((DOCS / name).read_text())):
            out.append((f"{name}#{i + 1}", block))
    return out


EXAMPLES = _examples()


def test_the_docs_have_examples() -> None:
    names = {name.split("#")[0] for name, _ in EXAMPLES}
    assert names == {"cli.md", "batch.md"}
    assert len(EXAMPLES) >= 4


def _commands(block: str) -> list[tuple[str, list[str]]]:
    """(command, expected stdout lines) pairs."""
    out: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


@pytest.mark.parametrize(("name", "block"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_doc_example_runs(
    name: str,
    block: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fake_server: object,
) -> None:
    server: ThreadedFakeAPI = fake_server()  # type: ignore[operator]
    for doc in ("cli.md", "batch.md"):
        for file_name, text in _INPUT.findall((DOCS / doc).read_text()):
            (tmp_path / file_name).write_text(text)
    monkeypatch.chdir(tmp_path)
    for command, expected in _commands(block):
        stdin = None
        stdout_file = None
        if command.startswith("cat "):
            source, command = command[4:].split("|", 1)
            stdin = (tmp_path / source.strip()).read_bytes()
        if " > " in command:
            command, target = command.rsplit(" > ", 1)
            stdout_file = tmp_path / target.strip()
        args = shlex.split(command.replace(DOC_URL, server.url))
        assert args[0] == "headway"
        result = CliRunner().invoke(cli, args[1:], input=stdin)
        assert result.exit_code == 0, (command, result.output)
        assert "Traceback" not in result.output
        if expected:
            got = result.stdout.replace(server.url, DOC_URL).splitlines()
            assert got == expected, command
        if stdout_file is not None:
            stdout_file.write_text(result.stdout)
            rows = [json.loads(line) for line in result.stdout.splitlines()]
            assert sorted(r["custom_id"] for r in rows) == ["e1", "m1", "q1", "q2"]

"""The example session in docs/registry.md runs as written and prints what it shows."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from settlement import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "registry.md"


def example_session() -> list[tuple[list[str], list[str]]]:
    text = DOC.read_text()
    block = text[text.index("$ etx registry user root admin"):]
    block = block[:block.index("```")]
    steps: list[tuple[list[str], list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ etx registry "):
            steps.append((shlex.split(line[len("$ etx registry "):]), []))
        elif line.strip():
            steps[-1][1].append(line)
    return steps


def test_registry_doc_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    steps = example_session()
    assert len(steps) >= 8
    for argv, expected in steps:
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        code = cli.run(parser.parse_args(["--store", str(tmp_path / "doc.sqlite"), *argv]))
        out = capsys.readouterr().out
        assert code == 0, argv
        if expected:
            assert [" ".join(x.split()) for x in out.splitlines()] == [" ".join(x.split()) for x in expected], argv

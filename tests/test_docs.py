"""The documents' Python examples run: every ```python block of the listed documents
is executed in order, in one namespace per document, and must not raise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["docs/engine.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("doc", DOCS)
def test_python_examples_run(doc: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / doc).read_text()
    blocks = BLOCK.findall(text)
    assert blocks, f"{doc} has no python example"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, doc, "exec"), namespace)
    if doc == "docs/engine.md":
        out = capsys.readouterr().out
        assert "Trade(" in out and "qty=40" in out

"""Every ```python block of README.md and docs/*.md runs as written: alone, in a fresh process
and a fresh directory, importing this checkout's polyak.

A block that starts a process group (``init_process_group``) says to run it with
``torchrun --nproc-per-node=2``, and runs so here. Interactive examples (``>>>``) are
```pycon blocks, which tests/test_readme.py doctests.
"""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks():
    """``(document:line, code)`` for each ```python block, indented ones (in a list item) included."""
    blocks = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append(pytest.param(textwrap.dedent(match["code"]), id=f"{document.name}:{line}"))
    return blocks


BLOCKS = python_blocks()


def test_the_documents_have_python_blocks_and_none_is_interactive():
    assert len(BLOCKS) >= 10
    for block in BLOCKS:
        assert ">>>" not in block.values[0], f"{block.id}: a >>> example belongs in a ```pycon block"


@pytest.mark.parametrize("code", BLOCKS)
def test_a_python_block_runs_alone_in_a_fresh_process(code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"] if (
        "init_process_group(" in code) else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, *launcher, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"

"""buf on the contract, as `make proto-check` runs it: lint passes, and the `breaking` rules catch a
change that would break generated clients."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"
TIMEOUT = 300.0


@pytest.fixture(scope="module")
def buf() -> str:
    if not BUF.exists():  # `make test` installs it first; a lone pytest run installs it here
        subprocess.run(["make", "-s", "buf"], cwd=REPO, check=True, timeout=TIMEOUT)
    return str(BUF)


def _module(to: Path) -> Path:
    shutil.copytree(REPO / "proto", to / "proto")
    shutil.copy2(REPO / "buf.yaml", to / "buf.yaml")
    return to


def test_buf_lint_passes(buf: str) -> None:
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_removed_field(buf: str, tmp_path: Path) -> None:
    before = _module(tmp_path / "before")
    after = _module(tmp_path / "after")
    same = subprocess.run([buf, "breaking", "--against", str(before)], cwd=after, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert same.returncode == 0, same.stdout + same.stderr

    proto = after / "proto" / "jobwire" / "v1" / "jobwire.proto"
    text = proto.read_text()
    assert "  int32 counted_attempts = 27;\n" in text
    proto.write_text(text.replace("  int32 counted_attempts = 27;\n", ""))
    broken = subprocess.run([buf, "breaking", "--against", str(before)], cwd=after, capture_output=True, text=True,
                            timeout=TIMEOUT, check=False)
    assert broken.returncode != 0
    assert 'Previously present field "27" with name "counted_attempts" on message "Job" was deleted' in broken.stdout

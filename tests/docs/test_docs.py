"""The docs, run as a user would run them.

README.md is followed line by line in a fresh copy of the repository (its own `make venv`, its own
server); the shell and Python blocks of docs/*.md run against a live server. Each page's blocks run
in order in one bash script, so a block may use what an earlier one made. What a block cannot run
as written is marked (see tests/docs/markdown.py), and the only edits made before running are the
ones in this module, each for a reason:

- the example addresses ``127.0.0.1:50051`` / ``:50052`` become free ports of this machine, so the
  tests never collide with a server someone runs on the default port; for the commands that rely on
  the default address, ``JOBWIRE_LISTEN`` and ``JOBWIRE_TARGET`` name the same free port;
- in docs/api.md the two example job ids become jobs made for the purpose (one finished, one
  waiting);
- in docs/operations.md the example paths ``/data/jobwire.db`` and ``/backup/`` become the live
  server's database and a folder of the test;
- the example PostgreSQL URL becomes a new, empty database on the test server (tests/pg.py), made for the
  page and dropped after it.

`grpcurl` is the stand-in in tests/docs/grpcurl.py (reflection v1, proto3 JSON).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from jobwire import models
from jobwire.sync import Client

from tests.conftest import REPO, StartServer, free_port
from tests.docs.markdown import PYTHON, SHELL, Block, blocks
from tests.pg import create_database, drop_database, url_of

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
EXAMPLE_FINISHED_JOB = "01a205ce-80e1-70f5-ad86-4a0062fd01dd"
EXAMPLE_WAITING_JOB = "01a205ce-a03c-711e-bd98-cca0901f41ba"
EXAMPLE_POSTGRES_URL = "postgresql://jobwire@db.internal:5432/jobwire"
LOOKS_LIKE_A_COMMAND = ("jobwire ", "grpcurl ", "make ", "sqlite3 ", "$ ", "pip ", ".venv/")
PAGE_TIMEOUT = 600.0


def script(page: list[Block], substitutions: list[tuple[str, str]], python: str) -> str:
    """One bash script running the page's code blocks in order; background jobs end with it."""
    parts = ["set -euo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true; wait' EXIT"]
    for block in page:
        if not block.is_code or block.illustrative:
            continue
        text = block.text
        for old, new in substitutions:
            text = text.replace(old, new)
        parts.append(f"echo {shlex.quote('>>> ' + block.where)} >&2")
        if block.file:
            folder = os.path.dirname(block.file) or "."
            parts.append(f"mkdir -p {shlex.quote(folder)}\ncat > {shlex.quote(block.file)} <<'DOCS_EOF'\n"
                         f"{text}DOCS_EOF")
        elif block.lang in SHELL:
            parts.append(text)
        elif block.lang in PYTHON:
            parts.append(f"{python} - <<'DOCS_EOF'\n{text}DOCS_EOF")
    return "\n".join(parts) + "\n"


def run_page(path: Path, page: list[Block], cwd: Path, env: dict[str, str], substitutions: list[tuple[str, str]],
             python: str) -> str:
    """Run the page; returns stdout and stderr together. Fails the test on a non-zero exit or a missing
    expected output."""
    log = cwd / f"{path.stem}.log"
    with log.open("wb") as out:
        result = subprocess.run(["bash", "-c", script(page, substitutions, python)], cwd=cwd, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                timeout=PAGE_TIMEOUT, check=False)
    output = log.read_text(errors="replace")
    assert result.returncode == 0, f"{path.name}: exit {result.returncode}; the last block run is named last:\n{output}"
    for block in page:
        if block.is_code and not block.illustrative:
            for text in block.expect:
                assert text in output, f"{block.where}: expected {text!r} in the output:\n{output}"
    return output


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: no make of ours around it, no virtualenv active."""
    drop = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV", "PYTHONPATH", "JOBWIRE_TARGET", "JOBWIRE_TOKEN"}
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return {**env, **extra}


# ----------------------------------------------------------------------------- the pages as text


@pytest.mark.parametrize("path", PAGES, ids=lambda p: p.name)
def test_every_block_is_closed_and_every_command_is_labelled(path: Path) -> None:
    for block in blocks(path):  # raises on a block that is never closed
        if block.file:
            assert block.is_code, f"{block.where}: only code blocks can be written to files"
        if not block.is_code and not block.illustrative:
            first = block.text.lstrip().splitlines()[0] if block.text.strip() else ""
            assert not first.startswith(LOOKS_LIKE_A_COMMAND), (
                f"{block.where}: a command in a ```{block.lang or ''} block: label it sh (it is then run) "
                "or mark it illustrative")


def test_a_block_left_open_is_reported(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```sh\njobwire prune\n\n## Next section\n")
    with pytest.raises(ValueError, match=r"page.md:3: code block is never closed"):
        blocks(page)


def test_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- docs: illustrative: needs a cluster -->\n```sh\nkubectl apply\n```\n\n"
                    "<!-- docs: file app/jobs.py -->\n```python\nx = 1\n```\n\n"
                    '<!-- docs: expect "SUCCEEDED" -->\n```sh\njobwire get X\n```\n')
    first, second, third = blocks(page)
    assert (first.illustrative, second.file, third.expect) == ("needs a cluster", "app/jobs.py", ["SUCCEEDED"])
    assert "kubectl" not in script([first, second, third], [], "python3")


# ----------------------------------------------------------------------------- the pages, run


def _copy_repository(to: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)


def test_readme_followed_line_by_line_on_a_fresh_copy(tmp_path: Path) -> None:
    clone = tmp_path / "jobwire"
    _copy_repository(clone)
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    http = f"127.0.0.1:{free_port()}"
    substitutions = [("127.0.0.1:50051", first), ("127.0.0.1:50052", second), ("127.0.0.1:8080", http)]
    page = blocks(REPO / "README.md")
    # What `make run` and the CLI default to.
    env = clean_env(JOBWIRE_LISTEN=first, JOBWIRE_TARGET=first, JOBWIRE_HTTP_LISTEN=http)
    output = run_page(REPO / "README.md", page, clone, env, substitutions, ".venv/bin/python")
    assert (clone / ".venv" / ".installed-server").exists()
    # `make venv` installs what serving needs and no development tool.
    installed = subprocess.run([str(clone / ".venv/bin/python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    assert "aiohttp==" in installed and "opentelemetry-sdk==" in installed
    assert not any(tool in installed for tool in ("pytest==", "mypy==", "ruff=="))
    assert ">>> README.md" in output


def _runs_something(path: Path) -> bool:
    return any(b.is_code and not b.illustrative and not b.file for b in blocks(path))


@pytest.mark.parametrize("path", [p for p in PAGES if p.name != "README.md" and _runs_something(p)],
                         ids=lambda p: p.name)
def test_docs_page_runs_against_a_live_server(path: Path, start_server: StartServer, tmp_path: Path) -> None:
    page = blocks(path)
    http = f"127.0.0.1:{free_port()}"  # the HTTP gateway and console, 127.0.0.1:8080 on the pages
    server = start_server(http_listen=http)
    with Client(server.target) as client:
        finished = client.enqueue("noop", b'{"hello": "world"}')
        finished.result(timeout=30)
        waiting = client.enqueue("noop", delay=3600)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    grpcurl = bin_dir / "grpcurl"
    grpcurl.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} {REPO / 'tests/docs/grpcurl.py'} \"$@\"\n")
    grpcurl.chmod(0o755)
    (tmp_path / "backup").mkdir()
    substitutions = [("127.0.0.1:50051", server.target), (EXAMPLE_FINISHED_JOB, finished.id),
                     (EXAMPLE_WAITING_JOB, waiting.id), ("/data/jobwire.db", str(server.db_path)),
                     ("/backup/", f"{tmp_path / 'backup'}/"), ("127.0.0.1:8080", http)]
    path_var = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = clean_env(JOBWIRE_TARGET=server.target, PATH=path_var)
    database = create_database() if EXAMPLE_POSTGRES_URL in path.read_text() else None
    try:
        if database is not None:
            substitutions.append((EXAMPLE_POSTGRES_URL, url_of(database)))
        run_page(path, page, tmp_path, env, substitutions, sys.executable)
    finally:
        if database is not None:
            drop_database(database)


def test_json_shapes_in_the_cli_reference_match_the_sdk() -> None:
    text = (REPO / "docs" / "cli.md").read_text()
    entries = re.findall(r"^- \*\*`(\w+)`\*\*: (.*?)(?=^- \*\*|^\s*$)", text, flags=re.M | re.S)
    assert len(entries) == 16, entries
    for name, listed in entries:
        documented = re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", listed))
        model = getattr(models, name)
        assert documented == [f.name for f in dataclasses.fields(model)], name

"""The bad-input table of docs/errors.md, generated here: every case's message and exit code,
as the CLI prints them now (2: bad usage or a bad value; 1: an operational failure).
`UPDATE_DOCS=1 ./scripts/test tests/test_bad_input.py` writes the table after a change."""

from __future__ import annotations

import os
import shlex

import anyio
import pytest

from conftest import ROOT

DOC = ROOT / "docs" / "errors.md"
BEGIN, END = "<!-- table: tests/test_bad_input.py -->", "<!-- end of table -->"

# (the arguments, what the environment or the state is, when that matters)
CASES = [
    ("reserve -d 1x", None), ("reserve -d 0", None), ("reserve -d 0s", None),
    ("reserve -d 400d", None), ("reserve -d 30", None), ("reserve -g 0", None),
    ("reserve -g two", None), ("reserve -g 99", None), ("reserve -G 1,,2", None),
    ("reserve -G 9", None), ("reserve -g 2 -G 1", None), ("run --gpus 2 --gpus 3 -- true", None),
    ("run --nonblok -- true", None), ("run", None), ("release --force", None),
    ("wait -t 1x -- true", None), ("status --format csv", None),
    ("report --days -1", None), ("--redis-url http://x status", None),
    ("--memory-threshold -5 status", None), ("status", "config: memory_treshold = 5"),
    ("reserve -g 5", None), ("release -G 3", None), ("reserve", "fake GPU file: {not json"),
    ("--redis-url unix:///nonexistent/redis.sock status", None),
]


async def outcomes(cli, env, tmp_path) -> list[tuple[str, str, int, str]]:
    """(command, condition, exit code, stderr) of every case, four at a time."""
    found: dict[int, tuple] = {}
    limiter = anyio.CapacityLimiter(4)

    async def one(i: int, args: str, condition: str | None) -> None:
        extra = {}
        if condition:
            what, text = condition.split(": ", 1)
            path = tmp_path / f"case{i}.{'toml' if what == 'config' else 'json'}"
            path.write_text(text + "\n")
            extra = {"CANHAZGPU_CONFIG" if what == "config" else "CANHAZGPU_FAKE_GPUS": str(path)}
        async with limiter:
            proc = await cli.run(*shlex.split(args), extra_env=extra)
        err = proc.stderr.strip().replace(str(tmp_path), "/tmp/x")
        err = err.replace(f"case{i}.", "file.")
        found[i] = (args, condition or "", proc.returncode, err)

    async with anyio.create_task_group() as tg:
        for i, (args, condition) in enumerate(CASES):
            tg.start_soon(one, i, args, condition)
    return [found[i] for i in range(len(CASES))]


def table(rows) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")
    lines = ["| command | when | exit | message (stderr) |", "| --- | --- | --- | --- |"]
    for args, condition, code, err in rows:
        lines.append(f"| `canhazgpu {cell(args)}` | {cell(condition)} | {code} | {cell(err)} |")
    return "\n".join(lines)


@pytest.mark.anyio
async def test_the_bad_input_table_is_what_the_cli_says(cli, env, tmp_path):
    cli("admin", "--gpus", 4, check=0)
    rows = await outcomes(cli, env, tmp_path)
    for args, _, code, err in rows:
        assert code in (1, 2), (args, code, err)
        assert err.startswith("Error: ") and err.count("\n") == 0, (args, err)
        assert "Traceback" not in err
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    fresh = f"{head}{BEGIN}\n{table(rows)}\n{END}{tail}"
    if os.environ.get("UPDATE_DOCS"):
        DOC.write_text(fresh)
    assert text == fresh, "docs/errors.md is out of date: UPDATE_DOCS=1 ./scripts/test " \
                          "tests/test_bad_input.py"

"""`canhazgpu help TOPIC`: the docs/ pages ship with the package, and no --help text points
at a file that an installed canhazgpu does not have."""

from __future__ import annotations

from conftest import ROOT

PAGES = sorted(p.stem for p in (ROOT / "docs").glob("*.md") if p.name != "README.md")


def test_help_lists_every_page_and_prints_each(cli):
    listing = cli("help", check=0).stdout.splitlines()
    assert listing[0] == "Topics (canhazgpu help TOPIC):"
    assert sorted(line.split()[0] for line in listing[1:]) == PAGES
    assert "  status " in "\n".join(listing)
    for page in ("status", "serve"):
        text = (ROOT / "docs" / f"{page}.md").read_text()
        assert cli("help", page, check=0).stdout == text.rstrip("\n") + "\n"
    assert cli("help", "release", check=0).stdout.startswith("# `canhazgpu reserve`")


def test_unknown_topic_is_a_usage_error(cli):
    proc = cli("help", "nope", check=2)
    assert proc.stderr.startswith("Error: no help topic 'nope': use one of ")


def test_no_help_text_points_at_a_docs_file(cli):
    from canhazgpu.cli.main import _register, cli as group
    _register()
    for cmd in ["", *group.commands]:
        text = cli(*(cmd.split() + ["--help"]), check=0).stdout
        assert "docs/" not in text, cmd

"""CLI tables never cut names or ids (issue 11): piped output is plain lines, `--json` everywhere."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from tunery.cli import app

runner = CliRunner()


def test_models_list_piped_keeps_every_name_whole():
    r = runner.invoke(app, ["models", "list"], env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(line.split("\t")[0] == "smollm2-135m-instruct" for line in lines), r.output
    assert any(line.startswith("gpt-4.1-nano-2025-04-14\tsmollm2-135m-instruct") for line in lines), r.output
    assert "…" not in r.output


def test_models_list_json_is_plain_json():
    r = runner.invoke(app, ["models", "list", "--json"], env={"COLUMNS": "40"})
    assert r.exit_code == 0
    assert "smollm2-135m-instruct" in {row["name"] for row in json.loads(r.output)}


def test_keys_list_keeps_ids_whole_and_offers_json(tunery_home):
    out = runner.invoke(app, ["keys", "create", "--org", "a-rather-long-organization-name", "--name", "ci"])
    assert out.exit_code == 0, out.output
    r = runner.invoke(app, ["keys", "list", "--json"])
    [row] = json.loads(r.output)
    assert row["organization"] == "a-rather-long-organization-name" and row["id"].startswith("key-")
    r = runner.invoke(app, ["keys", "list"], env={"COLUMNS": "30"})
    assert r.exit_code == 0 and f"{row['id']}\ta-rather-long-organization-name\t" in r.output, r.output
    r = runner.invoke(app, ["keys", "revoke", row["id"]])
    assert r.exit_code == 0 and "last key" in r.output


def test_on_a_narrow_terminal_cells_fold_instead_of_being_cut():
    from tunery.clitable import print_table

    console = Console(force_terminal=True, width=24, record=True, color_system=None)
    print_table(console, ("id", "x"), [("key-0123456789abcdefghij", "y")])
    text = console.export_text()
    assert "…" not in text and "key-0123" in text and "cdefghij" in text, text

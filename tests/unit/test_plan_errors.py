"""Plan errors name every problem, sorted by field path, with near-miss keys suggested."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from migrator.cli import cli
from migrator.errors import PlanError
from migrator.plan.model import parse_plan
from tests.unit.test_plan import MINIMAL


def _renamed(data: dict[str, Any], path: str, new: str) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node = out
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[new] = node.pop(keys[-1])
    return out


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(PlanError) as err:
        parse_plan(data, path="p.yaml")
    assert err.value.exit_code == 13
    return [err.value.message, *err.value.more]


def test_top_level_typo_shows_the_unknown_key_and_its_near_miss() -> None:
    lines = _problems(_renamed(MINIMAL, "table", "tabel"))
    assert lines == [
        "p.yaml:tabel: unknown key `tabel`: did you mean `table`?",
        "p.yaml:table: required key is missing",
    ]


def test_nested_typo_suggests_the_key_of_that_section() -> None:
    data = _renamed(MINIMAL, "target.model.dimensions", "dimension")
    assert _problems(data) == [
        "p.yaml:target.model.dimension: unknown key `dimension`: did you mean `dimensions`?",
        "p.yaml:target.model.dimensions: required key is missing",
    ]


def test_aliased_key_is_suggested_by_its_file_name() -> None:
    data = copy.deepcopy(MINIMAL)
    data["table"]["schmea"] = "public"
    assert _problems(data) == ["p.yaml:table.schmea: unknown key `schmea`: did you mean `schema`?"]


def test_far_off_key_gets_no_suggestion() -> None:
    data = copy.deepcopy(MINIMAL)
    data["index"] = {"zzzqqq": 1}
    assert _problems(data) == ["p.yaml:index.zzzqqq: unknown key `zzzqqq`"]


def test_every_problem_is_reported_sorted_by_path() -> None:
    data = _renamed(MINIMAL, "table", "tabel")
    data["view"]["colums"] = ["id"]
    data["backfill"] = {"batch_size": -1}
    data["index"] = {"metirc": "cosine"}
    lines = _problems(data)
    fields = [line.split(":")[1] for line in lines]
    assert fields == sorted(fields)
    assert fields == ["backfill.batch_size", "index.metirc", "tabel", "table", "view.colums"]
    assert "did you mean `metric`?" in lines[1]
    assert "did you mean `columns`?" in lines[4]


def test_json_output_carries_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_renamed(MINIMAL, "table", "tabel")))
    res = CliRunner().invoke(cli, ["plan", str(path), "--offline", "--json"])
    assert res.exit_code == 13
    doc = json.loads(res.stdout)
    assert doc["message"].endswith("unknown key `tabel`: did you mean `table`?")
    assert doc["hint"] == "the keys are listed in docs/plan-reference.md"
    assert doc["more"] == [f"{path}:table: required key is missing"]


def test_usage_errors_and_plan_errors_have_different_codes(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_renamed(MINIMAL, "table", "tabel")))
    assert CliRunner().invoke(cli, ["plan", str(path), "--offline"]).exit_code == 13
    assert CliRunner().invoke(cli, ["plan", str(path), "--no-such-option"]).exit_code == 2


def test_debug_prints_the_traceback_and_keeps_the_code(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(_renamed(MINIMAL, "table", "tabel")))
    plain = CliRunner().invoke(cli, ["plan", str(path), "--offline"])
    debug = CliRunner().invoke(cli, ["--debug", "plan", str(path), "--offline"])
    assert plain.exit_code == debug.exit_code == 13
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert plain.stderr.startswith("error: ")

"""The plan model: defaults, derived names, and a table of bad plans with their errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from migrator.errors import PlanError
from migrator.plan.model import load_plan, parse_plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "plans").glob("*.yaml"))

MINIMAL: dict[str, Any] = {
    "version": 1,
    "name": "docs-v2",
    "table": {"name": "docs"},
    "text": {"column": "body"},
    "source": {"model": {"name": "old-model", "dimensions": 8}},
    "target": {"model": {"name": "new-model", "dimensions": 16}},
    "view": {"name": "docs_search", "columns": ["id", "body"]},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    plan = load_plan(path)
    assert plan.version == 1
    assert plan.queue.startswith("migrator.")


def test_defaults_and_derived_names() -> None:
    plan = parse_plan(MINIMAL)
    assert plan.table.schema_ == "public"
    assert plan.table.primary_key == "id"
    assert plan.target.column == "embedding_v2"
    assert plan.source.column == "embedding"
    assert plan.queue == "migrator.docs-v2.embedding_v2"
    assert plan.index_name == "docs_embedding_v2_hnsw_idx"
    assert plan.view_schema == "public"
    assert plan.backfill.batch_size == 256


def test_fingerprint_distinguishes_vector_spaces() -> None:
    plan = parse_plan(MINIMAL)
    other = parse_plan(with_change("target.model.dimensions", 32))
    assert plan.target.model.fingerprint() != plan.source.model.fingerprint()
    assert plan.target.model.fingerprint() != other.target.model.fingerprint()
    raw = parse_plan(with_change("target.model.normalize", False))
    assert raw.target.model.fingerprint() != plan.target.model.fingerprint()


def test_plan_hash_ignores_tuning_but_not_structure() -> None:
    base = parse_plan(MINIMAL).plan_hash()
    assert parse_plan(with_change("backfill.batch_size", 99)).plan_hash() == base
    assert parse_plan(with_change("verify.k", 5)).plan_hash() == base
    assert parse_plan(with_change("text.column", "title")).plan_hash() != base
    assert parse_plan(with_change("target.model.name", "x")).plan_hash() != base


def test_derived_names_stay_within_63_bytes() -> None:
    long_table = "t" * 60
    plan = parse_plan(with_change("table.name", long_table))
    assert len(plan.index_name.encode()) <= 63
    assert plan.index_name == parse_plan(with_change("table.name", long_table)).index_name


BAD = [
    ("table.name", 'x"; DROP TABLE t;--', "table.name", "letters, digits and underscores"),
    ("table.name", "a" * 64, "table.name", "silently truncate"),
    ("text.column", "bo dy", "text.column", "letters, digits"),
    ("target.column", "embedding", "", "must differ"),
    ("view.name", "Robert'); DROP", "view.name", "letters, digits"),
    ("table.colour", "red", "table.colour", "unknown key"),
    ("surprise", 1, "surprise", "unknown key"),
    ("target.model.dimensions", 3072, "", "exceeds the hnsw limit of 2000"),
    ("target.model.dimensions", "many", "target.model.dimensions", "integer"),
    ("target.model.dimensions", 0, "target.model.dimensions", "greater than or equal to 1"),
    ("index.metric", "hamming", "index.metric", "Input should be"),
    ("index.opclass", "vector_l2_ops", "", "does not match metric cosine"),
    ("target.type", "bitvec", "target.type", "Input should be"),
    ("backfill.batch_size", -5, "backfill.batch_size", "greater than or equal to 1"),
    ("text", {"column": "body", "template": "{body}"}, "text", "exactly one"),
    ("text", {"template": "{body!r}"}, "text", "no format spec"),
    ("text", {"template": "{x; drop}"}, "text", "letters, digits"),
    ("text", {"template": "no columns"}, "text", "at least one column"),
    ("name", "Bad Name", "name", "must be 1-40 characters"),
    ("version", 2, "version", "unsupported version"),
    ("view.columns", ["id", "embedding"], "", "may not contain"),
    ("index.maintenance_work_mem", "1 GB; RESET", "index.maintenance_work_mem", "pattern"),
    ("backfill.queue", "q; rm -rf", "backfill.queue", "pattern"),
]


@pytest.mark.parametrize(
    ("path", "value", "field", "message"), BAD, ids=[b[0] + ":" + str(b[1])[:20] for b in BAD]
)
def test_bad_plans_give_one_line_errors(path: str, value: Any, field: str, message: str) -> None:
    with pytest.raises(PlanError) as err:
        parse_plan(with_change(path, value), path="plans/x.yaml")
    text = err.value.one_line()
    assert "\n" not in text
    assert text.startswith("plans/x.yaml")
    if field:
        assert err.value.field == field
    assert message in text


def test_ivfflat_l1_rejected() -> None:
    data = with_change("index.method", "ivfflat")
    data["index"]["metric"] = "l1"
    with pytest.raises(PlanError, match="hnsw only"):
        parse_plan(data)


def test_halfvec_allows_up_to_4000_dims() -> None:
    data = with_change("target.type", "halfvec")
    data["target"]["model"]["dimensions"] = 3072
    assert parse_plan(data).target.model.dimensions == 3072


def test_yaml_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: [unclosed\n")
    with pytest.raises(PlanError, match=r"bad.yaml:line \d+: YAML syntax error"):
        load_plan(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="file not found"):
        load_plan(tmp_path / "nope.yaml")


def test_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(PlanError, match="YAML mapping"):
        load_plan(f)


def test_plan_is_frozen() -> None:
    plan = parse_plan(MINIMAL)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        plan.name = "other"  # type: ignore[misc]
    assert hash(plan.target.model) == hash(parse_plan(MINIMAL).target.model)

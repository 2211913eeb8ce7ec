"""Matrix 20: hostile plan files. Injection attempts, 64-byte and odd identifiers, wrong types,
and a property-based fuzzer: every generated plan either validates or fails with a one-line
PlanError (exit 13), never a traceback, and a refused plan never touches the database. Free-text
fields that do reach SQL (model names in the view) are quoted, never executed."""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator import switch
from migrator.cli import cli
from migrator.config import Settings
from migrator.errors import PlanError
from migrator.plan.model import parse_plan
from migrator.search.client import SearchClient
from tests.helpers import create_documents, demo_plan
from tests.switch_helpers import migrated_state, switch_plan

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

BASE = demo_plan().model_dump(mode="json", by_alias=True)
INJECTIONS = [
    "x; DROP TABLE documents; --",
    'documents"; DROP TABLE documents; --',
    "a' OR '1'='1",
    "$$; DROP TABLE documents; $$",
    "docs\\",
    "docs\x00",
    "Robert'); DROP TABLE students;--",
    "pg_sleep(10)",
    "e\u0301",
    "документы",
    "docs search",
    "1docs",
    "",
    " ",
    "-docs",
]
IDENT_PATHS = [
    "table.name",
    "table.schema",
    "table.primary_key",
    "text.column",
    "source.column",
    "target.column",
    "view.name",
    "view.schema",
    "index.name",
    "view.embedding_alias",
    "view.model_alias",
    "target.model.api_key_env",
]


def _leaf_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict):
        out = [prefix] if prefix else []
        for k, v in node.items():
            out += _leaf_paths(v, (*prefix, k))
        return out
    return [prefix]


PATHS = _leaf_paths(BASE)


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = data
    for k in path[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[path[-1]] = value
    return data


def _with(path: str, value: Any) -> dict[str, Any]:
    return _set(copy.deepcopy(BASE), tuple(path.split(".")), value)


def _catalog(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON "
            "n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema',"
            " 'pg_toast') UNION ALL SELECT 'trigger', tgname, 't' FROM pg_trigger WHERE NOT "
            "tgisinternal UNION ALL SELECT 'proc', proname, 'f' FROM pg_proc p JOIN "
            "pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' "
            "ORDER BY 1, 2"
        ).fetchall()
    return [tuple(r) for r in rows]


def _one_line_refusal(data: Any) -> str | None:
    """None when the plan validates, else the refusal's line (asserting it is one line)."""
    try:
        parse_plan(data, path="fuzz.yaml")
    except PlanError as exc:
        line = exc.one_line()
        assert "\n" not in line and line.startswith("fuzz.yaml"), line
        return line
    return None


@pytest.mark.parametrize("path", IDENT_PATHS)
@pytest.mark.parametrize("value", [*INJECTIONS, "d" * 64, "é" * 32, "docs-search"])
def test_hostile_identifiers_are_refused_in_one_line(path: str, value: str) -> None:
    line = _one_line_refusal(_with(path, value))
    assert line is not None, f"{path}={value!r} was accepted"


def test_63_bytes_is_the_limit() -> None:
    assert _one_line_refusal(_with("table.name", "d" * 63)) is None
    assert "64 bytes" in (_one_line_refusal(_with("table.name", "d" * 64)) or "")
    assert "64 bytes" in (_one_line_refusal(_with("view.name", "é" * 32)) or "")


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("target.model.dimensions", "many"),
        ("target.model.dimensions", [384]),
        ("target.model.dimensions", None),
        ("target.model.dimensions", 1.5),
        ("backfill.batch_size", "all"),
        ("backfill.batch_size", 10**12),
        ("name", 123),
        ("version", "1"),
        ("table", "documents"),
        ("text", None),
        ("view.columns", "id, body"),
        ("cutover.lock_timeout_ms", -1),
        ("verify.min_recall_ratio", float("nan")),
        ("index.maintenance_work_mem", "1GB; SET work_mem = '1TB'"),
        ("backfill.queue", "q\nDEL *"),
        ("index.metric", "cosine; DROP"),
    ],
)
def test_wrong_types_are_refused_in_one_line(path: str, value: Any) -> None:
    assert _one_line_refusal(_with(path, value)) is not None


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(INJECTIONS),
    st.text(max_size=80),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=60, max_size=70),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=6,
)
_mutation = st.tuples(
    st.sampled_from([*PATHS, ("surprise",), ("table", "extra")]),
    st.one_of(_values, st.just("<delete>")),
)


def _mutate(mutations: list[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    for path, value in mutations:
        if value == "<delete>":
            with contextlib.suppress(KeyError, TypeError):
                node: Any = data
                for k in path[:-1]:
                    node = node[k]
                del node[path[-1]]
        else:
            _set(data, path, value)
    return data


@settings(max_examples=400, deadline=None)
@given(st.lists(_mutation, min_size=1, max_size=4))
def test_fuzzed_plans_validate_or_fail_in_one_line(mutations: list[Any]) -> None:
    _one_line_refusal(_mutate(mutations))


def test_fuzzed_plan_files_never_touch_the_database(database_url: str, tmp_path: Path) -> None:
    """Through the CLI, from YAML files: exit 0 or 2, no traceback, and a refused plan leaves
    the catalog exactly as it was (`adopt` would change it, if it got that far)."""
    create_documents(database_url, 20)
    before = _catalog(database_url)
    seen = {"refused": 0, "valid": 0}

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.lists(_mutation, min_size=1, max_size=3))
    def run(mutations: list[Any]) -> None:
        data = _mutate(mutations)
        path = tmp_path / "fuzz.yaml"
        try:
            path.write_text(yaml.safe_dump(data, allow_unicode=True))
        except (yaml.YAMLError, ValueError):
            return
        refused = _one_line_refusal(data) is not None
        args = ["adopt"] if refused else ["plan", "--offline"]
        res = CliRunner().invoke(
            cli,
            [*args, str(path), "--database-url", database_url] if refused else [*args, str(path)],
        )
        assert "Traceback" not in res.output, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.output
        assert res.exit_code == (PlanError.exit_code if refused else 0), res.output
        if refused:  # one line per problem (every problem is listed), and nothing else
            lines = res.output.strip().splitlines()
            assert lines and all(ln.startswith(("error: ", "hint: ")) for ln in lines), res.output
        seen["refused" if refused else "valid"] += 1
        assert _catalog(database_url) == before

    run()
    assert seen["refused"] > 10


def test_hostile_free_text_reaches_sql_only_as_literals(
    settings: Settings, database_url: str
) -> None:
    """Model names are free text and end up in the view as a literal: quotes, dollar quotes,
    backslashes and semicolons must stay data. The whole switch runs with them."""
    evil = 'evil\'); DROP TABLE documents; -- $$ \\ "x" ; SELECT pg_sleep(5);'
    plan = switch_plan(
        target__model__name=f"local-hash-new {evil}",
        description=f"{evil} \u202e",
        name="hostile-free-text",
    )
    migrated_state(settings, plan, 300)
    switch.cutover(settings, plan)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone() == (300,)
        row = conn.execute("SELECT DISTINCT embedding_model FROM documents_search").fetchone()
    assert row == (plan.target.model.fingerprint(),)
    with SearchClient(database_url, view="documents_search") as client:
        res = client.search("Return the number of bytes written", 5)
    assert res.hits and res.fingerprint == plan.target.model.fingerprint() and not res.mixed

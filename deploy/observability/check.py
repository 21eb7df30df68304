#!/usr/bin/env python3
"""Offline checks of deploy/observability/ (run by deploy/validate.sh, part of `make check`).

    python deploy/observability/check.py all                 # dashboards, rules, catalog, runbook anchors
    python deploy/observability/check.py panel-rules OUT.yml  # every panel query as a recording rule, for promtool

What it checks, beside `promtool check rules` (which validate.sh runs on the rules and on OUT.yml):
  dashboards   valid JSON; uid, title, panels; a ``datasource`` variable of type datasource/prometheus;
               every panel and query on ``${datasource}``; every query has an ``expr``
  rules        every rule has ``labels.severity``, ``annotations.summary``/``description``/``runbook_url``;
               every ``runbook_url`` is ``docs/<file>.md#<anchor>`` with the file and the anchor existing
  catalog      every metric a rule or a panel names is in metrics.txt, the fleet's metric catalog

metrics.txt is written from the /metrics pages of the running fleet (tests/e2e/test_metrics_catalog.py,
which fails when the file is out of date), so a renamed metric fails `make check` here and the e2e test there.
A script, not product code: the tests load it by path. Each check returns a list of problems.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RULES = HERE / "alerts.rules.yml"
DASHBOARDS = HERE / "dashboards"
CATALOG = HERE / "metrics.txt"

#: PromQL words that look like metric names
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
#: Grafana's variables, replaced for promtool (a range and a regex that match anything)
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$group": ".*"}


def promql_metrics(expr: str) -> set[str]:
    """The metric names an expression selects (strings, matchers, ranges, label lists and functions left out)."""
    text = _STRINGS.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _LABEL_LISTS.sub("", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)
    return {m for m in _NAME.findall(text) if m not in _KEYWORDS}


def series_names(exposition: str) -> dict[str, str]:
    """Series name -> type of a Prometheus text page (format 0.0.4), as PromQL names them: a counter is
    ``x_total``, a histogram ``x_bucket``/``x_sum``/``x_count``, a summary ``x``/``x_sum``/``x_count``, a
    gauge ``x``. prometheus_client's ``x_created`` companions are left out (an implementation detail)."""
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    found: dict[str, str] = {}
    for line in exposition.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split(maxsplit=3)
        if name.endswith("_created"):
            continue
        if kind == "counter":
            found[name if name.endswith("_total") else f"{name}_total"] = kind
        else:
            for suffix in suffixes.get(kind, ("",)):
                found[name + suffix] = kind
    return found


def read_catalog(path: Path = CATALOG) -> dict[str, str]:
    """Series name -> type, from metrics.txt (``name type workers``; # comments)."""
    rows = (line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {row[0]: row[1] for row in rows}


def render_catalog(by_worker: dict[str, dict[str, str]]) -> str:
    """metrics.txt from each worker's scrape (``series_names`` per worker)."""
    series: dict[str, tuple[str, set[str]]] = {}
    for worker, names in by_worker.items():
        for name, kind in names.items():
            series.setdefault(name, (kind, set()))[1].add(worker)
    lines = [
        "# The fleet's metric catalog: every series the workers' /metrics pages expose (name, type, workers).",
        "# Written by tests/e2e/test_metrics_catalog.py from a running fleet (WRITE_METRICS_CATALOG=1);",
        "# that test fails when this file differs from the scrape. Read by deploy/observability/check.py.",
    ]
    lines += [f"{name} {kind} {','.join(sorted(ws))}" for name, (kind, ws) in sorted(series.items())]
    return "\n".join(lines) + "\n"


def dashboards() -> Iterator[tuple[Path, Any]]:
    for path in sorted(DASHBOARDS.glob("*.json")):
        yield path, json.loads(path.read_text())


def panel_queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query, rows' nested panels included."""
    for panel in doc.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner.get("title", "?"), target.get("expr", "")


def rules() -> list[dict[str, Any]]:
    import yaml

    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_problems(path: Path, doc: Any) -> list[str]:
    problems: list[str] = []
    if not isinstance(doc, dict):
        return [f"{path.name}: not a JSON object"]
    for key in ("uid", "title", "panels", "templating"):
        if key not in doc:
            problems.append(f"{path.name}: no {key}")
    variables = {v.get("name"): v for v in doc.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if (ds.get("type"), ds.get("query")) != ("datasource", "prometheus"):
        problems.append(f"{path.name}: no Prometheus datasource variable named 'datasource'")
    for panel in doc.get("panels", []):
        title = panel.get("title", "?")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{path.name}: panel {title!r} is not on ${{datasource}}")
        if not panel.get("targets"):
            problems.append(f"{path.name}: panel {title!r} has no query")
        for target in panel.get("targets", []):
            if not target.get("expr"):
                problems.append(f"{path.name}: panel {title!r} has a query without expr")
            if target.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{path.name}: a query of panel {title!r} is not on ${{datasource}}")
    return problems


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", doc.read_text(), flags=re.MULTILINE)}


def rule_problems(rule: dict[str, Any]) -> list[str]:
    name = rule.get("alert") or rule.get("record") or "?"
    problems = []
    if "alert" in rule:
        if not rule.get("labels", {}).get("severity"):
            problems.append(f"rule {name}: no labels.severity")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                problems.append(f"rule {name}: no annotations.{key}")
        url = annotations.get("runbook_url", "")
        file, _, anchor = url.partition("#")
        doc = ROOT / file
        if not (file.startswith("docs/") and file.endswith(".md") and anchor):
            problems.append(f"rule {name}: runbook_url {url!r} is not docs/<file>.md#<anchor>")
        elif not doc.is_file():
            problems.append(f"rule {name}: runbook_url {url!r}: no such file")
        elif anchor not in anchors(doc):
            problems.append(f"rule {name}: runbook_url {url!r}: no heading with that anchor")
    return problems


def named_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is named (rules and panels)."""
    named: dict[str, set[str]] = {}
    for rule in rules():
        for metric in promql_metrics(rule["expr"]):
            named.setdefault(metric, set()).add(f"rule {rule.get('alert') or rule.get('record')}")
    for path, doc in dashboards():
        for title, expr in panel_queries(doc):
            for metric in promql_metrics(expr):
                named.setdefault(metric, set()).add(f"{path.name}: {title}")
    return named


def all_problems() -> list[str]:
    problems: list[str] = []
    found = list(dashboards())
    if {p.stem for p, _ in found} < {"fleet-overview", "orders", "ingress", "dead-letters"}:
        problems.append("dashboards: expected fleet-overview, orders, ingress and dead-letters")
    for path, doc in found:
        problems += dashboard_problems(path, doc)
    for rule in rules():
        problems += rule_problems(rule)
    catalog = read_catalog()
    for metric, where in sorted(named_metrics().items()):
        if metric not in catalog:
            problems.append(f"{metric}: not in the metric catalog (metrics.txt), named by {', '.join(sorted(where))}")
    return problems


def panel_rules() -> str:
    """Every panel query as a recording rule (Grafana variables replaced), for `promtool check rules`."""
    import yaml

    group_rules = []
    for path, doc in dashboards():
        for i, (title, expr) in enumerate(panel_queries(doc)):
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            group_rules.append({"record": f"panel:{path.stem.replace('-', '_')}:{i}", "expr": expr})
            del title
    return yaml.safe_dump({"groups": [{"name": "dashboard-panels", "rules": group_rules}]}, sort_keys=False)


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "panel-rules":
        Path(rest[0]).write_text(panel_rules())
        return 0
    if command != "all":
        print(f"unknown check {command}", file=sys.stderr)
        return 2
    problems = all_problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

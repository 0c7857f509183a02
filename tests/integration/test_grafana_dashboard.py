"""The Grafana dashboard in ``deploy/grafana`` charts only what a node's ``/metrics`` exports.

Every PromQL expression of the dashboard (panel targets, the panels of collapsed rows, template variables,
annotations) is read, the metric names are picked out of it, and each is looked up in the ``/metrics`` of a real node
that has just provisioned a few devices. A metric renamed in the code, or a name mistyped in the dashboard, would
otherwise leave an operator with an empty panel in the middle of a roll-out.
"""

from __future__ import annotations

import copy
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pnp_integrated.devsim.node import RunningNode
from pnp_integrated.devsim.pnp import SimulatedDevice, simulate
from tests.support import create_default_profile

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "pnp-gateway.json"
CORE_PANEL_TYPES = frozenset({"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline", "heatmap",
                              "text", "status-history", "barchart", "piechart", "histogram"})

# ---- picking metric names out of PromQL ------------------------------------------------------------------------------
PROMQL_AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                                 "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
PROMQL_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time", "ceil",
    "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing", "end", "exp", "floor",
    "histogram_avg", "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time", "max_over_time", "min_over_time",
    "minute", "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt",
    "start", "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector",
    "year",
})
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})

STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
COMMENT = re.compile(r"#[^\n]*")
MATCHERS = re.compile(r"\{[^}]*\}")  # label matchers: no braces inside once strings are gone
RANGE = re.compile(r"\[[^\]]*\]")  # range and subquery durations, Grafana's [$__rate_interval]
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE)
GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")
TOKEN = re.compile(r"(?P<number>(?:\d|\.\d)[\w.]*)|(?P<word>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.*),\s*[A-Za-z_]\w*\s*\)\s*$", re.DOTALL)
QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.DOTALL)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: not its functions, keywords, labels, strings, numbers or durations.

    Raises ``ValueError`` for a call of something PromQL does not know, as a metric name cannot be called.
    """
    text = STRING.sub(" ", expr)
    text = COMMENT.sub(" ", text)
    text = MATCHERS.sub(" ", text)
    text = RANGE.sub(" ", text)
    text = LABEL_LIST.sub(" ", text)
    text = GRAFANA_VARIABLE.sub(" ", text)
    names = set()
    for token in TOKEN.finditer(text):
        word = token.group("word")
        if word is None:  # 0.95, 3600, 1e3, and durations after offset (5m)
            continue
        if token.group("call"):
            if word not in PROMQL_FUNCTIONS and word not in PROMQL_AGGREGATIONS:
                raise ValueError(f"{word}() is no PromQL function, in {expr!r}")
            continue
        if word.lower() in PROMQL_KEYWORDS or word in PROMQL_AGGREGATIONS:
            continue
        names.add(word)
    return names


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row keeps its panels inside it


def dashboard_expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` for every query of the dashboard: panel targets, variables and annotations."""
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        if match := LABEL_VALUES.match(query):
            yield f"variable {variable['name']!r}", match["selector"]
        elif match := QUERY_RESULT.match(query):
            yield f"variable {variable['name']!r}", match["expr"]
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            yield f"annotation {annotation.get('name')!r}", annotation["expr"]


def exported_series(metrics_text: str) -> set[str]:
    """The series names a scrape of ``metrics_text`` gives Prometheus.

    A histogram family is queried as its ``_bucket``, ``_sum`` and ``_count`` series (a summary as ``_sum`` and
    ``_count``), a counter as ``_total``: the parser hands each family's samples under those names.
    """
    return {sample.name for family in text_string_to_metric_families(metrics_text) for sample in family.samples}


def missing_metrics(dashboard: dict[str, Any], exported: set[str]) -> dict[str, list[str]]:
    """``{metric: [where it is used]}`` for every metric the dashboard names that ``exported`` lacks."""
    missing: dict[str, list[str]] = {}
    for where, expr in dashboard_expressions(dashboard):
        for name in sorted(metric_names(expr) - exported):
            missing.setdefault(name, []).append(where)
    return missing


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


# ---- a node that has done a day 0 --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_text(node_launcher: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The /metrics of a node after three Open PnP devices were provisioned and one request was refused."""
    # Configuration URL tokens on, so a bare config.asp request is refused and pnp_refused_total has a series.
    node: RunningNode = node_launcher(tmp_path_factory.mktemp("grafana") / "node", config_url_tokens=True)
    create_default_profile(node)
    reports = simulate([SimulatedDevice(serial=f"GRF{i:04d}") for i in range(3)], node.url(""), time_scale=0.01)
    assert all(r.ok for r in reports), reports
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(node.url("/cns/config.asp?DeviceID=GRF0000"), timeout=10)
    assert refused.value.code == 403
    with urllib.request.urlopen(node.url("/metrics"), timeout=10) as resp:
        return resp.read().decode()


def test_every_metric_the_dashboard_charts_is_exported_by_a_node(metrics_text: str) -> None:
    dashboard = load_dashboard()
    exported = exported_series(metrics_text)
    named = set().union(*(metric_names(expr) for _, expr in dashboard_expressions(dashboard)))
    # What the operator of a roll-out asked for is there: states, completions, sessions, outbox, HA, latency,
    # refusals, disk.
    assert {"pnp_devices", "pnp_jobs", "pnp_sessions", "pnp_outbox_depth", "pnp_ha_state", "pnp_ha_transitions_total",
            "pnp_http_request_duration_seconds_bucket", "pnp_http_request_duration_seconds_count",
            "pnp_refused_total", "pnp_disk_free_bytes", "pnp_service_up"} <= named
    missing = missing_metrics(dashboard, exported)
    assert not missing, (f"the dashboard names metrics the node does not export: {missing}; "
                         f"it exports {sorted(n for n in exported if n.startswith('pnp_'))}")


def test_a_dashboard_naming_a_metric_the_node_lacks_is_caught(metrics_text: str) -> None:
    dashboard = copy.deepcopy(load_dashboard())
    collapsed = next(p for p in dashboard["panels"] if p["type"] == "row" and p.get("collapsed"))
    collapsed["panels"].append({"type": "timeseries", "title": "Finished jobs", "targets": [
        {"refId": "A", "expr": 'sum by (state) (rate(pnp_jobs_finished_total{state="failed"}[5m]))'}]})
    assert missing_metrics(dashboard, exported_series(metrics_text)) == {
        "pnp_jobs_finished_total": ["panel 'Finished jobs'"]}


@pytest.mark.parametrize(("expr", "names"), [
    ('sum by (state) (rate(pnp_refused_total{reason=~"disk-low|status-busy"}[$__rate_interval]))',
     {"pnp_refused_total"}),
    ("histogram_quantile(0.95, sum by (endpoint, le) (rate(http_seconds_bucket{job=~\"$job\"}[5m])))",
     {"http_seconds_bucket"}),
    ('a_total / ignoring(state) group_left(port) b{state="x"} or vector(0)', {"a_total", "b"}),
    ('max(pnp_ha_state{state="ACTIVE"} offset 1h) * 2 + count without (instance) (up == bool 1)',
     {"pnp_ha_state", "up"}),
    ("predict_linear(free_bytes[6h], 24 * 3600) > 1e9 and on(instance) avg_over_time(x:y:z[10m:1m])",
     {"free_bytes", "x:y:z"}),
    ('label_replace(m, "dst", "$1", "src", "(.*)") # sum(not_a_metric)', {"m"}),
    ("sum(rate(requests_total[${__range}])) by (route)", {"requests_total"}),
])
def test_metric_names_are_picked_out_of_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_a_call_of_something_promql_lacks_is_reported() -> None:
    with pytest.raises(ValueError, match="pnp_jobs"):
        metric_names("pnp_jobs(5m)")


def test_the_dashboard_imports_anywhere() -> None:
    """Core panels only, every query on the ``${DS_PROMETHEUS}`` variable, unique panel ids (Grafana needs them)."""
    dashboard = load_dashboard()
    panels = list(_panels(dashboard["panels"]))
    assert {p["type"] for p in panels} <= CORE_PANEL_TYPES
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == "${DS_PROMETHEUS}", panel["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41

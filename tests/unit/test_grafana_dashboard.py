"""deploy/grafana/triton-warmup-dashboard.json: every query names only
metrics the helper publishes, and the three charts the docs promise are there."""

import json
import pathlib
import re

from triton_warmup.helper.metrics import COLD_REQUESTS, FAMILIES, LAST_WARMUP_SECONDS, REQUESTS_SEEN, WARMED_SHAPES

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "triton-warmup-dashboard.json"
# A metric name in PromQL: what comes before a label set, a range or a space.
METRIC = re.compile(r"\b(triton_warmup_[a-z_]+)\b")


def queries(panel):
    return [target["expr"] for target in panel["targets"]]


def test_every_query_names_only_metrics_the_helper_publishes():
    dashboard = json.loads(DASHBOARD.read_text())
    named = set()
    for panel in dashboard["panels"]:
        exprs = queries(panel)
        assert exprs, panel["title"]
        for expr in exprs:
            found = set(METRIC.findall(expr))
            assert found, f"{panel['title']}: {expr} names no metric of the helper"
            assert found <= set(FAMILIES), found - set(FAMILIES)
            named |= found
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert set(METRIC.findall(variable["definition"])) <= set(FAMILIES)
    assert {COLD_REQUESTS, REQUESTS_SEEN, WARMED_SHAPES, LAST_WARMUP_SECONDS} <= named


def test_the_three_charts_cold_share_warmed_shapes_and_warmup_duration():
    panels = {panel["title"]: panel for panel in json.loads(DASHBOARD.read_text())["panels"]}
    (share,) = [panel for title, panel in panels.items() if "Cold share" in title]
    (expr,) = queries(share)
    numerator, denominator = expr.split(" / ")
    assert COLD_REQUESTS in numerator and REQUESTS_SEEN in denominator
    assert share["fieldConfig"]["defaults"]["unit"] == "percentunit"
    (shapes,) = [panel for title, panel in panels.items() if "Warmed shapes" in title]
    assert WARMED_SHAPES in queries(shapes)[0]
    (duration,) = [panel for title, panel in panels.items() if "warmup duration" in title]
    assert LAST_WARMUP_SECONDS in queries(duration)[0] and duration["fieldConfig"]["defaults"]["unit"] == "s"

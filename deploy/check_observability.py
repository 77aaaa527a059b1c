"""Checks the Grafana dashboard and the Prometheus alert rules against what
live brokers export: every metric they name must appear in the scraped
/metrics of a running cluster (Prometheus' own `up` excepted), and the
dashboard JSON and rules YAML must parse.

    python3 deploy/check_observability.py METRICS_TEXT_FILE...
"""
import json
import re
import sys

import yaml

ROOT = __file__.rsplit("/", 2)[0]
DASHBOARD = f"{ROOT}/deploy/grafana/ferrolog-dashboard.json"
RULES = f"{ROOT}/deploy/prometheus/ferrolog-alerts.yaml"
BUILTIN = {"up"}
NAME = re.compile(r"\b(ferrolog_[a-z0-9_]+|up)\b")


def exported(paths):
    names = set()
    for p in paths:
        for line in open(p):
            if line.startswith("#") or not line.strip():
                continue
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def main() -> int:
    have = exported(sys.argv[1:]) | BUILTIN
    errors = []
    dash = json.load(open(DASHBOARD))
    exprs = [(f"dashboard panel {p['title']!r}", t["expr"]) for p in dash["panels"] for t in p["targets"]]
    if not exprs:
        errors.append("the dashboard has no queries")
    rules = yaml.safe_load(open(RULES))
    for g in rules["groups"]:
        for r in g["rules"]:
            if not {"alert", "expr"} <= r.keys():
                errors.append(f"rule without alert/expr: {r}")
                continue
            exprs.append((f"alert {r['alert']}", str(r["expr"])))
    for where, expr in exprs:
        names = NAME.findall(expr)
        if not names:
            errors.append(f"{where}: names no metric: {expr}")
        for n in names:
            if n not in have:
                errors.append(f"{where}: {n} is not exported by the brokers")
    for e in errors:
        print("observability:", e, file=sys.stderr)
    print(f"observability: {len(exprs)} queries checked against {len(have)} exported series names"
          + ("" if not errors else f", {len(errors)} problems"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""Run a core job without Django or Celery:

    python -m workers.core diagnostics --set steps=5 --set matmul_size=256
    python -m workers.core probe spec.yaml
    python -m workers.core evaluate spec.yaml
"""
from __future__ import annotations

import argparse
import json
import sys

from workers.core.kinds import CORE_JOBS, run_core_job
from workers.core.reporting import ConsoleReporter
from workers.core.specs import SpecError


def _parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(CORE_JOBS))
    parser.add_argument("spec", nargs="?", help="YAML or JSON file with the spec fields")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="override one field")
    args = parser.parse_args(argv)

    params: dict = {}
    if args.spec:
        import yaml

        with open(args.spec, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh) or {}
        if not isinstance(loaded, dict):
            parser.error(f"{args.spec}: the spec must be a mapping of field: value")
        params.update(loaded)
    for item in args.set:
        field, sep, raw = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected FIELD=VALUE")
        params[field] = _parse_value(raw)
    try:
        result = run_core_job(args.kind, params, ConsoleReporter())
    except SpecError as exc:
        print(f"error: {args.spec or '--set'}: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

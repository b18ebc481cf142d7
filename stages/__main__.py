"""CLI: `python -m stages run <stage>` (what dvc.yaml and Dagster both run), `list`, `check`,
`profile <name>` (merge profiles/<name>.yaml into params.yaml)."""

from __future__ import annotations

import argparse
import atexit
import os
import sys

from stages import params, profiles
from stages.registry import ROOT, STAGES
from stages.runner import StageInputError, run_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one stage")
    run.add_argument("stage", choices=[s.name for s in STAGES])
    sub.add_parser("list", help="list the stages in lineage order")
    sub.add_parser("check", help="validate params.yaml")
    prof = sub.add_parser("profile", help="merge profiles/<name>.yaml into params.yaml")
    prof.add_argument("name", choices=profiles.available(ROOT))
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_stage(args.stage, ROOT)
        elif args.command == "profile":
            profiles.apply(ROOT, args.name)
            print(f"params.yaml: profile {args.name} applied")
        elif args.command == "check":
            params.load(ROOT)
            print("params.yaml: ok")
        else:
            for s in STAGES:
                print(f"{s.name:10s} {s.description}")
    except (params.ParamsError, StageInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    # Exit without the interpreter's module-by-module teardown: 1-2 s of every stage run once
    # torch's compiler is loaded. Exit handlers (logging, pools, locks) still run; the outputs are
    # already published. A failing stage raises above and exits the normal way.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

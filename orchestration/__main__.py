"""CLI: `python -m orchestration gen-dvc|check-dvc|why <stage>|sync|run-on-worker <stage>`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestration import dvc_yaml, ledger
from stages.registry import STAGES, producer_of, stage


def _why(root: Path, names: list[str]) -> int:
    lock = ledger.read_lock(root)
    stale = 0
    for name in names:
        fp = ledger.fingerprint(stage(name), root, lock)
        if fp.current:
            print(f"{name}: up to date (dvc.lock matches code, params and inputs)")
        else:
            stale += 1
            print(f"{name}: stale")
            for reason in fp.reasons:
                print(f"  - {reason}")
    return 1 if stale else 0


def _run_on_worker(root: Path, name: str) -> int:
    """On a machine that has only the repository: pull the stage's declared inputs from the DVC
    remote, run the stage alone, push its outputs. The launching machine then takes the new
    dvc.lock (git) and `dvc pull`s; the stage is up to date there in DVC and Dagster."""
    from orchestration.dvc_cli import dvc

    s = stage(name)
    inputs = [d for d in s.deps if producer_of(d) is not None]
    if inputs:
        dvc(root, "pull", *inputs)
        print(f"pulled {', '.join(inputs)}")
    dvc(root, "repro", "--single-item", name)
    dvc(root, "push", name)
    print(f"ran {name} and pushed {', '.join(s.all_outs)}; commit dvc.lock for the launcher")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="project root (default: cwd)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("gen-dvc", help="write dvc.yaml from the stage registry")
    sub.add_parser("check-dvc", help="fail if dvc.yaml differs from the stage registry")
    why = sub.add_parser("why", help="explain why stages are stale against dvc.lock")
    why.add_argument("stages", nargs="*", help="default: all stages")
    sub.add_parser("sync", help="record dvc.lock results made outside Dagster in Dagster")
    worker = sub.add_parser("run-on-worker", help="pull a stage's inputs from the DVC remote, "
                            "run it alone, push its outputs")
    worker.add_argument("stage")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.command == "gen-dvc":
        print("dvc.yaml updated" if dvc_yaml.write(root) else "dvc.yaml already up to date")
    elif args.command == "check-dvc":
        msg = dvc_yaml.drift(root)
        if msg:
            print(msg, file=sys.stderr)
            return 1
        print("dvc.yaml matches the registry")
    elif args.command == "why":
        return _why(root, args.stages or [s.name for s in STAGES])
    elif args.command == "sync":
        from orchestration.sync import sync_to_instance

        for line in sync_to_instance(root):
            print(line)
    elif args.command == "run-on-worker":
        return _run_on_worker(root, args.stage)
    return 0


if __name__ == "__main__":
    sys.exit(main())

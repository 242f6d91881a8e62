"""`python -m reproduce [--preset full|sweep|fast] [--task MODULE:FUNCTION] [--jobs N] [--out DIR] [--report-only]`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from reproduce.config import PRESETS
from reproduce.pipeline import add_training_stats, run_pipeline
from reproduce.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--task", default=None,
                        help="gold world as module:function (default: the preset's, training.sim.task:facts_task)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="independent training runs (sweep points, reward-model checks, seeds) side by side "
                             "in worker processes, each single-threaded (default: one per CPU)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (default var/reproduce/PRESET)")
    parser.add_argument("--docs", type=Path, default=Path("docs"), help="where reproduction.md and plots go")
    parser.add_argument("--bench", type=Path, default=Path("var/bench/reproduce.json"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from results.json")
    parser.add_argument("--subprocess", action="store_true",
                        help="run each training-CLI call as `python -m training` in a new process (default: call "
                             "its main() in this process, which saves a torch import per run)")
    args = parser.parse_args(argv)
    out = args.out or Path("var/reproduce") / args.preset
    if args.report_only:
        results = json.loads((out / "results.json").read_text())
        for seed, seed_result in results["seeds"].items():  # runs from before these statistics existed
            if "ppo_rollouts" not in seed_result or "figa_train" not in seed_result:
                add_training_stats(seed_result, out / f"seed-{seed}")
    else:
        preset = PRESETS[args.preset]
        if args.task:
            preset = replace(preset, task=args.task)
        results = run_pipeline(preset, out, in_process=not args.subprocess, jobs=args.jobs)
    summary = write_report(results, args.docs, args.bench)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

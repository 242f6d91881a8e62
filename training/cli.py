"""`python -m training KIND [--config run.yaml] [--set key=value ...] [--KEY VALUE ...]`.

Any `--key value` after the kind is an override like `--set key=value` (so `--reward token` works);
`schema [KIND]` prints the kind's config fields (every kind's without KIND) as JSON for form generation;
`prepare-model --out DIR` converts the default model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from training.config import KINDS, ConfigError, config_schema, load_config, parse_overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=[*KINDS, "schema", "prepare-model"])
    parser.add_argument("--config", help="YAML file of config keys")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="prepare-model: destination folder")
    parser.add_argument("--force", action="store_true", help="prepare-model: convert again")
    return parser


def _extra_overrides(extra: list[str]) -> list[str]:
    """`--key value` / `--key=value` pairs left over by argparse, as key=value strings."""
    out, i = [], 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r}")
        key = token[2:]
        if "=" in key:
            out.append(key)
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out.append(f"{key}={extra[i + 1]}")
            i += 2
        else:
            out.append(f"{key}=true")  # a bare flag switches a boolean on
            i += 1
    return out


def run_kind(kind: str, cfg) -> dict:
    if kind == "generate":
        from training.generate import run_generate

        return run_generate(cfg)
    if kind == "score":
        from training.evaluate import run_score

        return run_score(cfg)
    if kind == "evaluate":
        from training.evaluate import run_evaluate

        return run_evaluate(cfg)
    if kind == "ppo":
        from training.ppo import PPOTrainer

        return PPOTrainer(cfg).train()
    from training.trainers import TRAINERS

    return TRAINERS[kind](cfg).train()


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.kind == "prepare-model":
            if not args.out:
                raise ConfigError("prepare-model needs --out DIR")
            from training.prepare import prepare_default_model

            print(prepare_default_model(Path(args.out), force=args.force))
            return 0
        if args.kind == "schema":
            # Without a kind: every kind, {kind: fields} (the dashboard builds its forms from this).
            schema = config_schema(extra[0]) if extra else {kind: config_schema(kind) for kind in KINDS}
            print(json.dumps(schema, indent=2))
            return 0
        overrides = parse_overrides(args.overrides + _extra_overrides(extra))
        cfg = load_config(args.kind, args.config, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = run_kind(args.kind, cfg)
    print(json.dumps(result, indent=2))
    return 0

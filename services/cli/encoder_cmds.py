"""`persona train | encode | eval | model ...`: the encoder's commands.

torch, torchrec and sklearn are imported inside the command functions so `persona --help`
stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from services.config import add_models_arg

log = logging.getLogger("persona.encoder")


def _quiet_runtime() -> None:
    """Before torch loads: no OpenMP spinning on a shared machine; hide torchrec's chatter."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)


def _eval_cfg(args: argparse.Namespace) -> Any:
    from encoder.evaluate import EvalConfig

    users = getattr(args, "eval_users", None)
    return EvalConfig(users=users) if users else EvalConfig()


def cmd_train(args: argparse.Namespace) -> int:
    _quiet_runtime()
    from dataclasses import replace

    from encoder.io import read_events
    from encoder.release import train_version
    from encoder.synthetic import SyntheticConfig, generate
    from encoder.train import TrainConfig, TrainSpec

    spec = TrainSpec()
    tc = replace(spec.train, seed=args.seed, progress=not args.quiet)
    if args.epochs is not None:
        tc = replace(tc, epochs=args.epochs)
    spec = replace(spec, train=tc)
    extra: dict[str, Any] = {}
    if args.events:
        events = read_events(args.events)
        end = None
        extra["source"] = str(args.events)
    else:
        cfg = SyntheticConfig(users=args.users, seed=args.seed)
        ds = generate(cfg)
        events, end = ds.events, cfg.end_ms
        extra["source"] = f"synthetic(users={cfg.users}, seed={cfg.seed})"
    if not events:
        log.error("no events to train on")
        return 2
    assert isinstance(spec.train, TrainConfig)
    version, metrics = train_version(events, spec, args.models, end, extra_metrics=extra)
    print(
        f"trained on {metrics['users']} users / {metrics['events']} events in "
        f"{metrics['train_seconds']} s; loss {metrics['loss_first']} -> {metrics['loss_last']}",
        file=sys.stderr,
    )
    print(version)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    _quiet_runtime()
    import time

    from encoder.api import Encoder
    from encoder.io import read_events, write_vectors
    from encoder.train import group_by_user

    enc = Encoder.load(args.models, args.model, args.device)
    users = group_by_user(read_events(args.events))
    if not users:
        log.error("no events in %s", args.events)
        return 2
    now = args.now_ms or max(w[-1].ts_ms for w in users.values())
    ids = list(users)
    windows = [users[u][-enc.max_events :] for u in ids]
    t0 = time.perf_counter()
    vecs = enc.encode(windows, now)
    dt = time.perf_counter() - t0
    write_vectors(args.out, ids, vecs, enc.version, [len(w) for w in windows])
    print(
        f"encoded {len(ids)} users with {enc.version} in {dt:.2f} s -> {args.out}", file=sys.stderr
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    _quiet_runtime()
    from encoder import registry
    from encoder.evaluate import format_table, meets_targets
    from encoder.release import eval_version

    version = registry.resolve(args.models, args.model)
    report = eval_version(args.models, version, _eval_cfg(args))
    print(f"model {version}, held-out users {report['heldout']['users']}")
    print(format_table(report))
    ok, problems = meets_targets(report)
    print("targets: met" if ok else "targets: NOT met: " + "; ".join(problems))
    if args.json:
        keep = {k: report[k] for k in ("embedding", "aggregate_baseline", "random")}
        Path(args.json).write_text(json.dumps(keep, indent=2))
    return 0 if ok or not args.check else 1


def cmd_model(args: argparse.Namespace) -> int:
    _quiet_runtime()
    from encoder import registry

    models: Path = args.models
    if args.action == "list":
        active = registry.active_version(models)
        for v in registry.versions(models):
            ev = registry.read_json(models, v, "eval.json").get("embedding", {})
            mark = "*" if v == active else " "
            summary = " ".join(f"{k}={ev[k]}" for k in sorted(ev))
            print(f"{mark} {v} {summary}".rstrip())
        return 0
    if args.action == "rollback":
        frm, to = registry.rollback(models)
        print(f"rolled back {frm} -> {to}")
        return 0
    version = registry.resolve(models, args.version)
    if args.action == "show":
        out = {
            "version": version,
            "active": version == registry.active_version(models),
            "tokenizer": registry.read_json(models, version, "tokenizer.json"),
            "model": registry.read_json(models, version, "model.json"),
            "metrics": registry.read_json(models, version, "metrics.json"),
            "eval": {
                k: v
                for k, v in registry.read_json(models, version, "eval.json").items()
                if k in ("embedding", "aggregate_baseline", "random")
            },
            "tampered_files": registry.verify_manifest(models, version),
        }
        print(json.dumps(out, indent=2))
        return 0
    from encoder.release import parity_check, promote, validate

    if args.action == "validate":
        par = parity_check(models, version)
        val = validate(models, version, _eval_cfg(args), args.tolerance)
        print(json.dumps({"parity": par.__dict__, "validate": val}, indent=2, default=str))
        return 0 if par.ok and val["ok"] else 1
    if args.action == "promote":
        rep = promote(models, version, _eval_cfg(args), args.tolerance, args.skip_validate)
        print(json.dumps(rep, indent=2, default=str), file=sys.stderr)
        if not rep["ok"]:
            print(f"refused: {rep['reason']}")
            return 1
        print(f"active: {version} (was {rep.get('previous')})")
        return 0
    raise AssertionError(args.action)


def _guarded(fn: Any) -> Any:
    """Registry errors (no active model, unknown version) end the command with exit code 1."""

    def run(args: argparse.Namespace) -> int:
        from encoder.registry import RegistryError

        try:
            return int(fn(args))
        except RegistryError as exc:
            log.error("%s", exc)
            return 1

    run.__name__ = fn.__name__
    return run


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train an encoder version into the registry")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="train on the synthetic set")
    src.add_argument("--events", type=Path, help="JSON lines or Parquet of events")
    p.add_argument("--users", type=int, default=2000, help="synthetic users")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_models_arg(p)
    p.set_defaults(func=_guarded(cmd_train))

    p = subparsers.add_parser("encode", help="encode each user's window in an event file")
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="output Parquet")
    p.add_argument("--model", default=None, help="version (default: active)")
    p.add_argument("--now-ms", type=int, default=None, help="encode time (default: newest event)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when present)")
    add_models_arg(p)
    p.set_defaults(func=_guarded(cmd_encode))

    p = subparsers.add_parser("eval", help="quality on held-out synthetic users")
    p.add_argument("--model", default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--eval-users", type=int, default=None)
    p.add_argument("--check", action="store_true", help="exit 1 when the targets are not met")
    add_models_arg(p)
    p.set_defaults(func=_guarded(cmd_eval))

    p = subparsers.add_parser("model", help="list | show | validate | promote | rollback")
    p.add_argument("action", choices=["list", "show", "validate", "promote", "rollback"])
    p.add_argument("version", nargs="?", default=None)
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed metric drop")
    p.add_argument("--eval-users", type=int, default=None)
    p.add_argument("--skip-validate", action="store_true", help="promote on parity alone")
    add_models_arg(p)
    p.set_defaults(func=_guarded(cmd_model))

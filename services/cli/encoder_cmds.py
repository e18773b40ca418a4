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

from services.cli.train_spec import add_model_flags, train_spec
from services.config import add_models_arg

log = logging.getLogger("persona.encoder")


def quiet_runtime() -> None:
    """Before torch loads: no OpenMP spinning on a shared machine; hide torchrec's chatter."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)


def eval_config(args: argparse.Namespace) -> Any:
    from encoder.evaluate import EvalConfig

    users = getattr(args, "eval_users", None)
    return EvalConfig(users=users) if users else EvalConfig()


AUTO = -1


def split_arg(text: str) -> int | None:
    """``auto`` (`AUTO`: the default split), ``none`` (no held-out part) or a time in ms."""
    if text == "auto":
        return AUTO
    return None if text == "none" else int(text)


def cmd_train(args: argparse.Namespace) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from services.cli.train_launch import launch

        return launch(args)
    quiet_runtime()
    from encoder.parallel import Local, from_env

    where = from_env(args.device)
    try:
        if where is None and args.device is not None:
            import torch

            return _train(args, Local(torch.device(args.device)))
        return _train(args, where)
    finally:
        if where is not None:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(args: argparse.Namespace, where: Any) -> int:
    from encoder.evaluate_log import auto_split
    from encoder.io import EventFileError, events_source
    from encoder.release import file_sha256, train_version
    from encoder.synthetic import SYNTHETIC_FUTURE_MS, SyntheticConfig, generate

    spec = train_spec(args)
    extra: dict[str, Any] = {}
    split = None
    eval_split = None
    if args.events:
        source: Any = events_source(args.events)
        end = None
        extra.update(source=str(args.events), source_kind="events")
        split = split_arg(args.split_at)
        if split == AUTO:
            try:
                split = auto_split(source)
            except EventFileError:
                raise  # names the line; main() prints it
            except ValueError:
                log.error("no events in %s", args.events)
                return 2
        if split is not None:
            path = args.events.resolve()
            eval_split = {"events": str(path), "sha256": file_sha256(path), "split_at_ms": split}
            print(
                f"training on events before {split} (held out for evaluation: the rest)",
                file=sys.stderr,
            )
    else:
        # The world's events through its 14 days after end_ms (`future_events`): the data
        # ends where the outcomes of held-out users scored at end_ms are read, so the
        # calibration's fixed-time cuts include that moment (README, outcome propensities).
        # Both lists are in window order and every future event is after end_ms: the
        # concatenation is in window order already.
        cfg = SyntheticConfig(users=args.users, seed=args.seed)
        ds = generate(cfg)
        source = ds.events + ds.future_events
        end = cfg.end_ms + SYNTHETIC_FUTURE_MS
        extra.update(
            source=f"synthetic(users={cfg.users}, seed={cfg.seed}, through end + 14 d)",
            source_kind="synthetic",
        )
    try:
        version, metrics = train_version(
            source,
            spec,
            args.models,
            end,
            extra_metrics=extra,
            until_ms=split,
            eval_split=eval_split,
            parallel=where,
            checkpoint_dir=args.checkpoint_dir,
        )
    except ValueError as exc:  # no events, or a line that is not an event
        log.error("%s", exc)
        return 2
    if where is not None and where.rank != 0:
        return 0  # rank 0 wrote the version and reports it
    print(
        f"trained on {metrics['users']} users / {metrics['events']} events in "
        f"{metrics['train_seconds']} s; kept epoch {metrics['epoch_kept']} of "
        f"{metrics['epochs_run']} ({metrics['kept_because']}; {metrics['stopped']})",
        file=sys.stderr,
    )
    print(version)
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    quiet_runtime()
    import time

    import numpy as np

    from encoder.api import Encoder
    from encoder.eventlog import build_log
    from encoder.io import iter_events, write_vectors

    enc = Encoder.load(args.models, args.model, args.device, args.compile, args.bf16, args.streams)
    evlog = build_log(iter_events(args.events), enc.tokenizer)
    if not evlog.n_events:
        log.error("no events in %s", args.events)
        return 2
    now = args.now_ms or evlog.end_ms
    users = np.arange(len(evlog.users))
    nows = np.full(len(users), now, dtype=np.int64)
    lo, hi = evlog.window_bounds(users, nows, enc.max_events)
    t0 = time.perf_counter()
    vecs = enc.encode_rows(evlog, lo, hi, nows)
    dt = time.perf_counter() - t0
    enc.close()
    write_vectors(args.out, evlog.users, vecs, enc.version, (hi - lo).tolist())
    print(
        f"encoded {len(users)} users with {enc.version} in {dt:.2f} s -> {args.out}",
        file=sys.stderr,
    )
    return 0


def _features(models: Path, version: str) -> list[str]:
    from encoder.tokenizer import TokenizerConfig

    text = (models / version / "tokenizer.json").read_text()
    try:
        return TokenizerConfig.from_json(text).features.summary()
    except ValueError as exc:
        return [str(exc)]


def cmd_model(args: argparse.Namespace) -> int:
    quiet_runtime()
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
            "features": _features(models, version),
            "model": registry.read_json(models, version, "model.json"),
            "metrics": registry.read_json(models, version, "metrics.json"),
            "eval": {
                k: v
                for k, v in registry.read_json(models, version, "eval.json").items()
                if k in ("embedding", "aggregate_baseline", "random")
            },
            "tampered_files": registry.verify_manifest(models, version),
        }
        heads = registry.read_json(models, version, "outcomes.json")
        if heads:  # the calibrated outcome heads: what they predict, not their weights
            out["propensities"] = {k: heads[k] for k in ("names", "horizons_ms", "report")}
        print(json.dumps(out, indent=2))
        return 0
    from encoder.release import parity_check, promote, validate

    if args.action == "validate":
        par = parity_check(models, version)
        val = validate(models, version, eval_config(args), args.tolerance)
        print(json.dumps({"parity": par.__dict__, "validate": val}, indent=2, default=str))
        return 0 if par.ok and val["ok"] else 1
    if args.action == "promote":
        rep = promote(models, version, eval_config(args), args.tolerance, args.skip_validate)
        print(json.dumps(rep, indent=2, default=str), file=sys.stderr)
        if not rep["ok"]:
            print(f"refused: {rep['reason']}", file=sys.stderr)
            return 1
        print(f"active: {version} (was {rep.get('previous')})")
        return 0
    raise AssertionError(args.action)


def guarded(fn: Any) -> Any:
    """Registry errors (no active model, unknown version), a version's files missing or
    unreadable (OSError), or not what they should hold (ValueError: bad JSON, a bad
    array) end the command with exit code 1 and one line, not a traceback."""

    def run(args: argparse.Namespace) -> int:
        from encoder.io import EventFileError
        from encoder.registry import RegistryError

        try:
            return int(fn(args))
        except EventFileError:
            raise  # bad input, not a registry problem: main() prints it, exit 2
        except (RegistryError, OSError, ValueError) as exc:
            why = exc if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
            log.error("%s", why)
            return 1

    run.__name__ = fn.__name__
    return run


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train an encoder version into the registry")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="train on the synthetic set")
    src.add_argument("--events", type=Path, help="JSON lines or Parquet of events (streamed)")
    p.add_argument(
        "--split-at",
        default="auto",
        help="with --events: train on events before this time (ms) and keep the rest for "
        "`persona eval` and the promotion gate; 'auto' (default): two weeks before the end "
        "(a quarter of the span for logs shorter than 8 weeks); 'none': train on everything",
    )
    p.add_argument(
        "--features",
        type=Path,
        default=None,
        help="JSON file that pins, excludes or sizes properties (encoder/features.py)",
    )
    add_model_flags(p)
    p.add_argument("--users", type=int, default=2000, help="synthetic users (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="most epochs (default 8; early stopping on a validation split)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--nproc",
        type=int,
        default=1,
        help="train in N processes under torchrun: tables sharded, dense part data-parallel "
        "(one per GPU with --device cuda; gloo CPU processes otherwise)",
    )
    p.add_argument("--device", default=None, help="cpu / cuda (default: cpu for one process)")
    p.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="save the run after every epoch here; rerunning the same command resumes",
    )
    add_models_arg(p)
    p.set_defaults(func=guarded(cmd_train))

    p = subparsers.add_parser("encode", help="encode each user's window in an event file")
    p.add_argument("--events", type=Path, required=True, help="JSON lines or Parquet (streamed)")
    p.add_argument("--out", type=Path, required=True, help="output Parquet")
    p.add_argument("--model", default=None, help="version (default: active)")
    p.add_argument("--now-ms", type=int, default=None, help="encode time (default: newest event)")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when present)")
    p.add_argument("--compile", action="store_true", help="compile the encoder (CPU: ~1.4x the"
                   " encode rate after seconds of compiling; needs a C++ compiler)")  # fmt: skip
    p.add_argument("--bf16", action="store_true", help="bf16 on a CPU with native bf16 (1.4-2x"
                   " the encode rate, cosine 0.99999; else float32 with a warning)")  # fmt: skip
    p.add_argument("--streams", type=int, default=1, help="encode N passes at once on the CPU,"
                   " each on its own thread (one per core: 1.16-1.18x on 2 cores)")  # fmt: skip
    add_models_arg(p)
    p.set_defaults(func=guarded(cmd_encode))

    p = subparsers.add_parser("model", help="list | show | validate | promote | rollback")
    p.add_argument(
        "action",
        choices=["list", "show", "validate", "promote", "rollback"],
        help="list versions; show one (features, metrics); validate or promote one through "
        "the gate; roll back to the previously active one",
    )
    p.add_argument("version", nargs="?", default=None, help="version (default: the active one)")
    p.add_argument("--tolerance", type=float, default=0.02, help="allowed metric drop")
    p.add_argument(
        "--eval-users",
        type=int,
        default=None,
        help="held-out synthetic users for a synthetic model's gate (default 1000)",
    )
    p.add_argument("--skip-validate", action="store_true", help="promote on parity alone")
    add_models_arg(p)
    p.set_defaults(func=guarded(cmd_model))

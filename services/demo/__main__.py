"""`make demo`: train (or reuse) a model, then events -> windows -> vectors -> gRPC, on the
embedded stack (Tansu + 3-node Valkey cluster), and show what rankers and audience teams see.

Everything runs as it would in production, as `persona` child processes talking to the stack;
the demo only produces the synthetic events (it keeps their hidden truth to show beside the
results) and acts as the gRPC client. Nothing is left running at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
from persona_client import ClientConfig, PersonaClient

from encoder import registry
from encoder.io import write_events_jsonl
from encoder.synthetic import SyntheticConfig, generate
from services.config import KafkaConfig
from services.demo.plot import user_map
from services.demo.procs import background, child_env, run, step
from services.ingest.produce import produce_events
from services.stack import EmbeddedStack, StackConfig, free_ports

DAY_MS = 86_400_000


def _loadable(models: Path, version: str) -> bool:
    """Whether this code can read the version's tokenizer (older formats must be retrained)."""
    from encoder.tokenizer import TokenizerConfig

    try:
        TokenizerConfig.from_json((models / version / "tokenizer.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def _promote(version: str, active: str, env: dict[str, str]) -> str:
    """Put a retrained version through the promotion gate (`persona model promote`: parity,
    then no regression against the active one on held-out users); the version serving after."""
    try:
        run(["model", "promote", version], env)
    except RuntimeError as e:  # refused: the active version stays, as in production
        reason = [ln for ln in str(e).splitlines() if ln.startswith("refused: ")]
        if not reason:  # the command failed (not the gate's verdict): the demo stops here
            raise
        print(f"    the gate kept {active}: {reason[0]}")
        return active
    print(f"    promoted {version} (was {active})")
    return version


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=800)
    ap.add_argument("--events-per-user", type=float, default=80.0)
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--retrain", action="store_true", help="train even if a model is there")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    models = args.out / "models"
    args.out.mkdir(parents=True, exist_ok=True)
    # the embedded stack listens on loopback only: gRPC and every /metrics endpoint
    env = child_env(
        PERSONA_MODELS=str(models), PERSONA_SERVE_HOST="127.0.0.1", PERSONA_METRICS_HOST="127.0.0.1"
    )

    with step("model: train one on synthetic users (or reuse the demo's earlier one)"):
        version = None if args.retrain else registry.active_version(models)
        if version and not _loadable(models, version):
            print(f"    {version} was saved by an older Persona (fixed features): retraining")
            version = None
        if version:
            print(f"    reusing {version} from {models}")
        else:
            before = registry.active_version(models)
            version = run(["train", "--synthetic"], env, quiet=False).strip().splitlines()[-1]
            print(f"    trained {version}")
            if before is not None and before != version:  # --retrain: a version was active
                version = _promote(version, before, env)
    with step("quality on held-out synthetic users (embedding vs hand-made aggregates)"):
        print(run(["eval", "--reliability", str(args.out / "reliability.png")], env).rstrip())

    now = int(time.time() * 1000)
    cfg = SyntheticConfig(
        users=args.users,
        events_per_user=args.events_per_user,
        seed=7,
        end_ms=now,
        first_user=500_000,
    )
    ds = generate(cfg)
    print(
        f"\n    {len(ds.events):,} synthetic events from {len(ds.truth)} users "
        f"(hidden segments and lifecycle states kept aside for the display)"
    )

    with step("what moved a user: persona explain on one whose hidden lifecycle ended in churn"):
        events, png = args.out / "events.jsonl", args.out / "explain.png"
        write_events_jsonl(events, ds.events)
        windows = ds.windows()
        churned = [u for u in sorted(ds.truth) if ds.truth[u].lifecycle == "churned"]
        who = max(churned or sorted(ds.truth), key=lambda u: len(windows[u]))
        argv = ["explain", who, "--events", str(events), "--outcome", "(any)", "--top", "3"]
        print(run([*argv, "--neighbours", "10", "--png", str(png)], env).rstrip())
        print(f"    wrote {png}")

    with step("starting the embedded stack (Tansu broker, 3-node Valkey cluster)"):
        stack = EmbeddedStack(StackConfig(cluster=True))
        stack.start()
    try:
        a = stack.addresses
        print("    " + a.to_json())
        conn = ["--bootstrap", a.bootstrap, "--redis", a.redis]
        kcfg = KafkaConfig(bootstrap=a.bootstrap, topic=a.topic, dlq_topic=a.dlq_topic)
        ingest_port, refresh_port, serve_port, serve_metrics = free_ports(4)
        cutoffs = [now - 10 * DAY_MS, now - 3 * DAY_MS, now + 1]
        sent = 0
        for wave, cut in enumerate(cutoffs, 1):
            batch = [e for e in ds.events[sent:] if e.ts_ms < cut]
            sent += len(batch)
            with step(f"wave {wave}/3: produce {len(batch):,} events, ingest, refresh"):
                t0 = time.perf_counter()
                produce_events(kcfg, batch)
                t1 = time.perf_counter()
                ing = json.loads(
                    run(
                        ["ingest", "--until-idle", "--metrics-port", str(ingest_port), *conn], env
                    ).splitlines()[-1]
                )
                t2 = time.perf_counter()
                run(["refresh", "--until-idle", "--metrics-port", str(refresh_port), *conn], env)
                t3 = time.perf_counter()
                print(
                    f"    produce {t1 - t0:.1f} s | ingest {t2 - t1:.1f} s "
                    f"({ing['applied']:,} applied, {ing['duplicate']} duplicates) | "
                    f"refresh {t3 - t2:.1f} s"
                )
        with (
            step("serving: persona serve (gRPC), index built from the update log"),
            background(
                ["serve", "--port", str(serve_port), "--metrics-port", str(serve_metrics), *conn],
                env,
                args.out / "serve.log",
            ),
        ):
            with PersonaClient(ClientConfig(f"127.0.0.1:{serve_port}", timeout_s=10)) as client:
                client.wait_ready(90)
                show(client, ds, args.out)
            print(
                f"\n    metrics endpoints: serve http://127.0.0.1:{serve_metrics}/metrics "
                f"(live until now); ingest :{ingest_port} and refresh :{refresh_port} "
                f"were up while their steps ran"
            )
    finally:
        with step("stopping everything"):
            stack.stop()


def show(client: PersonaClient, ds: object, out: Path) -> None:
    from encoder.explain import human_ms

    truth = ds.truth  # type: ignore[attr-defined]
    uids = sorted(truth)
    info = client.model_info()
    print(
        f"\n    model {info.active_version}, dim {info.dim}, index {info.index.kind} "
        f"with {info.index.size} users"
    )

    print("\nWhat a ranker sees (GetEmbeddings):")
    emb = client.get_embeddings(uids[:4])
    for i, (uid, vec) in enumerate(zip(emb.user_ids, emb.vectors, strict=True)):
        t = truth[uid]
        st = emb.status_names[i].removeprefix("EMBEDDING_STATUS_").lower()
        print(
            f"  {uid} {st:<14} version {emb.model_version}  age {emb.meta.age_seconds[i]:6.1f} s  "
            f"{emb.meta.n_events[i]:3d} events  [{', '.join(f'{x:+.2f}' for x in vec[:5])}, ...]"
            f"   (hidden: segment {t.segment}, {t.lifecycle})"
        )

    scored = client.get_embeddings(uids[:4], include_scores=True)
    cols = [(c.outcome, c.horizon_ms) for v in info.versions if v.version == scored.model_version
            for c in v.score_columns]  # fmt: skip
    if cols:
        print("\nOutcome scores with the vectors (GetEmbeddings include_scores):")
        shown = [j for j, (o, h) in enumerate(cols) if o == "(any)"]
        names = "  ".join(f"P(any, {human_ms(h)})" for _, h in (cols[j] for j in shown))
        print(f"  {'user':<10} {names}")
        for i, uid in enumerate(scored.user_ids):
            row = "  ".join(f"{scored.scores[i, j]:>{len(n)}.3f}" for j, n in
                            zip(shown, names.split("  "), strict=True))  # fmt: skip
            print(f"  {uid:<10} {row}   (hidden: {truth[uid].lifecycle})")
        outcome, horizon = cols[shown[-2] if len(shown) > 1 else shown[0]]
        members = [u for page, _ in client.audience(outcome, horizon, top_n=100) for u in page]
        life = Counter(truth[u].lifecycle for u in members if u in truth)
        base = Counter(truth[u].lifecycle for u in uids)
        print(
            f"  the 100 users most likely to act within {human_ms(horizon)} (GetAudience top_n): "
            f"hidden lifecycle {dict(life.most_common())}; all {len(uids)} users: "
            f"{dict(base.most_common())}"
        )

    print("\nWhat an audience team sees (FindLookalikes):")
    probe = uids[0]
    seg = truth[probe].segment
    near = client.find_lookalikes(user_id=probe, k=10)
    nn = list(zip(near.user_ids, near.scores.tolist(), strict=True))
    same = sum(truth[u].segment == seg for u, _ in nn if u in truth)
    print(f"  10 users like {probe} (segment {seg}): {same}/10 share its hidden segment")
    for u, score in nn[:5]:
        print(f"    {u}  score {score:.3f}  segment {truth[u].segment}")
    seeds = [u for u in uids if truth[u].segment == 3][:20]
    found = client.find_lookalikes(seeds=seeds, k=50, exclude_seeds=True).user_ids
    hits = sum(truth[u].segment == 3 for u in found if u in truth)
    base = sum(truth[u].segment == 3 for u in uids) / len(uids)
    print(
        f"  seed audience of 20 segment-3 users -> 50 lookalikes: {hits}/50 in segment 3 "
        f"(base rate {base:.0%})"
    )

    with step("picture: t-SNE map of the user vectors and a few users' vector history"):
        vecs = np.vstack(
            [client.get_embeddings(uids[i : i + 200]).vectors for i in range(0, len(uids), 200)]
        )
        # Six users whose vector moved the most times (one history entry per refresh wave).
        cands = client.get_embeddings(uids[:200], history_depth=3)
        order = np.argsort(-cands.history_counts, kind="stable")
        movers = [uids[i] for i in order[:6]]
        hist = client.get_embeddings(movers, history_depth=3)
        paths = [np.vstack([hist.history(i)[::-1], v[None, :]]) for i, v in enumerate(hist.vectors)]
        png = out / "user_map.png"
        user_map(
            vecs,
            np.array([truth[u].segment for u in uids]),
            [truth[u].lifecycle for u in uids],
            paths,
            png,
            f"{len(uids)} users, model {hist.model_version}",
        )
        lengths = Counter(len(p) for p in paths)
        print(f"    wrote {png} (history points per highlighted user: {dict(lengths)})")


if __name__ == "__main__":
    main()

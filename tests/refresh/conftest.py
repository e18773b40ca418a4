"""Fixtures for refresher tests: a registry with two tiny versions, an isolated store."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from encoder.model import ModelConfig
from encoder.synthetic import SyntheticConfig, generate
from encoder.tokenizer import TokenizerConfig
from encoder.train import TrainConfig, TrainSpec
from services.common.kafka import producer
from services.config import KafkaConfig, WindowConfig
from services.refresh import cutover
from services.refresh.config import RefreshConfig
from services.refresh.encoders import EncoderCache
from services.refresh.metrics import RefreshMetrics
from services.refresh.publish import Publisher
from services.refresh.refresher import Refresher
from services.stack import EmbeddedStack
from services.store.client import Client, connect
from services.store.vectors import VectorStore
from services.store.windows import WindowStore
from tests.refresh.support import running

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

TINY = TrainSpec(
    tokenizer=TokenizerConfig(max_events=32),  # features discovered from the events
    model=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.0, max_events=32),
    train=TrainConfig(
        epochs=1,
        batch_size=32,
        train_max_events=16,
        cuts_per_user=1,
        min_examples=0,
        progress=False,
    ),
)
ROOT_DIR = Path(__file__).resolve().parents[2]
# Each `env` gets a db of its own, flushed before and after, taken in turn from those no other
# suite names (0: shared; 9-13: serving, store, ops): Valkey has 16, fewer than the tests.
_db = itertools.cycle((3, 4, 5, 6, 7, 8, 14, 15))


def tiny_version(root: Path, seed: int = 0) -> str:
    """Train a TINY version (with its short-term head) on 40 synthetic users into the
    registry at `root` (a few seconds on the CPU); its id."""
    from encoder.release import train_version

    ds = generate(SyntheticConfig(users=40, events_per_user=20.0, seed=5))
    spec = TINY if seed == 0 else replace(TINY, train=replace(TINY.train, seed=seed))
    version, _ = train_version(ds.events, spec, root, ds.config.end_ms, parity_n=4)
    return version


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A registry with two tiny versions (v1 active, v2 another seed)."""
    root: Path = tmp_path_factory.mktemp("models")
    return root, tiny_version(root), tiny_version(root, seed=1)


@dataclass
class Env:
    url: str
    client: Client
    windows: WindowStore
    vectors: VectorStore
    bootstrap: str
    topic: str
    models: Path
    v1: str
    v2: str

    def refresher(
        self,
        cfg: RefreshConfig | None = None,
        metrics: RefreshMetrics | None = None,
        cls: type[Refresher] = Refresher,
        publisher: Publisher | None = None,
        encoders: EncoderCache | None = None,
    ) -> Refresher:
        cfg = cfg or RefreshConfig(
            embeddings_topic=self.topic, batch_size=64, interval_s=0.2, check_every_s=0.05
        )
        pub = publisher or Publisher(
            producer(KafkaConfig(bootstrap=self.bootstrap)), cfg.embeddings_topic
        )
        return cls(
            cfg,
            self.windows,
            VectorStore(self.client, cfg.history, cfg.ttl_s, cfg.dtype),
            pub,
            encoders or EncoderCache(self.models, "cpu", cfg.compile, streams=cfg.encode_streams),
            metrics,
        )

    def cut_over_to_v2(self) -> None:
        """`promote` v2 with a refresher running until it is active (back-filled, flipped;
        v1 stays written as "ready")."""
        with running(self.refresher()):
            assert cutover.promote(self.vectors, self.models, self.v2) == "backfilling"
            assert cutover.wait_active(self.vectors, self.v2, timeout_s=60, poll_s=0.05)


@pytest.fixture
def env(
    stack: EmbeddedStack, models: tuple[Path, str, str], make_topic: Callable[..., str]
) -> Iterator[Env]:
    """A fresh Valkey db (own dirty sets and pointer), a fresh update-log topic."""
    url = f"{stack.addresses.redis}/{next(_db)}"
    client = connect(url)
    client.flushdb()
    topic = make_topic(stack.addresses.bootstrap, 2, "emb", {"cleanup.policy": "compact"})
    root, v1, v2 = models
    env_windows, env_vectors = WindowStore(client, WindowConfig()), VectorStore(client)
    try:
        yield Env(
            url,
            client,
            env_windows,
            env_vectors,
            stack.addresses.bootstrap,
            topic,
            root,
            v1,
            v2,
        )
    finally:
        client.flushdb()
        env_windows.close()
        env_vectors.close()
        client.close()

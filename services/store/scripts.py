"""The stores' Lua scripts (the `.lua` files beside this module): loaded by SHA, run with
EVALSHA, pipelined per node through the router, reloaded once when a node lost its script
cache (NOSCRIPT: a restart, a failover, SCRIPT FLUSH). Every script is idempotent, so a batch
redone after a reload changes nothing that already ran. Each script is sent with
`prelude.lua` in front (Lua scripts cannot import): what several of them read of a vector
record is written once there.

Example::

    scripts = Scripts(router, "apply.lua", "read.lua")
    [reply] = scripts.run("read.lua", [([window_key, events_key, meta_key], [])])
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from services.store.router import StoreRouter, raise_first

ScriptCall = tuple[Sequence[bytes], Sequence[Any]]  # (keys, args); keys[0] routes the call
PRELUDE = "prelude.lua"  # functions more than one script uses (record offsets, key prefixes)


def with_prelude(src: str, prelude: str) -> str:
    """`src` with `prelude` prepended, after its `#!lua` flags line when it has one (that
    line must stay first)."""
    if src.startswith("#!"):
        first, _, rest = src.partition("\n")
        return f"{first}\n{prelude}{rest}"
    return prelude + src


def node_chunks(router: StoreRouter, slots: Sequence[int], size: int) -> list[list[int]]:
    """`router.node_groups`, each cut into chunks of at most `size` indices: one call per
    chunk of a script with the allow-cross-slot-keys flag (apply.lua, read_recent.lua,
    write_delta.lua)."""
    return [group[lo : lo + size] for group in router.node_groups(slots)
            for lo in range(0, len(group), size)]  # fmt: skip


class Scripts:
    def __init__(self, router: StoreRouter, *names: str) -> None:
        self._router = router
        folder = resources.files("services.store")
        prelude = folder.joinpath(PRELUDE).read_text()
        self._src = {name: with_prelude(folder.joinpath(name).read_text(), prelude)
                     for name in names}  # fmt: skip
        self._sha: dict[str, str] = {}
        self.load()

    def load(self) -> None:
        """SCRIPT LOAD every script (on a cluster: on every primary; the SHA is the same)."""
        client = self._router.client
        self._sha = {name: str(client.script_load(src)) for name, src in self._src.items()}

    def sha(self, name: str) -> str:
        """The SHA of a loaded script (for commands packed by the caller, e.g. for
        `StoreRouter.read_packed`; on NOSCRIPT, `load` and send again)."""
        return self._sha[name]

    def run(self, name: str, calls: Sequence[ScriptCall]) -> list[Any]:
        """EVALSHA `name` once per (keys, args), pipelined per node; the replies in order.
        Raises the first store error (connection, timeout, script error) after the batch."""
        for attempt in (0, 1):
            sha = self._sha[name]
            results = self._router.execute(
                [(keys[0], ("EVALSHA", sha, len(keys), *keys, *args)) for keys, args in calls]
            )
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                self.load()
                continue
            if any(isinstance(r, ResponseError) and "non local key" in str(r) for r in results):
                # a cross-slot script met a key its node no longer serves: no MOVED comes
                # for that, so the caller's retry would go to the same node for good
                self._router.relearn()
            raise_first(results)
            return results
        raise ResponseError("NOSCRIPT after reload")  # pragma: no cover

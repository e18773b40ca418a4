"""Model version ids: the one pattern the registry, the store keys, the update log and the
gRPC `model_version` field all use (services/store/LAYOUT.md, "Vectors and model versions").

Registry ids are `v<UTC stamp>-<sha8>`; the pattern leaves out `:` and `/`, so a version
cannot run into the user id in a store key (`p:{B}:v:<ver>:<uid>`) or an update-log key
(`<ver>/<uid>`).

>>> is_version("v20261201T120000-1a2b3c4d"), is_version("a/b"), is_version("")
(True, False, False)
"""

from __future__ import annotations

import re

VERSION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def is_version(text: str) -> bool:
    return VERSION_RE.fullmatch(text) is not None


def check_version(version: str) -> str:
    """`version` itself, or ValueError when it is not a version id."""
    if not is_version(version):
        raise ValueError(f"model version {version!r} must match {VERSION_RE.pattern}")
    return version

"""Point every alert's runbook link at a base URL: `make runbook-links RUNBOOK_BASE_URL=URL`.

URL is where this repository's docs/ folder is served (a wiki, an internal docs site, the
repository's web view: https://git.example.com/persona/-/blob/main/docs). Rewrites the
`runbook_url` of every rule in alerts.yml, and the expected ones in alerts_test.yml, to
`URL/operations.md#<the alert's heading>`; the anchors stay as they are. Prometheus 2.42's
`promtool test rules` has no external labels, so the base is written into the files, not
templated at run time. Prints the old and the new base.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = (HERE / "alerts.yml", HERE / "alerts_test.yml")
LINK = re.compile(r'(runbook_url: ")([^"#]*)/operations\.md#')


def current_base(text: str) -> set[str]:
    return {m.group(2) for m in LINK.finditer(text)}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not re.fullmatch(r"https?://[^\s\"#]+", argv[0]):
        print("usage: runbook_base.py https://HOST/PATH/TO/docs", file=sys.stderr)
        return 2
    base = argv[0].rstrip("/")
    for path in FILES:
        text = path.read_text()
        old = current_base(text)
        path.write_text(LINK.sub(lambda m: f"{m.group(1)}{base}/operations.md#", text))
        print(f"{path.name}: {', '.join(sorted(old))} -> {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

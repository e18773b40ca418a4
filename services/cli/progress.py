"""Progress bars for the commands' long waits, on `encoder.progress.progress_bar`: a tqdm bar
on an interactive stderr, nothing at all when stderr is a log or a pipe."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from encoder.progress import progress_bar


@contextmanager
def watch(read: Callable[[], int], desc: str, unit: str, every_s: float = 0.5) -> Iterator[None]:
    """A bar (total unknown) that shows `read()` every `every_s` while the block runs.

    `read` is polled from a thread: a counter the work keeps anyway (the refresher's
    `stats.backfilled`), so the work itself knows nothing of the bar.
    """
    bar = progress_bar(0, desc, unit=unit)
    if bar.disable:
        yield
        return
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every_s):
            bar.update(read() - bar.n)

    thread = threading.Thread(target=poll, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.update(read() - bar.n)
        bar.close()


def countdown(total_s: float, desc: str) -> Callable[[float, str], None]:
    """A bar over a wait of `total_s` seconds; call it with (elapsed s, state), and with a
    negative elapsed to close it."""
    bar = progress_bar(max(1, round(total_s)), desc, unit="s")

    def tick(elapsed: float, state: str) -> None:
        if elapsed < 0:
            bar.close()
            return
        bar.set_postfix_str(state, refresh=False)
        bar.update(min(bar.total, round(elapsed)) - bar.n)

    return tick

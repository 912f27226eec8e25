"""`rask.progress`: a live bar over futures until every task has an outcome: an ipywidgets bar
in Jupyter, tqdm in a terminal, plain text lines if neither is installed."""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

from .client import Future
from .futures import as_completed

__all__ = ["progress"]


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython() if hasattr(shell, "get_ipython") else None
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class _Bar:
    """The display: `update(done, failed)` then `close()`."""

    def __init__(self, total: int, description: str, mode: str) -> None:
        self.total, self.description, self.mode = total, description, mode
        self._last_text = -1
        if mode == "widget":
            import ipywidgets
            from IPython.display import display

            self._bar = ipywidgets.IntProgress(min=0, max=max(total, 1), description=description)
            self._label = ipywidgets.Label(f"0 / {total}")
            display(ipywidgets.HBox([self._bar, self._label]))
        elif mode == "tqdm":
            import tqdm

            self._bar = tqdm.tqdm(total=total, desc=description, unit="task")

    def update(self, done: int, failed: int) -> None:
        suffix = f" ({failed} failed)" if failed else ""
        if self.mode == "widget":
            self._bar.value = done
            self._label.value = f"{done} / {self.total}{suffix}"
            if failed:
                self._bar.bar_style = "danger"
        elif self.mode == "tqdm":
            self._bar.update(done - self._bar.n)
            if failed:
                self._bar.set_postfix(failed=failed)
        else:
            # At most ~10 lines for the whole run.
            step = max(self.total // 10, 1)
            if done == self.total or done // step != self._last_text // step:
                print(f"{self.description}: {done} / {self.total}{suffix}", file=sys.stderr)
                self._last_text = done

    def close(self) -> None:
        if self.mode == "widget":
            self._bar.bar_style = self._bar.bar_style or "success"
        elif self.mode == "tqdm":
            self._bar.close()


def _mode(notebook: Optional[bool]) -> str:
    in_notebook = _in_notebook() if notebook is None else notebook
    if in_notebook:
        try:
            import ipywidgets  # noqa: F401

            return "widget"
        except ImportError:
            pass
    try:
        import tqdm  # noqa: F401

        return "tqdm"
    except ImportError:
        return "text"


def progress(
    futures: Iterable[Future], description: str = "rask", notebook: Optional[bool] = None
) -> "tuple[int, int]":
    """Shows a live bar until every task of `futures` has an outcome; returns `(done, failed)`.

    `notebook` forces the ipywidgets bar (True) or the terminal one (False); by default it is
    chosen by where the code runs. Failed tasks count as done and are shown apart."""
    futures = list(futures)
    bar = _Bar(len(futures), description, _mode(notebook))
    done = failed = 0
    bar.update(0, 0)
    try:
        for _future, value in as_completed(futures, with_results=True):
            done += 1
            if isinstance(value, BaseException):
                failed += 1
            bar.update(done, failed)
    finally:
        bar.close()
    return done, failed

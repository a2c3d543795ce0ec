"""The live view of ``triton-warmup``: each model's state while the one
blocking warmup request runs, from Triton's repository index, settled at the
end by the helper's report."""

import argparse
import collections
import itertools
import threading
import time
from typing import Dict, Iterator, List, Optional, Tuple

from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from triton_warmup.client import flags as client_flags
from triton_warmup.report import ModelEntry

_POLL_INTERVAL_S = 0.5
_DRAW_INTERVAL_S = 0.2

# Above this many models, the view is one line of counts (a bar on a
# terminal) rather than a bar or a line per model, which for a repository of
# hundreds would scroll the terminal or flood a CI log. Failures still get a
# line each, with the model's name.
MANY_MODELS = 20
# How often, at most, the counts are printed when stdout is not a terminal.
_SUMMARY_LINE_INTERVAL_S = 5.0


# Where a model's bar stands in its load: UNAVAILABLE, LOADING, then READY.
_STAGES = {"UNAVAILABLE": 0, "UNLOADING": 0, "LOADING": 1, "READY": 2}


def live_state(entry: Dict, seen_loading: bool) -> str:
    """A model's state for the live view: Triton's, or FAILED for a model
    that went back to UNAVAILABLE with a reason after it was seen LOADING."""
    state = entry.get("state", "UNAVAILABLE")
    if state == "UNAVAILABLE" and seen_loading and entry.get("reason") not in (None, "", "unloaded"):
        return "FAILED"
    return state


class StateWatcher:
    """Shows each model's state while the blocking warmup request runs.

    One thread polls the repository index; another redraws. On a terminal
    each model has a progress bar (UNAVAILABLE, LOADING, READY or FAILED)
    with the seconds since the request went out; elsewhere (CI logs) a plain
    line is printed whenever a model's state changes. With more than
    ``MANY_MODELS`` models, one bar (or a line every few seconds) counts
    them by state instead, and each failure gets its own line.

    Triton's index is a coarse view of a warmup: the call often waits while
    Triton loads a model, and during a reload it keeps saying READY because
    the old version serves. So a poll that has waited longer than the
    interval shows the models not yet settled as LOADING, and so does a
    model that was READY before the warmup (unless ``--mode requests``). A
    model settles when it fails, or turns READY after it was not. When the
    request ends, ``finish`` sets every model from the helper's report, which
    is the authority on what happened and when.

    Args:
        models: the models to follow; ``None`` follows every model of the
            index except the helper (``--all``, or a plan with all_models).
        label: put in front of every line and bar (the server's URL when
            several servers are warmed at once).
        positions: where the next bar goes on the terminal; shared by the
            watchers of several servers so that their bars do not overlap.
    """

    def __init__(
        self,
        args: argparse.Namespace,
        models: Optional[List[str]],
        stream,
        label: str = "",
        positions: Optional[Iterator[int]] = None,
    ):
        self.stream = stream
        self.label = f"{label} " if label else ""
        self.positions = positions if positions is not None else itertools.count()
        self.models = models
        self.helper = args.model_name
        self.protocol = args.protocol
        # Its own client: the request's client is busy in the main thread.
        self.client = client_flags.create_client(args, timeout_s=args.timeout)
        self.headers = client_flags.request_headers(args)
        self.refusal = None
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.index_states: Dict[str, str] = {}
        self.poll_since: Optional[float] = None
        self.shown: Dict[str, str] = {}
        # The latest time a plain line has shown.
        self.printed_until = 0.0
        self.settled = set()
        # Models READY at the first answer; whether this warmup reloads them
        # (not with --mode requests; with auto, only the report can tell).
        self.ready_before: Optional[set] = None
        self.expect_loads = args.mode != "requests"
        self.bars: Dict[str, tqdm] = {}
        self.seen_loading = set()
        # Decided at the first draw, when the number of models is known.
        self.many: Optional[bool] = None
        self.summary_bar: Optional[tqdm] = None
        self.summary_printed: Optional[Tuple[float, str]] = None
        self.failures_shown = set()
        # Bars on a terminal only: CI logs get one plain line per change.
        self.plain = not (hasattr(stream, "isatty") and stream.isatty())
        self.threads = [
            threading.Thread(target=self._poll, daemon=True),
            threading.Thread(target=self._draw, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _read_index(self) -> Optional[Dict[str, str]]:
        try:
            index = client_flags.repository_index(self.client, self.protocol, self.headers)
        except InferenceServerException as error:
            if not client_flags.is_unreachable(error) and self.refusal is None:
                # A server that restricts its repository endpoints: the warmup
                # still runs, only the live states are missing.
                self.refusal = error.message()
                self.stream.write(f"({self.label}no live states: the server refused the repository index: "
                                  f"{self.refusal}; pass -H KEY=VALUE)\n")
                self.stream.flush()
            return None
        except OSError:
            return None
        entries = {entry["name"]: entry for entry in index}
        # Hidden folders are the preflight's scratch copies, not models.
        names = self.models if self.models is not None else sorted(
            name for name in entries if name != self.helper and not name.startswith(".")
        )
        states = {}
        for name in names:
            entry = entries.get(name, {"state": "?"})
            if entry.get("state") == "LOADING":
                self.seen_loading.add(name)
            states[name] = live_state(entry, name in self.seen_loading)
        return states

    def _poll(self) -> None:
        while not self.done.is_set():
            with self.lock:
                self.poll_since = time.monotonic()
            states = self._read_index()
            with self.lock:
                self.poll_since = None
                if states is not None:
                    self.index_states = states
                    if self.ready_before is None:
                        self.ready_before = {name for name, state in states.items() if state == "READY"}
            if self.done.wait(_POLL_INTERVAL_S):
                return

    def _current(self) -> Dict[str, str]:
        with self.lock:
            states = dict(self.index_states)
            waiting = self.poll_since is not None and time.monotonic() - self.poll_since > _POLL_INTERVAL_S
        for name, state in states.items():
            if name in self.settled:
                continue
            # While Triton loads, the query may wait: the models this warmup
            # has not settled are loading or next in line. During a reload the
            # index keeps saying READY (the old version serves), so a model
            # that was READY before shows LOADING until the report settles it.
            if waiting or (state == "READY" and name in (self.ready_before or ()) and self.expect_loads):
                states[name] = "LOADING"
        return states

    def _draw(self) -> None:
        while not self.done.wait(_DRAW_INTERVAL_S):
            self.redraw(time.monotonic() - self.started)

    def redraw(self, elapsed: float) -> None:
        """Show the states as they stand ``elapsed`` seconds after the start."""
        current = self._current()
        if self.many is None and current:
            self.many = len(current) > MANY_MODELS
        for name, state in current.items():
            self._show(name, state, elapsed)
        if self.many:
            self._show_counts(elapsed)

    def _note(self, name: str, state: str, final: bool) -> Optional[bool]:
        """Keep ``state`` as the model's shown state; whether it changed, or
        ``None`` when it is not taken."""
        previous = self.shown.get(name)
        if not final and previous in _STAGES and state in _STAGES and _STAGES[state] < _STAGES[previous]:
            # A poll that waited showed it LOADING, and the next one says
            # UNAVAILABLE again (not started yet): a view that flickers back
            # tells nothing, so it stays until the state moves on.
            return None
        # FAILED, or READY for a model that was not READY before: this warmup
        # is done with it. The report settles the rest.
        if state == "FAILED" or (state == "READY" and name not in (self.ready_before or ())):
            self.settled.add(name)
        self.shown[name] = state
        return previous != state

    def counts(self) -> str:
        """The shown models by state: '37 of 96 READY, 4 LOADING, 55 waiting'."""
        by_state = collections.Counter(self.shown.values())
        parts = [f"{by_state.pop('READY', 0)} of {len(self.shown)} READY"]
        for state in ("LOADING", "FAILED"):
            if by_state.get(state):
                parts.append(f"{by_state.pop(state)} {state}")
        waiting = sum(by_state.values())
        if waiting:
            parts.append(f"{waiting} waiting")
        return ", ".join(parts)

    def _show_counts(self, elapsed: float, final: bool = False) -> None:
        counts = self.counts()
        if self.plain:
            last_at, last_counts = self.summary_printed or (None, None)
            due = last_at is None or elapsed - last_at >= _SUMMARY_LINE_INTERVAL_S
            if counts != last_counts and (due or final):
                self.stream.write(f"[{elapsed:6.1f}s] {self.label}{counts}\n")
                self.stream.flush()
                self.summary_printed = (elapsed, counts)
            return
        if self.summary_bar is None:
            self.summary_bar = tqdm(
                total=len(self.shown),
                desc=self.label + "models",
                bar_format="{desc} |{bar:24}| {postfix[0]}",
                postfix=[""],
                file=self.stream,
                position=next(self.positions),
                leave=True,
            )
        self.summary_bar.total = len(self.shown)
        self.summary_bar.n = len(self.settled)
        self.summary_bar.postfix[0] = f"{counts}  {elapsed:6.1f}s"
        self.summary_bar.refresh()

    def _show(self, name: str, state: str, elapsed: float, final: bool = False) -> None:
        changed = self._note(name, state, final)
        if changed is None:
            return
        if self.many:
            if state == "FAILED" and name not in self.failures_shown:
                self.failures_shown.add(name)
                line = f"[{elapsed:6.1f}s] {self.label}{name} FAILED"
                if self.plain:
                    self.stream.write(line + "\n")
                    self.stream.flush()
                else:
                    tqdm.write(line, file=self.stream)
            return
        if self.plain:
            if changed:
                self.printed_until = max(self.printed_until, elapsed)
                # One write per line: print() writes the text and its newline
                # apart, and the watchers of several servers (-u) print at
                # once; with unbuffered output (PYTHONUNBUFFERED, as container
                # logs often run) their lines ran together.
                self.stream.write(f"[{elapsed:6.1f}s] {self.label}{name} {state}\n")
                self.stream.flush()
            return
        bar = self.bars.get(name)
        if bar is None:
            width = max(len(model) for model in (self.models or [name]))
            bar = tqdm(
                total=2,
                desc=self.label + name.ljust(width),
                # A list postfix is shown as it is (a string would get ", ").
                bar_format="{desc} |{bar:12}| {postfix[0]}",
                postfix=[""],
                file=self.stream,
                position=next(self.positions),
                leave=True,
            )
            self.bars[name] = bar
        if state in _STAGES:
            bar.n = _STAGES[state]
        # The clock keeps running until the report settles the model.
        if changed or final or name not in self.settled:
            bar.postfix[0] = f"{state:<11} {elapsed:6.1f}s"
            bar.refresh()

    def stop(self) -> None:
        self.done.set()
        for thread in self.threads:
            if thread.ident is not None:  # started
                thread.join(timeout=1)

    def finish(self, entries: List[ModelEntry]) -> None:
        """Settle every model from the helper's report, then close."""
        self.stop()
        # Plain lines in the order the models settled, so that their times
        # rise; bars in the request's order.
        ended = time.monotonic() - self.started
        # The helper counts from its first load; planning before it takes
        # milliseconds, so the client's clock and the helper's agree closely.
        # A plain line never goes back in time: when the index still said
        # LOADING after the helper had finished a model (a poll that waited
        # on Triton), its settled line takes the time already printed.
        def settled(entry):
            seconds = entry.finished_s
            seconds = ended if seconds is None else min(seconds, ended)
            return max(seconds, self.printed_until) if self.plain else seconds

        if self.many is None:
            self.many = len(entries) > MANY_MODELS
        if self.plain:
            entries = sorted(entries, key=settled)
        for entry in entries:
            self._show(entry.name, str(entry.status), settled(entry), final=True)
        if self.many:
            self._show_counts(ended, final=True)
        self.close()

    def close(self) -> None:
        self.stop()
        for bar in self.bars.values():
            bar.close()
        if self.summary_bar is not None:
            self.summary_bar.close()
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - the poll thread may still hold it
            pass

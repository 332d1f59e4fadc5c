"""What one change of a run's status becomes: derived events, then the built-in one.

At each change, every rule of the vocabulary (bridge/events/vocabulary.py) is run on the
new status; its items are matched by key with the previous status's items:

- ``appear``: an item whose key the previous status did not have;
- ``change``: that, and an item whose value differs from the previous one of its key;
- ``lines``: each complete new line of the item's ``text`` beyond the previous item's
  (a text that does not extend the previous one counts from its start), sent as the item
  with ``line`` in place of ``text``; at a terminal status the last line without a
  newline too.

The first status of a run is compared with nothing: every item appears. The previous
status's items are kept from the last change (``RunRules``); when they are not at hand
(a new leader in cluster mode, a channel revived from the cache) they are read again
from the previous status itself, which gives the same answer: nothing is kept that the
history does not also hold.

Order within one change: rules in file order, each rule's items in output order, then
the built-in event (``progress``, or at a terminal status ``complete``/``error``), which
is always in the history (a status the viewers need to resume, and the terminal mark
that closes the stream) and is sent only when enabled.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge.events import sse
from bridge.events.channel import Channel, StatusFacts
from bridge.events.history import is_terminal
from bridge.events.vocabulary import Rule, Vocabulary
from bridge.ops.metrics import Metrics

log = logging.getLogger("bridge.events")


class Reading(StatusFacts, Protocol):
    """A status as the status filters read it (bridge/polling/status.py's ``Reading``):
    what the channel keeps of it, and the event it is sent as."""

    @property
    def event(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event a change makes, ready for the history."""

    #: The SSE event name (``message``: unnamed).
    name: str
    #: What is sent as ``data`` (one line of JSON).
    data: str
    #: ``progress``, ``complete`` or ``error`` for the status itself; "" for a derived event.
    kind: str = ""
    #: The status as the upstream sent it, where ``data`` is not it (reshaped or hidden).
    raw: str | None = None
    #: Kept in the history but not sent (a built-in event turned off).
    hidden: bool = False


@dataclass(slots=True)
class _Seen:
    """One item of a ``lines`` rule in the previous status: its value, its text and how
    much of it was sent (the offset after its last complete line). The other rules keep
    the item itself."""

    value: Any
    text: str | None = None
    sent: int = 0


@dataclass(slots=True)
class RunRules:
    """One run's rule state: the previous status's items, and what was logged once."""

    vocabulary: Vocabulary
    run_id: str
    metrics: Metrics | None = None
    #: The status the items below were read from (None: none yet).
    source: str | None = None
    #: Per rule, its items by key: a ``_Seen`` for ``lines``, else the item.
    seen: list[dict[Any, Any]] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)

    def derive(
        self,
        previous: str | None,
        status: str,
        state: str | None = None,
        progress: float | None = None,
        *,
        terminal: bool = False,
        before: tuple[str | None, float | None] = (None, None),
    ) -> list[tuple[str, str]]:
        """The derived events (name, data) of the change from ``previous`` to ``status``
        (``state`` and ``progress`` of the new status; ``before``: of the previous one)."""
        vocabulary = self.vocabulary
        if not vocabulary.rules:
            return []
        if previous is None:
            self.seen = [{} for _ in vocabulary.rules]
        elif self.source is None or self.source != previous:
            # Not the status of the last change here: read its items again.
            self.seen = self._read(previous, *before)
        outcomes = self._outcomes(status, state, progress)
        out: list[tuple[str, str]] = []
        limit = vocabulary.max_per_change
        cut = False
        new_seen: list[dict[Any, Any]] = []
        for rule, outcome, had in zip(vocabulary.rules, outcomes, self.seen, strict=True):
            if outcome is None:
                new_seen.append(had)  # failed: yields nothing, forgets nothing
                continue
            now: dict[Any, Any] = {}
            lines, change = rule.on == "lines", rule.on == "change"
            for key, item in zip(outcome[::2], outcome[1::2], strict=True):
                if key in now:
                    continue  # the first item of a key is the one
                if lines:
                    old = had.get(key)
                    if (
                        old is not None
                        and not terminal
                        and old.text is not None
                        and isinstance(item, dict)
                        and item.get("text") == old.text
                    ):
                        # The same text (most of a run's steps at each change): no new
                        # line, what was sent stays as it was.
                        now[key] = _Seen(item, old.text, old.sent)
                        continue
                    seen = now[key] = _Seen(item)
                    cut = self._lines(rule, item, old, seen, terminal, out, limit) or cut
                    continue
                now[key] = item
                if key not in had or (change and had[key] != item):
                    if len(out) >= limit:
                        cut = True
                        continue
                    out.append((rule.event, sse.encode_json(item)))
            new_seen.append(now)
        self.seen = new_seen
        self.source = status
        if cut:
            self._cut()
        return out

    def _lines(
        self,
        rule: Rule,
        item: Any,
        old: _Seen | None,
        seen: _Seen,
        terminal: bool,
        out: list[tuple[str, str]],
        limit: int,
    ) -> bool:
        """Append one event per new complete line of ``item``'s text; True if cut."""
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(text, str):
            self._once(
                f"text:{rule.index}",
                f"{rule.table} (event {rule.event}) gave an item without a string text on "
                f"a status of run {self.run_id}; such items yield nothing",
            )
            return False
        seen.text = text
        start = 0
        if old is not None and old.text is not None and text.startswith(old.text):
            # Only what was added is split: a log of megabytes costs what it grew by.
            start = old.sent
        newline = text.rfind("\n", start)
        end = newline + 1 if newline >= 0 else start
        cut = False
        position = start
        if end > start:
            for line in text[start : end - 1].split("\n"):
                if len(out) >= limit:
                    cut = True
                    break
                # A CRLF log's newline is both characters.
                out.append((rule.event, _with_line(item, line.removesuffix("\r"))))
            position = end
        if terminal and position < len(text) and not cut:
            if len(out) >= limit:
                cut = True
            else:
                out.append((rule.event, _with_line(item, text[position:])))
                position = len(text)
        # Lines past the cut are not sent later either: the cap says "this change made
        # too many", and holding them back would send them at an unrelated change.
        seen.sent = max(position, end) if cut else position
        return cut

    def _outcomes(
        self, status: str, state: str | None, progress: float | None
    ) -> list[list[Any] | None]:
        """Each rule's ``[key, item, key, item, ...]`` on ``status``, or None where it
        failed."""
        try:
            results = self.vocabulary.run_rules(status, self.run_id, state, progress)
        except (ValueError, StopIteration):
            self._once("all", f"the rules failed on a status of run {self.run_id}")
            return [None for _ in self.vocabulary.rules]
        outcomes: list[list[Any] | None] = []
        for rule, result in zip(self.vocabulary.rules, results, strict=True):
            if "ok" in result:
                outcomes.append(result["ok"])
            else:
                # jq's message may quote the status: the log gets the fact, not the data.
                self._once(
                    str(rule.index),
                    f"{rule.table} (event {rule.event}) failed on a status of run "
                    f"{self.run_id}; it yields nothing for that status",
                )
                if self.metrics is not None:
                    self.metrics.rule_failures.labels(rule.event).inc()
                outcomes.append(None)
        return outcomes

    def _read(self, status: str, state: str | None, progress: float | None) -> list[dict[Any, Any]]:
        try:
            results = self.vocabulary.run_rules(status, self.run_id, state, progress)
        except (ValueError, StopIteration):
            return [{} for _ in self.vocabulary.rules]
        seen: list[dict[Any, Any]] = []
        for rule, result in zip(self.vocabulary.rules, results, strict=True):
            items: dict[Any, Any] = {}
            flat = result.get("ok", [])
            for key, item in zip(flat[::2], flat[1::2], strict=True):
                if key in items:
                    continue
                if rule.on != "lines":
                    items[key] = item
                    continue
                text = item.get("text") if isinstance(item, dict) else None
                if isinstance(text, str):
                    items[key] = _Seen(item, text, text.rfind("\n") + 1)
                else:
                    items[key] = _Seen(item)
            seen.append(items)
        return seen

    def _once(self, what: str, message: str) -> None:
        """Log ``message`` once per run (a rule failing on every poll is one line)."""
        if what in self.warned:
            return
        self.warned.add(what)
        log.warning("%s: %s", self.vocabulary.path, message)

    def _cut(self) -> None:
        if self.metrics is not None:
            self.metrics.events_cut.inc()
        if "cut" not in self.warned:
            self.warned.add("cut")
            log.warning(
                "run %s: a change derived more than %d events; the rest were not sent "
                "(BRIDGE_EVENTS_MAX_PER_CHANGE)",
                self.run_id,
                self.vocabulary.max_per_change,
            )


def _with_line(item: dict[str, Any], line: str) -> str:
    """The item with ``line`` in place of ``text``, in the item's own key order."""
    return sse.encode_json(
        {("line" if k == "text" else k): (line if k == "text" else v) for k, v in item.items()}
    )


def status_event(
    vocabulary: Vocabulary, run_id: str, status: str, reading: StatusFacts | None, kind: str
) -> Outgoing:
    """The built-in event of a status: renamed, reshaped, or kept hidden when off."""
    builtin = vocabulary.builtins[kind]
    if not builtin.enabled:
        return Outgoing(kind, "", kind, status, hidden=True)
    if builtin.program is None:  # not reshaped: no filter to run (every status of a list)
        return Outgoing(builtin.name, status, kind)
    state, progress = (reading.state, reading.progress) if reading is not None else (None, None)
    shaped = vocabulary.render(kind, status, run_id, state, progress)
    if shaped is None:
        return Outgoing(builtin.name, status, kind)
    return Outgoing(builtin.name, shaped, kind, status)


_RULES: weakref.WeakKeyDictionary[Channel, RunRules] = weakref.WeakKeyDictionary()


def plan(
    channel: Channel, status: str, reading: Reading, metrics: Metrics | None = None
) -> list[Outgoing]:
    """Every event of one change of ``channel``'s run to ``status``, in order."""
    vocabulary = channel.history.vocabulary
    run_id = channel.key.run_id
    kind = reading.event
    events: list[Outgoing] = []
    if vocabulary.rules:
        rules = _RULES.get(channel)
        if rules is None:
            rules = _RULES[channel] = RunRules(vocabulary, run_id, metrics)
        latest = channel.history.status
        previous = latest.status if latest is not None else None
        before = (latest.state, latest.progress) if latest is not None else (None, None)
        derived = rules.derive(
            previous,
            status,
            reading.state,
            reading.progress,
            terminal=is_terminal(kind),
            before=before,
        )
        events.extend(Outgoing(name, data) for name, data in derived)
        if is_terminal(kind):
            # No change follows a final status: the previous items (as big as a status)
            # are not kept while the ended run waits in the hub's cache.
            _RULES.pop(channel, None)
    events.append(status_event(vocabulary, run_id, status, reading, kind))
    return events


def publish(
    channel: Channel, status: str, reading: Reading, metrics: Metrics | None = None
) -> None:
    """One process: publish a change's events to ``channel`` (ids follow in order)."""
    for out in plan(channel, status, reading, metrics):
        channel.publish(
            out.name,
            out.data,
            reading,
            kind=out.kind,
            raw=out.raw,
            hidden=out.hidden,
        )
        if metrics is not None and not out.hidden:
            metrics.published(out.name)


def publish_end(channel: Channel, data: str, metrics: Metrics | None = None) -> None:
    """The bridge's own ``error`` (refused, gave up), in the run's vocabulary."""
    vocabulary = channel.history.vocabulary
    out = status_event(vocabulary, channel.key.run_id, data, None, sse.ERROR)
    channel.publish(
        out.name, out.data, synthetic=True, kind=out.kind, raw=out.raw, hidden=out.hidden
    )
    if metrics is not None and not out.hidden:
        metrics.published(out.name)


def derived(
    channel: Channel, status: str, reading: Reading, metrics: Metrics | None = None
) -> list[tuple[str, str]]:
    """The derived events (name, data) of one change, without the status's own event
    (cluster mode: the leader commits them with the status in one write)."""
    vocabulary = channel.history.vocabulary
    if not vocabulary.rules:
        return []
    return [(o.name, o.data) for o in plan(channel, status, reading, metrics) if not o.kind]


def first_seen(
    vocabulary: Vocabulary, run_id: str, status: str, reading: Reading
) -> list[tuple[str, str, bool]]:
    """The events (name, data, sent) a run's stream starts with when its first status
    is ``status``: every item appears (``sse-bridge inspect``)."""
    rules = RunRules(vocabulary, run_id)
    events = [
        (name, data, True)
        for name, data in rules.derive(
            None, status, reading.state, reading.progress, terminal=is_terminal(reading.event)
        )
    ]
    out = status_event(vocabulary, run_id, status, reading, reading.event)
    events.append((out.name, out.raw if out.hidden and out.raw else out.data, not out.hidden))
    return events

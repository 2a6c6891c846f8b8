"""Live external feedback: change a running controller through ``run_dir/control.json``.

A writer (the ``hclm feedback`` command, a notebook, another thread) appends an entry with
:func:`write_feedback`, and the training loop calls :meth:`FeedbackReader.poll` after each step::

    reader = FeedbackReader(run_dir, every=10)
    for step, batch in enumerate(loader):
        ...
        controller.update(step, record)
        reader.poll(step, controller)

The file contains the last :data:`MAX_ENTRIES` entries, each with an increasing ``sequence``
number, a UTC ``time``, a ``source`` and the ``changes``, so entries written between two polls
are all applied, in order. The reader applies each entry once, whether it was accepted or not.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from hclm._io import atomic_write_json
from hclm.control.controllers import check_band, check_floor, check_lam

logger = logging.getLogger(__name__)

CONTROL_FILE = "control.json"
MAX_ENTRIES = 100
KNOWN_KEYS = ("lam", "band", "floor", "pause")


@dataclass
class FeedbackEvent:
    """Outcome of one external change, for logs and for marks on report timelines.

    Attributes:
        step: training step after which the change was applied (or rejected).
        source: who wrote the change, e.g. ``"cli"``; ``"unknown"`` for an unreadable file.
        change: the requested change as ``{key: value}``; empty for an unreadable file.
        accepted: whether the controller took the change.
        error: why the change was rejected; None when accepted.
        sequence: sequence number of the file entry; None for an unreadable file.
        message: the controller's description of an accepted change.
    """

    step: int
    source: str
    change: dict[str, Any]
    accepted: bool
    error: str | None = None
    sequence: int | None = None
    message: str | None = None


def write_feedback(
    run_dir: str | os.PathLike[str],
    *,
    lam: float | None = None,
    band: tuple[float, float] | None = None,
    floor: float | None = None,
    pause: bool | None = None,
    source: str = "cli",
) -> dict[str, Any]:
    """Append one entry of changes to ``run_dir/control.json`` atomically.

    The sequence number is ``max(last + 1, time in microseconds)``, so it keeps increasing even
    when the previous file is missing or unreadable. Values are validated here as well as by the
    reader, so a typo fails at the writer.

    Args:
        run_dir: folder of the running training job; it must exist.
        lam: new weight ``λ >= 0``.
        band: new target band ``(low, high)`` of the relative strength, ``0 < low < high``.
        floor: new entropy floor in the surrogate's units.
        pause: True to pause the controller (``λ`` stays fixed), False to resume it.
        source: who makes the change; stored in the entry and in the reader's events.

    Returns:
        The written entry.

    Raises:
        ValueError: if no change is given or a value is invalid.
        FileNotFoundError: if ``run_dir`` is not an existing folder.
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"run folder not found: {folder}; pass the folder of a running training job")
    changes: dict[str, Any] = {}
    if lam is not None:
        changes["lam"] = check_lam(lam)
    if band is not None:
        changes["band"] = list(check_band(*_band_pair(band)))
    if floor is not None:
        changes["floor"] = check_floor(floor)
    if pause is not None:
        if not isinstance(pause, bool):
            raise ValueError(f"pause must be True or False, got {pause!r}")
        changes["pause"] = pause
    if not changes:
        raise ValueError("no change given; pass at least one of lam, band, floor or pause")
    if not isinstance(source, str) or not source:
        raise ValueError(f"source must be a non-empty string, got {source!r}")

    path = folder / CONTROL_FILE
    entries = _read_entries_for_append(path)
    last = max((entry.get("sequence", 0) for entry in entries if isinstance(entry.get("sequence"), int)), default=0)
    entry = {
        "sequence": max(last + 1, time.time_ns() // 1000),
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "source": source,
        "changes": changes,
    }
    # NOTE: two writers that read the file at the same moment can both append after the same
    # entry, and the later rename drops the other's entry. One writer at a time is assumed.
    entries = (entries + [entry])[-MAX_ENTRIES:]
    atomic_write_json(path, {"entries": entries})
    logger.info("wrote feedback entry %d to %s: %s", entry["sequence"], path, changes)
    return entry


def _band_pair(band: object) -> tuple[object, object]:
    if not isinstance(band, (tuple, list)) or len(band) != 2:
        raise ValueError(f"band must be a pair (low, high), got {band!r}")
    return band[0], band[1]


def _read_entries_for_append(path: Path) -> list[dict[str, Any]]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("replacing unreadable control file %s: %s", path, error)
        return []
    entries = payload.get("entries") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        logger.warning("replacing control file %s without an 'entries' list", path)
        return []
    return [entry for entry in entries if isinstance(entry, dict)]


@dataclass
class FeedbackReader:
    """Poll ``run_dir/control.json`` and apply unseen entries to a controller.

    Args:
        run_dir: folder that contains (or will contain) ``control.json``.
        every: read the file on steps that are multiples of ``every``.
        skip_existing: ignore entries already in the file when the reader is created, e.g. the
            changes of an earlier run in the same folder.
    """

    run_dir: str | os.PathLike[str]
    every: int = 1
    skip_existing: bool = False
    events: list[FeedbackEvent] = field(default_factory=list, init=False)
    last_sequence: int = field(default=0, init=False)
    _rejected_signature: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an integer >= 1, got {self.every!r}")
        self.path = Path(self.run_dir) / CONTROL_FILE
        if self.skip_existing:
            entries, _ = self._read()
            self.last_sequence = max((entry["sequence"] for entry in entries or []), default=0)

    def poll(self, step: int, controller: object) -> list[FeedbackEvent]:
        """Apply unseen entries to ``controller`` if ``step`` is a polling step.

        Invalid values, unknown keys and unreadable files are logged as errors and returned as
        rejected events instead of raised, so training continues.

        Returns:
            The events of this poll, also appended to :attr:`events`.
        """
        if step % self.every != 0:
            return []
        entries, error = self._read()
        new_events: list[FeedbackEvent] = []
        if error is not None:
            logger.error("step %d: feedback file %s rejected: %s", step, self.path, error)
            new_events.append(FeedbackEvent(step=step, source="unknown", change={}, accepted=False, error=error))
        for entry in entries or []:
            if entry["sequence"] <= self.last_sequence:
                continue
            self.last_sequence = entry["sequence"]
            new_events.extend(self._apply_entry(step, entry, controller))
        self.events.extend(new_events)
        return new_events

    def _read(self) -> tuple[list[dict[str, Any]] | None, str | None]:
        """Return the valid entries sorted by sequence, or an error for a file not yet reported."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None, None
        signature = (stat.st_mtime_ns, stat.st_size)
        if signature == self._rejected_signature:
            return None, None
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            self._rejected_signature = signature
            return None, f"invalid JSON ({error}); write it again with `hclm feedback`"
        entries = payload.get("entries") if isinstance(payload, dict) else None
        if not isinstance(entries, list):
            self._rejected_signature = signature
            return None, "missing the 'entries' list; write it again with `hclm feedback`"
        valid = [
            entry
            for entry in entries
            if isinstance(entry, dict)
            and isinstance(entry.get("sequence"), int)
            and not isinstance(entry.get("sequence"), bool)
        ]
        # Entries without a sequence number cannot be remembered, so they are skipped, not applied.
        if len(valid) != len(entries):
            logger.warning("%s: skipped %d entries without an integer 'sequence'", self.path, len(entries) - len(valid))
        return sorted(valid, key=lambda entry: entry["sequence"]), None

    def _apply_entry(self, step: int, entry: dict[str, Any], controller: object) -> list[FeedbackEvent]:
        source = str(entry.get("source", "unknown"))
        sequence = entry["sequence"]
        changes = entry.get("changes")
        if not isinstance(changes, dict) or not changes:
            error = f"entry has no 'changes' object, got {changes!r}"
            logger.error("step %d: feedback entry %d from %s rejected: %s", step, sequence, source, error)
            return [FeedbackEvent(step, source, {}, False, error, sequence)]
        events = []
        for key, value in changes.items():
            change = {key: value}
            try:
                message = apply_change(controller, key, value)
            except ValueError as error:
                logger.error(
                    "step %d: feedback change %s from %s (entry %d) rejected: %s", step, change, source, sequence, error
                )
                events.append(FeedbackEvent(step, source, change, False, str(error), sequence))
                continue
            logger.info("step %d: feedback change %s from %s applied: %s", step, change, source, message)
            events.append(FeedbackEvent(step, source, change, True, None, sequence, message))
        return events


def apply_change(controller: object, key: str, value: Any) -> str:
    """Apply one change ``key = value`` to ``controller`` and return its description.

    Raises:
        ValueError: if the key is unknown, the value is invalid, or the controller has no setter
            for the key (for example a band on a :class:`~hclm.control.CosineSchedule`).
    """
    if key not in KNOWN_KEYS:
        raise ValueError(f"unknown key {key!r}; use one of {', '.join(KNOWN_KEYS)}")
    if key == "pause":
        if not isinstance(value, bool):
            raise ValueError(f"pause must be true or false, got {value!r}")
        method_name = "pause" if value else "resume"
        return _setter(controller, method_name, key)()
    if key == "lam":
        return _setter(controller, "set_lam", key)(check_lam(value))
    if key == "band":
        low, high = check_band(*_band_pair(value))
        return _setter(controller, "set_band", key)(low, high)
    return _setter(controller, "set_floor", key)(check_floor(value))


def _setter(controller: object, name: str, key: str) -> Any:
    method = getattr(controller, name, None)
    if not callable(method):
        raise ValueError(f"{type(controller).__name__} has no {name}() for {key!r} changes; use a PIController")
    return method


def events_to_json(events: Iterable[FeedbackEvent], path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Convert events to JSON-ready dicts and, if ``path`` is given, write them there atomically."""
    rows = [asdict(event) for event in events]
    for row in rows:
        row["change"] = {key: _plain(value) for key, value in row["change"].items()}
    if path is not None:
        atomic_write_json(path, rows)
    return rows


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

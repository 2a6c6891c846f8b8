"""Check that an hclm HTML report renders in headless Chromium, and save a screenshot of it.

The checks run inside the browser, so Chromium's own image decoding and layout are judged.
Every ``<img>`` must have finished loading with a non-zero natural width and height. Every
``<table>`` must have at least one row with cells and a non-zero rendered size. The report
must contain at least one image and one table.

The report is copied into a temporary folder with a small script appended. On the window
``load`` event that script writes its findings as JSON into a hidden element, and
``chromium --dump-dom`` returns the DOM with that element. Because only the report file is
copied, an image that references a file beside the report fails the check, which is
intended: ``hclm run`` writes a self-contained report with every plot as a data URI.

Run: ``python scripts/check_report_browser.py runs/x/report.html --screenshot shot.png``.
Exit status: 0 when every check passes, 1 when a check fails, 2 when the report or
Chromium is missing, or Chromium fails or times out. The screenshot is written whenever
both Chromium calls succeed, including when a check fails.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser")
# Flags that keep headless Chromium off the network. run_chromium adds a new, empty profile folder to each call.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIRTUAL_TIME_BUDGET_MS = 10_000
CHROMIUM_TIMEOUT_S = 120
WINDOW_WIDTH = 1280
MIN_WINDOW_HEIGHT = 800
# Used when the page height is unknown because the verdict is missing.
FALLBACK_WINDOW_HEIGHT = 8000
# NOTE: guessed limit. Very tall software-rendered screenshots may fail or take long, so taller
# pages are cut off at this height in the screenshot. The checks still cover the whole page.
MAX_WINDOW_HEIGHT = 16384
VERDICT_ID = "hclm-browser-check-verdict"
NAME_LENGTH = 60

# Runs on window load, after every image has loaded or failed, and stores the findings as JSON.
VERDICT_SCRIPT = f"""
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images).map((image, index) => ({{
    index: index,
    name: image.alt || (image.getAttribute("src") || "").slice(0, {NAME_LENGTH}),
    complete: image.complete,
    width: image.naturalWidth,
    height: image.naturalHeight,
  }}));
  const tables = Array.from(document.querySelectorAll("table")).map((table, index) => {{
    const box = table.getBoundingClientRect();
    const header = table.querySelector("th") || table.querySelector("td");
    return {{
      index: index,
      header: header ? header.textContent.trim().slice(0, {NAME_LENGTH}) : "",
      rows_with_cells: Array.from(table.rows).filter((row) => row.cells.length > 0).length,
      width: box.width,
      height: box.height,
    }};
  }});
  const pageHeight = document.documentElement.scrollHeight;
  const verdict = document.createElement("pre");
  verdict.id = "{VERDICT_ID}";
  verdict.hidden = true;
  verdict.textContent = JSON.stringify({{images: images, tables: tables, page_height: pageHeight}});
  document.body.appendChild(verdict);
}});
</script>
"""
VERDICT_PATTERN = re.compile(rf'<pre id="{VERDICT_ID}"[^>]*>(.*?)</pre>', re.DOTALL)


class CheckError(Exception):
    """Error raised when the check cannot run because the report or Chromium is missing, or Chromium failed."""


def find_chromium(requested: str | None) -> str:
    """Return the path of ``requested`` if given, else of the first Chromium name found on PATH."""
    if requested is not None:
        path = shutil.which(requested)
        if path is None:
            raise CheckError(
                f"Chromium not found at {requested}: the path does not exist or is not executable. "
                "Pass the path of a Chromium executable with --chromium."
            )
        return path
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    raise CheckError(
        f"Chromium not found: none of {', '.join(CHROMIUM_NAMES)} is on PATH. "
        "Install it (on Debian: apt-get install chromium) or pass its path with --chromium."
    )


def instrument_report(report: Path, folder: Path) -> Path:
    """Write a copy of ``report`` with the verdict script into ``folder`` and return its path."""
    text = report.read_text(encoding="utf-8")
    closing = text.lower().rfind("</body>")
    if closing < 0:
        instrumented = text + VERDICT_SCRIPT
    else:
        instrumented = text[:closing] + VERDICT_SCRIPT + text[closing:]
    copy = folder / report.name
    copy.write_text(instrumented, encoding="utf-8")
    return copy


def run_chromium(chromium: str, arguments: list[str], profile: Path) -> str:
    """Run headless Chromium with a new profile folder and return its stdout.

    Chromium starts renderer and helper processes, so it runs in its own process group, and
    the whole group is killed on timeout.
    """
    profile.mkdir()
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise CheckError(f"Chromium timed out after {CHROMIUM_TIMEOUT_S} s: {' '.join(command)}") from None
    if process.returncode != 0:
        last_lines = "\n".join(stderr.strip().splitlines()[-20:]) or "(stderr was empty)"
        raise CheckError(
            f"Chromium failed with exit status {process.returncode}: {' '.join(command)}\n"
            f"Last lines of its stderr:\n{last_lines}"
        )
    return stdout


def read_verdict(chromium: str, page: Path, work: Path) -> dict[str, Any] | None:
    """Load ``page`` and return the verdict JSON, or None if the load event never fired."""
    dom = run_chromium(
        chromium,
        [
            f"--window-size={WINDOW_WIDTH},{MIN_WINDOW_HEIGHT}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            "--dump-dom",
            page.as_uri(),
        ],
        work / "profile-dom",
    )
    match = VERDICT_PATTERN.search(dom)
    if match is None:
        return None
    return json.loads(html.unescape(match.group(1)))


def take_screenshot(chromium: str, page: Path, screenshot: Path, height: int, work: Path) -> None:
    """Write a PNG of ``page`` at the check's window width and the given height."""
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(
        chromium,
        [
            f"--window-size={WINDOW_WIDTH},{height}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            "--hide-scrollbars",
            f"--screenshot={screenshot}",
            page.as_uri(),
        ],
        work / "profile-screenshot",
    )
    if not screenshot.is_file():
        raise CheckError(f"Chromium exited cleanly but wrote no screenshot at {screenshot}.")


def find_failures(verdict: dict[str, Any]) -> list[str]:
    """Return one line per failed check in ``verdict``, empty when every check passes."""
    failures = []
    if not verdict["images"]:
        failures.append("no <img> element in the report")
    if not verdict["tables"]:
        failures.append("no <table> element in the report")

    for image in verdict["images"]:
        if not image["complete"] or image["width"] <= 0 or image["height"] <= 0:
            failures.append(
                f"image {image['index']} ({image['name']!r}) did not load: complete={image['complete']}, "
                f"naturalWidth={image['width']}, naturalHeight={image['height']}"
            )

    for table in verdict["tables"]:
        label = f"table {table['index']} (first header {table['header']!r})"
        if table["rows_with_cells"] == 0:
            failures.append(f"{label} has no row with cells")
        if table["width"] <= 0 or table["height"] <= 0:
            failures.append(f"{label} has zero rendered size: {table['width']} x {table['height']} px")
    return failures


def check_report(report: Path, screenshot: Path, chromium: str) -> int:
    """Run the checks on ``report``, write the screenshot, print the outcome and return the exit status."""
    with tempfile.TemporaryDirectory(prefix="hclm-browser-check-") as temporary:
        work = Path(temporary)
        page = instrument_report(report, work)
        verdict = read_verdict(chromium, page, work)
        if verdict is None:
            failures = [
                f"the page did not finish loading within {VIRTUAL_TIME_BUDGET_MS} ms of virtual time, "
                "so no image or table was checked"
            ]
            height = FALLBACK_WINDOW_HEIGHT
            summary = ""
        else:
            failures = find_failures(verdict)
            height = min(max(int(verdict["page_height"]), MIN_WINDOW_HEIGHT), MAX_WINDOW_HEIGHT)
            summary = f"{len(verdict['images'])} images, {len(verdict['tables'])} tables rendered"
        take_screenshot(chromium, page, screenshot, height, work)

    if failures:
        for failure in failures:
            print(f"FAIL: {failure}")
        print(f"{len(failures)} check(s) failed for {report}; screenshot written to {screenshot}")
        return 1
    print(f"{summary}; screenshot written to {screenshot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check that every image loads and every table renders in headless Chromium, "
        "and save a full-page screenshot. Exit status: 0 pass, 1 a check failed, 2 the check could not run."
    )
    parser.add_argument("report", type=Path, help="report.html written by hclm run")
    parser.add_argument("--screenshot", type=Path, required=True, help="path of the PNG screenshot to write")
    parser.add_argument(
        "--chromium",
        help=f"Chromium executable (default: the first of {', '.join(CHROMIUM_NAMES)} on PATH)",
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    try:
        if not args.report.is_file():
            raise CheckError(f"report not found: {args.report}. Pass the path of a report.html written by hclm run.")
        chromium = find_chromium(args.chromium)
        status = check_report(args.report.resolve(), args.screenshot.resolve(), chromium)
    except CheckError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"browser check took {time.perf_counter() - started:.1f} s")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

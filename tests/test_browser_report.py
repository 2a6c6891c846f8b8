"""Tests of scripts/check_report_browser.py on a real quick-run report in headless Chromium.

The tests are skipped when Chromium is not installed, unless HCLM_REQUIRE_BROWSER=1 is set,
which turns the missing browser into a failure. When HCLM_ARTIFACTS names a folder, the
screenshot of the passing report is saved there.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hclm.cli import app

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report_browser.py"
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The full-page screenshot of the quick report measured about 1 MB (Chromium 150), so a PNG
# under 50 kB is a blank or cut-off page.
MIN_SCREENSHOT_BYTES = 50_000
SCREENSHOT_WIDTH = 1280
# Base64 that decodes cleanly to bytes that are not an image.
GARBAGE_BASE64 = "Z2FyYmFnZQ==" * 8
# The script allows 120 s for each of its two Chromium calls, so this limit only catches a hung script.
SCRIPT_TIMEOUT_S = 300


def _find_chromium() -> str | None:
    path = shutil.which("chromium")
    if path is not None:
        return path
    if DEBIAN_CHROMIUM.is_file():
        return str(DEBIAN_CHROMIUM)
    return None


def _run_check(report: Path, screenshot: Path, chromium: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(report), "--screenshot", str(screenshot), "--chromium", chromium],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _find_chromium()
    if path is not None:
        return path
    message = f"Chromium not found on PATH or at {DEBIAN_CHROMIUM}. Install it with apt-get install chromium."
    if os.environ.get("HCLM_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{message} HCLM_REQUIRE_BROWSER=1 requires the browser tests to run.")
    pytest.skip(message)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, chromium: str) -> Path:
    out = tmp_path_factory.mktemp("browser") / "out"
    result = CliRunner().invoke(app, ["run", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out / "report.html"


@pytest.fixture
def screenshot_folder(tmp_path: Path) -> Path:
    artifacts = os.environ.get("HCLM_ARTIFACTS")
    if not artifacts:
        return tmp_path
    folder = Path(artifacts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_quick_report_renders(report: Path, chromium: str, screenshot_folder: Path):
    screenshot = screenshot_folder / "report_screenshot.png"
    screenshot.unlink(missing_ok=True)
    text = report.read_text(encoding="utf-8")

    result = _run_check(report, screenshot, chromium)

    assert result.returncode == 0, result.stdout + result.stderr
    summary = re.search(r"(\d+) images, (\d+) tables rendered", result.stdout)
    assert summary is not None, result.stdout
    assert int(summary.group(1)) == text.count("<img "), result.stdout
    assert int(summary.group(2)) == text.count("<table"), result.stdout
    assert "FAIL" not in result.stdout

    assert screenshot.is_file()
    data = screenshot.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > MIN_SCREENSHOT_BYTES
    width, height = struct.unpack(">II", data[16:24])
    assert width == SCREENSHOT_WIDTH
    assert height > width


def test_corrupt_image_fails_check(report: Path, chromium: str, tmp_path: Path):
    text = report.read_text(encoding="utf-8")
    first_image = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', text)
    assert first_image is not None, "the quick report has no embedded PNG to corrupt"
    broken = tmp_path / "report.html"
    broken.write_text(text.replace(first_image.group(1), GARBAGE_BASE64, 1), encoding="utf-8")
    screenshot = tmp_path / "broken.png"

    result = _run_check(broken, screenshot, chromium)

    assert result.returncode == 1, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL: ")]
    assert len(failures) == 1, result.stdout
    assert "image 0" in failures[0]
    assert html.unescape(first_image.group(2)) in failures[0]
    assert "naturalWidth=0" in failures[0]
    assert screenshot.is_file()


def test_missing_report_exits_2(tmp_path: Path):
    missing = tmp_path / "absent.html"

    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(missing), "--screenshot", str(tmp_path / "shot.png")],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )

    assert result.returncode == 2
    assert "report not found" in result.stderr
    assert str(missing) in result.stderr

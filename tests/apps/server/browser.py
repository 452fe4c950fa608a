"""The page's tests drive Debian's chromium through Playwright: never a downloaded browser."""

from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def require_browser() -> None:
    """Skip the calling test module, saying what to install, where Chromium or Playwright is missing."""
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
    pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install playwright); the browser is "
                        "Debian's chromium, never a downloaded one")

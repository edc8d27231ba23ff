"""The report in a real browser: headless Chromium renders the scorecard and a method page with plots.

Chromium comes from the Debian package ``chromium`` (``install.sh --test`` installs it). Each page is
loaded once with ``--dump-dom`` (the DOM after load, where a small inline script records how many
images decoded) and ``--screenshot``; console messages come from ``--enable-logging=stderr``.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from atlas_fixtures import comparison_records, put, synthetic_probes
from peftatlas.report import build_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                                "(apt-get install chromium; install.sh --test does it)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    db = put(root / "results.sqlite", comparison_records())
    synthetic_probes(db)
    return build_report(db, root / "site")


def render(page, shot, profile, height: int = 2200) -> tuple[str, str]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", f"--window-size=1280,{height}",
           f"--screenshot={shot}", "--dump-dom", page.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def check_page(page, tmp_path, name: str, min_images: int) -> str:
    shot = tmp_path / f"{name}.png"
    dom, log = render(page, shot, tmp_path / f"profile-{name}")
    m = re.search(r'data-images-ok="(\d+)/(\d+)"', dom)
    assert m, "the page's load script did not run"
    ok, total = int(m.group(1)), int(m.group(2))
    assert ok == total >= min_images, f"{ok} of {total} images decoded"
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert not console, console
    assert shot.is_file() and shot.stat().st_size > 20_000
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 2000 and pixels.shape[1] == 1280
    assert float(np.std(pixels[..., :3])) > 0.05, "screenshot is blank"
    return dom


def test_scorecard_page_displays_with_plots(site, tmp_path):
    dom = check_page(site.index_html, tmp_path, "index", min_images=4)
    assert "Scorecard" in dom and "VeRA" in dom and "7 / 7" in dom
    assert dom.count('class="badge pass"') >= 5


def test_method_page_displays_with_plots(site, tmp_path):
    dom = check_page(site.out / "methods" / "vera.html", tmp_path, "vera", min_images=3)
    assert "Hypothesis" in dom and "Pseudocode" in dom and "Derivation" in dom

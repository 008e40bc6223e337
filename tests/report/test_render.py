"""The report renders in headless Chromium: every image decodes, the verdict table is there.

Needs Debian's ``chromium`` (``scripts/ensure-system.sh`` installs it as root); skipped, saying
so, only when the browser is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from advdim.cli import main

from .conftest import failing_check, series_check, wide_check

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Appended to a copy of the page: after load, count the images that decoded from a data: URL.
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0 && i.src.indexOf('data:image/') === 0; });
  var p = document.createElement('p'); p.id = 'probe';
  var rows = document.querySelectorAll('#verdicts tbody tr').length;
  var badge = document.getElementById('outcome');
  var wide = Math.max(document.documentElement.scrollWidth, document.body.scrollWidth);
  p.textContent = 'images ' + ok.length + ' of ' + imgs.length + ' rows ' + rows + ' width ' + wide + ' of '
    + window.innerWidth + ' badge ' + (badge ? badge.textContent : 'none');
  document.body.appendChild(p);
});
</script>"""


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture(scope="module")
def browser() -> str:
    if not Path(CHROMIUM).is_file() and shutil.which("chromium") is None:
        pytest.skip("Debian's chromium is not installed and cannot be installed without root: "
                    "run scripts/ensure-system.sh as root (apt-get install -y chromium) to enable this test")
    return CHROMIUM


def test_report_renders_with_every_image(browser: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          extra_checks) -> None:  # type: ignore[no-untyped-def]
    extra_checks("series", series_check)
    extra_checks("planted", failing_check)
    extra_checks("wide", wide_check)
    report = tmp_path / "report"
    assert main(["verify", "--only", "core", "--scale", "tiny", "--out", str(report)]) == 1
    capsys.readouterr()
    page = (report / "report.html").read_text()
    n_rows = page.count('<tr class="verdict ')
    n_imgs = len(re.findall(r"<img ", page))
    assert n_imgs == 4 and n_rows >= 3
    assert not re.search(r'src="(?!data:)', page), "the report must be self-contained"

    probed = report / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    # a laptop screen: 1366 CSS pixels wide; the verdict table must fit without horizontal scrolling
    dom = chromium("--virtual-time-budget=10000", "--window-size=1366,768", "--dump-dom", probed.as_uri(),
                   profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    m = re.search(r'<p id="probe">images (\d+) of (\d+) rows (\d+) width (\d+) of (\d+) badge ([^<]*)</p>',
                  dom.stdout)
    assert m, dom.stdout[-2000:]
    assert (int(m[1]), int(m[2]), int(m[3])) == (n_imgs, n_imgs, n_rows)
    assert int(m[5]) == 1366 and int(m[4]) <= int(m[5]), f"the page is {m[4]} px wide on a {m[5]} px screen"
    # the badge names the outcome and its counts, which agree with the rows of the table
    n_fail = page.count('<tr class="verdict fail')
    judged = n_rows - page.count('<tr class="verdict na')
    assert m[6].startswith(f"FAIL: {n_fail} of {judged} judged claims failed"), m[6]
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', dom.stdout)
    assert len(srcs) == n_imgs and all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in srcs)
    assert "planted false claim (test)" in dom.stdout and 'class="verdict fail"' in dom.stdout
    assert 'id="failed"' in dom.stdout  # the list of failed claims under the outcome

    shot = tmp_path / "shot.png"
    res = chromium(f"--screenshot={shot}", "--window-size=1280,2000", (report / "report.html").as_uri(),
                   profile=tmp_path / "p2")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 0.05  # not blank
    red = (img[..., 0] > 0.7) & (img[..., 1] < 0.25) & (img[..., 2] < 0.25)  # the FAIL badge and row
    assert red.sum() > 500
    bright = img.mean(axis=2)
    plotted = (bright < 0.5).mean(axis=1)  # rows of the page holding dark ink: text, axes, curves
    assert np.count_nonzero(plotted > 0.01) > 400


def test_the_width_probe_sees_a_page_wider_than_the_screen(browser: str, tmp_path: Path) -> None:
    """The no-horizontal-scrolling check can fail: a 2000 px table on a 1366 px screen is seen."""
    page = tmp_path / "wide.html"
    page.write_text('<html><body><span id="outcome">PASS</span><table id="verdicts" style="width:2000px"><tbody>'
                    "<tr><td>x</td></tr></tbody></table>" + PROBE + "</body></html>")
    dom = chromium("--virtual-time-budget=5000", "--window-size=1366,768", "--dump-dom", page.as_uri(),
                   profile=tmp_path / "p")
    m = re.search(r'<p id="probe">images 0 of 0 rows 1 width (\d+) of (\d+) badge PASS</p>', dom.stdout)
    assert m, dom.stdout[-2000:]
    assert int(m[1]) >= 2000 > int(m[2]) == 1366

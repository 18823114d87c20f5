"""The /ui page in headless Chromium against a served process on 127.0.0.1.

Chromium loads the page, which calls the JSON API, and dumps the DOM once the page is idle. The
test then checks that the chart's SVG paths hold drawn points. It needs Debian's `chromium`
package (`apt-get install -y --no-install-recommends chromium`) and skips without it.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

SERIES = "eu-west-1b/c5.xlarge/Linux/UNIX"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
#: Virtual time Chromium gives the page to finish its fetches before dumping the DOM.
VIRTUAL_TIME_MS = 20_000


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium binary on PATH; install it with "
                    "`apt-get install -y --no-install-recommends chromium`")
    return path


@pytest.fixture(scope="module")
def served(small_model_tag):
    import bentoml

    from conftest import ROOT

    with bentoml.serve("service:SpotForecast", port=3919, host="127.0.0.1",
                       working_dir=str(ROOT)) as server:
        yield server


def dump_dom(chromium: str, url: str, profile) -> str:
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom", url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def path_points(dom: str, css_class: str) -> int:
    match = re.search(rf'<path class="{css_class}" d="([^"]*)"', dom)
    assert match is not None, f"no <path class={css_class!r}> in the page"
    return len(re.findall(r"-?\d+(?:\.\d+)?,-?\d+(?:\.\d+)?|[HV]-?\d", match.group(1)))


def test_page_draws_fan_chart(chromium, served, tmp_path):
    dom = dump_dom(chromium, f"{served.url}/ui/?series={SERIES}&horizon=24", tmp_path / "profile")
    assert 'data-state="drawn"' in dom
    assert f'data-series="{SERIES}"' in dom
    # The median starts at the last price and has one point per forecast hour.
    assert path_points(dom, "median") == 25
    # Step history: 168 hours drawn as one start point, then one H and one V per hour.
    assert path_points(dom, "history") > 100
    band = re.search(r'<polygon class="band80" points="([^"]+)"', dom)
    assert band is not None
    assert len(band.group(1).split()) == 50
    assert "returned" not in dom  # no API error shown in a status line


def test_flat_series_plain_price_ticks(chromium, served, tmp_path):
    # eu-west-1a m5.large kept one price through its last week. The axis spans at least 2 % of
    # that price, with plain tick labels, however narrow the forecast band is.
    flat = "eu-west-1a/m5.large/Linux/UNIX"
    dom = dump_dom(chromium, f"{served.url}/ui/?series={flat}&horizon=24", tmp_path / "profile")
    assert 'data-state="drawn"' in dom
    ticks = re.findall(r'text-anchor="end"[^>]*>(\d+\.\d+)<', dom)
    assert len(ticks) == 6
    assert max(len(tick.split(".")[1]) for tick in ticks) <= 5
    values = [float(tick) for tick in ticks]
    assert values[-1] - values[0] >= 0.015 * values[0]


def test_page_shows_api_error(chromium, served, tmp_path):
    dom = dump_dom(chromium, f"{served.url}/ui/?series=eu-west-1a/m5.larg/Linux/UNIX",
                   tmp_path / "profile")
    assert "returned 404" in dom
    assert "close matches" in dom

"""The report of a real job in a real browser: headless Chromium opens the share link of a small job served by
the embedded deployment; every image loads, the console stays clean, and at a phone's width nothing overflows.

Screenshots are kept under var/test-artifacts/ (the paths are printed). Chromium and its driver are Debian's
`chromium` and `chromium-driver` (scripts/ensure-services installs them); the test skips, saying which is missing,
only when they cannot be found.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from diffaudit.client import Client
from tests.e2e.test_embedded import embedded_server  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "var" / "test-artifacts"
PHONE_WIDTH = 390
SPEC: dict[str, Any] = {
    "stages": ["sample", "features", "irs"],
    "sample": {"n": 32, "steps": 5, "batch_size": 16},
    "features": {"extractor": "random-cnn"},
}
# IRS target 0.99: the tiny model's duplicated retrievals reject it within its first batches of 16
REJECTED_SPEC: dict[str, Any] = {
    **SPEC,
    "sample": {"n": 256, "steps": 5, "batch_size": 16},
    "irs": {"target": 0.99, "early_rejection": True},
}


def browser_programs() -> tuple[str, str]:
    """(chromium, chromedriver), or a skip naming what is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(scripts/ensure-services does, as root)"
        )
    assert chromium is not None and driver is not None
    return chromium, driver


@pytest.fixture()
def browser() -> Iterator[Any]:
    chromium, driver_path = browser_programs()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1200,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def image_states(driver: Any) -> list[dict[str, Any]]:
    states: list[dict[str, Any]] = driver.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))"
    )
    return states


def console_errors(driver: Any) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def screenshot(driver: Any, name: str) -> Path:
    """The whole page (not only the window) as a PNG under var/test-artifacts/."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


def test_the_report_opens_in_a_browser(
    embedded_server: tuple[str, str],  # noqa: F811
    tiny_demo_model: Path,
    browser: Any,
) -> None:
    url, token = embedded_server
    client = Client(url, token)
    checkpoint = client.push_checkpoint(tiny_demo_model, name="tiny")
    job = client.wait(client.evaluate(checkpoint["id"], "digits", SPEC)["id"], poll=0.2)
    assert job["status"] == "succeeded", job
    artifacts = client.artifacts(job["id"])
    assert "report.html" in artifacts, "the worker stores the report when the job ends"
    figures = [name for name in artifacts if name.endswith(".png")]
    assert {"sample/grid.png", "irs/distinct_curve.png"} <= set(figures)

    link = httpx.post(
        f"{url}/v1/evaluations/{job['id']}/share",
        headers={"Authorization": f"Bearer {token}"},
        json={"expires_in": 600},
    ).json()["url"]
    browser.get(url + link)  # a browser sends no bearer header: the share link opens the report
    assert browser.title.startswith(f"diffaudit report: evaluation {job['id']}")
    assert "IRS_inf" in browser.find_element("id", "verdict").text

    images = image_states(browser)
    assert sorted(image["alt"] for image in images) == sorted(figures)
    assert all(image["complete"] and image["width"] > 0 for image in images), images
    assert console_errors(browser) == []
    assert screenshot(browser, "report-desktop.png").stat().st_size > 0

    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    browser.refresh()
    width = browser.execute_script("return window.innerWidth")
    scroll_width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width == PHONE_WIDTH
    assert scroll_width <= width, f"the page is {scroll_width} px wide at a {width} px screen"
    assert all(image["width"] > 0 for image in image_states(browser))
    assert console_errors(browser) == []
    screenshot(browser, "report-phone.png")

    rejected = client.wait(client.evaluate(checkpoint["id"], "digits", REJECTED_SPEC)["id"], poll=0.2)
    assert rejected["status"] == "rejected", rejected
    assert "report.html" in client.artifacts(rejected["id"]), "the worker stores the report of a rejection too"
    link = httpx.post(
        f"{url}/v1/evaluations/{rejected['id']}/share", headers={"Authorization": f"Bearer {token}"}
    ).json()["url"]
    browser.get(url + link)
    assert "Rejected" in browser.find_element("id", "verdict").text
    assert "irs/distinct_curve.png" in [image["alt"] for image in image_states(browser)]
    assert all(image["width"] > 0 for image in image_states(browser))
    assert console_errors(browser) == []
    screenshot(browser, "report-rejected-phone.png")


def test_the_run_and_comparison_pages_open_in_a_browser(browser: Any, tmp_path: Path) -> None:
    """The pages as the endpoints render them (tests/app/test_report_pages.py tests those), opened from files."""
    from diffaudit.metrics.trajectory import Point, copying_starts, diversity_drops
    from diffaudit.plots.trajectory import trajectory_png
    from diffaudit.report import render_comparison_page, render_run_page

    steps = [1000, 2000, 3000, 4000]
    irs = [(0.8, 0.75, 0.85), (0.78, 0.72, 0.84), (0.6, 0.55, 0.65), (0.58, 0.5, 0.66)]
    series = {
        "irs_inf": [Point(s, *v) for s, v in zip(steps, irs, strict=True)],
        "copy_rate_pixels": [Point(s, c) for s, c in zip(steps, (0.0, 0.005, 0.02, 0.1), strict=True)],
        "fid": [Point(s, f, f - 1, f + 1) for s, f in zip(steps, (30.0, 40.0, 50.0, 70.0), strict=True)],
        "ds_count": [Point(s, d) for s, d in zip(steps, (40.0, 38.0, 20.0, 10.0), strict=True)],
    }
    marks = {"copying starts": copying_starts(series), "diversity drops": diversity_drops(series["irs_inf"])}
    rows = [
        {"step": s, "checkpoint_id": f"ck_{i:020d}", "evaluation_id": f"ev_{i:020d}", "status": "succeeded"}
        for i, s in enumerate(steps)
    ]
    run_page = render_run_page("run-1", "a" * 64, "digits", rows, series, marks, trajectory_png(series, marks))
    metric = {"baseline": 0.5, "error_rate": 0.05, "higher_is_better": True, "n_pairs": 256}
    comparison_page = render_comparison_page(
        {
            "baseline_evaluation_id": "ev_a",
            "candidate_evaluation_id": "ev_b",
            "spec_hash": "a" * 64,
            "dataset_id": "digits",
            "replicates": 1000,
            "seed": 0,
            "metrics": [
                {
                    **metric,
                    "metric": "irs_inf",
                    "candidate": 0.4,
                    "difference": -0.1,
                    "interval": [-0.12, -0.08],
                    "verdict": "worse",
                },
                {
                    **metric,
                    "metric": "ds_rate",
                    "candidate": 0.6,
                    "difference": 0.1,
                    "interval": [0.05, 0.15],
                    "verdict": "better",
                },
            ],
        }
    )
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 2, "mobile": True},
    )
    for name, page in (("run", run_page), ("comparison", comparison_page)):
        path = tmp_path / f"{name}.html"
        path.write_text(page)
        browser.get(path.as_uri())
        assert browser.title.startswith(f"diffaudit {name}")
        assert all(image["complete"] and image["width"] > 0 for image in image_states(browser))
        scroll_width = browser.execute_script("return document.documentElement.scrollWidth")
        assert scroll_width <= PHONE_WIDTH, f"the {name} page is {scroll_width} px wide at {PHONE_WIDTH} px"
        assert console_errors(browser) == []
        screenshot(browser, f"{name}-page-phone.png")
    browser.get((tmp_path / "run.html").as_uri())
    assert len(image_states(browser)) == 1 and "copying starts, diversity drops" in browser.page_source

"""The HTML report opened in headless Chromium: tables and plots render, the explorer works."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.test_report import report_store  # noqa: F401  (session fixture, built once)

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture()
def browser():
    if not CHROMIUM.exists() or not DRIVER.exists():
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mmbench-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1300,1800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_renders_and_explorer_works(browser, report_store):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get((report_store["out"] / "report.html").as_uri())
    tables = browser.find_elements(By.CSS_SELECTOR, "table.measured")
    assert len(tables) >= 4
    assert "text_conversion/pica" in tables[0].text and "[95% CI]" in tables[0].text
    assert browser.find_elements(By.CSS_SELECTOR, "div.published table")
    plots = browser.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(plots) >= 5
    for img in plots:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0

    samples = browser.find_elements(By.CSS_SELECTOR, "#sample-list li.sample")
    assert samples, "explorer lists no samples"
    samples[0].click()
    cards = browser.find_elements(By.CSS_SELECTOR, "#sample-detail .answer-card")
    assert {c.text.splitlines()[0] for c in cards} == {"text_conversion/pica", "text_conversion/promptcap"}
    thumb = browser.find_element(By.CSS_SELECTOR, "#sample-detail img#thumb")
    assert browser.execute_script("return arguments[0].naturalWidth", thumb) > 0
    assert '"Right"' in browser.find_element(By.ID, "sample-detail").text

    n_all = len(samples)
    browser.find_element(By.ID, "disagree-only").click()
    shown = browser.find_elements(By.CSS_SELECTOR, "#sample-list li.sample")
    assert 0 < len(shown) <= n_all and all("dis" in li.get_attribute("class") for li in shown)
    assert "disagree" in browser.find_element(By.ID, "explorer-info").text
    ARTIFACTS.mkdir(exist_ok=True)
    shown[0].click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sample-detail .answer-card")) == 2
    browser.execute_script("document.getElementById('explorer-section').scrollIntoView()")
    assert browser.save_screenshot(str(ARTIFACTS / "report.png"))

"""The HTML report opened in headless Chromium: tables sort, plots render, the explorer shows why an
answer came out, hostile store strings stay text, and no console error fires.

Screenshots go to ``<report folder>/screenshots/`` and ``test-artifacts/`` for a person to look at."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tests.report_fixtures import Unit, log_units

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

#: Strings a crafted MLflow store could hold; each must render as exactly this text.
HOSTILE_PREDICTIONS = ("<!--<script>", '</script><script>window.__pwned=1;document.title="PWNED"</script>',
                       "a & b <b>bold</b> \u2028 line")
HOSTILE_KIND = 'vqa" id="x"><script>window.__pwned=2</script><a href="javascript:window.__pwned=5">'
HOSTILE_TASK = "t'\"><img src=x onerror=\"window.__pwned=3\">"
HOSTILE_PARADIGM = "p/<svg onload=window.__pwned=4>"


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
                 f"--user-data-dir={profile}", "--window-size=1400,1800"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _console_errors(driver) -> list[str]:  # noqa: ANN001
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def _shot(driver, out: Path, name: str) -> None:  # noqa: ANN001
    for folder in (out / "screenshots", ARTIFACTS):
        folder.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(folder / name))


def _pick(driver, select_id: str, text: str) -> None:  # noqa: ANN001
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_visible_text(text)


@pytest.mark.slow
def test_report_renders_sorts_and_explains_answers(browser, report_store):
    from selenium.webdriver.common.by import By

    out = report_store["out"]
    browser.get((out / "report.html").as_uri())
    tables = browser.find_elements(By.CSS_SELECTOR, "table.measured")
    assert len(tables) >= 6
    assert f"text_conversion/pica · llm={report_store['llm_b']}" in tables[0].text and "[95% CI]" in tables[0].text
    assert browser.find_elements(By.CSS_SELECTOR, "div.published table")
    plots = browser.find_elements(By.CSS_SELECTOR, "img.plot")
    assert len(plots) >= 8
    for img in plots:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
    # tables fit the page: the wrapper scrolls, the page does not
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")

    # sorting: click a numeric header twice, read the column's sort keys
    table = tables[0]
    head = table.find_elements(By.CSS_SELECTOR, "thead th")[-1]
    browser.execute_script("arguments[0].scrollIntoView()", head)
    keys = "return Array.from(arguments[0].tBodies[0].rows).map(r => parseFloat(r.cells[arguments[1]].dataset.sort))"
    col = len(table.find_elements(By.CSS_SELECTOR, "thead th")) - 1
    head.click()
    asc = browser.execute_script(keys, table, col)
    head.click()
    desc = browser.execute_script(keys, table, col)
    assert asc == sorted(asc) and desc == sorted(asc, reverse=True) and len(asc) == 4
    assert "gap best" in table.find_element(By.CSS_SELECTOR, "tfoot").text  # the gap row stays below

    # explorer, 1-shot VQA: four setups, each with its prompt, demonstration and converted text
    _pick(browser, "task-select", "world_vqa")
    _pick(browser, "setting-select", "1-shot · trial 0")
    samples = browser.find_elements(By.CSS_SELECTOR, "#sample-list li.sample")
    assert samples, "explorer lists no samples"
    samples[0].click()
    cards = browser.find_elements(By.CSS_SELECTOR, "#sample-detail .answer-card")
    assert len(cards) == 4 and {c.find_element(By.CSS_SELECTOR, "b.setup").text for c in cards} == {
        f"{p} · llm={x}" for p in ("text_conversion/pica", "text_conversion/promptcap")
        for x in (report_store["llm_a"], report_store["llm_b"])}
    thumb = browser.find_element(By.CSS_SELECTOR, "#sample-detail img#thumb")
    assert browser.execute_script("return arguments[0].naturalWidth", thumb) > 0
    card = cards[0]
    demos = card.find_elements(By.CSS_SELECTOR, ".demo")
    assert len(demos) == 1 and demos[0].find_element(By.CSS_SELECTOR, ".demo-answer").text
    assert browser.execute_script("return arguments[0].naturalWidth", demos[0].find_element(By.TAG_NAME, "img")) > 0
    summaries = card.find_elements(By.CSS_SELECTOR, "details summary")
    labels = [s.text for s in summaries]
    assert "task prompt" in labels and any(x.startswith("converted text") for x in labels) and "LLM prompt" in labels
    summaries[labels.index("task prompt")].click()
    question = browser.find_element(By.CSS_SELECTOR, "#sample-detail p.question").text.removeprefix("Question: ")
    assert question and question in card.find_element(By.CSS_SELECTOR, "details[open] pre").text
    assert "Human answers:" in browser.find_element(By.ID, "sample-detail").text
    assert "overall " in card.find_element(By.CSS_SELECTOR, ".verdict").text  # the tables' metric and scale
    browser.execute_script("document.getElementById('explorer-section').scrollIntoView()")
    _shot(browser, out, "explorer_vqa.png")

    # binding: the procedural task's gold word is not labelled as human answers
    _pick(browser, "task-select", "world_binding")
    browser.find_elements(By.CSS_SELECTOR, "#sample-list li.sample")[0].click()
    detail = browser.find_element(By.ID, "sample-detail").text
    assert "Human answers" not in detail and "Expected word (procedural episode)" in detail
    assert browser.find_elements(By.CSS_SELECTOR, "#sample-detail .demo")  # the episode's demonstrations

    n_all = len(browser.find_elements(By.CSS_SELECTOR, "#sample-list li.sample"))
    browser.find_element(By.ID, "disagree-only").click()
    shown = browser.find_elements(By.CSS_SELECTOR, "#sample-list li.sample")
    assert len(shown) <= n_all and all("dis" in li.get_attribute("class") for li in shown)
    assert "disagree" in browser.find_element(By.ID, "explorer-info").text
    browser.execute_script("window.scrollTo(0, 0)")
    _shot(browser, out, "report_top.png")
    assert _console_errors(browser) == []


@pytest.mark.slow
def test_hostile_store_strings_render_as_text(browser, tmp_path):
    """A crafted store (predictions, task kind, task and paradigm names) runs no script in Chromium."""
    from click.testing import CliRunner
    from selenium.webdriver.common.by import By

    from harness.leaderboard.cli import report_cmd

    results = tmp_path / "res"
    preds = list(HOSTILE_PREDICTIONS)
    log_units(results, [Unit(HOSTILE_PARADIGM, HOSTILE_TASK, [100.0, 0.0, 30.0], kind=HOSTILE_KIND,
                             metric_family="vqa_accuracy", primary="overall", predictions=preds),
                        Unit("p/plain", HOSTILE_TASK, [0.0, 0.0, 0.0], kind=HOSTILE_KIND, metric_family="vqa_accuracy",
                             primary="overall")], parent_name='run"><script>window.__pwned=6</script>')
    out = tmp_path / "report"
    res = CliRunner().invoke(report_cmd, ["--results-dir", str(results), "--out", str(out), "--no-thumbnails"])
    assert res.exit_code == 0, res.output
    assert all(p.parent == out for p in out.iterdir())  # no file escaped the folder through a name
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "<script" not in md and "<img" not in md and "&lt;script&gt;window.__pwned=2" in md
    browser.get((out / "report.html").as_uri())
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.title == "mmbench leaderboard report"
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 2  # the data block and the page's own code
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert f"Leaderboard: {HOSTILE_KIND}" in headings
    options = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#task-select option")]
    assert options == [HOSTILE_TASK]
    seen = []
    for li in browser.find_elements(By.CSS_SELECTOR, "#sample-list li.sample"):
        li.click()
        card = next(c for c in browser.find_elements(By.CSS_SELECTOR, "#sample-detail .answer-card")
                    if c.find_element(By.CSS_SELECTOR, "b.setup").text == HOSTILE_PARADIGM)
        seen.append(browser.execute_script("return arguments[0].querySelector('.prediction').textContent", card))
        if seen[-1] == HOSTILE_PREDICTIONS[2]:  # the 30 % VQA match: partial credit, not "right"
            verdict = card.find_element(By.CSS_SELECTOR, ".verdict").text
            assert "partial" in verdict and "30.0 of 100" in verdict and "right" not in verdict
    assert seen == preds
    assert browser.execute_script("return window.__pwned === undefined")
    _shot(browser, out, "hostile.png")
    assert _console_errors(browser) == []

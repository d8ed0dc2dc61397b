"""`jq ui` in a real browser: Debian's Chromium driven by selenium, over real sweeps and a real `jq ui`.

The pages load with no error in the browser's console, show `jq status`'s counts, show a job's end within one
poll, show values that hold HTML as text, and draw one timeline bar per attempt and one point or line per job.
Each test saves screenshots; with JQ_UI_SCREENSHOTS=DIR those of the quickstart run go to DIR (docs/img for the
README). In CI (CI set) a missing Chromium fails the tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, Project, service_unavailable
from tests.ui_support import CHROMEDRIVER, EVIL, JOBS, RUN, TRAIN, headless_chromium, run_evil_sweep, start_ui, status

WAIT = 20  # seconds for a page to show what it should


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from selenium.common.exceptions import WebDriverException
    except ImportError as exc:
        service_unavailable("selenium", f"{exc}; pip install -e '.[test]'")
    if not os.path.exists(CHROMEDRIVER):
        service_unavailable("Chromium", f"no {CHROMEDRIVER}; apt-get install chromium chromium-driver (tests/setup.sh)")
    try:
        driver = headless_chromium(str(tmp_path_factory.mktemp("chromium")))
    except WebDriverException as exc:
        service_unavailable("Chromium", exc.msg or str(exc))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go, for review."""
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def evil(tmp_path_factory):
    path = tmp_path_factory.mktemp("evil")
    project = Project(path, str(path / "jobqueue.db"))
    run = run_evil_sweep(project)
    ui = start_ui(project, "--interval", "1")
    yield project, run, ui
    ui.stop()


def wait_until(browser, condition, what: str, timeout: float = WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda d: condition(d), message=what)


def open_page(browser, url: str, ready_css: str):
    """Load a page, wait for an element its script draws, and return nothing the console complained about."""
    from selenium.webdriver.common.by import By

    # The page before may still be polling a server its test has stopped: it goes first, then what it logged.
    browser.get("about:blank")
    browser.get_log("browser")
    browser.get(url)
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ready_css), f"{ready_css} on {url}")


def console_errors(browser) -> list[dict]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def texts(browser, css: str) -> list[str]:
    return browser.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", css)


def count(browser, css: str) -> int:
    return browser.execute_script("return document.querySelectorAll(arguments[0]).length", css)


def click(browser, css: str) -> None:
    """Click what the selector finds now (the pages redraw as they poll: a found element may be replaced)."""
    browser.execute_script("document.querySelector(arguments[0]).click()", css)


def no_alert(browser) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check
    except NoAlertPresentException:
        return True
    return False


def test_every_page_loads_cleanly_and_shows_jq_statuss_counts(browser, evil, shots):
    project, _, ui = evil
    counts = status(project)["counts"]
    open_page(browser, ui.url, "tr[data-run]")
    assert {s: int(texts(browser, f"tr[data-run] td.count-{s}")[0]) for s in counts} == counts
    assert texts(browser, "tr[data-run] td.done") == [f"{JOBS}/{JOBS}"]
    browser.save_screenshot(str(shots / "runs.png"))
    assert console_errors(browser) == []

    click(browser, "a.run-name")
    wait_until(browser, lambda d: count(d, "#jobs tbody tr[data-job]") == JOBS, "the run's jobs")
    assert {s: int(texts(browser, f"#summary .count-{s}")[0]) for s in counts} == counts
    wait_until(browser, lambda d: count(d, "svg.timeline rect.bar"), "the timeline")
    browser.save_screenshot(str(shots / "run.png"))
    assert console_errors(browser) == []

    click(browser, "a.job-name")
    wait_until(browser, lambda d: EVIL in d.find_element("id", "log").text, "the job's log")
    browser.save_screenshot(str(shots / "job.png"))
    assert console_errors(browser) == []


def test_values_holding_html_show_as_text(browser, evil):
    """The run's name, a parameter's value and a log line hold `<img src=x onerror=alert(1)></script>`: the
    page shows them as text, and no element or script comes of them."""
    _, _, ui = evil
    open_page(browser, ui.url + "runs/1", "#jobs tbody tr[data-job]")
    assert texts(browser, "#run-name") == [RUN] and texts(browser, "#run-title") == [RUN]
    assert browser.title == f"jq ui: {RUN}"
    assert all(name.endswith(EVIL) for name in texts(browser, "a.job-name"))
    assert all(note == EVIL for note in texts(browser, "#jobs tbody td:nth-child(11)"))  # the `note` column
    assert count(browser, "img") == 0 and count(browser, "script") == 6  # boot JSON, uPlot and our four
    open_page(browser, ui.url + "jobs/1", "#params tr")
    wait_until(browser, lambda d: EVIL in d.find_element("id", "log").text, "the log")
    assert EVIL in texts(browser, "td.param-value")
    assert EVIL in texts(browser, "#command")[0] and texts(browser, "#run-link") == [RUN]
    assert count(browser, "img") == 0 and no_alert(browser)
    assert console_errors(browser) == []


def test_the_timeline_and_plots_draw_one_mark_per_attempt_and_job(browser, evil):
    project, _, ui = evil
    attempts = project.sql("select id, state from attempts")
    open_page(browser, ui.url + "runs/1", "svg.timeline rect.bar")
    bars = browser.execute_script(
        "return [...document.querySelectorAll('svg.timeline rect.bar')].map(r => [Number(r.dataset.attempt), r.dataset.state])"
    )
    assert sorted(map(tuple, bars)) == sorted((a["id"], a["state"]) for a in attempts)
    wait_until(browser, lambda d: count(d, "#curves canvas"), "the learning curves")
    for param in ("seed", "lr"):
        assert count(browser, f'svg.scatter[data-param="{param}"] circle.pt') == JOBS
    assert count(browser, 'svg.scatter[data-param="lr"] line.mean') == 3  # one mean per value of lr
    assert count(browser, "svg.parallel polyline.pc-line") == JOBS
    assert browser.find_element("id", "curves").get_attribute("data-series") == "5"  # the best five by default
    click(browser, '#jobs tr[data-job="2"] input[type=checkbox]')
    wait_until(
        browser, lambda d: d.find_element("id", "curves").get_attribute("data-series") == "1", "one selected curve"
    )
    assert console_errors(browser) == []


def test_the_table_filters_sorts_and_pages_in_the_browser(browser, evil):
    _, _, ui = evil
    open_page(browser, ui.url + "runs/1", "#jobs tbody tr[data-job]")
    click(browser, '.chip[data-state="failed"]')
    wait_until(browser, lambda d: set(texts(d, "#jobs tbody tr[data-job] .badge")) == {"failed"}, "only failed jobs")
    assert count(browser, "#jobs tbody tr[data-job]") == 2
    click(browser, '.chip[data-state="failed"]')
    wait_until(browser, lambda d: count(d, "#jobs tbody tr[data-job]") == JOBS, "every job again")
    click(browser, 'th[data-sort="metric:loss"] button')  # highest first
    wait_until(
        browser,
        lambda d: count(d, "#jobs tbody tr[data-job]") == JOBS and "▼" in texts(d, 'th[data-sort="metric:loss"]')[0],
        "sorted by loss",
    )
    losses = [float(t) for t in texts(browser, "#jobs tbody tr[data-job] td:last-child")]
    assert losses == sorted(losses, reverse=True)
    assert console_errors(browser) == []


def enqueue_gated(p: Project, jobs: int) -> Path:
    """A run of jobs that run until the file returned exists."""
    p.write("train.py", TRAIN)
    gate = p.path / "gate"
    p.write(
        "gated.py",
        f"""
        from jobqueue import Experiment, ParamGrid, RunDescription
        RUN_DESCRIPTION = RunDescription("gated", experiments=[
            Experiment("g", "python train.py --wait_for={gate}", ParamGrid([("seed", list(range({jobs})))]).generate_params()),
        ])
    """,
    )
    p.jq("enqueue", "gated", check=True)
    return gate


def test_a_job_that_ends_shows_within_one_poll(browser, sqlite_project, shots):
    """Two jobs run while the run's page is open; the moment one ends in the DB, the page has a poll interval
    (1 s here, and a second for a loaded machine) to show it in the table, the counts and the timeline."""
    p = sqlite_project
    gate = enqueue_gated(p, jobs=2)
    interval = 1.0
    ui = start_ui(p, "--interval", str(interval))
    worker = p.start("worker", "--slots", "2")
    try:
        open_page(browser, ui.url + "runs/1", "#jobs tbody tr[data-job]")
        wait_until(
            browser, lambda d: texts(d, "#jobs tbody tr[data-job] .badge") == ["running", "running"], "both running"
        )
        wait_until(browser, lambda d: count(d, "svg.timeline rect.bar.state-fill-running") == 2, "two running bars")
        gate.touch()
        ended = p.wait_for(lambda: succeeded(p.db) == 2 and time.monotonic(), timeout=30, what="the jobs' end")
        wait_until(
            browser,
            lambda d: texts(d, "#jobs tbody tr[data-job] .badge") == ["succeeded", "succeeded"],
            "the end in the table",
            timeout=interval + 1.0 + 2.0,
        )
        shown = time.monotonic() - ended
        assert shown <= interval + 1.0, f"shown {shown:.2f} s after the end"
        assert texts(browser, "#summary .count-succeeded") == ["2"] and texts(browser, "#done") == ["2/2 done"]
        wait_until(
            browser,
            lambda d: count(d, "svg.timeline rect.bar.state-fill-succeeded") == 2,
            "the bars' end",
            timeout=interval + 1.0,
        )
        browser.save_screenshot(str(shots / "run-live.png"))
        assert console_errors(browser) == []
    finally:
        gate.touch()
        worker.wait(timeout=60)
        ui.stop()


def test_the_job_page_follows_a_running_jobs_log(browser, sqlite_project):
    p = sqlite_project
    gate = enqueue_gated(p, jobs=1)
    ui = start_ui(p, "--interval", "1")
    worker = p.start("worker")
    try:
        open_page(browser, ui.url + "jobs/1", "#params tr")
        wait_until(browser, lambda d: "training with note" in d.find_element("id", "log").text, "the running job's log")
        assert texts(browser, "#job .badge") == ["running"] and EVIL not in browser.find_element("id", "log").text
        gate.touch()
        wait_until(browser, lambda d: EVIL in d.find_element("id", "log").text, "the line written after the gate")
        wait_until(browser, lambda d: texts(d, "#job .badge") == ["succeeded"], "the job's end")
        log = browser.find_element("id", "log").text
        assert log.count("training with note") == 1 and log.count(EVIL) == 1  # each line once
        assert console_errors(browser) == []
    finally:
        gate.touch()
        worker.wait(timeout=60)
        ui.stop()


def succeeded(db: str) -> int:
    """Jobs that succeeded, read straight from the file: at once, where `jq list` takes a Python start."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM jobs WHERE state = 'succeeded'").fetchone()[0]
    finally:
        conn.close()


def test_screenshots_of_the_quickstart_run(browser, tmp_path, shots):
    """The README's pictures: the quickstart sweep as a user runs it, its three pages."""
    project = Project(tmp_path, str(tmp_path / "jobqueue.db"))
    shutil.copytree(REPO / "experiments", tmp_path / "experiments")
    project.jq("launch", "experiments.quickstart", "--max-parallel", "4", "--no-progress", check=True, timeout=180)
    ui = start_ui(project)
    try:
        open_page(browser, ui.url, "tr[data-run]")
        browser.save_screenshot(str(shots / "quickstart-runs.png"))
        browser.set_window_size(1280, 2100)
        open_page(browser, ui.url + "runs/1", "svg.timeline rect.bar")
        if project.sql("select count(*) as n from metric_summaries")[0]["n"]:
            wait_until(browser, lambda d: count(d, "#curves canvas"), "the results plots")
        browser.save_screenshot(str(shots / "quickstart-run.png"))
        browser.set_window_size(1280, 900)
        open_page(browser, ui.url + "jobs/1", "#params tr")
        wait_until(browser, lambda d: "done: loss" in d.find_element("id", "log").text, "the job's log")
        browser.save_screenshot(str(shots / "quickstart-job.png"))
        assert console_errors(browser) == []
    finally:
        browser.set_window_size(1280, 900)
        ui.stop()
    target = os.environ.get("JQ_UI_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for name in ("runs", "run", "job"):
            shutil.copy(shots / f"quickstart-{name}.png", Path(target) / f"ui-{name}.png")

"""What the dashboard's tests share: a sweep whose run name, parameter values and log lines carry HTML, run for
real, and `jq ui` started as a subprocess on a free port."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass

from tests.conftest import Project

CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver
EVIL = "<img src=x onerror=alert(1)></script>"
RUN = "evil" + EVIL

# Logs its loss every 10 steps through jobqueue.log_metrics, prints EVIL in its log, fails when lr < 0, and with
# --wait_for=FILE runs until that file exists.
TRAIN = """
import argparse, os, sys, time
from jobqueue import log_metrics
parser = argparse.ArgumentParser()
for flag in ("--lr", "--seed", "--note", "--wait_for", "--experiment", "--train_dir"):
    parser.add_argument(flag, default="")
args = parser.parse_args()
lr, loss = float(args.lr or 0.1), 1.0
for step in range(0, 50, 10):
    loss *= 1 - abs(lr)
    log_metrics(step, loss=loss + int(args.seed or 0) * 0.001)
print("training with note", args.note, flush=True)
while args.wait_for and not os.path.exists(args.wait_for):
    time.sleep(0.05)
print(EVIL, flush=True)
sys.exit(3 if lr < 0 else 0)
""".replace("EVIL", repr(EVIL))

SWEEP = f"""
from jobqueue import Experiment, ParamGrid, RunDescription
RUN_DESCRIPTION = RunDescription({RUN!r}, experiments=[
    Experiment("e", "python train.py", ParamGrid([("seed", [0, 1]), ("lr", [0.1, 0.3, -1.0]), ("note", [{EVIL!r}])]).generate_params()),
])
"""
JOBS, FAILING = 6, 2


def run_evil_sweep(project: Project) -> dict:
    """The sweep, launched to its end: 4 jobs succeed, 2 fail (exit code 3). Returns `jq status --json`'s run."""
    project.write("train.py", TRAIN)
    project.write("evil.py", SWEEP)
    proc = project.jq("launch", "evil", "--max-parallel", "3", "--no-progress", timeout=180)
    assert proc.returncode == 1, proc.stderr  # two jobs failed
    return status(project)


def status(project: Project) -> dict:
    (run,) = json.loads(project.jq("status", "--json", check=True).stdout)["runs"]
    return run


@dataclass
class UI:
    """A `jq ui` subprocess and the URL it serves at."""

    proc: subprocess.Popen
    url: str

    def get(self, path: str, headers: dict | None = None) -> tuple[int, object]:
        """(HTTP status, the decoded JSON body)."""
        status, body = self.fetch(path, headers)
        return status, json.loads(body)

    def fetch(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url.rstrip("/") + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> str:
        """Stop it; its stderr."""
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=30)
        return err


def start_ui(project: Project, *args: str) -> UI:
    """`jq ui --port 0 ARGS` in the project, once it has said where it serves."""
    proc = project.start("ui", "--port", "0", *args)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise AssertionError(f"jq ui did not start: {line}{proc.communicate()}")
    return UI(proc, line.split(" at ", 1)[1].split(" ", 1)[0])


def headless_chromium(user_data_dir: str, window: str = "1280,900"):
    """Debian's Chromium, headless, driven through Debian's chromedriver (selenium downloads nothing), with its
    console kept for get_log("browser"). Raises selenium's WebDriverException when it cannot start."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        f"--user-data-dir={user_data_dir}",
        f"--window-size={window}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

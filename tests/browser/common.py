"""What the browser tests share: headless Chromium through selenium, the
real binary on a free port, and waits that poll with a deadline.

tests/demo/browser_test.py, tests/console/browser_test.py and
tests/cors/browser_test.py put this folder on sys.path and import it.
Needs chromium and chromedriver (Debian: chromium, chromium-driver) and
selenium 4 (PyPI); ./scripts/test installs them.
"""

import json
import os
import re
import subprocess
import threading
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


class Failure(Exception):
    """A check that did not hold: its message says what was seen."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def chromium(*switches):
    """Headless Chromium under Debian's chromedriver, keeping the page's
    console log; `switches` are extra command-line switches."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for switch in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--no-first-run",
                   "--no-default-browser-check", "--disable-extensions", *switches]:
        options.add_argument(switch)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def console_log(driver):
    """The page's console messages since the last call, as `LEVEL message`."""
    return [f"{entry.get('level')} {entry.get('message')}" for entry in driver.get_log("browser")]


def failure_report(driver, path):
    """Saves a screenshot of the current tab at `path`; returns report
    lines that say where, then the page's console log."""
    driver.save_screenshot(path)
    return [f"    screenshot: {path}", *(f"    console: {line}" for line in console_log(driver))]


def wait_until(driver, what, look, ready, deadline, shows=lambda seen: f"it shows {seen}"):
    """Calls `look()` every 50 ms until `ready` holds of what it returned,
    and returns that. Past `deadline` seconds, fails with `no WHAT within
    DEADLINE s; ` and `shows(what look() returned last)`."""
    seen = {}

    def done(_):
        seen["value"] = look()
        return ready(seen["value"])

    try:
        WebDriverWait(driver, deadline, poll_frequency=0.05).until(done)
    except TimeoutException:
        raise Failure(f"no {what} within {deadline} s; {shows(seen.get('value'))}") from None
    return seen["value"]


class Streamcap:
    """The real binary, `serve --listen 127.0.0.1:0 ARGS`, configured only
    by ARGS (no STREAMCAP_* variable of the caller), its stderr collected."""

    def __init__(self, binary, args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_")}
        env["RUST_LOG"] = "info"
        self.cmd = [binary, "serve", "--listen", "127.0.0.1:0", *args]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.addr = None
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                m = re.search(r"\blistening addr=(\S+)", line)
                if m and self.addr is None:
                    self.addr = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(30) or self.addr is None:
            self.stop()
            raise Failure("streamcap did not log `listening addr=...`:\n" + self.log())
        self.base = f"http://{self.addr}"

    def log(self):
        return "\n".join(self.lines)

    def stop(self):
        """SIGTERM, then wait; SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def get(self, path):
        with urllib.request.urlopen(f"{self.base}{path}", timeout=5) as res:
            return res.read().decode()

    def streams(self, user):
        """The ids of the user's live streams, oldest first."""
        return [s["stream_id"] for s in json.loads(self.get(f"/v1/users/{user}/streams"))["active_streams"]]

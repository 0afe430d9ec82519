#!/usr/bin/env python3
"""A player page on another origin, in headless Chromium, against the real binary.

Run by tests/cors.rs. A static server on 127.0.0.1 serves
tests/cors/index.html and clients/js/streamcap.js. The page has two
origins: http://localhost:PORT, which streamcap lists in
--cors-allowed-origins, and http://127.0.0.1:PORT, which it does not.
streamcap itself runs on http://127.0.0.1:OTHER_PORT, a third origin.

From the listed origin, in heartbeat and in WebSocket mode, the JS client
gets its lease ("active"), renews it and releases it on stop (the DELETE
needs a preflight that allows it), and the page reads the headers streamcap
exposes (Location, X-Request-Id) of a PUT it sends by hand, whose preflight
allows its Content-Type and X-Request-Id.

From the unlisted origin, in both modes, the client never becomes active:
the browser withholds every answer (heartbeat) or the upgrade is refused
with 403 (WebSocket), so the client only reports failed attempts, and
streamcap holds no lease for the user. A raw fetch fails with a TypeError
and a raw WebSocket closes with 1006 without opening; /metrics shows the
socket route's 403s.

Every wait polls with a deadline; nothing sleeps for a fixed time. Needs
chromium, chromedriver and selenium, which ./scripts/test installs.
"""

import argparse
import functools
import http.server
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

# What the browser tests share, in tests/browser/.
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "browser"))
from common import Streamcap, check, chromium, console_log, wait_until  # noqa: E402

DEADLINE = 15.0
# Heartbeats every ttl/3 = 1 s, so a renewal comes quickly.
TTL = 3


def socket_403s(server):
    """Requests to the socket route answered 403, from /metrics."""
    total = 0
    for line in server.get("/metrics").splitlines():
        if (line.startswith("streamcap_http_request_duration_seconds_count{")
                and 'route="/v1/users/{user_id}/streams/{stream_id}/socket"' in line and 'status="403"' in line):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


class Pages:
    """The test page and the JS client, served from a temporary directory."""

    def __init__(self, root):
        self.dir = tempfile.mkdtemp(prefix="streamcap-cors-")
        shutil.copy(os.path.join(root, "tests/cors/index.html"), self.dir)
        shutil.copy(os.path.join(root, "clients/js/streamcap.js"), self.dir)
        handler = functools.partial(Quiet, directory=self.dir)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


class Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript"}

    def log_message(self, *args):
        pass


class Browser:
    def __init__(self):
        self.driver = chromium()

    def open(self, url):
        self.driver.get(url)
        self.wait("the page's module", "return window.ready === true")

    def run(self, script, *args):
        return self.driver.execute_script(script, *args)

    def call(self, function, *args):
        """Awaits `window[function](...args)` in the page."""
        return self.driver.execute_async_script(
            f"const done = arguments[arguments.length - 1];"
            f"window[{json.dumps(function)}](...Array.from(arguments).slice(0, -1)).then(done, e => done(String(e)));",
            *args)

    def wait(self, what, script, deadline=DEADLINE):
        return wait_until(self.driver, what, lambda: self.run(script), bool, deadline,
                          lambda _: f"events: {self.events()}")

    def events(self):
        return self.run("return window.events")

    def console(self):
        return console_log(self.driver)

    def quit(self):
        self.driver.quit()


def listed(browser, server, page, mode, user):
    """From the listed origin: active, renewed, released; exposed headers readable."""
    browser.open(page)
    browser.run("window.startClient(...arguments)", server.base, mode, user, f"{mode}-tv")
    browser.wait("active state", "return window.client.state === 'active'")
    check(server.streams(user) == [f"{mode}-tv"], f"{mode}: the lease is not held: {server.streams(user)}")
    browser.wait("renewal", "return window.events.some(e => e.type === 'renewed')", DEADLINE + TTL)
    check(browser.run("return window.client.state") == "active", f"{mode}: not active after a renewal")
    put = browser.call("rawPut", f"{server.base}/v1/users/{user}/streams/{mode}-raw")
    check(put.get("ok") and put["status"] == 201, f"{mode}: a raw PUT failed: {put}")
    check(put["location"] == f"/v1/users/{user}/streams/{mode}-raw", f"{mode}: Location not readable: {put}")
    check(put["requestId"] == "cors-test-1", f"{mode}: X-Request-Id not readable: {put}")
    browser.call("stopClient")
    browser.wait("release", "return window.client.state === 'stopped'")
    deadline = time.monotonic() + DEADLINE
    while f"{mode}-tv" in server.streams(user):
        check(time.monotonic() < deadline, f"{mode}: the lease was not released: {server.streams(user)}")
        time.sleep(0.05)
    errors = [e for e in browser.events() if e["type"] == "error"]
    check(not errors, f"{mode}: the client reported errors from a listed origin: {errors}")


def unlisted(browser, server, page, mode, user):
    """From the unlisted origin: never active, no lease, the browser refuses."""
    browser.open(page)
    before = socket_403s(server)
    browser.run("window.startClient(...arguments)", server.base, mode, user, f"{mode}-tv")
    # Two failed attempts: the first, and a retry after it.
    browser.wait("two failed attempts", "return window.events.filter(e => e.type === 'error').length >= 2",
                 DEADLINE + 5)
    events = browser.events()
    check(all(e["state"] != "active" for e in events), f"{mode}: became active from an unlisted origin: {events}")
    check(all(e["status"] is None for e in events if e["type"] == "error"),
          f"{mode}: the page could read a status from an unlisted origin: {events}")
    check(server.streams(user) == [], f"{mode}: streamcap holds a lease: {server.streams(user)}")
    if mode == "websocket":
        check(socket_403s(server) >= before + 2, f"no 403 for the refused upgrades ({before} before)")
    browser.call("stopClient")
    put = browser.call("rawPut", f"{server.base}/v1/users/{user}/streams/raw")
    check(not put.get("ok") and "TypeError" in put.get("error", ""), f"a raw fetch was not refused: {put}")
    ws = browser.call("rawSocket", f"ws://{server.addr}/v1/users/{user}/streams/raw/socket")
    check(ws == {"opened": False, "code": 1006}, f"a raw WebSocket was not refused: {ws}")
    check(server.streams(user) == [], f"{mode}: streamcap holds a lease: {server.streams(user)}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", required=True)
    parser.add_argument("--root", required=True, help="the repository")
    args = parser.parse_args()
    pages = Pages(args.root)
    listed_origin = f"http://localhost:{pages.port}"
    unlisted_origin = f"http://127.0.0.1:{pages.port}"
    server = Streamcap(args.binary,
                       ["--store", "memory", "--lease-ttl", str(TTL), "--cors-allowed-origins", listed_origin])
    browser = None
    try:
        browser = Browser()
        for mode in ["heartbeat", "websocket"]:
            listed(browser, server, f"{listed_origin}/index.html", mode, f"listed-{mode}")
            print(f"{mode}: granted, renewed and released from {listed_origin}")
            unlisted(browser, server, f"{unlisted_origin}/index.html", mode, f"unlisted-{mode}")
            print(f"{mode}: refused from {unlisted_origin}")
    except Exception:
        traceback.print_exc()
        if browser is not None:
            try:
                print("console:\n" + "\n".join(browser.console()), file=sys.stderr)
            except Exception as e:  # a report must not hide the failure
                print(f"cannot read the console: {e}", file=sys.stderr)
        print("streamcap's log:\n" + server.log(), file=sys.stderr)
        sys.exit(1)
    finally:
        if browser is not None:
            browser.quit()
        server.stop()
        pages.stop()


if __name__ == "__main__":
    main()

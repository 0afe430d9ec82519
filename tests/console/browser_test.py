#!/usr/bin/env python3
"""The support console end to end, in headless Chromium, against a running
streamcap.

Run by tests/console_browser.rs, which starts the real binary (on SQLite or
on a real redis-server) with an admin and a service API key and a plan
"standard" of 3 streams, and gives the user three streams of that plan
before this starts: two by heartbeats and one (--socket-stream) held by a
real WebSocket client of its own, which checks afterwards that its socket
was told `revoked`. Here, as a support agent would:

- a bad key is refused with the page's 401 message, and signing out
  forgets the credential;
- signed in with the admin key, the user shows the plan's limit of 3 and
  its three streams, each with the fields the API lists (the socket-held
  one marked so), every time in local time with its ISO value as title;
- a confirmation opens by keyboard with Cancel focused, and Escape
  cancels it, changing nothing;
- a fourth stream is refused (409) under the plan; an override of 5 that
  expires tomorrow is set through the page, and the fourth stream is then
  granted and shown;
- stopping the socket-held stream leaves it among the tombstones, gone
  from the live streams (the screenshot is taken here);
- the service key reads the user, but stopping a stream or clearing the
  override gets the page's 403 message and changes nothing on the server;
- back as admin, "stop all" revokes every stream and the override is
  cleared;
- a user whose rate-limit bucket the test has just emptied gets the page's
  429 message, which says when to try again (the server runs with a
  per-user rate of 1 a second, so the bucket stays empty long enough; if
  it refilled before the look-up, the test empties it and tries again);
- with --stop-store, the test prints `stop the store` and waits for a
  line on stdin (the caller kills redis-server meanwhile), then a look-up
  gets the page's 503 message.

Every wait polls for a state with a deadline; nothing sleeps for a fixed
time. On failure it prints the page's state and the browser's console log,
and saves a screenshot next to --screenshot.

Needs chromium and chromedriver (Debian: chromium, chromium-driver) and
selenium 4 (PyPI); ./scripts/test installs them.
"""

import argparse
import datetime
import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

# What the browser tests share, in tests/browser/.
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "browser"))
from common import Failure, check, chromium, failure_report, wait_until  # noqa: E402

# Bounds the waits for things that take milliseconds; generous, because
# the machine may be busy. Not a measurement.
DEADLINE = 15.0
PLAN = "standard"
PLAN_LIMIT = 3
OVERRIDE = 5


class Api:
    """The API as the test sees it, with the admin key."""

    def __init__(self, base, key):
        self.base = base
        self.key = key

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("authorization", f"Bearer {self.key}")
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                raw = res.read()
                return res.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def streams(self, user):
        status, body = self.call("GET", f"/v1/users/{user}/streams")
        check(status == 200, f"GET streams: {status} {body}")
        return body

    def limit(self, user):
        status, body = self.call("GET", f"/v1/users/{user}/limit?plan={PLAN}")
        check(status == 200, f"GET limit: {status} {body}")
        return body

    def start(self, user, stream):
        body = {"device_id": f"{stream}-device", "device_class": "tv", "content_id": "film-7",
                "content_kind": "vod", "plan": PLAN}
        return self.call("PUT", f"/v1/users/{user}/streams/{stream}", body)


def instant(iso):
    """An RFC 3339 time as an aware datetime, whatever its fraction."""
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00"))


class Console:
    """The console page in headless Chromium."""

    def __init__(self, url):
        self.driver = chromium("--window-size=1360,1000")
        self.driver.get(url)
        self.wait("the page to start", lambda p: p["ready"])

    def page(self):
        """What the page shows."""
        return self.driver.execute_script("""
            const $ = (id) => document.getElementById(id);
            const message = $('message');
            const times = (el) => Array.from(el.querySelectorAll('time'),
                t => ({iso: t.dateTime, title: t.title, text: t.textContent}));
            return {
              ready: document.body.dataset.ready === 'true',
              busy: document.body.dataset.busy === 'true',
              signedIn: document.body.dataset.signedIn === 'true',
              stored: sessionStorage.length,
              cookies: document.cookie,
              loads: Number($('user').dataset.loads || 0),
              userShown: !$('user').hidden,
              heading: $('user-heading').textContent,
              message: message.hidden ? null : {text: message.textContent, kind: message.dataset.kind},
              limit: $('limit-value').textContent,
              source: $('limit-source').dataset.source,
              sourceText: $('limit-source').textContent,
              sourceTimes: times($('limit-source')),
              dialogOpen: $('confirm').open,
              streams: Array.from(document.querySelectorAll('#streams-body tr'), tr => ({
                id: tr.dataset.streamId,
                socket: tr.dataset.socket === 'true',
                cells: Array.from(tr.children, c => c.textContent),
                times: times(tr),
              })),
              tombstones: Array.from(document.querySelectorAll('#tombstones-body tr'), tr => ({
                id: tr.dataset.streamId, times: times(tr),
              })),
            };
        """)

    def wait(self, what, condition, deadline=DEADLINE):
        return wait_until(self.driver, what, self.page, condition, deadline, lambda page: f"the page shows {page}")

    def settled(self, before, what):
        """Waits until the page has shown the user again after `before`
        loads, with no request running."""
        return self.wait(what, lambda p: p["loads"] > before and not p["busy"])

    def click(self, selector):
        self.driver.find_element(By.CSS_SELECTOR, selector).click()

    def type(self, element_id, text):
        field = self.driver.find_element(By.ID, element_id)
        field.clear()
        field.send_keys(text)

    def sign_in(self, credential):
        self.type("credential", credential)
        self.driver.find_element(By.ID, "credential").send_keys(Keys.ENTER)

    def sign_out(self):
        self.click("#sign-out")
        page = self.wait("signing out", lambda p: not p["signedIn"])
        check(page["stored"] == 0, "signing out left the credential in sessionStorage")

    def look_up(self, user):
        before = self.page()["loads"]
        self.type("user-id", user)
        self.click("#lookup-form button[type=submit]")
        return self.settled(before, f"user {user} shown")

    def look_up_answer(self, user):
        """Looks `user` up and returns the page once it answered: the user
        shown again, or a message other than the one before."""
        before = self.page()
        self.type("user-id", user)
        self.click("#lookup-form button[type=submit]")
        return self.wait(f"an answer to looking up {user}", lambda p: not p["busy"] and (
            p["loads"] > before["loads"] or (p["message"] is not None and p["message"] != before["message"])))

    def confirm(self, answer):
        """Answers the open confirmation dialog with Confirm or Cancel."""
        self.wait("a confirmation dialog", lambda p: p["dialogOpen"])
        self.click("#confirm-ok" if answer else "#confirm-cancel")
        self.wait("the dialog to close", lambda p: not p["dialogOpen"])

    def act(self, selector, what):
        """Clicks, confirms, and waits for the user to be shown again."""
        before = self.page()["loads"]
        self.click(selector)
        self.confirm(True)
        return self.settled(before, what)

    def report(self, out_dir):
        lines = []
        try:
            lines.append(f"--- page: {json.dumps(self.page(), indent=1)}")
            lines.extend(failure_report(self.driver, os.path.join(out_dir, "console-failure.png")))
        except Exception as e:  # a report must not hide the failure
            lines.append(f"--- cannot report: {e}")
        return "\n".join(lines)

    def quit(self):
        self.driver.quit()


def check_streams(page, listed, socket_stream):
    """The page's rows are the API's live streams, field by field."""
    shown = [row["id"] for row in page["streams"]]
    expected = [s["stream_id"] for s in listed["active_streams"]]
    check(shown == expected, f"the page lists {shown}, the API {expected}")
    for row, s in zip(page["streams"], listed["active_streams"]):
        check(row["socket"] == (s["stream_id"] == socket_stream) == s["socket"],
              f"{s['stream_id']}: socket {row['socket']} on the page, {s['socket']} in the API")
        cells = row["cells"]
        for i, field in enumerate(["stream_id", "device_id", "device_class", "content_id", "content_kind", "plan"]):
            check(cells[i] == s[field], f"{s['stream_id']}: column {i} reads {cells[i]!r}, the API's {field} is {s[field]!r}")
        check(cells[9] == ("held by a socket" if s["socket"] else "heartbeats"), f"{s['stream_id']}: {cells[9]!r}")
        # Times: local text, the API's ISO value as datetime and title.
        isos = [t["iso"] for t in row["times"]]
        check(isos == [s["started_at"], s["renewed_at"], s["expires_at"]], f"{s['stream_id']}: times {isos}")
        for t in row["times"]:
            check(t["title"] == t["iso"] and t["text"] and t["text"] != t["iso"], f"time shown as {t}")


def scenario(console, api, admin_key, service_key, user, socket_stream, screenshot, stop_store):
    steps = {}
    started = time.monotonic()

    def step(name):
        steps[name] = round((time.monotonic() - started) * 1000)

    # A bad key: the user is not shown, and the page says 401 in words.
    console.type("user-id", user)
    console.sign_in("not-a-key-of-this-server")
    page = console.wait("the 401 message", lambda p: p["message"] and p["message"]["kind"] == "error")
    check("(401)" in page["message"]["text"] and "not accepted" in page["message"]["text"],
          f"a bad key reads {page['message']['text']!r}")
    check(not page["userShown"], "a bad key showed the user")
    check("{" not in page["message"]["text"], f"raw JSON in the message: {page['message']['text']!r}")
    console.sign_out()
    step("bad_key")

    # The admin key: the plan's limit and the three streams.
    before = console.page()["loads"]
    console.sign_in(admin_key)
    page = console.settled(before, "the user shown after signing in")
    check(page["heading"] == f"User {user}", f"heading {page['heading']!r}")
    check(page["cookies"] == "", f"the console set a cookie: {page['cookies']!r}")
    check((page["limit"], page["source"]) == (str(PLAN_LIMIT), "plan"), f"limit {page['limit']} from {page['source']}")
    check(PLAN in page["sourceText"], f"the source does not name the plan: {page['sourceText']!r}")
    listed = api.streams(user)
    check(len(listed["active_streams"]) == 3, f"the test set up three streams: {listed}")
    check_streams(page, listed, socket_stream)
    step("signed_in")

    # By keyboard: Enter on "Stop all streams" asks, with Cancel focused,
    # and Escape cancels, which changes nothing.
    console.driver.find_element(By.ID, "stop-all").send_keys(Keys.ENTER)
    console.wait("a confirmation dialog", lambda p: p["dialogOpen"])
    focused = console.driver.switch_to.active_element.get_attribute("id")
    check(focused == "confirm-cancel", f"the dialog opened with {focused!r} focused, not Cancel")
    console.driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    console.wait("the dialog to close on Escape", lambda p: not p["dialogOpen"])
    check(len(api.streams(user)["active_streams"]) == 3, "cancelling 'stop all' stopped streams")

    # The plan allows 3: a fourth is refused.
    status, body = api.start(user, "fourth")
    check(status == 409, f"a fourth stream under the plan: {status} {body}")

    # An override of 5 until tomorrow (a whole minute, local time).
    until = console.driver.execute_script("""
        const d = new Date(Date.now() + 24 * 3600 * 1000);
        d.setSeconds(0, 0);
        const pad = (n) => String(n).padStart(2, '0');
        document.getElementById('override-expires').value =
          `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
        return d.toISOString();
    """)
    console.type("override-limit", str(OVERRIDE))
    page = console.act("#override-form button[type=submit]", "the user shown after setting the override")
    check(page["message"] and page["message"]["kind"] == "ok", f"setting the override: {page['message']}")
    check((page["limit"], page["source"]) == (str(OVERRIDE), "override"), f"limit {page['limit']} from {page['source']}")
    limit = api.limit(user)
    check(limit["limit"] == OVERRIDE and limit["source"] == "override", f"the API's limit: {limit}")
    check(instant(limit["expires_at"]) == instant(until), f"override until {limit.get('expires_at')}, asked {until}")
    shown_until = [t["iso"] for t in page["sourceTimes"]]
    check(shown_until == [limit["expires_at"]], f"the page shows the override until {shown_until}")
    step("override_set")

    # The override lets a fourth stream in.
    status, body = api.start(user, "fourth")
    check(status == 201, f"a fourth stream under the override: {status} {body}")
    page = console.look_up(user)
    listed = api.streams(user)
    check(len(listed["active_streams"]) == 4, f"four streams: {listed}")
    check_streams(page, listed, socket_stream)

    # Stop the socket-held stream.
    page = console.act(f"#streams-body tr[data-stream-id='{socket_stream}'] button.stop",
                       "the user shown after stopping the socket's stream")
    check(page["message"] and page["message"]["kind"] == "ok" and socket_stream in page["message"]["text"],
          f"stopping {socket_stream}: {page['message']}")
    listed = api.streams(user)
    live = [s["stream_id"] for s in listed["active_streams"]]
    check(socket_stream not in live and len(live) == 3, f"live after stopping {socket_stream}: {live}")
    check_streams(page, listed, socket_stream)
    tombstones = {t["stream_id"]: t for t in listed["tombstones"]}
    check(socket_stream in tombstones, f"no tombstone for {socket_stream}: {listed['tombstones']}")
    shown = {t["id"]: [x["iso"] for x in t["times"]] for t in page["tombstones"]}
    check(set(shown) == set(tombstones), f"tombstones on the page {shown}, in the API {list(tombstones)}")
    expected_times = [tombstones[socket_stream]["expires_at"]]
    check(shown[socket_stream] == expected_times, f"tombstone times {shown[socket_stream]}, the API's {expected_times}")
    step("socket_stream_stopped")
    if screenshot:
        # The whole page, unscrolled: the window as tall as the page.
        d = console.driver
        d.execute_script("document.querySelectorAll('.scroll').forEach((e) => { e.scrollLeft = 0; }); window.scrollTo(0, 0)")
        d.set_window_size(1440, d.execute_script("return document.documentElement.scrollHeight") + 140)
        d.execute_script("document.activeElement.blur()")
        check(d.save_screenshot(screenshot), f"cannot write the screenshot {screenshot}")

    # A service key reads, but may not change.
    console.sign_out()
    before = console.page()["loads"]
    console.sign_in(service_key)
    page = console.settled(before, "the user shown to the service key")
    check(len(page["streams"]) == 3, f"the service key sees {len(page['streams'])} streams")
    for action in ["#streams-body tr button.stop", "#clear-override"]:
        page = console.act(action, f"the user shown after {action} as a service")
        text = page["message"]["text"] if page["message"] else ""
        check(page["message"]["kind"] == "error" and "(403)" in text and "only read" in text,
              f"{action} as a service reads {text!r}")
    check(len(api.streams(user)["active_streams"]) == 3, "the service key stopped a stream")
    check(api.limit(user)["source"] == "override", "the service key cleared the override")
    step("service_refused")

    # Back as admin: stop all, clear the override.
    console.sign_out()
    before = console.page()["loads"]
    console.sign_in(admin_key)
    console.settled(before, "the user shown to the admin again")
    page = console.act("#stop-all", "the user shown after stopping all")
    check(page["streams"] == [] and "Stopped 3 streams" in page["message"]["text"], f"stop all: {page['message']}")
    check(api.streams(user)["active_streams"] == [], "streams live after 'stop all'")
    check(len(page["tombstones"]) == 4, f"tombstones after stop all: {page['tombstones']}")
    page = console.act("#clear-override", "the user shown after clearing the override")
    check(page["source"] != "override", f"the override is still shown: {page['sourceText']!r}")
    check(api.limit(user)["source"] == "plan", "the override is still set")
    step("stopped_all_and_cleared")

    # 429, with when to try again.
    busy = "busy-viewer"
    for attempt in range(5):
        for _ in range(1000):
            status, _ = api.call("GET", f"/v1/users/{busy}/limit")
            if status == 429:
                break
        check(status == 429, f"1000 requests for {busy} were never rate limited")
        page = console.look_up_answer(busy)
        if page["message"] and "(429)" in page["message"]["text"]:
            break
        print(f"the bucket refilled before look-up {attempt + 1}; emptying it again", flush=True)
    text = page["message"]["text"] if page["message"] else ""
    check("(429)" in text and "try again in 1 second" in text and "{" not in text, f"rate limited, the page reads {text!r}")
    step("rate_limited")

    if stop_store:
        print("stop the store", flush=True)
        check(sys.stdin.readline().strip() == "stopped", "the caller did not stop the store")
        page = console.look_up_answer(user)
        text = page["message"]["text"] if page["message"] else ""
        check("(503)" in text and "Nothing was changed" in text and "{" not in text, f"store down, the page reads {text!r}")
        step("store_down")
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="http://HOST:PORT of the running streamcap")
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--service-key", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--socket-stream", required=True, help="the stream a WebSocket of the caller holds")
    parser.add_argument("--screenshot", help="where to write a PNG of the user after the socket's stream stopped")
    parser.add_argument("--failure-dir", required=True)
    parser.add_argument("--stop-store", action="store_true",
                        help="at the end, ask the caller to stop the store, and check the 503 message")
    args = parser.parse_args()
    console = None
    try:
        console = Console(f"{args.base}/console")
        api = Api(args.base, args.admin_key)
        steps = scenario(console, api, args.admin_key, args.service_key, args.user, args.socket_stream,
                         args.screenshot, args.stop_store)
        print("passed; ms since the page loaded: " + ", ".join(f"{k} {v}" for k, v in steps.items()), flush=True)
        return 0
    except Exception as e:
        print(f"FAILED: {e}", flush=True)
        if not isinstance(e, Failure):
            traceback.print_exc()
        if console:
            print(console.report(args.failure_dir), flush=True)
        return 1
    finally:
        if console:
            console.quit()


if __name__ == "__main__":
    sys.exit(main())

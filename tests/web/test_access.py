"""Who may do what on the web view: read-only by default, commands for operators only,
through the station's own command path and safety gate; CSRF, sizes, login limits."""

from __future__ import annotations

from typing import Any

import pytest

from tests.web.conftest import OPERATOR, VIEWER, http, login, wait_until

MICIUS = "41731-20161219T164844Z"


def _reply_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "reply").text


@pytest.mark.slow
def test_dashboard_refused_operator_goto_shows_the_gate(web_station: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    ws = web_station()
    browser.get(ws.url)
    wait_until(lambda: browser.execute_script("return window.qkdState.state !== null"), 60, "state")
    # Anonymous: the page is read-only, every control disabled.
    assert browser.find_element(By.ID, "cmd-stop").get_attribute("disabled") == "true"
    assert browser.find_element(By.ID, "readonly-note").is_displayed()

    # A dashboard account still cannot command: the controls stay off, and the server
    # refuses its command even when the page is bypassed (with its own valid CSRF token).
    login(browser, *VIEWER)
    assert browser.find_element(By.ID, "cmd-park").get_attribute("disabled") == "true"
    status, body = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/api/cmd/park', {method: 'POST', headers: {'Content-Type': 'application/json',"
        " 'X-CSRF-Token': window.qkdState.session.csrf}, body: '{}'})"
        ".then(async r => done([r.status, await r.json()]));")
    assert status == 403 and body["error"]["code"] == "forbidden", body
    browser.find_element(By.ID, "logout").click()
    wait_until(lambda: browser.find_element(By.ID, "login-form").is_displayed(), 30, "logged out")

    # An operator: set manual mode, then a goto below the elevation limit. The reply on the
    # page is the station's own: the safety gate's reason.
    login(browser, *OPERATOR)
    assert browser.find_element(By.ID, "cmd-goto").get_attribute("disabled") is None
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "mode-select")).select_by_visible_text("manual")
    browser.find_element(By.ID, "cmd-set-mode").click()
    wait_until(lambda: _reply_text(browser).startswith("ok: set_mode"), 30, "set_mode's reply")
    wait_until(lambda: browser.find_element(By.ID, "mode").text == "manual", 30, "manual mode on the page")
    az, el = browser.find_element(By.ID, "goto-az"), browser.find_element(By.ID, "goto-el")
    az.clear()
    az.send_keys("200")
    el.clear()
    el.send_keys("2")
    browser.find_element(By.ID, "cmd-goto").click()
    reply = wait_until(lambda: (t := _reply_text(browser)).startswith("goto refused") and t, 30, "goto's reply")
    assert "[refused]" in reply and "elevation" in reply.lower(), reply
    print(f"the page shows: {reply}")
    # Stop is one click away and works.
    browser.find_element(By.ID, "cmd-stop").click()
    wait_until(lambda: _reply_text(browser).startswith("ok: stop"), 30, "stop's reply")

    # Skip the Micius pass from the schedule, then take it again; the page's table follows
    # the station's re-published schedule.
    def row_decision() -> str:
        return browser.execute_script(
            "for (const tr of document.querySelectorAll('#schedule tbody tr'))"
            "  if (tr.textContent.includes(arguments[0])) return tr.querySelector('.decision').textContent;"
            "return '';", MICIUS)

    def click_in_row(label: str) -> None:
        browser.execute_script(
            "for (const tr of document.querySelectorAll('#schedule tbody tr'))"
            "  if (tr.textContent.includes(arguments[0]))"
            "    for (const b of tr.querySelectorAll('button')) if (b.textContent === arguments[1]) b.click();",
            MICIUS, label)

    wait_until(lambda: row_decision() == "planned", 30, "Micius planned in the table")
    click_in_row("skip")
    wait_until(lambda: _reply_text(browser).startswith("ok: skip_pass"), 30, "skip_pass's reply")
    wait_until(lambda: row_decision() == "excluded", 60, "Micius excluded (by the operator) in the table")
    click_in_row("include")
    wait_until(lambda: _reply_text(browser).startswith("ok: include_pass"), 30, "include_pass's reply")
    wait_until(lambda: row_decision() == "included", 60, "Micius included in the table")


@pytest.mark.slow
def test_http_access_rules(web_station: Any) -> None:
    ws = web_station()
    base = ws.url.rstrip("/")
    # No session: no command.
    status, body, _ = http("POST", f"{base}/api/cmd/park", {})
    assert status == 401, body
    status, body, hdrs = http("POST", f"{base}/api/login", {"name": VIEWER[0], "password": VIEWER[1]})
    assert status == 200, body
    cookie = hdrs["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = {"Cookie": cookie.split(";", 1)[0]}
    csrf = body["csrf"]
    # The dashboard account, with its CSRF token: refused. Without the token: refused first.
    status, body, _ = http("POST", f"{base}/api/cmd/park", {}, {**session, "X-CSRF-Token": csrf})
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body, _ = http("POST", f"{base}/api/cmd/park", {}, session)
    assert status == 403 and body["error"]["code"] == "csrf"
    # An operator's command without the CSRF token, or with another session's, is refused.
    status, body, hdrs = http("POST", f"{base}/api/login", {"name": OPERATOR[0], "password": OPERATOR[1]})
    assert status == 200, body
    op = {"Cookie": hdrs["Set-Cookie"].split(";", 1)[0]}
    status, body, _ = http("POST", f"{base}/api/cmd/stop", {}, op)
    assert status == 403 and body["error"]["code"] == "csrf"
    status, body, _ = http("POST", f"{base}/api/cmd/stop", {}, {**op, "X-CSRF-Token": csrf})
    assert status == 403 and body["error"]["code"] == "csrf"
    # Cross-site requests are refused whatever they carry.
    status, body, _ = http("POST", f"{base}/api/cmd/park", {},
                           {**session, "X-CSRF-Token": csrf, "Origin": "http://evil.example"})
    assert status == 403 and body["error"]["code"] == "cross_origin"
    # Request size cap, and hostile bodies.
    status, body, _ = http("POST", f"{base}/api/login", raw=b'{"name": "' + b"a" * 20000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert status == 413, body
    for raw in (b"[" * 5000, b"\xff\xfe", b'"just a string"', b'{"name": 1, "password": []}'):
        status, body, _ = http("POST", f"{base}/api/login", raw=raw,
                               headers={"Content-Type": "application/json"})
        assert status == 400, (raw[:20], status, body)
    # Security headers on the page and the feed.
    for path in ("/", "/api/feed"):
        status, _, hdrs = http("GET", f"{base}{path}") if path == "/" else (None, None, _feed_headers(base))
        assert "default-src 'none'" in hdrs["Content-Security-Policy"]
        assert hdrs["X-Frame-Options"] == "DENY"
    # Wrong passwords, then the login limiter: per client address (and per account).
    status, body, _ = http("POST", f"{base}/api/login", {"name": OPERATOR[0], "password": "nope"})
    assert status == 401 and body["error"]["code"] == "bad_login"
    for _ in range(10):
        status, body, hdrs = http("POST", f"{base}/api/login", {"name": OPERATOR[0], "password": "x"})
        if status == 429:
            break
    assert status == 429 and "Retry-After" in hdrs, (status, body)
    # Even the right password waits now: guessing cannot be sped up by interleaving.
    status, body, _ = http("POST", f"{base}/api/login", {"name": OPERATOR[0], "password": OPERATOR[1]})
    assert status == 429


def _feed_headers(base: str) -> dict[str, str]:
    import urllib.request

    with urllib.request.urlopen(f"{base}/api/feed", timeout=30) as resp:
        return dict(resp.headers)


@pytest.mark.slow
def test_operator_commands_over_http(web_station: Any) -> None:
    ws = web_station()
    base = ws.url.rstrip("/")
    status, body, hdrs = http("POST", f"{base}/api/login", {"name": "operator", "password": "operator-demo"})
    assert status == 200, body
    op = {"Cookie": hdrs["Set-Cookie"].split(";", 1)[0], "X-CSRF-Token": body["csrf"]}
    # The station validates the arguments: its invalid_request comes back as the reply.
    status, body, _ = http("POST", f"{base}/api/cmd/goto", {"az_deg": "north", "el_deg": 40}, op)
    assert status == 200 and body["reply"]["ok"] is False, body
    assert body["reply"]["error"]["code"] == "invalid_request"
    # In auto mode a goto is refused by the mode rules.
    status, body, _ = http("POST", f"{base}/api/cmd/goto", {"az_deg": 120, "el_deg": 40}, op)
    assert body["reply"]["error"]["code"] == "refused", body
    # Unknown verbs never reach MQTT.
    status, body, _ = http("POST", f"{base}/api/cmd/self_destruct", {}, op)
    assert status == 404
    # The web view picks the request id; one from the page is ignored.
    status, body, _ = http("POST", f"{base}/api/cmd/stop", {"request_id": "../../x"}, op)
    assert status == 200 and body["reply"]["ok"] is True, body
    assert body["reply"]["request_id"].startswith("web-operator-")

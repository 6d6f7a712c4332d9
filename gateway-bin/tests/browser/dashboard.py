"""Drives the dashboard in headless Chromium against a running demo gateway.

Debian's `chromium` and `chromium-driver` with Python `selenium` (the system chromedriver,
nothing downloaded). Run by `gateway-bin/tests/browser.rs`, which starts the gateway and
passes ADMIN (http://host:port), TOKEN and, optionally, SCREENSHOT (a PNG path). With
ADMIN an https:// address, the gateway serves TLS on both listeners (a certificate made by
the test): the page is loaded over HTTPS, and its client card's WebSocket must arrive over
HTTP/2 as an extended CONNECT (RFC 8441), and stay open through a live move.
Exits non-zero with the reason on the first check that fails.
"""

import json
import os
import ssl
import sys
import time
import traceback
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ADMIN = os.environ["ADMIN"]
TOKEN = os.environ["TOKEN"]
SCREENSHOT = os.environ.get("SCREENSHOT")
TLS = ADMIN.startswith("https://")
# The admin address of a replica whose ring differs, when the gateway has one ([cluster]).
REPLICA = os.environ.get("REPLICA")
# The test's own self-signed certificate: not checked by the API calls or the browser.
UNCHECKED = ssl._create_unverified_context() if TLS else None


def get_text(path):
    request = urllib.request.Request(ADMIN + path)
    request.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(request, timeout=10, context=UNCHECKED) as response:
        return response.read().decode()


def api(path, method="GET", body=None):
    request = urllib.request.Request(ADMIN + path, method=method)
    request.add_header("Authorization", "Bearer " + TOKEN)
    data = None
    if body is not None:
        request.add_header("Content-Type", "application/json")
        data = json.dumps(body).encode()
    with urllib.request.urlopen(request, data, timeout=10, context=UNCHECKED) as response:
        return json.loads(response.read())


def wait(check, what, timeout=20):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as error:  # an element not there yet
            last = error
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#backends tbody tr")


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def main():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1200"):
        options.add_argument(argument)
    if TLS:
        options.add_argument("--ignore-certificate-errors")
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        check(driver)
    finally:
        driver.quit()


def check(driver):
    # Without the token: the page says it is refused, and shows no data.
    driver.get(ADMIN + "/")
    wait(lambda: driver.find_element(By.ID, "refused").is_displayed(), "the refusal")
    assert "Authorization: Bearer" in text(driver, "refused-why"), text(driver, "refused-why")
    assert not driver.find_element(By.ID, "main").is_displayed()
    assert len(rows(driver)) == 0

    # With it (in the fragment, which leaves the address bar): 3 backends.
    driver.get("about:blank")
    driver.get(ADMIN + "/#token=" + TOKEN)
    wait(lambda: len(rows(driver)) == 3, "3 backend rows")
    assert TOKEN not in driver.current_url, driver.current_url
    assert text(driver, "live") == "live"
    version = text(driver, "ring-version")

    # "Add instance" adds a 4th row, and the ring redraws with the moved ranges lit.
    driver.find_element(By.ID, "add-instance").click()
    wait(lambda: len(rows(driver)) == 4, "a 4th backend row")
    wait(lambda: text(driver, "ring-version") != version, "a new ring version")
    wait(lambda: int(driver.find_element(By.ID, "ring-moved").get_attribute("data-moved") or 0) > 0,
         "moved ranges highlighted")
    owners = {a["id"] for a in api("/admin/ring")["members"]}
    drawn = driver.execute_script("return [...new Set(arcs.map(a => a.owner))]")
    assert set(drawn) == owners, (drawn, owners)

    # A client card connects as a user and gets a pushed message.
    driver.find_element(By.ID, "client-user").send_keys("42")
    driver.find_element(By.CSS_SELECTOR, "#client-form button").click()
    card = wait(lambda: driver.find_element(By.CSS_SELECTOR, '.card[data-user="42"]'), "a card")
    server = wait(lambda: card.get_attribute("data-server"), "the card's backend")
    driver.find_element(By.ID, "push-user").send_keys("42")
    driver.find_element(By.ID, "push-message").send_keys("hello from the browser")
    driver.find_element(By.CSS_SELECTOR, "#push-form button").click()
    wait(lambda: "pushed: hello from the browser" in card.text, "the pushed message on the card")

    # Draining the card's backend moves it live: another backend, no reconnect.
    # Found and clicked in one step, again if the table was re-rendered in between (a
    # stale row throws before any click is sent).
    wait(lambda: driver.find_element(By.CSS_SELECTOR, f'#backends tr[data-id="{server}"]')
         .find_element(By.CSS_SELECTOR, "button.drain").click() or True, "the drain button")
    wait(lambda: card.get_attribute("data-server") != server, "the card's backend to change")
    assert card.get_attribute("data-reconnects") == "0", card.get_attribute("data-reconnects")
    assert card.get_attribute("data-moves") == "1", card.get_attribute("data-moves")
    assert "moved live" in card.text, card.text
    wait(lambda: driver.find_element(By.CSS_SELECTOR, f'#backends tr[data-id="{server}"]')
         .get_attribute("data-state") == "draining", "the drained row's state")

    # The counters match /admin/ring (both read until they agree: the page lags a second).
    def counters_match():
        ring = api("/admin/ring")
        shown = {r.get_attribute("data-id"): r.find_element(By.CSS_SELECTOR, "td.connections").text
                 for r in rows(driver)}
        expected = {m["id"]: str(m["connections"]) for m in ring["members"] + ring["others"]}
        migrations = ring["migrations"]
        return (shown == expected
                and text(driver, "m-moved") == str(migrations["moved"])
                and text(driver, "m-failed") == str(migrations["failed"])
                and text(driver, "m-off-owner") == str(ring["off_owner"])
                and text(driver, "total-connections") == str(ring["connections"])
                and migrations["moved"] >= 1)
    wait(counters_match, "the page's counters to match /admin/ring")
    # Read through `wait`: the page re-renders the table every second, so a row found
    # can be replaced before its text is read (a stale element): then it reads again.
    def first_move():
        moves = driver.find_elements(By.CSS_SELECTOR, "#moves tbody tr")
        first = moves[0].text if moves else ""
        return first if "42" in first and server in first else None
    wait(first_move, f"the move of user 42 off {server} in the moves table")

    if TLS:
        # The card's WebSocket was a stream of the page's HTTP/2 connection to the public
        # listener, and it stayed open through the move above.
        opened = {}
        for line in get_text("/metrics").splitlines():
            if line.startswith("wscluster_websockets_opened_via_total{"):
                via = line.split('via="')[1].split('"')[0]
                opened[via] = int(float(line.rsplit(" ", 1)[1]))
        assert opened.get("h2_extended_connect", 0) >= 1, opened
        assert opened.get("http1_upgrade", 0) == 0, opened
        assert card.get_attribute("data-open") == "yes", card.get_attribute("data-open")

    # The charts: a line per member, and the ring change of "Add instance" marked on the
    # time axis; moves per second drawn too.
    def charts_drawn():
        counts = driver.execute_script(
            "const n = (q) => document.querySelectorAll(q).length;"
            "return [n('#chart-connections polyline'), n('#chart-messages polyline'),"
            "        n('#chart-connections .ring-change'), n('#chart-moves polyline')];")
        members = len(rows(driver))
        return counts[0] >= members and counts[1] >= members and counts[2] >= 1 and counts[3] == 1
    wait(charts_drawn, "a line per member on the charts, and the ring change marked")

    # The header names this process: its version and pid (an upgrade changes the pid).
    own = [r for r in api("/admin/cluster")["replicas"] if r["own"]][0]
    wait(lambda: f"v{own['build']} · pid {own['pid']}" in text(driver, "process"), "the process in the header")

    # The replica view ([cluster]): this gateway and a replica whose ring differs, marked.
    if REPLICA:
        wait(lambda: driver.find_element(By.ID, "replicas-panel").is_displayed(), "the replicas")
        def replicas_marked():
            table = driver.execute_script(
                "return [...document.querySelectorAll('#replicas tbody tr')]"
                "  .map(r => [r.className, r.textContent]);")
            own = [t for c, t in table if "(this one)" in t]
            odd = [c for c, t in table if REPLICA in t]
            return (len(table) == 2 and odd == ["disagrees"] and len(own) == 1
                    and text(driver, "replicas-verdict") == "disagree")
        wait(replicas_marked, f"the replica at {REPLICA} marked as disagreeing")
        cluster = api("/admin/cluster")
        assert cluster["agree"] is False and cluster["disagreed_seconds"] > 0, cluster
    else:
        assert not driver.find_element(By.ID, "replicas-panel").is_displayed()

    # At 1400 px the panels fill the width: the migrations panel ends where the backends
    # panel does (no empty third column), and its table of moves needs no scrollbar.
    driver.set_window_size(1400, 1000)
    time.sleep(0.3)
    short, scrolled = driver.execute_script(
        "const right = (id) => document.getElementById(id).getBoundingClientRect().right;"
        "const moves = document.querySelector('#migrations-panel .scroll');"
        "return [right('backends-panel') - right('migrations-panel'),"
        "        moves.scrollWidth - moves.clientWidth];")
    assert short <= 1, f"the migrations panel ends {short}px short of the backends panel"
    assert scrolled <= 0, f"the table of moves scrolls by {scrolled}px at 1400 px"

    # Narrow window: nothing wider than the viewport.
    driver.set_window_size(420, 900)
    time.sleep(0.3)
    overflow = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page is {overflow}px wider than a narrow window"
    driver.set_window_size(1280, 1200)

    if SCREENSHOT:
        time.sleep(1.2)  # a tick with rates
        driver.save_screenshot(SCREENSHOT)
    print("dashboard: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        line = traceback.extract_tb(error.__traceback__)[-1]
        print(f"dashboard check failed at line {line.lineno} ({line.line}): {error}", file=sys.stderr)
        sys.exit(1)

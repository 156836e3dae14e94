"""The dashboard in headless Chromium (run by scripts/ui-check, which starts the gateway)."""

import hashlib
import hmac
import json
import os
import sqlite3
import sys
import time
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

TENANT, ADMIN = os.environ["UI_TENANT"], os.environ["UI_ADMIN"]
TOKEN, KEY_A, SHOTS = os.environ["UI_ADMIN_TOKEN"], os.environ["UI_KEY_A"], os.environ["UI_SHOTS"]
HOSTILE = "<script>document.title='owned'</script><img src=x onerror=\"document.title='owned'\">"
secrets = []


def call(method, url, key=None, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def check(cond, what):
    if not cond:
        print(f"ui-check: FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ui-check: ok: {what}", file=sys.stderr)


# A team made at runtime, with a key for its app and one for its lead.
status, _ = call("POST", f"{ADMIN}/admin/tenants", TOKEN, {"id": "team-v", "monthly_budget": "0.50"})
check(status == 201, "tenant team-v created")
keys = {}
for scope in ("api", "viewer"):
    status, k = call("POST", f"{ADMIN}/admin/tenants/team-v/keys", TOKEN, {"label": f"<b>{scope}</b>", "scope": scope})
    check(status == 201, f"{scope} key issued")
    keys[scope] = k["key"]
    secrets.append(k["key"])

ids = []
for key, prompt in ((keys["api"], "A lighthouse at night"), (keys["api"], "A portrait [fail]"), (keys["api"], f"A crowd [fail:{HOSTILE}]"), (KEY_A, "A sunset")):
    status, g = call("POST", f"{TENANT}/v1/sora/generate", key, {"prompt": prompt})
    check(status == 201, f"generate {prompt[:20]!r}")
    ids.append((key, g["generation_id"]))
deadline = time.time() + 20
while True:
    states = [call("GET", f"{TENANT}/v1/sora/generations/{gid}/", key)[1]["status"] for key, gid in ids]
    if all(s in ("completed", "failed") for s in states):
        break
    if time.time() > deadline:
        check(False, "generations final within 20 s")
    time.sleep(0.2)
usage = {t["tenant"]: t for t in call("GET", f"{ADMIN}/admin/usage", TOKEN)[1]["tenants"]}

options = webdriver.ChromeOptions()
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1600"):
    options.add_argument(arg)
options.binary_location = "/usr/bin/chromium"
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(20)
os.makedirs(SHOTS, exist_ok=True)


def sign_in(token):
    driver.get(f"{ADMIN}/dashboard")
    driver.find_element(By.ID, "token").send_keys(token)
    submit(driver.find_element(By.CSS_SELECTOR, "form[action='/dashboard/login'] button"))


def submit(button):
    """Clicks a form's button and waits for the next page: the old page's button is gone (any
    error asking about it means that; chromium sometimes answers with an inspector error
    instead of a stale-element one) and the new page has loaded."""
    button.click()

    def gone(_):
        try:
            button.is_enabled()
            return False
        except WebDriverException:
            return True

    WebDriverWait(driver, 10).until(gone)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def fig(name, root=None):
    return (root or driver).find_element(By.CSS_SELECTOR, f"[data-figure='{name}']").text


def no_script_ran():
    try:
        driver.switch_to.alert
        return False
    except NoAlertPresentException:
        return driver.title != "owned"


try:
    # A wrong token gets the form again.
    sign_in("not-a-token")
    check("Invalid credentials" in driver.page_source, "a wrong token is refused")

    sign_in(TOKEN)
    check(driver.find_element(By.TAG_NAME, "h1").text.startswith("Overview"), "the admin lands on the overview")
    check("tollgate_session" not in driver.execute_script("return document.cookie"), "the session cookie is HttpOnly")
    cookie = driver.get_cookie("tollgate_session")
    check(cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", "the cookie is HttpOnly and SameSite=Strict")
    secrets.append(cookie["value"])
    for t in ("team-a", "team-v"):
        row = driver.find_element(By.CSS_SELECTOR, f"tr[data-tenant='{t}']")
        spent = row.find_element(By.CSS_SELECTOR, "[data-col='spent']").text
        remaining = row.find_element(By.CSS_SELECTOR, "[data-col='remaining']").text
        check((spent, remaining) == (usage[t]["spent"], usage[t]["remaining"]), f"overview {t}: spent {spent}, remaining {remaining} as /admin/usage")
    driver.save_screenshot(f"{SHOTS}/overview.png")

    submit(driver.find_element(By.LINK_TEXT, "team-v"))
    check(fig("spent") == usage["team-v"]["spent"] and fig("refunded") == usage["team-v"]["refunded"], f"tenant page: spent {fig('spent')}, refunded {fig('refunded')} as /admin/usage")
    bars = driver.find_elements(By.CSS_SELECTOR, "svg.chart rect.spend")
    check(len(bars) == 90 and bars[-1].get_attribute("data-amount") == usage["team-v"]["spent"], "the chart has 90 days and today is the month's spend")
    cells = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "#failures tbody tr td")]
    check(cells == ["sora", "3", "2", "67 %", "1", "0", "1"], f"failures by reason: {cells}")
    messages = [m.text for m in driver.find_elements(By.CSS_SELECTOR, "#generations td.message")]
    check(any(HOSTILE in m for m in messages), "the hostile message is shown as text")
    check(no_script_ran() and driver.execute_script("return document.scripts.length") == 0, "nothing in it ran (no alert, title intact, no script element)")
    check(not driver.find_elements(By.CSS_SELECTOR, "#generations img, #keys b"), "no element was made from outside text")
    driver.save_screenshot(f"{SHOTS}/tenant.png")
    # The layout holds from 1280 to 1920 px: every card title on one line, every time and
    # amount cell unbroken (before: "IN FLIGHT" wrapped at 1400 px, timestamps broke).
    for width in (1280, 1400, 1920):
        driver.set_window_size(width, 1600)
        driver.save_screenshot(f"{SHOTS}/tenant-{width}.png")
        heights = {h.size["height"] for h in driver.find_elements(By.CSS_SELECTOR, ".card h2")}
        cells = driver.find_elements(By.CSS_SELECTOR, "#generations td.time, #generations td.num")
        tall = [c.text for c in cells if c.size["height"] > 2 * min(x.size["height"] for x in cells)]
        check(len(heights) == 1 and not tall, f"at {width} px the cards' titles hold one line and no time or amount breaks ({heights}, {tall})")
    driver.set_window_size(1280, 1600)
    check(driver.find_element(By.CSS_SELECTOR, "a.csv").get_attribute("href").endswith("/dashboard/tenants/team-v/generations.csv"), "the month's CSV is offered")

    # Issue a key through the form: shown once, and it works.
    driver.find_element(By.ID, "label").send_keys("from the browser")
    submit(driver.find_element(By.CSS_SELECTOR, "#issue button"))
    new_key = driver.find_element(By.ID, "new-key").text
    secrets.append(new_key)
    check(new_key.startswith("tg_") and call("GET", f"{TENANT}/v1/data/balance", new_key)[0] == 200, "a key issued from the form works")
    driver.get(f"{ADMIN}/dashboard/tenants/team-v")
    check(new_key not in driver.page_source, "the new key is shown once")
    submit(driver.find_element(By.CSS_SELECTOR, "form.logout button"))
    check(driver.find_elements(By.ID, "token"), "signed out")

    # A viewer sees its tenant only.
    sign_in(keys["viewer"])
    check(driver.current_url.endswith("/dashboard/tenants/team-v") and fig("spent") == usage["team-v"]["spent"], "the viewer lands on its tenant's page")
    check(not driver.find_elements(By.ID, "issue") and not driver.find_elements(By.CSS_SELECTOR, "form[action$='/revoke']"), "no key forms for a viewer")
    driver.get(f"{ADMIN}/dashboard/tenants/team-a")
    check(driver.find_element(By.TAG_NAME, "h1").text == "Not found", "another tenant's page is not found for a viewer")
    driver.get(f"{ADMIN}/dashboard")
    viewer_cookie = driver.get_cookie("tollgate_session")["value"]
    secrets.append(viewer_cookie)

    # Forged and expired cookies see no page.
    def with_cookie(value):
        driver.delete_all_cookies()
        driver.add_cookie({"name": "tollgate_session", "value": value, "path": "/dashboard"})
        driver.get(f"{ADMIN}/dashboard/tenants/team-v")
        return bool(driver.find_elements(By.ID, "token")) and not driver.find_elements(By.CSS_SELECTOR, "[data-figure='spent']")

    check(with_cookie(viewer_cookie.replace("v2.v.", "v2.a.", 1)), "a viewer's cookie rewritten to admin sees no page")
    check(with_cookie(viewer_cookie[:-4] + ("0000" if not viewer_cookie.endswith("0000") else "1111")), "a cookie with a forged signature sees no page")
    # Signed with the right key (the store's random secret, read from the ledger file as only
    # its owner can) but expired. Nothing in the cookie is derived from the admin token.
    check(TOKEN not in viewer_cookie, "the admin token is in no cookie")
    with sqlite3.connect(os.environ["UI_DB"]) as db:
        key = bytes.fromhex(db.execute("SELECT value FROM secrets WHERE name = 'dashboard-sessions'").fetchone()[0])

    def mac(*parts):
        m = hmac.new(key, digestmod=hashlib.sha256)
        for p in parts:
            m.update(p + b"\n")
        return m.hexdigest()

    tag = mac(b"admin token", TOKEN.encode())[:32]
    body = f"v2.a...{int(time.time() * 1000) - 1000}.{'0' * 32}.{tag}"
    check(with_cookie(f"{body}.{mac(b'session', body.encode())}"), "an expired cookie sees no page")
    fresh = f"v2.a...{int(time.time() * 1000) + 60000}.{'0' * 32}.{tag}"
    check(not with_cookie(f"{fresh}.{mac(b'session', fresh.encode())}"), "the same cookie, unexpired, does see the page (the check above is not vacuous)")
    # Login CSRF: another site's page that auto-submits a sign-in form (with a key of the
    # attacker's) does not replace the admin's session.
    driver.get(f"{ADMIN}/dashboard")
    attack = f"<form method=post action='{ADMIN}/dashboard/login'><input name=token value='{keys['viewer']}'></form><script>document.forms[0].submit()</script>"
    driver.get("data:text/html," + urllib.parse.quote(attack))
    WebDriverWait(driver, 10).until(lambda d: d.current_url.startswith(ADMIN))
    check("not made here" in driver.page_source and not driver.find_elements(By.CSS_SELECTOR, "[data-figure='spent']"), "a cross-site sign-in form is refused")
    driver.get(f"{ADMIN}/dashboard")
    check(driver.find_element(By.TAG_NAME, "h1").text.startswith("Overview"), "the admin's session is still the admin's")
finally:
    driver.quit()
    with open(f"{SHOTS}/secrets.txt", "w") as f:
        f.write("\n".join(s for s in secrets if s) + "\n")
print("ui-check: all checks passed", file=sys.stderr)

"""The login page in a real headless browser (Debian's chromium and chromedriver, driven by selenium).

The page loads, the form logs in (with a one-time code on the challenge page),
the page shows the expiry and groups, logging out returns to the form. A
screenshot of the logged-in page is saved under $TUNNEL_TEST_ARTIFACTS (or the
test's tmp_path) and its path printed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from server.auth import totp

from .endpoint import running_endpoint

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=800,900"]


def _need(thing: str, found) -> None:
    if not found:
        message = f"{thing} is not installed"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    _need("selenium (pip install 'tunnel[test]')", webdriver)
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    _need("chromium (apt-get install chromium)", chromium)
    _need("chromedriver (apt-get install chromium-driver)", driver_path)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _after_submit(browser, element_id: str, text: str):
    """The element ELEMENT_ID of the page a form submission loads, once its text holds TEXT (case aside):
    the click returns before the new page is there, and elements of the old one go stale."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(driver):
        element = driver.find_element(By.ID, element_id)
        return element if text.lower() in element.text.lower() else None

    return WebDriverWait(browser, 20, ignored_exceptions=(NoSuchElementException,
                                                          StaleElementReferenceException)).until(found)


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TUNNEL_TEST_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_login_page_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    with running_endpoint() as env:
        base = f"http://127.0.0.1:{env.port}/"
        browser.get(base)
        assert browser.title == "VPN login"
        # Our style is applied: the CSP's hash matches the <style> element.
        assert browser.find_element(By.TAG_NAME, "body").value_of_css_property("max-width") == "448px"
        labels = {e.get_attribute("for"): e.text for e in browser.find_elements(By.TAG_NAME, "label")}
        assert labels["user"] == "User name" and labels["password"] == "Password"

        # A wrong password: the error is shown, in an alert region.
        browser.find_element(By.ID, "user").send_keys("bob")
        browser.find_element(By.ID, "password").send_keys("not-his-password")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        error = _after_submit(browser, "error", "wrong user name")
        assert error.get_attribute("role") == "alert"

        # The right one: the code is asked on a second page.
        browser.find_element(By.ID, "password").send_keys("builder-bob")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        _after_submit(browser, "prompt", "one-time code")
        browser.find_element(By.ID, "code").send_keys(totp.code_at(env.bob_secret, env.clock()))
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

        _after_submit(browser, "status", "You are logged in as bob")
        expires = browser.find_element(By.ID, "expires")
        assert "2027-01-15 20:00 UTC" in expires.text and "(in 12 h 0 min)" in expires.text
        assert browser.find_element(By.ID, "groups").text == "admins"
        shot = _artifacts(tmp_path) / "login-page-session.png"
        assert browser.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert env.service.session_of(env.clients["127.0.0.1"]).user == "bob"

        # Reloading shows the session; logging out returns to the form.
        browser.get(base)
        assert browser.find_element(By.ID, "groups").text == "admins"
        browser.find_element(By.CSS_SELECTOR, "form[action='/logout'] button").click()
        assert _after_submit(browser, "user", "").get_attribute("autocomplete") == "username"
        assert env.service.session_of(env.clients["127.0.0.1"]) is None

        # No resource or style refused by the Content-Security-Policy (401s for wrong logins are expected).
        problems = [e["message"] for e in browser.get_log("browser")
                    if "Content Security Policy" in e["message"] or "Refused" in e["message"]]
        assert problems == []

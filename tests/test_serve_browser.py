"""The web page end to end in headless Chromium (the system's ``chromium`` and ``chromium-driver``, driven by
Selenium: no browser is downloaded): upload a real photo, a generated image and a bad file, then read the cards.

``.ci/run`` installs the browser; where it cannot be installed this test is skipped with the reason, never passed."""

from __future__ import annotations

import shutil

import pytest
from serving import SHARED_TEST, live_server

from aigi import api
from aigi.serve.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="needs the Debian packages chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
REAL = SHARED_TEST / "0_real" / "real_Kodak24__kodim01.jpg"
GENERATED = SHARED_TEST / "1_fake" / "dalle2" / "dcsan_dalle2__court-jester-cyberpunk-playing-card-61722276__dal2-1.jpg"


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1150"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def test_the_page_checks_uploads_and_shows_a_card_each(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    assert REAL.is_file() and GENERATED.is_file(), f"test images missing under {SHARED_TEST}"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not really a jpeg")
    app = create_app({"default": api.load()})
    browser = _browser()
    try:
        with live_server(app) as url:
            browser.get(url)
            wait = WebDriverWait(browser, 60)
            wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#model option")))
            browser.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in (REAL, GENERATED, bad)))
            wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "article.card")) == 3)
            cards = {
                c.find_element(By.TAG_NAME, "h2").text: c
                for c in browser.find_elements(By.CSS_SELECTOR, "article.card")
            }
            for name in (REAL.name, GENERATED.name):
                card = cards[name]
                verdict = card.find_element(By.CLASS_NAME, "verdict").text
                assert verdict in ("Generated", "Real photo", "Uncertain")
                assert "probability generated" in card.text and "Why:" in card.text
                heat = card.find_element(By.CSS_SELECTOR, "img.heat")
                photo = card.find_element(By.CSS_SELECTOR, ".figure img:not(.heat)")
                toggle = card.find_element(By.CSS_SELECTOR, "input.heat-toggle")
                assert photo.is_displayed() and not heat.is_displayed()
                toggle.click()
                assert heat.is_displayed() and not photo.is_displayed()
                assert heat.get_attribute("src").startswith("data:image/png;base64,")
            error_card = cards[bad.name]
            assert "error" in error_card.get_attribute("class")
            assert "This file could not be checked" in error_card.text
            (tmp_path / "page.png").write_bytes(browser.get_screenshot_as_png())
    finally:
        browser.quit()

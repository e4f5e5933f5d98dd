"""The page at GET /, in Debian's Chromium driven by Selenium and chromium-driver, against the real stack.

A person's path through it: no key, then a bad one (refused in words), then a good one; images uploaded through the
file picker get the captions the tiny model gives them; the recent jobs and a bulk run's progress bar show. The
page must also be usable by keyboard (every control labelled and reachable) and fit a phone's width.
Set CAPTIONER_SCREENSHOTS to a folder to keep the screenshots (docs/images/ holds the ones the docs show).
"""

from __future__ import annotations

import io
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.wait import WebDriverWait

from captioner.client import Client
from common.storage import ObjectStorage
from tests.fixtures.shapes import random_scene, render
from tests.integration.conftest import Stack
from tests.integration.test_end_to_end import caption_alone

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Chromium as root, headless, and never reaching for Google's services (this machine's network is closed).
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1000,1300"]
PHONE_WIDTH = 390  # CSS pixels: a common phone


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("The page's test needs Debian's Chromium and its driver: "
                    "apt-get install chromium chromium-driver (.ci/run installs them where missing).")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    # An explicit driver: Selenium Manager would otherwise try to download one.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, stack: Stack) -> WebDriver:
    """The page, fresh, with no key in the browser's storage."""
    browser.get(f"{stack.url}/")
    browser.execute_script("localStorage.clear()")
    browser.get(f"{stack.url}/")
    return browser


def image_files(folder: Path, count: int, seed: int, stem: str = "shape") -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for index in range(count):
        buffer = io.BytesIO()
        render(random_scene(rng), (320, 240), rng).save(buffer, format="PNG")
        path = folder / f"{stem}-{index}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def until(driver: WebDriver, what: str, check: object, timeout_s: float = 60) -> None:
    WebDriverWait(driver, timeout_s).until(lambda _: check(), message=what)  # type: ignore[operator]


def use_key(page: WebDriver, key: str) -> None:
    page.find_element(By.ID, "key").send_keys(key)
    page.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()


def caption(page: WebDriver, paths: list[Path], prompt: str = "") -> None:
    page.find_element(By.ID, "images").send_keys("\n".join(str(path) for path in paths))
    if prompt:
        page.find_element(By.ID, "prompt").send_keys(prompt)
    page.find_element(By.ID, "caption-button").click()


def outcomes(page: WebDriver) -> dict[str, tuple[str, str]]:
    """Each result on the page: its file's name -> (kind, words): kind is caption, error or pending."""
    found = {}
    for item in page.find_elements(By.CSS_SELECTOR, "#results li"):
        outcome = item.find_element(By.CLASS_NAME, "outcome")
        kind = (outcome.get_attribute("class") or "").split()[-1]
        found[item.find_element(By.CLASS_NAME, "name").text] = (kind, outcome.text)
    return found


def save_screenshot(page: WebDriver, name: str, tmp_path: Path) -> Path:
    """The whole page, as tall as it is, in a PNG."""
    path = tmp_path / name
    size = page.get_window_size()
    page.set_window_size(size["width"], page.execute_script("return document.documentElement.scrollHeight") + 150)
    assert page.save_screenshot(str(path))
    page.set_window_size(size["width"], size["height"])
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    if folder := os.environ.get("CAPTIONER_SCREENSHOTS"):
        shutil.copy(path, Path(folder) / name)
    return path


def test_a_bad_key_is_refused_in_words(page: WebDriver, tmp_path: Path) -> None:
    assert "No key yet" in page.find_element(By.ID, "key-status").text
    (path,) = image_files(tmp_path, 1, seed=1)
    caption(page, [path])
    assert "Enter an API key first" in page.find_element(By.ID, "caption-error").text  # nothing was sent

    use_key(page, "cap_not-a-real-key")
    assert page.execute_script("return localStorage.getItem('captioner.apiKey')") == "cap_not-a-real-key"
    assert page.find_element(By.ID, "key").get_attribute("value") == ""  # not left on screen
    caption(page, [path])
    until(page, "the refusal shown", lambda: outcomes(page).get(path.name, ("",))[0] == "error")
    words = outcomes(page)[path.name][1]
    assert "The API key is not valid" in words and "Enter a valid API key above" in words, words
    assert "{" not in words and "unauthorized" not in words  # words, not the JSON or its code
    key_status = page.find_element(By.ID, "key-status")
    assert words == key_status.text and "error" in (key_status.get_attribute("class") or "")


def test_uploaded_images_get_the_models_captions(page: WebDriver, stack: Stack, tmp_path: Path) -> None:
    paths = image_files(tmp_path, 3, seed=2)
    use_key(page, stack.key.key)
    assert "A key is set" in page.find_element(By.ID, "key-status").text
    caption(page, paths)
    until(page, "every caption shown", lambda: all(
        kind == "caption" for kind, _ in outcomes(page).values()) and len(outcomes(page)) == 3)
    expected = {path.name: caption_alone(path.read_bytes(), None, {}) for path in paths}
    assert {name: words for name, (_, words) in outcomes(page).items()} == expected

    # With a prompt and an option, as the form sends them: BLIP continues the prompt.
    (prompted,) = image_files(tmp_path, 1, seed=3, stem="prompted")
    page.find_element(By.TAG_NAME, "summary").click()
    page.find_element(By.ID, "max_new_tokens").send_keys("8")
    caption(page, [prompted], prompt="a picture of")
    until(page, "the prompted caption shown", lambda: outcomes(page)[prompted.name][0] == "caption")
    assert outcomes(page)[prompted.name][1] == caption_alone(prompted.read_bytes(), "a picture of",
                                                             {"max_new_tokens": 8})

    # The recent jobs, newest first, hold these captions.
    until(page, "recent jobs listed", lambda: len(page.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")) >= 4)
    rows = [row.text for row in page.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")]
    assert expected[paths[0].name] in "\n".join(rows) and "succeeded" in rows[0]
    save_screenshot(page, "page.png", tmp_path)


def test_a_bulk_runs_progress_shows(page: WebDriver, stack: Stack, tmp_path: Path) -> None:
    storage = ObjectStorage.from_settings(stack.settings)
    for path in image_files(tmp_path, 4, seed=4):
        storage.put(f"page-bulk/{path.name}", path.read_bytes(), "image/png")
    with Client(stack.url, stack.key.key) as client:
        run = client.bulk(stack.settings.s3_bucket, "page-bulk/")
    use_key(page, stack.key.key)
    bar = f"bulk-{run.id}"
    until(page, "the bulk run's bar full", lambda: bool(page.find_elements(By.ID, bar)) and page.find_element(
        By.ID, bar).get_attribute("value") == "4", timeout_s=120)
    label = page.find_element(By.CSS_SELECTOR, f"label[for={bar}]").text
    assert f"s3://{stack.settings.s3_bucket}/page-bulk/" in label and "4 of 4" in label, label


def test_every_control_is_labelled_and_reachable_by_keyboard(page: WebDriver) -> None:
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, progress')].filter(e => !e.labels.length).map(e => e.id)")
    assert unlabelled == []
    reached = set()
    page.find_element(By.TAG_NAME, "body").click()
    for _ in range(20):
        ActionChains(page).send_keys(Keys.TAB).perform()  # to the page, not an element (a file input takes paths)
        reached.add(page.switch_to.active_element.get_attribute("id"))
    assert {"key", "forget-key", "images", "prompt", "caption-button", "refresh"} <= reached, reached
    # The key form submits with Enter, as a form should.
    page.find_element(By.ID, "key").send_keys("cap_typed", Keys.ENTER)
    assert page.execute_script("return localStorage.getItem('captioner.apiKey')") == "cap_typed"


def test_the_page_fits_a_phone(page: WebDriver, tmp_path: Path) -> None:
    size = page.get_window_size()
    try:
        page.set_window_size(PHONE_WIDTH, 844)
        page.refresh()
        overflow = page.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone"
        save_screenshot(page, "page-phone.png", tmp_path)
    finally:
        page.set_window_size(size["width"], size["height"])


def test_the_page_loads_nothing_from_elsewhere_and_cannot_be_framed(page: WebDriver, stack: Stack) -> None:
    sources = page.execute_script(
        "return [...document.querySelectorAll('[src], link[href]')].map(e => e.src || e.href)")
    assert sources and all(source.startswith(f"{stack.url}/") for source in sources), sources
    assert page.execute_script("return document.title") == "captioner"
    headers = requests.get(f"{stack.url}/", timeout=10).headers
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"

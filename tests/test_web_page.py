"""The web page in a real headless browser: Debian chromium driven by Selenium.

Upload a query and see the decision, register a class from a few images, see it recognised,
remove it again. Skips (saying why) where chromium or chromedriver is not installed; CI
installs them (.ci/run).
"""

import shutil
import socket
import threading
import time

import pytest

from openrecog.gallery import Gallery
from openrecog.models import create_model
from openrecog.serve import ServeSettings, create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
API_KEY = "browser-test-key"

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(pattern_folder, tmp_path):
    import uvicorn

    gallery = Gallery(create_model("lite0_gap_imagenet", image_size=64), threshold=0.9)
    gallery.register_folder(pattern_folder / "class_0")  # one class to start with
    settings = ServeSettings(api_key=API_KEY, port=_free_port())
    app = create_app(gallery, tmp_path / "gallery", settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning")
    uvicorn_server = uvicorn.Server(config)
    thread = threading.Thread(target=uvicorn_server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        if time.monotonic() > deadline:
            pytest.fail("the server did not start within 30 s")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{settings.port}"
    uvicorn_server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(1280, 1000)
    yield driver
    driver.quit()


def _wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _state(driver, element_id):
    return driver.find_element("id", element_id).get_attribute("data-state")


def test_upload_register_recognise_remove(server, browser, pattern_folder):
    by_id = browser.find_element
    browser.get(server)
    _wait(browser, lambda d: _state(d, "health") not in ("loading", None))

    # A query of an unregistered class is rejected as unknown (threshold 0.9).
    by_id("id", "query-file").send_keys(str(pattern_folder / "class_3" / "0.png"))
    _wait(browser, lambda d: _state(d, "result") in ("done", "error"))
    assert _state(browser, "result") == "done"
    assert by_id("id", "result-label").text.lower().startswith("unknown")
    assert browser.find_elements("css selector", "#matches li.match")  # top-k shown

    # Register it from three images, with the API key entered on the page.
    by_id("id", "api-key").send_keys(API_KEY)
    by_id("id", "api-key-save").click()
    by_id("id", "register-label").send_keys("stripes")
    files = "\n".join(str(pattern_folder / "class_3" / f"{i}.png") for i in range(3))
    by_id("id", "register-files").send_keys(files)
    by_id("id", "register-submit").click()
    _wait(browser, lambda d: _state(d, "register-status") in ("done", "error"))
    assert _state(browser, "register-status") == "done", by_id("id", "register-status").text
    _wait(browser, lambda d: d.find_elements("css selector", '#classes li[data-label="stripes"]'))

    # The fourth image of the class is now recognised.
    by_id("id", "query-file").send_keys(str(pattern_folder / "class_3" / "3.png"))
    _wait(browser, lambda d: by_id("id", "result-label").text == "stripes", timeout=60)
    assert _state(browser, "result") == "done"

    # Remove the class again (two clicks: the first one arms the button).
    remove = browser.find_element(
        "css selector", '#classes li[data-label="stripes"] button.remove-class'
    )
    remove.click()
    remove.click()
    _wait(
        browser,
        lambda d: not d.find_elements("css selector", '#classes li[data-label="stripes"]'),
    )

"""A real headless Chromium for the console's tests and benchmarks: Debian's ``chromium``
driven through its ``chromedriver`` (Selenium). Missing, the tests fail with how to install them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"


def browser(width: int = 1500, height: int = 1000, nice: int = 0) -> webdriver.Chrome:
    """A headless Chromium; with ``nice``, it and its chromedriver run at that niceness
    (a benchmark's browsers given way to the exchange on the same machine)."""
    chromium, driver = shutil.which("chromium") or CHROMIUM, shutil.which("chromedriver") or DRIVER
    assert shutil.which(chromium) and shutil.which(driver), (
        "the console's tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; "
        "./dev test installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    popen = {"preexec_fn": lambda: os.nice(nice)} if nice else {}
    return webdriver.Chrome(options=options, service=Service(driver, popen_kw=popen))


def wait_until(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], timeout: float = 20) -> Any:
    # The page re-renders live: an element read as it is replaced is simply read again.
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException]).until(condition)


def text_of(driver: webdriver.Chrome, element_id: str) -> str:
    """The element's text as shown, read in one step in the page."""
    return str(driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.innerText : '';",
                                     element_id))


def texts(driver: webdriver.Chrome, selector: str) -> list[str]:
    """The shown text of every element the CSS selector finds, read in one step."""
    return list(driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText);", selector))


def log_on(driver: webdriver.Chrome, url: str, member: str, user: str, secret: str) -> None:
    driver.get(url + "/login")
    driver.find_element(By.ID, "member").clear()
    driver.find_element(By.ID, "member").send_keys(member)
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "secret").send_keys(secret)
    driver.find_element(By.ID, "go").click()

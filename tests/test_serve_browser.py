"""The drawing page in a real browser: headless Chromium draws real MNIST test digits with pointer events.

Slow tier: trains a small model on the real MNIST, starts `python -m mnist_dnn.serve` on a free
loopback port, and drives Debian's `chromium` through `chromium-driver` and Selenium. Where no
browser is installed (`apt-get install chromium chromium-driver`), the tests skip and say so.
"""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from mnist_dnn.lib import config as config_lib
from mnist_dnn.lib.core import data
from mnist_dnn.lib.trainer import training

pytestmark = pytest.mark.slow
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=760,900")
SCALE = 10  # canvas pixels per MNIST pixel: the 28x28 digit is drawn over the 280x280 pad
INK = 128  # MNIST pixels at least this bright are drawn


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    return chromium, driver


@pytest.fixture(scope="module")
def exported(real_data, tmp_path_factory):
    """A 784-256-10 network trained for 3,000 steps on the real MNIST, exported as version 1."""
    folder = tmp_path_factory.mktemp("browser_model")
    config = training.TrainConfig(model=config_lib.ModelConfig("dense", (256,)), data=real_data,
                                  ckpt_dir=str(folder / "ckpt"), log_dir=str(folder / "logs"), max_steps=3000,
                                  batch_size=64, augment_shift=2, lr_schedule="cosine", eval_every=3000,
                                  checkpoint_every=3000, log_every=1000, diagnostics=False,
                                  export_dir=str(folder / "exports" / "mnist"))
    training.train(config)
    return folder / "exports" / "mnist"


@pytest.fixture(scope="module")
def served(exported):
    """`python -m mnist_dnn.serve` on a free port: its URL; stopped with SIGTERM afterwards (exit 0 required)."""
    process = subprocess.Popen([sys.executable, "-m", "mnist_dnn.serve", f"--model_dir={exported}", "--port=0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    line = process.stdout.readline()
    assert line.startswith("Serving mnist version 1"), (line, process.stderr.read() if process.poll() else "")
    url = line.split(" at ")[1].split()[0]
    yield url
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err, (process.returncode, err[-2000:])


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def mnist_digits(real_data):
    """The first test image of each class, 0 to 9 (uint8 [28, 28]), and its label."""
    test = data.load_splits(real_data)["test"]
    images, labels = test.images.numpy().reshape(-1, 28, 28), test.labels.numpy()
    return [(images[np.flatnonzero(labels == digit)[0]], digit) for digit in range(10)]


def strokes(image: np.ndarray) -> list[tuple[float, float, float, float]]:
    """The digit as pen strokes (x0, y0, x1, y1) in pad pixels: one along each run of ink of each row.

    MNIST keeps no pen trajectories; its rows of ink, drawn one after another, rebuild the digit
    at the pad's pen width.
    """
    found = []
    for y, row in enumerate(image >= INK):
        x = 0
        while x < 28:
            if row[x]:
                start = x
                while x < 28 and row[x]:
                    x += 1
                found.append((SCALE * start + SCALE / 2, SCALE * y + SCALE / 2, SCALE * (x - 1) + SCALE / 2,
                              SCALE * y + SCALE / 2))
            x += 1
    return found


def draw(browser, image: np.ndarray, kind: str) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    left, top, width = browser.execute_script(
        "const r = document.getElementById('pad').getBoundingClientRect(); return [r.left, r.top, r.width];")
    ratio = width / (28 * SCALE)
    builder = ActionBuilder(browser, mouse=PointerInput(kind, f"{kind}-drawer"), duration=0)
    for x0, y0, x1, y1 in strokes(image):
        builder.pointer_action.move_to_location(round(left + x0 * ratio), round(top + y0 * ratio))
        builder.pointer_action.pointer_down()
        builder.pointer_action.move_to_location(round(left + x1 * ratio), round(top + y1 * ratio))
        builder.pointer_action.pointer_up()
    builder.perform()


def wait_for_answer(browser) -> str:
    """The digit the page shows once it has answered the drawing as it is now."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 30).until(lambda b: b.execute_script(
        "return document.body.dataset.answered === document.body.dataset.drawn;"))
    return browser.find_element("id", "answer").text


def page_digit(browser) -> np.ndarray:
    """The 28x28 image the page sent, read back from its preview canvas."""
    pixels = browser.execute_script(
        "return Array.from(document.getElementById('digit28').getContext('2d').getImageData(0, 0, 28, 28).data);")
    return np.array(pixels, np.uint8).reshape(28, 28, 4)[..., 0]


def check_mnist_form(digit: np.ndarray, original: np.ndarray) -> None:
    """Fitted into 20x20 and centred by its centre of mass, as MNIST's digits; close to the digit drawn."""
    rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (20, 21)  # 20, or 21 where a grey edge spills over
    mass = digit.astype(float)
    centre = [(mass.sum(axis=1 - a) * np.arange(28)).sum() / mass.sum() for a in (0, 1)]
    assert np.all(np.abs(np.array(centre) - 14) <= 0.5), centre
    assert np.corrcoef(digit.ravel(), original.ravel())[0, 1] > 0.6


def check_bars(browser, answer: int) -> None:
    """One bar per digit, as long as its probability; the answer's marked."""
    bars = browser.execute_script("""return Array.from(document.querySelectorAll('#bars li'), (li) => [
        li.classList.contains('best'), li.querySelector('.fill').getBoundingClientRect().width,
        li.querySelector('.bar').getBoundingClientRect().width, li.querySelector('.value').textContent]);""")
    assert len(bars) == 10 and [best for best, *_ in bars].index(True) == answer
    for _, fill, full, value in bars:
        assert abs(fill / full - float(value.rstrip("%")) / 100) < 0.01, (fill, full, value)


def test_the_page_reads_drawn_mnist_digits(browser, served, real_data, tmp_path):
    browser.get(served)
    assert browser.title == "Draw a digit: mnist"
    kinds = ("mouse", "pen", "touch")
    answers = []
    for i, (image, label) in enumerate(mnist_digits(real_data)):
        browser.find_element("id", "clear").click()
        assert wait_for_answer(browser) == "\u2013"  # the cleared pad: no answer
        draw(browser, image, kinds[i % 3])
        answers.append(int(wait_for_answer(browser)))
        check_mnist_form(page_digit(browser), image)
        check_bars(browser, answers[-1])
    print(f"the page read {answers} for the digits 0 to 9")
    assert sum(a == label for a, (_, label) in zip(answers, mnist_digits(real_data))) >= 9, answers
    screenshot = os.environ.get("MNIST_DNN_SCREENSHOT") or str(tmp_path / "page.png")
    browser.save_screenshot(screenshot)
    assert Image.open(screenshot).size[0] > 300


def test_a_chosen_image_file_is_read_as_mnist(browser, served, real_data, tmp_path):
    image, label = mnist_digits(real_data)[3]
    path = tmp_path / "three.png"
    Image.fromarray(255 - image).resize((112, 112), Image.BILINEAR).save(path)  # dark on white, four times larger
    browser.get(served)
    browser.find_element("id", "file").send_keys(str(path))
    assert wait_for_answer(browser) == str(label)
    assert browser.find_element("id", "status").text.startswith("Model mnist, version 1")

"""``radloop app``: the handlers in-process (tiny diffusion model, the zoo's decoder), the DICOM reader,
and the page in a real headless Chromium (Selenium), which also takes the README's screenshots."""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.classifier import Judge, build_classifier
from image2report.generator import ReportGenerator
from radloop.app import (
    AppError,
    AppModels,
    _guarded,
    _read_upload,
    describe_image,
    edit_image,
    finding_sentence,
    generate_images,
    highlight_findings,
    round_trip,
    synth_examples,
)
from shared.data.dataset import DataError
from shared.data.xray_file import read_xray
from shared.text.labeler import ReportLabeler
from shared.zoo import ZOO_ENV
from tests.test_report2image import tiny_pipeline

pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def models() -> AppModels:
    """The tiny 32 px diffusion model, the zoo's UAR decoder (it writes findings) and a tiny judge."""
    os.environ.pop(ZOO_ENV, None)
    torch.manual_seed(0)
    judge = Judge(build_classifier("classifier_tiny", image_size=32).eval())
    return AppModels(tiny_pipeline(), ReportGenerator.from_pretrained("zoo:uar"), judge,
                     examples=synth_examples(64, 3, seed=3))


def _png(tmp_path: Path, image: Image.Image, name: str = "x.png") -> Path:
    path = tmp_path / name
    image.save(path)
    return path


def test_highlight_marks_positive_findings_only_and_keeps_the_text():
    report = "Moderate left pleural effusion. No pneumothorax. Possible mild cardiomegaly."
    segments = highlight_findings(report, ReportLabeler())
    assert "".join(text for text, _ in segments) == report
    labels = {text.lower(): label for text, label in segments if label}
    assert labels["moderate left pleural effusion"] == "Pleural Effusion"
    assert labels["possible mild cardiomegaly"] == "Cardiomegaly (uncertain)"
    assert not any("pneumothorax" in t.lower() for t in labels)


def test_the_form_writes_sentences_the_labeler_reads_back():
    labeler = ReportLabeler()
    add = finding_sentence("Pleural Effusion", "add", "large", "right")
    assert add == "Large right pleural effusion."
    attrs = labeler.label(add).attributes[0]
    assert (attrs.name, attrs.severity, attrs.laterality) == ("Pleural Effusion", "large", "right")
    assert labeler(finding_sentence("Pneumothorax", "remove"))["Pneumothorax"] == 0.0
    with pytest.raises(AppError, match="unknown finding 'Gout'"):
        finding_sentence("Gout", "add")


def test_generate_describe_edit_and_round_trip(models, tmp_path):
    gen = generate_images(models, "Large left pleural effusion.", seed=1, steps=2, n=2)
    assert len(gen["images"]) == 2 and gen["images"][0].size == (32, 32)  # the tiny pipeline's side
    assert set(gen["judge"]) >= {"Pleural Effusion"} and gen["findings"][0][0] == "Pleural Effusion"
    with pytest.raises(AppError, match="type a report first"):
        generate_images(models, "   ")
    with pytest.raises(AppError, match="unknown sampler"):
        generate_images(models, "x", sampler="Euler")
    example = models.examples[0]
    desc = describe_image(models, example.image, num_beams=1)
    assert desc["report"] and "".join(t for t, _ in desc["highlighted"]) == desc["report"]
    edit = edit_image(models, example.image, example.report, example.new_report, strength=0.5, steps=2,
                      true_cf=example.true_cf)
    assert edit["edited"].size == (32, 32) and edit["difference"].mode == "RGB" and edit["mask"] is not None
    assert edit["added"] or edit["removed"]
    assert all(len(row) == 5 for row in edit["changes"])  # with the judge on the true counterfactual
    with pytest.raises(AppError, match="same as the source"):
        edit_image(models, example.image, "No effusion.", "No effusion.")
    trip = round_trip(models, report="Small right pneumothorax.", steps=2)
    assert trip["image"].size == (32, 32) and trip["report"]
    trip = round_trip(models, image=example.image, steps=2)
    assert 0 <= trip["ssim"] <= 1


def test_uploads_that_are_not_x_rays_say_so_in_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(AppError, match="^notes.txt: not an image this app reads"):
        _read_upload(str(text))
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(AppError, match="empty file"):
        _read_upload(str(tmp_path / "empty.png"))
    with pytest.raises(AppError, match="too small"):
        _read_upload(str(_png(tmp_path, Image.new("L", (4, 4)))))
    with pytest.raises(AppError, match="upload an X-ray"):
        _read_upload(None)
    # the page shows the message, never a stack trace
    wrapped = _guarded(lambda path: (_read_upload(path),), 1)
    *_, status = wrapped(str(text))
    assert status.startswith("**Error:** notes.txt") and "\n" not in status

    def boom(_: object) -> tuple:
        raise RuntimeError("internal detail\nTraceback ...")

    *_, status = _guarded(boom, 1)(None)
    assert "RuntimeError" in status and "Traceback" not in status


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", window: tuple | None = None) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = "DX", photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_dicom_is_windowed_and_monochrome1_inverted(tmp_path):
    ramp = np.tile(np.linspace(0, 4000, 64), (64, 1))
    plain = np.asarray(read_xray(_dicom(tmp_path / "a.dcm", ramp)))
    assert plain[0, 0] == 0 and plain[0, -1] == 255  # full range: dark left, bright right
    inverted = np.asarray(read_xray(_dicom(tmp_path / "b.dcm", ramp, "MONOCHROME1")))
    assert inverted[0, 0] == 255 and inverted[0, -1] == 0
    # a window on the middle third: the left third black, the right third white
    windowed = np.asarray(read_xray(_dicom(tmp_path / "c.dcm", ramp, window=(2000, 1300))))
    assert windowed[0, :15].max() == 0 and windowed[0, -15:].min() == 255
    # the DICOM file loads through the app's upload path too
    assert _read_upload(str(tmp_path / "a.dcm")).size == (64, 64)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    with pytest.raises(DataError, match="broken.dcm: not a readable DICOM image"):
        read_xray(broken)


# -- in a real browser ---------------------------------------------------------------------------
def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


needs_browser = pytest.mark.skipif(_chromium() is None, reason="no Chromium + chromedriver on this machine "
                                   "(Debian: apt-get install chromium chromium-driver; .ci/run does it)")

#: where the browser tests save a screenshot of each tab (the README's come from such a run):
#: RADLOOP_SCREENSHOTS=docs/images pytest tests/test_app.py
SCREENSHOTS = os.environ.get("RADLOOP_SCREENSHOTS")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser_app(models):
    """The app on 127.0.0.1 with the zoo's models when the zoo has them, and a headless Chromium on it."""
    pytest.importorskip("selenium")
    if _chromium() is None:
        pytest.skip("no Chromium + chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from radloop.app import launch_app, load_models

    try:
        app_models = load_models(examples=3)
    except FileNotFoundError:  # the diffusion half of the zoo is not trained yet
        app_models = models
    port = _free_port()
    page = launch_app(app_models, "127.0.0.1", port, block=False)
    browser, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1800"):
        options.add_argument(arg)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.get(f"http://127.0.0.1:{port}/")
    yield chrome, app_models
    chrome.quit()
    page.close()


def _wait(chrome, css: str, condition=lambda els: bool(els), timeout: float = 60.0):
    from selenium.webdriver.common.by import By

    end = time.time() + timeout
    while time.time() < end:
        els = chrome.find_elements(By.CSS_SELECTOR, css)
        if condition(els):
            return els
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {css}")


def _tab(chrome, name: str) -> None:
    """Open a tab (waiting for the page's scripts to draw the tab bar first)."""
    tabs = _wait(chrome, "button[role='tab']", lambda els: any(b.text.strip() == name for b in els))
    next(b for b in tabs if b.text.strip() == name).click()
    time.sleep(0.5)


def _shot(chrome, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(Path(SCREENSHOTS) / f"app_{name}.png"))


@needs_browser
def test_browser_generate_shows_images(browser_app):
    chrome, _ = browser_app
    from selenium.webdriver.common.by import By

    _tab(chrome, "Report -> X-ray")
    box = chrome.find_element(By.CSS_SELECTOR, "#gen_report textarea")
    box.clear()
    box.send_keys("Large left pleural effusion.")
    chrome.find_element(By.CSS_SELECTOR, "#gen_button").click()
    _wait(chrome, "#gen_gallery img")
    _shot(chrome, "report_to_xray")


@needs_browser
def test_browser_upload_writes_a_report_with_a_highlighted_finding(browser_app, tmp_path):
    chrome, app_models = browser_app
    from selenium.webdriver.common.by import By

    _tab(chrome, "X-ray -> report")
    with_finding = next((e for e in app_models.examples if ReportLabeler().label(e.report).attributes),
                        app_models.examples[0])
    path = _png(tmp_path, with_finding.image, "xray.png")
    chrome.find_element(By.CSS_SELECTOR, "#describe_file input[type='file']").send_keys(str(path))
    time.sleep(1.0)
    chrome.find_element(By.CSS_SELECTOR, "#describe_button").click()
    # a highlighted finding: a labelled token of the HighlightedText output
    _wait(chrome, "#describe_report .token .text:not(.unlabeled)", lambda els: any(e.text.strip() for e in els))
    _shot(chrome, "xray_to_report")


@needs_browser
def test_browser_counterfactual_editor_shows_edit_and_difference(browser_app):
    chrome, app_models = browser_app
    from selenium.webdriver.common.by import By

    _tab(chrome, "Counterfactual editor")
    dropdown = chrome.find_element(By.CSS_SELECTOR, "#edit_example input")
    dropdown.click()
    dropdown.send_keys(app_models.examples[0].name[:10])
    _wait(chrome, "ul[role='listbox'] li")[0].click()
    _wait(chrome, "#edit_new textarea", lambda els: els and els[0].get_attribute("value"))
    chrome.find_element(By.CSS_SELECTOR, "#edit_button").click()
    _wait(chrome, "#edit_edited img", timeout=120)
    _wait(chrome, "#edit_diff img")
    _shot(chrome, "counterfactual_editor")


@needs_browser
def test_browser_round_trip_of_a_typed_report(browser_app):
    chrome, _ = browser_app
    from selenium.webdriver.common.by import By

    _tab(chrome, "Round trip")
    chrome.find_element(By.CSS_SELECTOR, "#trip_report textarea").send_keys("Moderate right pleural effusion.")
    chrome.find_element(By.CSS_SELECTOR, "#trip_button").click()
    _wait(chrome, "#trip_image img")
    _wait(chrome, "#trip_text .token .text", lambda els: any(e.text.strip() for e in els))
    _shot(chrome, "round_trip")


@needs_browser
def test_browser_text_file_upload_shows_the_error(browser_app, tmp_path):
    chrome, _ = browser_app
    from selenium.webdriver.common.by import By

    _tab(chrome, "X-ray -> report")
    notes = tmp_path / "notes.txt"
    notes.write_text("this is not an X-ray")
    # clear an earlier upload first, where there is one
    for clear in chrome.find_elements(By.CSS_SELECTOR, "#describe_file button[aria-label='Clear']"):
        clear.click()
        time.sleep(0.3)
    _wait(chrome, "#describe_file input[type='file']")[0].send_keys(str(notes))
    time.sleep(1.0)
    chrome.find_element(By.CSS_SELECTOR, "#describe_button").click()
    status = _wait(chrome, "#describe_status", lambda els: els and "not an image" in els[0].text)
    assert "notes.txt" in status[0].text and "Traceback" not in chrome.page_source

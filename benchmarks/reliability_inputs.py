"""Bad and hostile input, counted: how many inputs of each class were tried and how many crashed. Prints JSON.

    python benchmarks/reliability_inputs.py [--n 200] [--json benchmarks/results/reliability_cpu2.json]

Every input must either work or end in the suite's documented error: in the library a ``DataError`` /
``ConfigError`` / ``ValueError`` / ``FileNotFoundError`` naming the file, key or value; through the CLI exit
status 2 with one ``radloop: error:`` line. Anything else -- another exception, a traceback, a multi-line
error, a wrong-shaped result -- counts as a crash, and the first few are listed. Inputs are generated from a
fixed seed, so a crash reproduces. ``--json`` merges the counts into the file under ``"inputs"`` (the kill
benchmark writes ``"kills"`` beside them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from radloop.cli import main as radloop
from shared.config import ConfigError, load_config
from shared.data.dataset import DataError, ReportImageDataset, load_records
from shared.data.xray_file import read_xray
from shared.io import atomic_write_text
from shared.labels import CHEXPERT_LABELS
from shared.text.labeler import ReportLabeler
from shared.text.tokenizer import ReportTokenizer
from shared.training import TrainConfig

DOCUMENTED = (DataError, ConfigError, ValueError, FileNotFoundError, FileExistsError)


def random_text(rng: random.Random, max_len: int = 300) -> str:
    """Random unicode: letters of many scripts, control characters, combining marks, emoji, report words."""
    pools = ["abcdefghijklmnopqrstuvwxyz .,;:-()", "\x00\x01\x07\x1b\x7f\t\r\n", "\u0301\u202e\u200b\ufeff",
             "αβγдежの漢字😀🫁", "effusion pneumothorax no not left right mild large tube xxxx "]
    n = rng.randint(0, max_len)
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


def edge_texts() -> list[str]:
    return ["", " ", "\x00" * 50, "Small left pleural effusion. " * 3500, "\u202e" + "no " * 1000,
            "<script>alert(1)</script> Large effusion.", "%s %n {0} ${x}", "\ud7ff\ue000\U0010fffd"]


# -- the input classes -----------------------------------------------------------------------------------
def labeler_inputs(rng: random.Random, n: int) -> Iterator[tuple[str, Callable[[], None]]]:
    labeler = ReportLabeler()

    def check(text: str) -> None:
        row = labeler.label_batch([text])[0]
        if row.shape != (len(CHEXPERT_LABELS),) or not all(math.isnan(v) or v in (-1, 0, 1) for v in row):
            raise AssertionError(f"labels {row}")

    for text in edge_texts() + [random_text(rng) for _ in range(n)]:
        yield text[:40], lambda text=text: check(text)


def tokenizer_inputs(rng: random.Random, n: int) -> Iterator[tuple[str, Callable[[], None]]]:
    tok = ReportTokenizer.fit(["no pleural effusion.", "small left pneumothorax.", "xxxx stable."], min_freq=1)

    def check(text: str) -> None:
        ids = tok.encode(text)
        if ids[0] != tok.bos_token_id or len(ids) > tok.max_length or not all(0 <= i < len(tok) for i in ids):
            raise AssertionError(f"ids {ids[:5]}")
        tok.decode(ids)

    for text in edge_texts() + [random_text(rng) for _ in range(n)]:
        yield text[:40], lambda text=text: check(text)


def _cli(args: list[str]) -> None:
    """Run the CLI in-process: exit 0, or 2 with exactly one ``radloop: error:`` line; else raise."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = radloop(args)
    text = err.getvalue()
    if rc == 2 and text.startswith("radloop: error:") and text.count("\n") == 1:
        return
    if rc == 0:
        return
    raise AssertionError(f"exit {rc}: {text[:200]!r}")


def evaluate_inputs(rng: random.Random, n: int, work: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    def case(pred: Any, ref: Any, raw: bool = False) -> Callable[[], None]:
        def run() -> None:
            folder = Path(tempfile.mkdtemp(dir=work))
            for name, content in (("pred.json", pred), ("ref.json", ref)):
                (folder / name).write_text(content if raw else json.dumps(content))
            _cli(["evaluate", "reports", "--pred", str(folder / "pred.json"), "--ref", str(folder / "ref.json"),
                  "--no-meteor"])
        return run

    yield "mismatched ids", case({"a": "No effusion."}, {"b": "No effusion."})
    yield "partly overlapping ids", case({"a": "x", "c": "y"}, {"a": "Effusion.", "b": "No effusion."})
    yield "empty files", case("", "", raw=True)
    yield "not JSON", case("{oops", "[1,", raw=True)
    yield "a list, not a mapping", case(["x"], ["y"])
    yield "non-string reports", case({"a": 3}, {"a": None})
    yield "empty mappings", case({}, {})
    for k in range(n // 10):
        ids = [str(rng.randint(0, 5)) for _ in range(rng.randint(1, 4))]
        yield f"random reports {k}", case({i: random_text(rng, 80) for i in ids},
                                          {str(rng.randint(0, 5)): random_text(rng, 80) for _ in range(3)})


def config_inputs(rng: random.Random, n: int) -> Iterator[tuple[str, Callable[[], None]]]:
    keys = ["max_steps", "learning_rate", "output_dir", "nope", "seed.x", "", "=", "max_steps.x", "resume"]
    values = ["1", "-3", "1e-3", "abc", "[1,2", "{a: 1}", "", "null", "\x00", "\n", "${oops}", "true", "1" * 400]

    def check(override: str) -> None:
        try:
            load_config(TrainConfig(), None, [override])
        except ConfigError as err:
            if "\n" in str(err):
                raise AssertionError(f"two-line error: {err!r}") from None

    cases = [f"{k}={v}" for k in keys for v in values]
    cases += [random_text(rng, 60) for _ in range(n)]
    for override in cases:
        yield override[:40], lambda override=override: check(override)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _huge_png_header(side: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR claiming ``side`` x ``side`` pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    body = struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat = zlib.compress(b"\x00" * 16)
    body += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + body + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def _dicom(work: Path) -> bytes:
    try:
        import pydicom
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    except ImportError:
        return b"\x00" * 128 + b"DICM" + b"\x00" * 64  # a DICOM preamble without pydicom to read it
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(work / "x.dcm"), {}, file_meta=meta, preamble=b"\x00" * 128)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 16, 12, 11
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 16).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def image_inputs(rng: random.Random, n: int, work: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    grey = np.linspace(0, 255, 64 * 64).reshape(64, 64).astype(np.uint8)
    good = _png(grey)
    jpeg = io.BytesIO()
    Image.fromarray(grey).save(jpeg, format="JPEG")
    dicom = _dicom(work)
    files = {
        "zero-byte.png": b"", "truncated.png": good[: len(good) // 2], "text.png": b"not an image at all\n",
        "sixteen-bit.png": _png(grey.astype(np.uint16) * 257), "rgba.png": _png(np.dstack([grey] * 4), "RGBA"),
        "palette.png": _palette(grey), "image.jpg": jpeg.getvalue(),
        "huge-dimensions.png": _huge_png_header(), "dicom.png": dicom, "dicom.dcm": dicom,
        "truncated.jpg": jpeg.getvalue()[:200], "one-pixel.png": _png(np.zeros((1, 1), np.uint8)),
    }
    for k in range(n // 10):  # random bytes after a PNG signature, and random flips in a good PNG
        junk = bytearray(good)
        for _ in range(rng.randint(1, 20)):
            junk[rng.randrange(8, len(junk))] = rng.randrange(256)
        files[f"flipped-{k}.png"] = bytes(junk)

    def through_dataset(name: str) -> None:
        folder = Path(tempfile.mkdtemp(dir=work))
        (folder / name).write_bytes(files[name])
        (folder / "annotation.json").write_text(json.dumps(
            {"train": [{"id": "s1", "report": "No effusion.", "image_path": [name]}]}))
        try:
            sample = ReportImageDataset(folder / "annotation.json", "train", image_size=32)[0]
        except DataError as err:
            if name not in str(err):
                raise AssertionError(f"the error does not name the file: {err}") from None
            return
        if tuple(sample["images"].shape) != (1, 1, 32, 32):
            raise AssertionError(f"shape {tuple(sample['images'].shape)}")

    def through_reader(name: str) -> None:  # the app's upload path (PNG/JPEG/DICOM)
        path = work / f"upload-{name}"
        path.write_bytes(files[name])
        try:
            read_xray(path)
        except DataError:
            return

    for name in files:
        yield f"dataset: {name}", lambda name=name: through_dataset(name)
        yield f"upload: {name}", lambda name=name: through_reader(name)


def _palette(grey: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(grey).convert("P").save(buf, format="PNG")
    return buf.getvalue()


def annotation_inputs(rng: random.Random, n: int, work: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    study = {"id": "s1", "patient_id": "p1", "report": "No effusion.", "image_path": ["a.png"]}
    cases: dict[str, Any] = {
        "missing report": {"train": [{k: v for k, v in study.items() if k != "report"}]},
        "missing id": {"train": [{k: v for k, v in study.items() if k != "id"}]},
        "missing image_path": {"train": [{k: v for k, v in study.items() if k != "image_path"}]},
        "report is a number": {"train": [{**study, "report": 3}]},
        "image_path is a dict": {"train": [{**study, "image_path": {"a": 1}}]},
        "empty image_path": {"train": [{**study, "image_path": []}]},
        "id is a list": {"train": [{**study, "id": [1]}]},
        "id is a bool": {"train": [{**study, "id": True}]},
        "duplicate ids": {"train": [study, study]},
        "an id in two splits": {"train": [study], "test": [study]},
        "a patient in two splits": {"train": [study], "test": [{**study, "id": "s2"}]},
        "no splits": {"images": []},
        "a split is a dict": {"train": {"id": "s1"}},
        "a study is a string": {"train": ["s1"]},
        "top level is a list": [study],
        "path with ..": {"train": [{**study, "image_path": ["../../etc/passwd"]}]},
        "absolute path": {"train": [{**study, "image_path": ["/etc/passwd"]}]},
        "not JSON": "{oops",
        "empty file": "",
    }
    for k in range(n // 10):  # random keys dropped and values swapped
        rec = dict(study)
        for key in rng.sample(list(rec), rng.randint(1, 3)):
            rec[key] = rng.choice([None, 0, [], {}, "", random_text(rng, 20)])
        cases[f"random record {k}"] = {"train": [rec]}

    def check(name: str) -> None:
        folder = Path(tempfile.mkdtemp(dir=work))
        (folder / "a.png").write_bytes(_png(np.zeros((8, 8), np.uint8)))
        content = cases[name]
        (folder / "annotation.json").write_text(content if isinstance(content, str) else json.dumps(content))
        try:
            load_records(folder / "annotation.json")
            ReportImageDataset(folder / "annotation.json", None, image_size=8)
        except DataError:
            return
        # it loaded: also through the CLI, which must either train or refuse in one line
        _cli(["data", "prepare", "--annotation", str(folder / "annotation.json"), "--out", str(folder / "out"),
              "--size", "8", "--quiet"])

    for name in cases:
        yield name, lambda name=name: check(name)


# -- counting ----------------------------------------------------------------------------------------------
def run_class(cases: Iterator[tuple[str, Callable[[], None]]]) -> dict[str, Any]:
    tried, crashes, examples = 0, 0, []
    start = time.perf_counter()
    for name, case in cases:
        tried += 1
        try:
            case()
        except DOCUMENTED as err:
            if "\n" in str(err):
                crashes += 1
                examples.append(f"{name!r}: two-line {type(err).__name__}")
        except Exception as err:  # anything else is what this benchmark exists to find
            crashes += 1
            if len(examples) < 5:
                examples.append(f"{name!r}: {type(err).__name__}: {str(err)[:160]}")
    return {"tried": tried, "crashed": crashes, "crash_examples": examples,
            "seconds": round(time.perf_counter() - start, 1)}


def merge_into(path: str | Path, key: str, value: Any) -> None:
    """Write ``value`` under ``key`` of the JSON object in ``path`` (created when missing), atomically."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="random inputs per text class (a tenth for files)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="merge the counts into this file under 'inputs'")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="radloop_inputs_") as tmp:
        work = Path(tmp)
        classes = {
            "labeler: report text": labeler_inputs(rng, args.n),
            "tokenizer: report text": tokenizer_inputs(rng, args.n),
            "evaluate reports: prediction/reference files": evaluate_inputs(rng, args.n, work),
            "config overrides": config_inputs(rng, args.n),
            "image files (dataset and app upload)": image_inputs(rng, args.n, work),
            "annotation files": annotation_inputs(rng, args.n, work),
        }
        counts = {name: run_class(cases) for name, cases in classes.items()}
    result = {"command": " ".join(["python", "benchmarks/reliability_inputs.py", *sys.argv[1:]]), "classes": counts,
              "tried": sum(c["tried"] for c in counts.values()), "crashed": sum(c["crashed"] for c in counts.values())}
    if args.json:
        merge_into(args.json, "inputs", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

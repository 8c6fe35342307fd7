"""``radloop zoo``: list, train and export the entries of the model zoo.

The zoo's index (``configs/zoo/index.yaml``) names every entry with its trainer, its recipe and the
entries it needs first (a decoder needs the backbone whose frozen tower it reads). ``train`` makes
the data when missing, runs the recipe in ``runs/zoo/<name>`` and exports the best checkpoint;
``export`` writes ``zoo/<dataset>/<name>/``: the saved folder with its float weights halved
(fp16 safetensors; every ``from_pretrained`` loads them back into float32), ``zoo_entry.json``
(what produced it) and the model card ``README.md``, which also lists the entry's measured metrics
when the data set's scores beside the entries (``zoo/<data set>/scores.json``) hold them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.config import ConfigError
from shared.io import atomic_write_text, read_json
from shared.zoo import ENTRY_FILE, zoo_root

from .zoo_card import REAL_TEXT, SCORES_FILE, render_card, scores_file

logger = logging.getLogger(__name__)

__all__ = ["ZooIndex", "ZooRecipe", "load_index", "load_indexes", "index_for", "train_entry", "export_entry",
           "swap_decoder", "render_card", "refresh_card", "list_entries", "ensure_data", "ensure_finding_masks",
           "merge_results", "scores_file", "SCORES_FILE", "AUGMENT_FILE"]

ROOT = Path(__file__).resolve().parents[1]
#: the zoo's augmentation answer beside its entries (``benchmarks/augment_synth.py --zoo``); the demo quotes it
AUGMENT_FILE = "augmentation.json"


@dataclass
class ZooRecipe:
    name: str
    trainer: str
    recipe: Path
    summary: str = ""
    needs: list[str] = field(default_factory=list)
    #: real report text the entry (or an entry it needs) learned from: a key of :data:`REAL_TEXT`
    real_text: str | None = None
    #: its own training data (a SynthCXR config and where it is written) instead of the index's, e.g. a
    #: judge trained where a rare finding is common
    data: Path | None = None
    data_dir: Path | None = None
    #: findings whose masks (``radloop data finding-masks``) the recipe's ``data.region_masks`` reads: written
    #: into the training data folder before training when missing
    finding_masks: list[str] = field(default_factory=list)


@dataclass
class ZooIndex:
    dataset: str
    data: Path
    data_dir: Path
    test_data: Path
    test_data_dir: Path
    entries: dict[str, ZooRecipe]

    def get(self, name: str) -> ZooRecipe:
        if name not in self.entries:
            raise ConfigError(f"no zoo recipe '{name}' (known: {', '.join(self.entries)})")
        return self.entries[name]

    def folder(self, name: str, root: Path | None = None) -> Path:
        return (root or zoo_root()) / self.dataset / name


#: the zoo's generations, one index each: ``index.yaml`` (synthcxr64), ``index128.yaml`` (synthcxr128), ...
INDEX_DIR = ROOT / "configs" / "zoo"


def load_index(path: str | os.PathLike[str] = INDEX_DIR / "index.yaml") -> ZooIndex:
    """Read the zoo index; recipe and data paths are relative to its folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"zoo index not found: {path}") from None
    base = path.parent
    try:
        entries = {name: ZooRecipe(name, e["trainer"], base / e["recipe"], e.get("summary", ""),
                                   list(e.get("needs", [])), e.get("real_text"),
                                   base / e["data"] if "data" in e else None,
                                   Path(e["data_dir"]) if "data_dir" in e else None,
                                   list(e.get("finding_masks", [])))
                   for name, e in raw["entries"].items()}
        index = ZooIndex(raw["dataset"], base / raw["data"], Path(raw["data_dir"]), base / raw["test_data"],
                         Path(raw["test_data_dir"]), entries)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"{path}: malformed zoo index ({type(err).__name__}: {err})") from None
    for recipe in entries.values():
        unknown = [n for n in recipe.needs if n not in entries]
        if unknown:
            raise ConfigError(f"{path}: entry '{recipe.name}' needs unknown entries {unknown}")
        if (recipe.data is None) != (recipe.data_dir is None):
            raise ConfigError(f"{path}: entry '{recipe.name}' needs both data and data_dir, or neither")
        if recipe.real_text is not None and recipe.real_text not in REAL_TEXT:
            raise ConfigError(f"{path}: entry '{recipe.name}' names unknown real_text '{recipe.real_text}' "
                              f"(known: {sorted(REAL_TEXT)})")
    return index


def load_indexes(folder: str | os.PathLike[str] = INDEX_DIR) -> list[ZooIndex]:
    """Every generation's index under ``folder`` (``index*.yaml``); an entry name may appear in one only."""
    indexes = [load_index(p) for p in sorted(Path(folder).glob("index*.yaml"))]
    seen: dict[str, str] = {}
    for index in indexes:
        for name in index.entries:
            if name in seen:
                raise ConfigError(f"zoo entry '{name}' is in the indexes of both {seen[name]} and {index.dataset}")
            seen[name] = index.dataset
    return indexes


def index_for(name: str, folder: str | os.PathLike[str] = INDEX_DIR) -> ZooIndex:
    """The index of the generation that holds the entry ``name``."""
    indexes = load_indexes(folder)
    for index in indexes:
        if name in index.entries:
            return index
    known = ", ".join(n for index in indexes for n in index.entries)
    raise ConfigError(f"no zoo recipe '{name}' (known: {known})")


def ensure_data(index: ZooIndex, test: bool = False, recipe: ZooRecipe | None = None) -> Path:
    """The zoo's training (or test) SynthCXR folder, generated from its config when missing; ``recipe``: an
    entry's own training data when it names one."""
    from omegaconf import OmegaConf

    from shared.config import load_config
    from synthcxr import SynthConfig, generate_dataset

    config, out = (index.test_data, index.test_data_dir) if test else (index.data, index.data_dir)
    if not test and recipe is not None and recipe.data is not None and recipe.data_dir is not None:
        config, out = recipe.data, recipe.data_dir
    if (out / "annotation.json").is_file():
        return out
    cfg = load_config({"synth": asdict(SynthConfig())}, config, [])
    logger.info("generating the zoo's %s data in %s from %s", "test" if test else "training", out, config)
    generate_dataset(out, SynthConfig(**OmegaConf.to_container(cfg.synth, resolve=True)), progress=False)
    return out


def ensure_finding_masks(data_dir: Path, findings: list[str]) -> Path:
    """``data_dir``'s finding masks file, written when missing or when it covers other findings."""
    from synthcxr.finding_masks import MASKS_FILE, write_finding_masks

    path = data_dir / MASKS_FILE
    if path.is_file() and read_json(path).get("findings") == list(findings):
        return path
    logger.info("writing the masks of %s in %s", ", ".join(findings), data_dir)
    return write_finding_masks(data_dir, findings)


def _rel(path: Path) -> str:
    """A path as the repository names it (absolute when outside)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_entry(name: str, index: ZooIndex | None = None, overrides: list[str] | None = None,
                export: bool = True) -> Path:
    """Train one zoo entry from its recipe (its ``needs`` must be in the zoo) and export it."""
    from omegaconf import OmegaConf

    from shared.config import load_config, save_run_config
    from shared.training import TRAINERS
    from shared.training.lock import RunLock

    from .registries import load_registries

    index = index or index_for(name)
    recipe = index.get(name)
    missing = [n for n in recipe.needs if not (index.folder(n) / ENTRY_FILE).is_file()]
    if missing:
        raise FileNotFoundError(f"zoo entry '{name}' needs {missing} in the zoo first: "
                                + "; ".join(f"radloop zoo train {n}" for n in missing))
    data_dir = ensure_data(index, recipe=recipe)
    if recipe.finding_masks:
        ensure_finding_masks(data_dir, recipe.finding_masks)
    load_registries()
    entry = TRAINERS.get(recipe.trainer)
    cfg = load_config(entry.meta["experiment"](), recipe.recipe, list(overrides or []))
    run = Path(cfg.train.output_dir)
    RunLock(run).check()
    save_run_config(cfg, run, argv=["radloop", "zoo", "train", name, *(overrides or [])])
    start = time.perf_counter()
    result = entry.builder(OmegaConf.to_object(cfg))
    seconds = time.perf_counter() - start
    if (run / "train_result.json").is_file():
        # a run resumed after an interruption: add the training time its checkpoint had recorded
        seconds += float(read_json(run / "train_result.json").get("resumed_wall_seconds", 0.0))
    atomic_write_text(run / "zoo_train.json", json.dumps({"train_seconds": round(seconds, 1), "steps": result.steps,
                                                          "best_step": result.best_step,
                                                          "best_metric": result.best_metric}, indent=1) + "\n")
    return export_entry(name, run, index) if export else run


def _half_weights(src: Path, dst: Path) -> int:
    """Copy a safetensors file with its float32 tensors stored as float16; returns the parameter count."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors, metadata = {}, None
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            t = f.get_tensor(key)
            tensors[key] = t.half() if t.dtype == torch.float32 else t
    save_file(tensors, str(dst), metadata=metadata)
    return sum(t.numel() for t in tensors.values())


def _run_facts(run: Path) -> dict[str, Any]:
    """Training time, steps and the validation curve of a finished run folder."""
    facts: dict[str, Any] = {}
    if (run / "train_result.json").is_file():  # written by the trainer at the end of every run
        result = read_json(run / "train_result.json")
        facts.update({k: result[k] for k in ("steps", "best_step", "best_metric") if k in result})
    if (run / "zoo_train.json").is_file():
        facts.update(read_json(run / "zoo_train.json"))
    elif (run / "train_config.json").is_file() and (run / "final").is_dir():
        # a run started by hand: the wall time between its start and its final weights
        facts["train_seconds"] = round((run / "final").stat().st_mtime - (run / "train_config.json").stat().st_mtime, 1)
    if (run / "history.json").is_file():
        history = read_json(run / "history.json")
        facts["validation_curve"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()}
                                     for h in history if any(k.startswith("val/") for k in h)]
        facts.setdefault("steps", max((h.get("step", 0) for h in history), default=0))
    return facts


def _staging(target: Path) -> Path:
    """An empty sibling folder path where an entry is assembled before :func:`_install_entry` puts it in place."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def _install_entry(tmp: Path, target: Path, meta: dict[str, Any]) -> None:
    """Write the entry file and model card into the assembled folder ``tmp``, then let it replace ``target``."""
    atomic_write_text(tmp / ENTRY_FILE, json.dumps(meta, indent=1) + "\n")
    atomic_write_text(tmp / "README.md", render_card(meta))
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def export_entry(name: str, run: str | os.PathLike[str] | None = None, index: ZooIndex | None = None,
                 root: Path | None = None) -> Path:
    """Write ``<run>/best`` (default ``runs/zoo/<name>``) into the zoo as fp16 with its entry file and card."""
    index = index or index_for(name)
    recipe = index.get(name)
    run = Path(run) if run is not None else Path("runs/zoo") / name
    best = run / "best"
    # a model folder (config.json) or a diffusers pipeline folder (model_index.json, one sub-folder per component)
    config = next((best / f for f in ("config.json", "model_index.json") if (best / f).is_file()), None)
    if config is None:
        raise FileNotFoundError(f"{best}: no saved model to export (train it: radloop zoo train {name})")
    target = index.folder(name, root)
    tmp = _staging(target)
    tmp.mkdir(parents=True)
    params = 0
    for item in sorted(best.rglob("*")):
        dst = tmp / item.relative_to(best)
        if item.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif item.suffix == ".safetensors":
            params += _half_weights(item, dst)
        else:
            shutil.copy2(item, dst)
    facts = _run_facts(run)
    meta = {"name": name, "dataset": index.dataset, "class": read_json(config).get("_class_name"),
            "trainer": recipe.trainer, "recipe": _rel(recipe.recipe),
            "command": f"radloop zoo train {name}", "needs": recipe.needs, "summary": recipe.summary,
            "data": {"config": _rel(recipe.data or index.data), **_synth_facts(recipe.data or index.data)},
            "test_data": _rel(index.test_data),
            **({"real_text": recipe.real_text} if recipe.real_text else {}),
            "parameters": params, "weights_dtype": "float16", "git_sha": _git_sha(), **facts}
    _install_entry(tmp, target, meta)
    logger.info("exported %s to %s (%.1f MB)", name, target, _folder_mb(target))
    return target


def swap_decoder(name: str, source: str, index: ZooIndex | None = None, root: Path | None = None) -> Path:
    """Put the autoencoder entry ``source`` into the pipeline entry ``name`` as its ``vae``, without retraining
    the UNet: refused unless ``source`` encodes exactly as the pipeline's autoencoder does (the same encoder and
    ``quant_conv`` tensors, latent channels and scaling factor -- a decoder-only fine-tune, so every latent
    the UNet learnt from is unchanged). The entry file records the swap and the card is re-written."""
    from diffusers import AutoencoderKL

    from report2image.autoencoder import latent_space_mismatch

    index = index or index_for(name)
    folder, src = index.folder(name, root), index.folder(source, root)
    for entry, path in ((name, folder), (source, src)):
        if not (path / ENTRY_FILE).is_file():
            raise FileNotFoundError(f"zoo entry '{entry}' is not in {path.parent} (radloop zoo train {entry})")
    vae = folder / "vae"
    if not (vae / "config.json").is_file():
        raise ConfigError(f"zoo entry '{name}' has no vae component ({vae}): not a diffusion pipeline")
    if read_json(src / "config.json").get("_class_name") != "AutoencoderKL":
        raise ConfigError(f"zoo:{source} is a {read_json(src / 'config.json').get('_class_name')}, not an "
                          "AutoencoderKL")
    why = latent_space_mismatch(AutoencoderKL.from_pretrained(vae), AutoencoderKL.from_pretrained(src))
    if why:
        raise ConfigError(f"zoo:{source} does not encode as zoo:{name}'s vae: {why}; only a decoder-only "
                          "fine-tune keeps the latents its UNet learnt")
    tmp = _staging(folder)
    shutil.copytree(folder, tmp)
    shutil.rmtree(tmp / "vae")
    (tmp / "vae").mkdir()
    for item in src.iterdir():
        if item.name == "config.json" or item.suffix == ".safetensors":
            shutil.copy2(item, tmp / "vae" / item.name)
    meta = read_json(folder / ENTRY_FILE)
    meta["needs"] = index.get(name).needs
    meta["vae"] = {"entry": f"zoo:{source}", "swapped_at_git_sha": _git_sha(),
                   "note": "the UNet was trained on the latents of the vae it replaced; the encoder is the same"}
    _install_entry(tmp, folder, meta)
    logger.info("zoo:%s now decodes with zoo:%s", name, source)
    return folder


def _synth_facts(config: Path) -> dict[str, Any]:
    try:
        synth = yaml.safe_load(config.read_text())["synth"]
    except (OSError, KeyError, TypeError):
        return {}
    return {k: synth[k] for k in ("patients", "studies_per_patient", "size", "seed", "prevalence") if k in synth}


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def merge_results(block: str, rows: dict[str, Any], results: Path | None = None, owner: str | None = None) -> None:
    """Merge a benchmark's per-entry rows into one block of the zoo results file that the cards quote:
    ``entries`` (SynthCXR test set: ``benchmarks/zoo_synth.py``, ``benchmarks/diffusion_synth.py``) or
    ``real_text`` (``benchmarks/iu_text.py``: ``{"base": NAME, "rows": {metric: [entry, base]}, "command"}``).
    ``results``: default :func:`scores_file`. ``owner``: the benchmark script writing (``"diffusion_synth.py"``);
    a row whose command names another script is left as it is (a card quotes its entry's own benchmark: judge128's
    row is ``judge_scale.py``'s, an autoencoder's ``autoencoder_judge.py``'s)."""
    results = results or scores_file()
    merged = read_json(results) if results.is_file() else {}
    current = merged.setdefault(block, {})
    if owner is not None:
        rows = {name: row for name, row in rows.items() if owner in current.get(name, {}).get("command", owner)}
    current.update(rows)
    atomic_write_text(results, json.dumps(merged, indent=1, default=float) + "\n")


def refresh_card(name: str, index: ZooIndex | None = None, root: Path | None = None,
                 results: Path | None = None) -> Path:
    """Re-write an entry's model card from its ``zoo_entry.json`` and the benchmark results."""
    index = index or index_for(name)
    folder = index.folder(name, root)
    if not (folder / ENTRY_FILE).is_file():
        raise FileNotFoundError(f"zoo entry '{name}' is not in {folder.parent} (radloop zoo train {name})")
    card = folder / "README.md"
    atomic_write_text(card, render_card(read_json(folder / ENTRY_FILE), results))
    return card


def list_entries(index: ZooIndex | None = None) -> list[dict[str, Any]]:
    """One row per index entry (of ``index``, else of every generation): name, data set, trainer, recipe,
    whether it is in the zoo and its size."""
    rows = []
    for idx in [index] if index else load_indexes():
        for name, recipe in idx.entries.items():
            folder = idx.folder(name)
            present = (folder / ENTRY_FILE).is_file()
            rows.append({"name": name, "dataset": idx.dataset, "trainer": recipe.trainer, "recipe": _rel(recipe.recipe),
                         "present": present, "mb": round(_folder_mb(folder), 1) if present else None,
                         "summary": recipe.summary})
    return rows

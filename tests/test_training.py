import json
import math

import pytest
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch.utils.data import DataLoader, TensorDataset

from shared.training import NonFiniteLossError, TrainConfig, Trainer


class TinyRegressor(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, dim: int = 4):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def _data(n=40, dim=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def _loss(model, batch):
    x, y = batch
    return {"loss": torch.nn.functional.mse_loss(model(x), y)}


def _trainer(tmp, steps, **kw):
    torch.manual_seed(0)
    model = TinyRegressor()
    loader = DataLoader(_data(), batch_size=8, shuffle=True)
    cfg = TrainConfig(output_dir=str(tmp), max_steps=steps, learning_rate=0.05, checkpoint_every=3,
                      eval_every=2, log_every=1, progress=False, **kw)
    val = _data(16, seed=1)

    def eval_fn(m):
        x, y = val.tensors
        return {"mse": float(torch.nn.functional.mse_loss(m(x), y))}

    return Trainer(model, loader, _loss, cfg, eval_fn=eval_fn, select_metric="mse", select_mode="min")


def _params(folder):
    return TinyRegressor.from_pretrained(folder).state_dict()


def test_two_step_run_writes_everything(tmp_path):
    result = _trainer(tmp_path, 2).train()
    assert result.steps == 2 and result.best_step == 2
    for name in ("final", "best"):
        assert (tmp_path / name / "config.json").is_file()
    assert (tmp_path / "checkpoints").is_dir() and json.loads((tmp_path / "history.json").read_text())
    assert json.loads((tmp_path / "train_config.json").read_text())["max_steps"] == 2


def test_training_reduces_the_loss(tmp_path):
    result = _trainer(tmp_path, 30).train()
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert losses[-1] < 0.5 * losses[0]


def _run_killed_at_step_seven(folder, steps, make=None, loss=_loss):
    """Start a run into ``folder`` (``make(folder)`` builds its trainer) that dies during its 7th micro-step."""
    killed = make(folder) if make is not None else _trainer(folder, steps)
    calls = {"n": 0}

    def dies_at_seven(model, batch):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return loss(model, batch)

    killed.loss_fn = dies_at_seven
    with pytest.raises(KeyboardInterrupt):
        killed.train()


def test_resume_matches_an_uninterrupted_run(tmp_path):
    _trainer(tmp_path / "full", 9).train()
    # The same run killed during step 7 (checkpoints at 3 and 6), then started again.
    _run_killed_at_step_seven(tmp_path / "part", 9)
    result = _trainer(tmp_path / "part", 9).train()
    assert result.steps == 9
    full, part = _params(tmp_path / "full" / "final"), _params(tmp_path / "part" / "final")
    for k in full:
        torch.testing.assert_close(full[k], part[k], rtol=0, atol=1e-6)

    # the history covers the whole run (steps 1-6 come from the checkpoint), not just the part after the kill;
    # the clock readings aside, it is the uninterrupted run's
    def without_clocks(folder):
        return [{k: v for k, v in h.items() if "seconds" not in k}
                for h in json.loads((folder / "history.json").read_text())]

    assert [h["step"] for h in without_clocks(tmp_path / "part") if "train/loss" in h] == list(range(1, 10))
    full_h, part_h = without_clocks(tmp_path / "full"), without_clocks(tmp_path / "part")
    assert [sorted(h) for h in part_h] == [sorted(h) for h in full_h]
    for a, b in zip(full_h, part_h, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    # and the time: the resumed invocation adds its own to what the checkpoint had recorded
    timing = json.loads((tmp_path / "part" / "train_result.json").read_text())
    assert 0 < timing["resumed_wall_seconds"] < timing["wall_seconds"]


class _Jittered(torch.utils.data.Dataset):
    """Items with a random augmentation drawn from the global RNG, as torchvision's transforms draw."""

    def __init__(self):
        self.data = _data()

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, y = self.data[i]
        return x + 0.1 * torch.randn_like(x), y


def _dropout_loss(model, batch):
    x, y = batch
    return {"loss": torch.nn.functional.mse_loss(model(torch.nn.functional.dropout(x, 0.2)), y)}


def test_resume_is_bit_identical_with_random_augmentation_and_dropout(tmp_path):
    # The loader fetches one batch ahead: the batch after the step-6 checkpoint drew its augmentation
    # before save_state recorded the RNG, and a resumed run drew it again (every later draw shifted).
    # training_loader seeds each item by (seed, epoch, index), so the resumed run ends bit-identical.
    from shared.training import training_loader

    def trainer(folder):
        torch.manual_seed(0)
        cfg = TrainConfig(output_dir=str(folder), max_steps=9, learning_rate=0.05, checkpoint_every=3,
                          eval_every=100, log_every=1, progress=False)
        return Trainer(TinyRegressor(), training_loader(_Jittered(), 8, seed=0), _dropout_loss, cfg)

    trainer(tmp_path / "full").train()
    # 5 batches an epoch: killed during step 7, the run resumes from step 6, one batch into epoch 2
    _run_killed_at_step_seven(tmp_path / "part", 9, make=trainer, loss=_dropout_loss)
    torch.manual_seed(123)  # whatever the global RNG holds, the checkpoint's states are what count
    trainer(tmp_path / "part").train()
    full, part = _params(tmp_path / "full" / "final"), _params(tmp_path / "part" / "final")
    for k in full:
        assert torch.equal(full[k], part[k]), k


def test_epoch_seeded_items_do_not_depend_on_fetch_order_and_leave_the_global_rng_alone():
    from shared.training import EpochSeededDataset

    ds = EpochSeededDataset(_Jittered(), seed=3)
    state = torch.random.get_rng_state()
    first = ds[5][0]
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(7)
    assert torch.equal(ds[5][0], first) and not torch.equal(ds[4][0], first)
    ds.set_epoch(1)
    assert not torch.equal(ds[5][0], first)  # a new epoch draws new augmentations
    assert len(ds) == 40 and ds.data is ds.dataset.data  # the wrapped dataset's attributes stay reachable


def test_checkpoint_total_limit(tmp_path):
    _trainer(tmp_path, 12, checkpoints_total_limit=2).train()
    assert len(list((tmp_path / "checkpoints").iterdir())) == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, 10)
    calls = {"n": 0}

    def nan_after_four(model, batch):
        calls["n"] += 1
        out = _loss(model, batch)
        return {"loss": out["loss"] * (math.nan if calls["n"] > 4 else 1.0)}

    trainer.loss_fn = nan_after_four
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 5.*checkpoint_3"):
        trainer.train()
    assert (tmp_path / "checkpoints" / "checkpoint_3").is_dir()


def test_ema_and_accumulation(tmp_path):
    result = _trainer(tmp_path, 4, ema_decay=0.5, gradient_accumulation_steps=2).train()
    assert result.steps == 4
    ema, raw = _params(tmp_path / "final"), None
    assert all(torch.isfinite(v).all() for v in ema.values())
    del raw


def test_ema_is_diffusers_emamodel_at_a_constant_decay_plus_the_batchnorm_buffers():
    """The loop's EMA = shadow * d + weight * (1 - d) from the first step, parameters and float buffers alike
    (hand-computed), saved and restored exactly; a checkpoint in the old one-dict format still loads."""
    from shared.training.loop import _EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    d = 0.9
    expected = {k: v.clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}
    ema = _EMA(model, d)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(torch.randn_like(model[0].weight))
            model[1].running_mean.add_(1.0)
        model.train()
        ema.update(model)
        for k, v in model.state_dict().items():
            if k in expected:
                expected[k] = d * expected[k] + (1 - d) * v
    copy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema.copy_to(copy)
    for k, v in expected.items():
        torch.testing.assert_close(copy.state_dict()[k], v, rtol=1e-6, atol=1e-6)
    again = _EMA(copy, d)
    again.load_state_dict(ema.state_dict())
    old = _EMA(copy, d)
    old.load_state_dict({"decay": d, "shadow": expected})
    for restored in (again, old):
        target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        restored.copy_to(target)
        for k, v in expected.items():
            torch.testing.assert_close(target.state_dict()[k], v, rtol=1e-6, atol=1e-6)


def test_bad_options(tmp_path):
    with pytest.raises(ValueError, match="select_mode"):
        Trainer(TinyRegressor(), DataLoader(_data()), _loss, TrainConfig(output_dir=str(tmp_path)), select_mode="up")


class TinyConvNet(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, channels: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, channels, 3, padding=1)
        self.head = torch.nn.Linear(channels, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def _conv_run(tmp, steps, channels_last, seen=None, die_at=None, **kw):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2, 6, 6, generator=g)
    data = TensorDataset(x, x.mean((1, 2, 3)).unsqueeze(1))

    calls = {"n": 0}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise KeyboardInterrupt
        if seen is not None:
            seen.append(model.conv.weight.is_contiguous(memory_format=torch.channels_last))
        return _loss(model, batch)

    cfg = TrainConfig(output_dir=str(tmp), max_steps=steps, learning_rate=0.05, checkpoint_every=2, eval_every=100,
                      log_every=1, progress=False, channels_last=channels_last, **kw)
    return Trainer(TinyConvNet(), DataLoader(data, batch_size=8, shuffle=True), loss, cfg)


@pytest.mark.parametrize("ema", [None, 0.5])
def test_channels_last_trains_saves_and_resumes_like_the_standard_layout(tmp_path, ema):
    _conv_run(tmp_path / "nchw", 5, False, ema_decay=ema).train()
    seen: list[bool] = []
    # Killed during step 4 (checkpoint at 2), then resumed: checkpoints and folders go through
    # safetensors, which refuses non-contiguous (channels-last) tensors unless they are copied.
    with pytest.raises(KeyboardInterrupt):
        _conv_run(tmp_path / "nhwc", 5, True, seen, die_at=4, ema_decay=ema).train()
    _conv_run(tmp_path / "nhwc", 5, True, seen, ema_decay=ema).train()
    assert seen and all(seen)
    ref = TinyConvNet.from_pretrained(tmp_path / "nchw" / "final").state_dict()
    got = TinyConvNet.from_pretrained(tmp_path / "nhwc" / "final").state_dict()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-5)


def test_one_run_per_output_folder_and_stale_locks(tmp_path):
    import json
    import subprocess
    import sys

    from shared.training.lock import LOCK_NAME, RunLock

    out = tmp_path / "run"
    out.mkdir()
    # a live owner: another process holds the folder
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname()}))
        with pytest.raises(FileExistsError, match=rf"in use by another run \(pid {sleeper.pid}.*{LOCK_NAME}"):
            RunLock(out).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    # its process is gone: the lock is stale and taken over (with a warning in the log)
    with RunLock(out) as lock:
        assert lock.owned and lock.took_over == {"pid": sleeper.pid, "host": __import__("socket").gethostname()}
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == __import__("os").getpid()
        with pytest.raises(FileExistsError, match="already held by this process"):
            RunLock(out).acquire()
    assert not (out / LOCK_NAME).exists()
    (out / LOCK_NAME).write_text("{not json")  # cut short while being written: stale too
    with RunLock(out) as lock:
        assert lock.took_over is None
    assert not (out / LOCK_NAME).exists()


def test_trainer_holds_its_folder_and_refuses_a_second_run(tmp_path):
    from shared.training.lock import LOCK_NAME, RunLock

    with RunLock(tmp_path):  # another run (here: this process) holds the folder
        with pytest.raises(FileExistsError, match="already held"):
            _trainer(tmp_path, 2).train()
    assert not (tmp_path / "final").exists()  # nothing was trained or written
    _trainer(tmp_path, 2).train()
    assert (tmp_path / "final" / "config.json").is_file() and not (tmp_path / LOCK_NAME).exists()


def test_a_checkpoint_killed_while_written_is_never_resumed_from(tmp_path):
    import shutil

    _trainer(tmp_path / "full", 9).train()
    run = tmp_path / "part"
    _run_killed_at_step_seven(run, 9)  # checkpoints 3 and 6
    ckpts = run / "checkpoints"
    # the run was killed in save_state of step 9: a partial folder under the temporary name
    shutil.copytree(ckpts / "checkpoint_6", ckpts / ".partial_checkpoint_9")
    (ckpts / ".partial_checkpoint_9" / "model.safetensors").write_bytes(b"trunc")
    # and the newest complete-looking one is damaged on disk (an older, non-atomic writer)
    shutil.copytree(ckpts / "checkpoint_6", ckpts / "checkpoint_8")
    (ckpts / "checkpoint_8" / "model.safetensors").write_bytes(b"trunc")
    # (what was skipped is logged; the weights below show it: resuming from the damaged one would fail or
    # differ, and caplog depends on test order, so the test reads the outcome, not the log)
    result = _trainer(run, 9).train()
    assert result.steps == 9 and not (ckpts / ".partial_checkpoint_9").exists()
    full, part = _params(tmp_path / "full" / "final"), _params(run / "final")
    for k in full:
        torch.testing.assert_close(full[k], part[k], rtol=0, atol=1e-6)


def test_checkpoints_appear_only_under_their_final_name(tmp_path):
    trainer = _trainer(tmp_path, 6)
    trainer.train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["checkpoint_3", "checkpoint_6"]
    assert [p.name for p in trainer.checkpoints()] == names


def test_batchnorm_becomes_syncbatchnorm_only_for_several_gpu_processes():
    from shared.training.loop import sync_batchnorm

    def model():
        return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))

    def kinds(m):
        return {type(x).__name__ for x in m.modules()}

    assert "SyncBatchNorm" in kinds(sync_batchnorm(model(), 2, "cuda", None))
    synced = sync_batchnorm(model(), 2, "cuda", None)
    assert set(synced.state_dict()) == set(model().state_dict())  # saved folders load into the plain model
    for args in ((1, "cuda", None), (2, "cuda", False), (2, "cpu", None)):
        assert "SyncBatchNorm" not in kinds(sync_batchnorm(model(), *args))
    with pytest.raises(ValueError, match="needs GPU processes"):
        sync_batchnorm(model(), 2, "cpu", True)
    plain = torch.nn.Linear(2, 2)
    assert sync_batchnorm(plain, 2, "cpu", True) is plain  # nothing to synchronise


def test_kill_benchmark_inspects_what_a_killed_run_left(tmp_path, load_benchmark):
    from safetensors.torch import save_file

    bench = load_benchmark("reliability_kill")
    run = tmp_path / "run"
    good, broken, partial = (run / "checkpoints" / n for n in ("checkpoint_2", "checkpoint_4", ".partial_checkpoint_6"))
    for folder in (good, broken, partial):
        folder.mkdir(parents=True)
    save_file({"w": torch.ones(2)}, str(good / "model.safetensors"))
    (broken / "model.safetensors").write_bytes(b"trunc")
    (run / "best").mkdir()
    (run / "best" / "config.json").write_text("{}")
    (run / "best" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert bench.inspect(run) == {"checkpoints": 1, "broken_checkpoints": 1, "partial_checkpoints": 1,
                                  "broken_model_folders": 1}
    cmd = bench.train_command(tmp_path, run, 4, 2)
    assert "--num_processes" in cmd and cmd[cmd.index("-m", 3) + 1] == "radloop" and "train.max_steps=4" in cmd


def test_kill_benchmark_finds_truncated_files_and_compares_outputs_without_clocks(tmp_path, load_benchmark):
    import json

    from PIL import Image

    bench = load_benchmark("reliability_kill")
    a, b = tmp_path / "a", tmp_path / "b"
    for out, seconds in ((a, 1.5), (b, 9.0)):
        (out / "images").mkdir(parents=True)
        Image.new("L", (4, 4), 7).save(out / "images" / "x.png")
        (out / "results.json").write_text(json.dumps({"ce": 0.5, "stage_seconds": {"x": seconds},
                                                      "models": {"report": str(out / "report" / "best")}}))
        (out / ".x.png.tmp123").write_bytes(b"half")  # a temp file: hidden, never a final name
    assert bench.truncated_files(a) == []
    assert bench.fingerprint(a) == bench.fingerprint(b)  # run times and the folder's own name left out
    (b / "images" / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n trunc")
    (b / "summary.json").write_text('{"ce": 0.')
    assert sorted(bench.truncated_files(b)) == ["images/y.png", "summary.json"]
    (b / "results.json").write_text(json.dumps({"ce": 0.6, "stage_seconds": {}, "models": {}}))
    assert bench.fingerprint(a)["results.json"] != bench.fingerprint(b)["results.json"]
    for name in bench.WORKFLOWS:
        cmd = bench.workflow_command(name, tmp_path, tmp_path / "out")
        assert cmd[1:3] == ["-m", "radloop"] and str(tmp_path / "out") in " ".join(cmd)


def test_mixed_precision_auto_is_fp32_without_a_bf16_gpu_and_says_so(monkeypatch, caplog):
    import logging

    import torch

    from shared.training.loop import resolve_mixed_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="shared.training.state"):
        assert resolve_mixed_precision("auto") == "no"
    assert "auto: fp32" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "a GPU")
    assert resolve_mixed_precision("auto") == "bf16"
    assert resolve_mixed_precision("fp16") == "fp16" and resolve_mixed_precision("no") == "no"
    with pytest.raises(ValueError, match="train.mixed_precision must be one of .*'bf8'"):
        resolve_mixed_precision("bf8")

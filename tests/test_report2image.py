"""report2image: conditioning, noise filter, pipeline save/load, counterfactual, noise optimisation, training."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from report2image import LatentNoiseFilter, ReportConditioner, ReportToCXRPipeline
from report2image.conditioning import encode_attributes, group_supervision_loss, independence_loss
from report2image.models import build_autoencoder, build_unet, load_ldm_config
from shared.backbone.clip import build_backbone
from shared.data.image_processor import postprocess, preprocess, to_model_range
from shared.labels import CHEXPERT_LABELS
from shared.text.tokenizer import ReportTokenizer

REPORTS = ["Large left pleural effusion.", "No acute cardiopulmonary abnormality.",
           "Mild cardiomegaly. Small right pneumothorax."]


def tiny_pipeline(**switches: bool) -> ReportToCXRPipeline:
    torch.manual_seed(0)
    tok = ReportTokenizer.fit(REPORTS * 3, min_freq=1)
    backbone = build_backbone("radclip_tiny", tok)
    cfg = load_ldm_config("ldm_tiny")
    cond = ReportConditioner(text_width=backbone.text_width, embed_dim=backbone.embed_dim, **cfg["conditioner"],
                             **switches)
    if cond.config.use_identity:
        cond.fill_identity_bank(torch.randn(4, 1, 32, 32))
    pipe = ReportToCXRPipeline(build_autoencoder(cfg), build_unet(cfg), DDIMScheduler(), backbone, cond)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_encode_attributes_reads_status_severity_laterality():
    att = encode_attributes(REPORTS)
    eff = CHEXPERT_LABELS.index("Pleural Effusion")
    assert att.shape == (3, 14, 3)
    assert att[0, eff, 0] == 3  # positive
    assert att[0, eff, 1] == 1 + ("trace", "small", "mild", "moderate", "large", "severe").index("large")
    assert att[0, eff, 2] == 1 + ("left", "right", "bilateral").index("left")
    assert att[1, eff].tolist() == [0, 0, 0]  # not mentioned
    assert encode_attributes(["No pleural effusion."])[0, eff, 0] == 1  # negative
    assert att[2, CHEXPERT_LABELS.index("Pneumothorax"), 2] == 2  # right


def test_pipeline_save_load_same_output(tmp_path):
    pipe = tiny_pipeline()
    out = pipe(REPORTS, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (3, 1, 32, 32) and 0 <= out.images.min() and out.images.max() <= 1
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["conditioner"][1] == "ReportConditioner"
    again = ReportToCXRPipeline.from_pretrained(tmp_path)
    again.set_progress_bar_config(disable=True)
    out2 = again(REPORTS, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="pt")
    torch.testing.assert_close(out.images, out2.images)
    pil = again(REPORTS[:1], num_inference_steps=2).images  # diffusers' default: PIL
    assert pil[0].size == (32, 32) and pil[0].mode == "L"


def test_dpm_solver_and_guidance_off_run():
    pipe = tiny_pipeline(use_identity=False)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, algorithm_type="dpmsolver++")
    a = pipe(REPORTS, num_inference_steps=4, guidance_scale=1.0, generator=torch.Generator().manual_seed(1),
             output_type="pt").images
    b = pipe(REPORTS, num_inference_steps=4, guidance_scale=4.0, generator=torch.Generator().manual_seed(1),
             output_type="pt").images
    assert torch.isfinite(a).all() and not torch.allclose(a, b)


def test_conditioning_switches_change_the_token_layout():
    pipe = tiny_pipeline()
    full = pipe.encode_reports(REPORTS, identity_images=torch.zeros(3, 1, 32, 32))
    plain = tiny_pipeline(use_refiner=False, use_attributes=False, use_identity=False).encode_reports(REPORTS)
    assert full.hidden_states.shape[1] == plain.hidden_states.shape[1] + 14 + 2  # attributes + identity tokens
    assert full.gate is not None and plain.gate is None and plain.identity is None
    with pytest.raises(ValueError, match="identity"):
        pipe.conditioner(torch.zeros(1, 4, pipe.text_encoder.text_width), torch.ones(1, 4),
                         encode_attributes(REPORTS[:1]))


def test_counterfactual_keeps_shapes_and_inversion_round_trips():
    pipe = tiny_pipeline()
    images = pipe(REPORTS, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    edited = pipe.counterfactual(images, ["No pleural effusion."] * 3, source_reports=REPORTS, strength=0.5,
                                 num_inference_steps=4, output_type="pt")
    assert edited.images.shape == images.shape
    # PIL sources give the same edit as their [0, 1] tensors (up to the 8-bit rounding of the PIL)
    pil = pipe.counterfactual(postprocess(to_model_range(images), "pil"), ["No pleural effusion."] * 3,
                              source_reports=REPORTS, strength=0.5, num_inference_steps=4, output_type="pt").images
    assert (pil - edited.images).abs().max() < 0.05
    with pytest.raises(ValueError, match="must be in \\[0, 1\\]"):
        pipe.counterfactual(to_model_range(images) - 0.5, ["x"] * 3)
    latents, start = pipe.invert(to_model_range(images), REPORTS, num_inference_steps=4, strength=0.5)
    assert start == 2 and latents.shape == (3, 4, 16, 16)
    with pytest.raises(ValueError, match="one of each"):
        pipe.counterfactual(images, ["x"] * 2)
    with pytest.raises(ValueError, match="strength"):
        pipe.invert(to_model_range(images), REPORTS, strength=0.0)


def test_initial_noise_optimisation_raises_the_score_and_keeps_the_prior():
    pipe = tiny_pipeline(use_identity=False)
    gen = torch.Generator().manual_seed(0)
    z0 = pipe.prepare_latents(2, torch.Generator().manual_seed(0))

    def score(images: torch.Tensor) -> torch.Tensor:  # "brighter is the target finding"
        return images.mean((1, 2, 3))

    z = pipe.optimize_initial_noise(REPORTS[:2], score_fn=score, steps=4, lr=0.1, short_steps=2, generator=gen)
    with torch.no_grad():
        before = score(pipe(REPORTS[:2], num_inference_steps=2, latents=z0, output_type="model").images)
        after = score(pipe(REPORTS[:2], num_inference_steps=2, latents=z, output_type="model").images)
    assert (after > before).all()
    assert abs(float(z.pow(2).mean()) - 1.0) < 0.3  # still on the Gaussian shell
    assert all(p.requires_grad for p in pipe.unet.parameters())  # restored


def test_group_supervision_and_independence_losses():
    torch.manual_seed(0)
    labels = torch.zeros(4, 14)
    labels[:2, 3] = 1
    ident = torch.tensor([[1.0, 0], [1.0, 0.1], [0, 1.0], [0.1, 1.0]])
    good = group_supervision_loss(ident, ident.flip(1), ["a", "a", "b", "b"], labels)
    bad = group_supervision_loss(ident, ident.flip(1), ["a", "b", "a", "b"], labels)
    assert good < bad
    x = torch.randn(256, 3)
    assert independence_loss(x, x) > 0.3
    assert independence_loss(x, torch.randn(256, 3)) < 0.05


def test_noise_filter_flags_the_pairs_that_stay_hard():
    f = LatentNoiseFilter(100, num_train_timesteps=1000, warmup_steps=5, z=3.0)
    rng = np.random.default_rng(0)
    noisy = torch.arange(90, 100)
    for _ in range(20):
        idx = torch.arange(100)
        t = torch.as_tensor(rng.integers(0, 1000, 100))
        loss = 0.1 + 0.5 * t.float() / 1000 + torch.as_tensor(rng.normal(0, 0.01, 100)).float()
        loss[noisy] *= 2.0  # wrong reports stay hard to denoise at every timestep
        f.update(idx, t, loss)
    flagged = f.flagged()
    assert flagged[noisy].all() and flagged.sum() == 10
    assert f.strength() == 1.0
    w = f.weights(torch.tensor([0, 95]))
    assert w.tolist() == [1.0, 0.0]
    state = f.state_dict()
    g = LatentNoiseFilter(100)
    g.load_state_dict(state)
    assert torch.equal(g.flagged(), flagged)


def test_train_diffusion_two_steps_then_generate_image(tmp_path, tiny_synth):
    from radloop.cli import main

    data, _ = tiny_synth
    run = tmp_path / "diff"
    rc = main(["train", "diffusion", "data.annotation=" + str(data / "annotation.json"), "model.name=ldm_tiny",
               "data.batch_size=8", "autoencoder.steps=2", "autoencoder.batch_size=8", "train.max_steps=2",
               "train.eval_every=2", "train.checkpoint_every=2", "train.progress=false", "loss.filter_warmup=1",
               f"train.output_dir={run}"])
    assert rc == 0
    assert (run / "autoencoder" / "final" / "config.json").is_file()
    assert (run / "best" / "model_index.json").is_file() and (run / "final" / "model_index.json").is_file()
    flagged = json.loads((run / "noise_filter.json").read_text())
    assert set(flagged) == {"signal", "flagged", "scores", "alignment_scores"} and flagged["scores"]
    history = json.loads((run / "history.json").read_text())
    assert any("val/denoising_loss" in h for h in history)
    out = tmp_path / "gen"
    assert main(["generate", "image", "--pipeline", str(run / "final"), "--report", "Large left pleural effusion.",
                 "--report", "No acute cardiopulmonary abnormality.", "--unconditional", "1",
                 "--num-inference-steps", "2", "--out", str(out)]) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["synthetic"] is True and json.loads(lines[2])["report"] == ""
    assert (out / "generated_0002.png").is_file()


@pytest.mark.parametrize("arm", ["no_disentanglement", "no_vision_aware_text", "no_v_prediction", "no_min_snr",
                                 "no_ema", "no_attributes"])
def test_train_diffusion_ablation_arms_one_step(tmp_path, tiny_synth, load_benchmark, arm):
    """Each ablation arm of benchmarks/diffusion_ablation.py trains and saves a loadable pipeline with its switch
    off, on top of the zoo recipe's v-prediction, Min-SNR and EMA."""
    from radloop.cli import main

    switches = load_benchmark("diffusion_ablation").ARMS[arm]
    data, _ = tiny_synth
    run = tmp_path / "diff"
    assert main(["train", "diffusion", "data.annotation=" + str(data / "annotation.json"), "model.name=ldm_tiny",
                 "data.batch_size=8", "autoencoder.steps=1", "autoencoder.batch_size=8", "train.max_steps=1",
                 "train.eval_every=1", "train.progress=false", "loss.prediction_type=v_prediction",
                 "loss.snr_gamma=5", "train.ema_decay=0.9", *switches, f"train.output_dir={run}"]) == 0
    pipe = ReportToCXRPipeline.from_pretrained(run / "final")
    assert pipe.conditioner.config.use_identity == (arm != "no_disentanglement")
    assert pipe.conditioner.config.use_refiner == (arm != "no_vision_aware_text")
    assert pipe.conditioner.config.use_attributes == (arm != "no_attributes")
    assert pipe.scheduler.config.prediction_type == ("epsilon" if arm == "no_v_prediction" else "v_prediction")
    train = json.loads((run / "train_config.json").read_text())
    assert train["ema_decay"] == (None if arm == "no_ema" else 0.9)


def test_diffusion_ablation_scores_each_arm_with_arguments_the_benchmark_takes(load_benchmark, monkeypatch):
    ablation = load_benchmark("diffusion_ablation")
    synth = load_benchmark("diffusion_synth")
    monkeypatch.setattr("sys.argv", ["diffusion_ablation.py", "--data", "D", "--test-data", "T", "--backbone", "B",
                                     "--classifier", "C", "--autoencoder", "A", "--max-steps", "7", "--guidance", "5",
                                     "--edit-strengths", "0.7", "0.9", "--arms", "no_min_snr"])
    args = ablation._parse_args()
    assert ablation.train_overrides(args, "no_min_snr", ablation.Path("R"))[-2:] == ["train.max_steps=7",
                                                                                      "loss.snr_gamma=null"]
    arm_args = ablation.score_args(args, "no_min_snr", ablation.Path("R"))
    monkeypatch.setattr("sys.argv", ["diffusion_synth.py", *arm_args])
    parsed = synth._parse_args()
    assert (parsed.pipeline, parsed.data, parsed.train_data, parsed.guidance) == ("R/best", "T", "D", 5.0)
    assert parsed.edit_strengths == [0.7, 0.9] and parsed.edit_guidance == 2.0
    # the full arm scores the shipped entry when asked to; the other arms still train their own
    args.full_pipeline = "zoo:ldm64"
    assert ablation.arm_pipeline(args, "full", ablation.Path("F")) == "zoo:ldm64"
    assert ablation.arm_pipeline(args, "no_min_snr", ablation.Path("R")) == "R/best"


def test_diffusion_ablation_raw_weights_are_the_last_checkpoints_not_the_ema(tmp_path, tiny_synth, load_benchmark):
    """--raw-weights scores the optimiser's weights: the last checkpoint's UNet and conditioner inside the run's
    pipeline, which differ from the EMA weights of ``final``; a run without a checkpoint is refused by name."""
    from safetensors.torch import load_file

    from radloop.cli import main

    ablation = load_benchmark("diffusion_ablation")
    data, _ = tiny_synth
    run = tmp_path / "arm"
    assert main(["train", "diffusion", "data.annotation=" + str(data / "annotation.json"), "model.name=ldm_tiny",
                 "data.batch_size=8", "autoencoder.steps=1", "autoencoder.batch_size=8", "train.max_steps=2",
                 "train.eval_every=2", "train.checkpoint_every=2", "train.progress=false", "train.ema_decay=0.5",
                 f"train.output_dir={run}"]) == 0
    raw = ReportToCXRPipeline.from_pretrained(ablation.raw_weights_pipeline(run))
    ema = ReportToCXRPipeline.from_pretrained(run / "final")
    state = load_file(run / "checkpoints" / "checkpoint_2" / "model.safetensors")
    for name, module in raw.unet.state_dict().items():
        assert torch.equal(module, state[f"unet.{name}"])
    ema_unet = ema.unet.state_dict()
    assert any(not torch.equal(v, ema_unet[k]) for k, v in raw.unet.state_dict().items())
    for name, module in raw.conditioner.state_dict().items():
        assert torch.equal(module, state[f"conditioner.{name}"])
    (run / "checkpoints" / "checkpoint_2").rename(run / "checkpoints" / "old")
    with pytest.raises(FileNotFoundError, match=str(run)):
        ablation.raw_weights_pipeline(run)


def test_train_autoencoder_two_steps_then_diffusion_with_v_prediction_min_snr_and_ema(tmp_path, tiny_synth):
    """The zoo's diffusion chain in small: an autoencoder selected by PSNR, then a v-prediction UNet with
    Min-SNR weights and EMA on it; the saved pipeline's scheduler predicts v."""
    from diffusers import AutoencoderKL

    from radloop.cli import main

    data, _ = tiny_synth
    ae = tmp_path / "ae"
    assert main(["train", "autoencoder", "data.annotation=" + str(data / "annotation.json"), "model.name=ldm_tiny",
                 "data.batch_size=8", "data.val_samples=8", "loss.ssim_weight=0.2", "loss.gradient_weight=0.5",
                 "train.max_steps=2", "train.eval_every=1", "train.progress=false", f"train.output_dir={ae}"]) == 0
    history = json.loads((ae / "history.json").read_text())
    assert [h["val/psnr"] for h in history if "val/psnr" in h] and any("train/gradient" in h for h in history)
    vae = AutoencoderKL.from_pretrained(ae / "best")
    assert vae.config.scaling_factor != 0.18215  # measured on the training latents
    run = tmp_path / "diff"
    assert main(["train", "diffusion", "data.annotation=" + str(data / "annotation.json"), "model.name=ldm_tiny",
                 f"model.autoencoder={ae / 'best'}", "data.batch_size=8", "loss.prediction_type=v_prediction",
                 "loss.snr_gamma=5.0", "train.ema_decay=0.9", "train.max_steps=2", "train.eval_every=2",
                 "train.progress=false", f"train.output_dir={run}"]) == 0
    assert not (run / "autoencoder").exists()
    pipe = ReportToCXRPipeline.from_pretrained(run / "best")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    pipe.set_progress_bar_config(disable=True)
    assert pipe(REPORTS[:1], num_inference_steps=2, output_type="pt").images.shape == (1, 1, 32, 32)


def test_autoencoder_decoder_only_fine_tuning_keeps_the_latents(tmp_path, tiny_synth, capsys):
    """model.decoder_only: the encoder (so every UNet's latents) and the scaling factor stay; the decoder learns."""
    from diffusers import AutoencoderKL

    from radloop.cli import main
    from report2image.models import build_autoencoder, load_ldm_config

    data, _ = tiny_synth
    torch.manual_seed(0)
    start = build_autoencoder(load_ldm_config("ldm_tiny"))
    start.register_to_config(scaling_factor=0.7)
    start.save_pretrained(tmp_path / "start")
    common = ["train", "autoencoder", "data.annotation=" + str(data / "annotation.json"), "model.name=ldm_tiny",
              "data.batch_size=8", "data.val_samples=8", "train.max_steps=2", "train.eval_every=1",
              "train.learning_rate=0.01", "train.progress=false"]
    assert main([*common, f"model.init_from={tmp_path / 'start'}", "model.decoder_only=true",
                 f"train.output_dir={tmp_path / 'ft'}"]) == 0
    tuned = AutoencoderKL.from_pretrained(tmp_path / "ft" / "final")
    before, after = start.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert tuned.config.scaling_factor == 0.7
    # the switch without a start point is a one-line error
    assert main([*common, "model.decoder_only=true", f"train.output_dir={tmp_path / 'bad'}"]) == 2
    assert "model.decoder_only needs model.init_from" in capsys.readouterr().err
    assert main([*common, f"model.init_from={tmp_path / 'nowhere'}", f"train.output_dir={tmp_path / 'bad'}"]) == 2
    err = capsys.readouterr().err
    assert "model.init_from" in err and "nowhere" in err and len(err.strip().splitlines()) == 1


def test_generate_image_bad_checkpoint_is_one_line(tmp_path, capsys):
    from radloop.cli import main

    assert main(["generate", "image", "--pipeline", str(tmp_path), "--report", "x", "--out",
                 str(tmp_path / "o")]) == 2
    assert "no saved ReportToCXRPipeline" in capsys.readouterr().err


def test_generate_image_refuses_an_empty_report(tmp_path, capsys):
    from radloop.cli import main

    assert main(["generate", "image", "--pipeline", str(tmp_path), "--report", "x", "--report", " ",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--report number 2 is empty" in err and "--unconditional N" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_noise_filter_alignment_signal_flags_pairs_the_refiner_keeps_apart():
    f = LatentNoiseFilter(50, warmup_steps=0, signal="alignment", z=3.0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        idx = torch.arange(50)
        cos = torch.as_tensor(rng.normal(0.8, 0.02, 50)).float()
        cos[:3] = 0.1  # three reports that never match their images
        f.update(idx, torch.full((50,), 500), torch.ones(50), cos)
    assert f.flagged().nonzero().flatten().tolist() == [0, 1, 2]
    assert not LatentNoiseFilter(50, signal="loss").flagged().any()
    with pytest.raises(ValueError, match="signal"):
        LatentNoiseFilter(5, signal="vibes")


def test_ldm_config_errors_name_the_model_and_file(tmp_path):
    with pytest.raises(KeyError, match="unknown ldm 'ldm_huge'; known: ldm_base, ldm_small, ldm_small128, "
                                       "ldm_small128_f4, ldm_tiny, ldm_wide128_f4"):
        load_ldm_config("ldm_huge")
    bad = tmp_path / "bad.json"
    bad.write_text('{"image_size": 32, "vae": {}, "unet": {}}')
    with pytest.raises(ValueError, match="bad.json lacks 'conditioner'"):
        load_ldm_config(bad)


def test_generate_batched_is_the_per_batch_call_in_every_output_type():
    pipe = tiny_pipeline()
    reports = REPORTS * 2
    batched = pipe.generate_batched(reports, batch_size=4, seed=3, num_inference_steps=2, output_type="pt")
    first = pipe(reports[:4], 2, 3.0, generator=torch.Generator().manual_seed(3), output_type="pt").images
    second = pipe(reports[4:], 2, 3.0, generator=torch.Generator().manual_seed(7), output_type="pt").images
    torch.testing.assert_close(batched, torch.cat([first, second]))
    arr = pipe.generate_batched(reports, batch_size=4, seed=3, num_inference_steps=2, output_type="np")
    assert arr.shape == (6, 32, 32) and np.allclose(arr, batched[:, 0].numpy())
    pil = pipe.generate_batched(reports, batch_size=4, seed=3, num_inference_steps=2, output_type="pil")
    assert len(pil) == 6 and np.abs(np.asarray(pil[5]) / 255.0 - arr[5]).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="output_type must be one of pt, np, pil, model; got 'jpg'"):
        pipe.generate_batched(reports, output_type="jpg")
    with pytest.raises(ValueError, match="no reports"):
        pipe.generate_batched([])


def test_image_processor_round_trip_and_bad_input():
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(postprocess(preprocess(x), "pt"), x)
    assert postprocess(preprocess(x), "model").min() >= -1
    pil = postprocess(preprocess(x), "pil")
    assert torch.allclose(preprocess(pil), preprocess(x), atol=1 / 255)
    assert preprocess(np.zeros((2, 8, 8), np.uint8)).min() == -1
    with pytest.raises(ValueError, match="grayscale"):
        preprocess(torch.rand(2, 3, 8, 8))


def test_diffusion_loss_terms_by_hand():
    from report2image.conditioning import ConditionOutput
    from report2image.losses import DiffusionLoss

    torch.manual_seed(0)
    pred, target = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    cond = ConditionOutput(hidden_states=torch.zeros(4, 1, 2), mask=torch.ones(4, 1), pathology=torch.zeros(4, 2))
    common = dict(index=torch.arange(4), timesteps=torch.zeros(4, dtype=torch.long),
                  dropped=torch.zeros(4, dtype=torch.bool), cond=cond, patient_ids=list("abcd"),
                  labels=torch.zeros(4, 14))
    out = DiffusionLoss()(pred, target, refined=None, **common)
    mse = ((pred - target) ** 2).mean()
    assert set(out) == {"loss", "diffusion", "kept"} and out["kept"] == 1.0
    torch.testing.assert_close(out["loss"], mse)
    refined = (torch.tensor(0.5), torch.ones(4))
    out = DiffusionLoss(refiner_weight=0.2)(pred, target, refined=refined, **common)
    torch.testing.assert_close(out["loss"], mse + 0.2 * 0.5)
    assert out["refiner"] == 0.5 and not out["refiner"].requires_grad


def test_diffusion_pairs_label_each_report_once(tiny_synth, monkeypatch):
    from report2image.train import DiffusionPairs
    from shared.text.labeler import ReportLabeler

    calls = []
    original = ReportLabeler.label

    def counting(self, report):
        calls.append(report)
        return original(self, report)

    monkeypatch.setattr(ReportLabeler, "label", counting)
    pairs = DiffusionPairs(str(tiny_synth[0] / "annotation.json"), "train", 32)
    assert len(calls) == len(pairs)
    expected = torch.as_tensor(ReportLabeler().label_batch(pairs.base.reports)).nan_to_num(0.0)
    torch.testing.assert_close(pairs.labels, expected)
    torch.testing.assert_close(pairs.attributes, encode_attributes(pairs.base.reports))


def test_masked_counterfactual_keeps_pixels_outside_a_planted_mask():
    pipe = tiny_pipeline()
    images = pipe(REPORTS, num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:20, 4:14] = 1  # the planted region: the left lower lung
    out = pipe.counterfactual(images, ["Large left pleural effusion."] * 3, source_reports=REPORTS, strength=0.8,
                              num_inference_steps=4, output_type="pt", mask=mask, feather=1)
    assert out.masks is mask or torch.equal(out.masks, mask)
    # the feathered border may blend up to `feather` pixels outside the mask; beyond it the source stays
    grown = torch.nn.functional.max_pool2d(mask, 3, 1, 1)
    outside = grown == 0
    assert (out.images - images).abs()[outside].max() < 1 / 255 + 1e-6
    assert (out.images - images).abs()[mask.bool()].max() > 0.01  # inside, the edit acts
    plain = pipe.counterfactual(images, ["Large left pleural effusion."] * 3, source_reports=REPORTS, strength=0.8,
                                num_inference_steps=4, output_type="pt", mask=None)
    assert plain.masks is None and (plain.images - images).abs()[outside].max() > 0.01
    with pytest.raises(ValueError, match="mask of shape"):
        pipe.counterfactual(images, REPORTS, mask=torch.ones(3, 1, 16, 16))
    with pytest.raises(ValueError, match="mask must be"):
        pipe.counterfactual(images, REPORTS, mask="everywhere")


def test_diffedit_mask_is_binary_at_image_size_and_empty_for_the_same_report():
    pipe = tiny_pipeline()
    images = pipe(REPORTS, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    mask = pipe.edit_mask(images, REPORTS, ["No pleural effusion."] * 3, num_maps=2)
    assert mask.shape == (3, 1, 32, 32) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert 0 < float(mask.mean()) < 1
    # no change in the report, no difference in the predictions: nothing above the threshold
    same = pipe.edit_mask(images, REPORTS, REPORTS, num_maps=2, dilate=0)
    assert float(same.sum()) == 0.0
    auto = pipe.counterfactual(images, ["No pleural effusion."] * 3, source_reports=REPORTS, strength=0.5,
                               num_inference_steps=2, output_type="pt")
    assert auto.masks is not None and auto.masks.shape == (3, 1, 32, 32)
    # the auto mask's settings reach edit_mask: a higher threshold gives a subset of the default (ratio 3, no
    # dilation), a dilated mask a strict superset
    tight = pipe.counterfactual(images, ["No pleural effusion."] * 3, source_reports=REPORTS, strength=0.5,
                                num_inference_steps=2, output_type="pt", mask_threshold_ratio=6.0)
    assert torch.equal(tight.masks, pipe.edit_mask(images, REPORTS, ["No pleural effusion."] * 3, threshold_ratio=6.0))
    assert bool((tight.masks <= auto.masks).all())
    grown = pipe.counterfactual(images, ["No pleural effusion."] * 3, source_reports=REPORTS, strength=0.5,
                                num_inference_steps=2, output_type="pt", mask_dilate=1)
    assert float(grown.masks.sum()) > float(auto.masks.sum()) and bool((auto.masks <= grown.masks).all())


def test_diffusion_benchmark_scores_a_swapped_decoder_and_refuses_another_latent_space(
        tmp_path, monkeypatch, tiny_synth, load_benchmark):
    """--vae puts a fine-tuned decoder of the same latents into the pipeline (--autoencoder-only scores just the
    reconstructions); an autoencoder with another scaling factor is refused by name."""
    from evaluation.classifier import build_classifier

    data, _ = tiny_synth
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    build_classifier("classifier_tiny", image_size=32).save_pretrained(tmp_path / "judge")
    decoder = copy.deepcopy(pipe.vae)
    with torch.no_grad():
        decoder.decoder.conv_out.bias.add_(0.5)  # a different decoder, the same encoder
    decoder.save_pretrained(tmp_path / "decoder")
    bench = load_benchmark("diffusion_synth")
    argv = ["diffusion_synth.py", "--pipeline", str(tmp_path / "pipe"), "--data", str(data), "--classifier",
            str(tmp_path / "judge"), "--backbone", str(tmp_path / "pipe" / "text_encoder"), "--autoencoder-n", "4",
            "--autoencoder-only"]
    results = {}
    for name, vae in (("own", []), ("decoder", ["--vae", str(tmp_path / "decoder")])):
        monkeypatch.setattr("sys.argv", [*argv, *vae, "--out", str(tmp_path / f"{name}.json")])
        bench.main()
        results[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert set(results["own"]) >= {"autoencoder", "vae"} and "guidance_scale" not in results["own"]
    assert results["decoder"]["vae"] == str(tmp_path / "decoder")
    assert results["decoder"]["autoencoder"]["psnr"] != results["own"]["autoencoder"]["psnr"]
    decoder.register_to_config(scaling_factor=float(pipe.vae.config.scaling_factor) * 2)
    decoder.save_pretrained(tmp_path / "other")
    monkeypatch.setattr("sys.argv", [*argv, "--vae", str(tmp_path / "other")])
    with pytest.raises(SystemExit, match="scaling_factor"):
        bench.main()


def test_v_prediction_target_and_min_snr_weights_by_hand():
    from report2image.train import min_snr_weights, noise_scheduler, training_target

    eps_sched, v_sched = noise_scheduler("epsilon"), noise_scheduler("v_prediction")
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([10, 900])
    assert torch.equal(training_target(eps_sched, x0, noise, t), noise)
    a = eps_sched.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(training_target(v_sched, x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)
    snr = (a / (1 - a)).flatten()
    w_eps, w_v = min_snr_weights(eps_sched, t, 5.0), min_snr_weights(v_sched, t, 5.0)
    # t=10: SNR >> 5, clipped; t=900: SNR < 5, weight 1 for epsilon
    torch.testing.assert_close(w_eps, torch.stack([5.0 / snr[0], torch.tensor(1.0)]))
    torch.testing.assert_close(w_v, torch.stack([5.0 / (snr[0] + 1), snr[1] / (snr[1] + 1)]))
    assert min_snr_weights(eps_sched, t, None) is None
    with pytest.raises(ValueError, match="prediction_type"):
        noise_scheduler("sample")


def test_autoencoder_loss_terms_and_perfect_reconstruction():
    from report2image.autoencoder import AutoencoderLoss, AutoencoderLossConfig

    x = torch.rand(2, 1, 16, 16) * 2 - 1
    loss = AutoencoderLoss(AutoencoderLossConfig(ssim_weight=0.5, gradient_weight=0.5))
    perfect = loss(x, x, torch.zeros(2))
    assert float(perfect["loss"]) == pytest.approx(0.0, abs=1e-5)
    assert set(perfect) == {"loss", "l1", "kl", "ssim", "gradient"}
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    worse = loss(blurred, x, torch.zeros(2))
    assert float(worse["gradient"]) > 0.1 and float(worse["ssim"]) > 0.05
    # a shift of the mean costs L1 but no gradient
    shifted = loss(x + 0.1, x, torch.zeros(2))
    assert float(shifted["gradient"]) == pytest.approx(0.0, abs=1e-6)
    assert float(shifted["l1"]) == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match="perceptual_tower"):
        AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=1.0))


def test_autoencoder_perceptual_term_uses_a_saved_radclip_tower(tmp_path):
    """The perceptual term loads a saved RadCLIP (here the tiny pipeline's) and compares its grid tokens: zero for
    a perfect reconstruction, positive for a blurred one, and its gradient reaches the reconstruction."""
    from report2image.autoencoder import AutoencoderLoss, AutoencoderLossConfig, _perceptual_tower

    tiny_pipeline().text_encoder.save_pretrained(tmp_path / "tower")
    tower = _perceptual_tower(str(tmp_path / "tower"))
    loss = AutoencoderLoss(AutoencoderLossConfig(perceptual_weight=1.0, perceptual_tower=str(tmp_path / "tower")),
                           tower)
    x = torch.rand(2, 1, 48, 48) * 2 - 1  # not the tower's size: resized
    assert float(loss(x, x, torch.zeros(2))["perceptual"]) == pytest.approx(0.0, abs=1e-6)
    blurred = torch.nn.functional.avg_pool2d(x, 3, 1, 1).requires_grad_(True)
    worse = loss(blurred, x, torch.zeros(2))
    assert float(worse["perceptual"]) > 0
    worse["loss"].backward()
    assert blurred.grad is not None and float(blurred.grad.abs().sum()) > 0


def test_generate_image_rerun_skips_finished_batches_and_refuses_another_request(tmp_path, capsys):
    """Killed and run again, `radloop generate image` redoes only the unfinished batches (same pixels);
    the same folder with another request is refused; no temp file is left behind."""
    from radloop.cli import main

    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    out = tmp_path / "gen"
    args = ["generate", "image", "--pipeline", str(tmp_path / "pipe"), "--report", REPORTS[0], "--report",
            REPORTS[1], "--report", REPORTS[2], "--num-inference-steps", "2", "--batch-size", "2", "--out", str(out)]
    assert main(args) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert sorted(first) == ["generated_0000.png", "generated_0001.png", "generated_0002.png"]
    (out / "generated_0002.png").unlink()  # as if killed during the second batch
    (out / "generated_0000.png").write_bytes(b"kept")  # a finished batch is not redone
    capsys.readouterr()
    assert main(args) == 0
    assert "skipping the batches written by an earlier run" in capsys.readouterr().out
    assert (out / "generated_0002.png").read_bytes() == first["generated_0002.png"]
    assert (out / "generated_0000.png").read_bytes() == b"kept"
    assert not [p for p in out.iterdir() if p.name.startswith(".generated")]
    assert main(args[:-2] + ["--seed", "5", "--out", str(out)]) == 2
    assert "holds images of another" in capsys.readouterr().err


def test_diffusion_benchmark_runs_end_to_end_and_feeds_the_zoo_cards(tmp_path, tiny_synth, load_benchmark,
                                                                     monkeypatch, capsys):
    """benchmarks/diffusion_synth.py on a tiny pipeline: the autoencoder, guidance tuning, generation, the three
    editing variants, and the zoo entries' measurements merged into a results file."""
    from evaluation.classifier import build_classifier
    from radloop.zoo import merge_results

    data, _ = tiny_synth
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.text_encoder.save_pretrained(tmp_path / "backbone")
    build_classifier("classifier_tiny", image_size=32).save_pretrained(tmp_path / "judge")
    for entry in ("pipe", "judge"):  # zoo folders: their scores go to the entries of those names
        (tmp_path / entry / "zoo_entry.json").write_text("{}")
    bench = load_benchmark("diffusion_synth")
    zoo_results = tmp_path / "zoo.json"
    zoo_results.write_text(json.dumps({"entries": {"radclip_small": {"kept": 1}}}))
    argv = [
        "diffusion_synth.py", "--pipeline", str(tmp_path / "pipe"), "--data", str(data), "--classifier",
        str(tmp_path / "judge"), "--backbone", str(tmp_path / "backbone"), "--n", "6", "--edits", "2",
        "--edit-steps", "2", "--ddim-steps", "2", "--autoencoder-n", "6", "--guidance-grid", "1.5", "2.5",
        "--val-n", "4", "--skip-noise-opt", "--edit-mask-threshold", "4", "--edit-mask-dilate", "0",
        "--out", str(tmp_path / "out.json"), "--zoo-results", str(zoo_results),
        "--save-guidance", str(tmp_path / "pipe")]
    before = json.loads((tmp_path / "pipe" / "sampling_config.json").read_text())
    assert before["guidance_scale"] not in (1.5, 2.5)
    # without a grid there is nothing picked to save: refused before any work
    monkeypatch.setattr("sys.argv", [a for a in argv if a not in ("--guidance-grid", "1.5", "2.5")])
    with pytest.raises(SystemExit):
        bench.main()
    assert "--save-guidance writes the scale --guidance-grid picks" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", argv)
    bench.main()
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["guidance_scale"] in (1.5, 2.5) and set(result["guidance_tuning"]["mauc_by_scale"]) == {"1.5", "2.5"}
    # the scale picked on validation is saved with the pipeline; its other sampling settings are kept
    after = json.loads((tmp_path / "pipe" / "sampling_config.json").read_text())
    assert after == {**before, "guidance_scale": result["guidance_scale"]}
    assert {"psnr", "ssim", "judge_mauc_real", "noise_free_render_vs_real"} <= set(result["autoencoder"])
    # per finding, on the real images and on their reconstructions
    assert set(result["autoencoder"]["auroc_reconstructed"]) == set(result["autoencoder"]["auroc_real"])
    assert "Pleural Effusion" in result["autoencoder"]["auroc_real"]
    variants = [k for k in result if k.startswith("counterfactual_") and "strength" in k]
    assert sorted(variants) == ["counterfactual_inversion_strength_0.7", "counterfactual_masked_identity_strength_0.7",
                                "counterfactual_masked_strength_0.7"]
    assert "mask_area" in result["counterfactual_masked_strength_0.7"]
    assert result["counterfactual_mask"] == {"threshold_ratio": 4.0, "dilate": 0}
    by_edit = result["counterfactual_masked_strength_0.7"]["flip_rate_by_edit"]
    assert sum(row["n"] for row in by_edit.values()) == 2 and all(k[0] in "+-" for k in by_edit)
    # the ceiling: the judge's reading of the true counterfactuals, per kind of edit too
    ceiling = result["counterfactual_true_cf_ceiling"]
    assert 0 <= ceiling["flip_rate"] <= 1 and set(ceiling["flip_rate_by_edit"]) == set(by_edit)
    assert bench.flip_rate_by_edit([1.0, 0.0, 1.0], [["A"], ["A"], []], [[], [], ["B"]]) == {
        "+A": {"n": 2, "flip_rate": 0.5}, "-B": {"n": 1, "flip_rate": 1.0}}
    # FID in both feature spaces, each over its own real-vs-real floor
    assert {"backbone_fid_over_floor", "judge_fid_over_floor", "judge_fid_floor"} <= set(result)
    entries = json.loads(zoo_results.read_text())["entries"]
    assert set(entries) == {"radclip_small", "autoencoder64", "judge", "pipe"}
    assert entries["pipe"]["command"].startswith("python benchmarks/diffusion_synth.py --pipeline")
    assert "Pleural Effusion" in entries["pipe"]["auroc_generated"]  # per finding, undefined ones left out
    assert entries["pipe"]["true_cf_flip_rate"] == round(ceiling["flip_rate"], 4)
    assert bench.entry_name("zoo:judge128") == "judge128" and bench.entry_name("runs/x/best") == "runs/x/best"
    # a row another benchmark wrote (judge_scale.py's judge128) is not replaced by this one's
    rows = {"j": {"command": "python benchmarks/judge_scale.py"}, "p": {"command": "python diffusion_synth.py"}}
    (tmp_path / "s.json").write_text(json.dumps({"entries": rows}))
    merge_results("entries", {"j": {}, "p": {}, "new": {}}, tmp_path / "s.json", owner="diffusion_synth.py")
    assert json.loads((tmp_path / "s.json").read_text())["entries"] == {**rows, "p": {}, "new": {}}
    # the autoencoder's scores go to the entry that decodes: --vae's, else the one the pipeline entry names
    assert bench.autoencoder_entry(str(tmp_path / "pipe"), "zoo:autoencoder64_ft") == "autoencoder64_ft"
    assert bench.autoencoder_entry(str(tmp_path / "pipe"), None) == "autoencoder64"
    (tmp_path / "pipe" / "zoo_entry.json").write_text(json.dumps({"vae": {"entry": "zoo:ae_ft"}}))
    assert bench.autoencoder_entry(str(tmp_path / "pipe"), None) == "ae_ft"
    # an entry that was never swapped decodes with the autoencoder its recipe names
    (tmp_path / "recipe.yaml").write_text("model:\n  autoencoder: zoo:autoencoder128_f4\n")
    (tmp_path / "pipe" / "zoo_entry.json").write_text(json.dumps({"recipe": str(tmp_path / "recipe.yaml")}))
    assert bench.autoencoder_entry(str(tmp_path / "pipe"), None) == "autoencoder128_f4"
    # a zoo folder by path is its entry; a training run's folder keeps its path (not "best")
    assert bench.autoencoder_entry("x", str(tmp_path / "pipe")) == "pipe"
    assert bench.autoencoder_entry("x", "runs/ae_ft/best") == "runs/ae_ft/best"
    # a training run's pipeline (an ablation arm) decodes with the autoencoder its config names
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("model:\n  autoencoder: zoo:autoencoder64_ft\n")
    assert bench.autoencoder_entry(str(tmp_path / "run" / "best"), None) == "autoencoder64_ft"
    (tmp_path / "run" / "config.yaml").write_text("model:\n  autoencoder: runs/ae/final\n")
    assert bench.autoencoder_entry(str(tmp_path / "run" / "best"), None) == "runs/ae/final"


def test_rare_finding_selection_caps_positives_per_finding_and_takes_clean_negatives(load_benchmark):
    """The initial-noise optimisation study's reports: up to N positives per rare finding (a report with two counts
    for both) and negatives that carry none of the rare findings."""
    import numpy as np

    bench = load_benchmark("diffusion_synth")
    labels = np.zeros((10, 3))
    labels[[0, 2, 4, 6], 0] = 1  # finding 0 in rows 0, 2, 4, 6
    labels[[2, 3, 5], 1] = 1  # finding 1 in rows 2 (with finding 0), 3, 5
    labels[7, 2] = 1  # a common finding: not studied, so row 7 is a negative
    pos, neg = bench.rare_selection(labels, [0, 1], positives=2, negatives=3)
    assert pos == [0, 2, 3] and neg == [1, 7, 8]
    pos, neg = bench.rare_selection(labels, [0, 1])
    assert pos == [0, 2, 4, 6, 3, 5] and neg == [1, 7, 8, 9]  # every positive; negatives up to their number


def test_rare_study_without_optimisation_scores_plain_generations_only(tmp_path, tiny_synth, load_benchmark):
    """--rare-plain-only: the judge's AUROC per rare finding on plain generations, no optimisation run."""
    from evaluation.classifier import Judge, build_classifier
    from evaluation.image_eval import load_image_set

    data, _ = tiny_synth
    bench = load_benchmark("diffusion_synth")
    build_classifier("classifier_tiny", image_size=32).save_pretrained(tmp_path / "judge")
    real = load_image_set(data / "annotation.json", "test", 32, "file")
    pipe = tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = bench.score_noise_optimisation(pipe, data, real, Judge.from_pretrained(tmp_path / "judge"), 2.0, 0,
                                         positives=2, negatives=2, optimise=False)
    assert len(out["rare_findings"]) == 3 and out["n_images"] >= out["n_without_rare_findings"]
    assert all(set(row) == {"positives", "auc_plain"} for row in out["rare_findings"].values())
    # and the card then has no plain -> optimised row
    result = {"pipeline": "p", "classifier": "j", "autoencoder_entry": "a", "mauc_real_ceiling": 0.9,
              "guidance_scale": 2.0, "mauc_generated": 0.8, "backbone_fid_over_floor": 2.0,
              "dpm20_images_per_s": 1.0, "noise_optimisation": out}
    assert "rare_findings_auc_plain_to_optimised" not in bench.zoo_entry_metrics(result, "c")["p"]


def test_sharded_pair_cache_gives_the_in_memory_items_and_is_reused(tmp_path, tiny_synth):
    from report2image.train import CachedPairs, DiffusionPairs

    data, _ = tiny_synth
    pipe = tiny_pipeline()
    pipe.vae.eval(), pipe.text_encoder.eval()  # frozen models run in eval mode (batch norm: running statistics)
    pairs = DiffusionPairs(str(data / "annotation.json"), "train", 32)
    # shards a multiple of the batch: the same batches as in memory, so the same floats
    memory = CachedPairs(pairs, pipe.vae, pipe.text_encoder, image_embeds=True, batch_size=8)
    sharded = CachedPairs(pairs, pipe.vae, pipe.text_encoder, image_embeds=True, batch_size=8,
                          cache_dir=str(tmp_path / "c"), shard_size=16)
    assert len(list((tmp_path / "c").glob("*/shard_*.safetensors"))) == -(-len(pairs) // 16) > 1
    for i in (0, 5, len(pairs) - 1):
        a, b = memory[i], sharded[i]
        assert a.keys() == b.keys()
        for k, v in a.items():
            assert torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k], k
    assert torch.equal(memory.identity_images([3, 1]), sharded.identity_images([3, 1]))
    # the same data and models: read back, nothing computed; another model: a new cache
    CachedPairs(pairs, pipe.vae, pipe.text_encoder, image_embeds=True, cache_dir=str(tmp_path / "c"), shard_size=16)
    assert len(list((tmp_path / "c").iterdir())) == 1
    torch.nn.init.zeros_(pipe.vae.encoder.conv_in.weight)
    CachedPairs(pairs, pipe.vae, pipe.text_encoder, image_embeds=True, cache_dir=str(tmp_path / "c"), shard_size=16)
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_train_diffusion_on_a_sharded_cache_matches_the_in_memory_run(tmp_path, tiny_synth):
    from radloop.cli import main

    data, _ = tiny_synth
    common = ["train", "diffusion", "data.annotation=" + str(data / "annotation.json"), "model.name=ldm_tiny",
              "data.batch_size=8", "autoencoder.steps=1", "autoencoder.batch_size=8", "train.max_steps=2",
              "train.eval_every=2", "train.progress=false"]
    assert main([*common, f"train.output_dir={tmp_path / 'mem'}"]) == 0
    assert main([*common, f"train.output_dir={tmp_path / 'disk'}", f"data.feature_cache={tmp_path / 'cache'}"]) == 0
    a = ReportToCXRPipeline.from_pretrained(tmp_path / "mem" / "final").unet.state_dict()
    b = ReportToCXRPipeline.from_pretrained(tmp_path / "disk" / "final").unet.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_sampling_defaults_travel_with_the_pipeline(tmp_path, caplog):
    """guidance, steps, edit settings and sampler saved in sampling_config.json; unset arguments take them; a
    folder saved before the file existed loads with SamplingConfig's defaults and says so."""
    import logging

    from report2image.pipeline import SAMPLING_FILE, SamplingConfig

    pipe = tiny_pipeline(use_identity=False)
    pipe.sampling = SamplingConfig(guidance_scale=6.0, num_inference_steps=3, edit_strength=0.5, sampler="ddim")
    pipe.save_pretrained(tmp_path / "pipe")
    assert json.loads((tmp_path / "pipe" / SAMPLING_FILE).read_text())["guidance_scale"] == 6.0
    again = ReportToCXRPipeline.from_pretrained(tmp_path / "pipe")
    again.set_progress_bar_config(disable=True)
    assert again.sampling == pipe.sampling == ReportToCXRPipeline.saved_sampling(tmp_path / "pipe")
    seeded = {"generator": torch.Generator().manual_seed(0), "output_type": "pt"}
    implicit = again(REPORTS, **seeded).images
    explicit = again(REPORTS, num_inference_steps=3, guidance_scale=6.0, generator=torch.Generator().manual_seed(0),
                     output_type="pt").images
    torch.testing.assert_close(implicit, explicit)
    other = again(REPORTS, num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    assert not torch.allclose(implicit, other)
    (tmp_path / "pipe" / SAMPLING_FILE).unlink()
    with caplog.at_level(logging.INFO, logger="shared.saved_settings"):
        old = ReportToCXRPipeline.from_pretrained(tmp_path / "pipe")
    assert old.sampling == SamplingConfig() and "no sampling_config.json" in caplog.text
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        old.use_sampler("euler")


def test_generate_image_takes_the_pipelines_saved_sampling(tmp_path, capsys):
    from radloop.cli import main
    from report2image.pipeline import SamplingConfig

    pipe = tiny_pipeline(use_identity=False)
    pipe.sampling = SamplingConfig(guidance_scale=4.5, num_inference_steps=2, sampler="ddim")
    pipe.save_pretrained(tmp_path / "pipe")
    assert main(["generate", "image", "--pipeline", str(tmp_path / "pipe"), "--report", REPORTS[0],
                 "--out", str(tmp_path / "gen")]) == 0
    request = json.loads((tmp_path / "gen" / ".generate_request.json").read_text())
    assert (request["guidance_scale"], request["num_inference_steps"], request["sampler"]) == (4.5, 2, "ddim")
    assert "sampling: ddim, 2 steps, guidance 4.5" in capsys.readouterr().out

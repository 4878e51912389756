"""Trainer components that need no process group: ds_config resolution, schedule, launcher detection,
checkpoint selection, warm start and freezing, parameter groups, the step objective."""

import json
import math
import os
import re

import pytest
import torch

from onepeace.config import ConfigError, model_config
from onepeace.losses import denoising_loss, target_positions
from onepeace.model import OnePeace
from onepeace.model.adapters import audio_frame_count
from onepeace.recipe import build_recipe, load_recipe, shipped_recipes
from onepeace import runs
from onepeace.train import checkpoint
from onepeace.train.config import LossWeights, TrainConfig
from onepeace.distributed import detect, first_host
from onepeace.train.engine import (DEFAULT_DS_CONFIG, ds_config_path, load_ds_config, param_groups,
                                   resolve_ds_config, shipped_ds_configs)
from onepeace.train.objective import PretrainObjective
from onepeace.train.schedule import cosine_factor
from onepeace.runs import freeze_all_but, warm_start


# ---- DeepSpeed config: "auto" filled from the recipe, contradictions refused ---------------------------


def resolve(ds, **train):
    return resolve_ds_config(ds, TrainConfig(**train), micro_batch=12, world_size=2, device_type="cpu",
                             source="ds.json")


def test_auto_values_come_from_the_recipe():
    out = resolve(DEFAULT_DS_CONFIG, grad_accum=3, grad_clip=2.5, precision="bf16")
    assert out["train_micro_batch_size_per_gpu"] == 12 and out["gradient_accumulation_steps"] == 3
    assert out["train_batch_size"] == 12 * 3 * 2 and out["gradient_clipping"] == 2.5
    assert out["bf16"]["enabled"] is True and out["fp16"]["enabled"] is False
    opt = resolve({"optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                            "weight_decay": "auto"}}}, lr=3e-4, weight_decay=0.1)
    assert opt["optimizer"]["params"] == {"lr": 3e-4, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.1}


@pytest.mark.parametrize("ds, message", [
    ({"gradient_clipping": 1.0}, r"ds.json: gradient_clipping is 1.0 but the recipe gives 3.0 \(train.grad_clip\)"),
    ({"train_micro_batch_size_per_gpu": 8}, r"train_micro_batch_size_per_gpu is 8 but the recipe gives 12"),
    ({"bf16": {"enabled": True}}, r"bf16.enabled is True but the recipe gives False \(train.precision = fp32\)"),
    ({"gradient_accumulation_steps": 4}, r"gradient_accumulation_steps is 4 but the recipe gives 1"),
    ({"train_batch_size": 100}, r"train_batch_size is 100 but the recipe gives 24"),
    ({"scheduler": {"type": "WarmupLR"}}, r"remove the 'scheduler' section"),
    ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}, r"offload needs an 'optimizer'"),
    ({"optimizer": {"type": "Lamb"}}, r"optimizer.type must be AdamW"),
])
def test_contradictions_are_errors(ds, message):
    with pytest.raises(ConfigError, match=message):
        resolve(ds, precision="fp32")


def test_ds_configs_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = ds_config_path("zero2_bf16")
    assert os.path.isfile(shipped) and shipped.endswith(os.path.join("onepeace", "ds_configs", "zero2_bf16.json"))
    assert ds_config_path("zero2_bf16.json") == ds_config_path("ds_configs/zero2_bf16.json") == shipped
    (tmp_path / "ds_configs").mkdir()
    (tmp_path / "ds_configs" / "zero2_bf16.json").write_text("{}")  # a file of that name wins
    assert ds_config_path("ds_configs/zero2_bf16.json") == "ds_configs/zero2_bf16.json"
    with pytest.raises(ConfigError, match="not found: zero9 .*shipped config: cpu, "):
        ds_config_path("zero9")
    with pytest.raises(ConfigError, match="not found: elsewhere/cpu.json"):
        ds_config_path("elsewhere/cpu.json")


def test_cli_refuses_bad_input_before_anything_starts(tmp_path, capsys, monkeypatch):
    """In-process: these errors come before any process group, so no launcher is needed."""
    from onepeace.train.cli import main

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {preset: tiny}\ndata:\n  train:\n    image-text: {sources: [{shards: nowhere}]}\n")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}))
    assert main(["--config", str(recipe), "--deepspeed_config", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert "gradient_clipping is 1.0 but the recipe gives 3.0 (train.grad_clip)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["--config", str(recipe), "--set", "train.stpes=3"]) == 2
    assert "unknown key train.stpes" in capsys.readouterr().err
    assert main(["--config", "stage1_vl_huge"]) == 2
    assert "neither a file nor a shipped recipe (shipped: demo, stage1_vl, stage1_vl_tiny" in capsys.readouterr().err
    assert main(["--config", str(recipe), "--deepspeed_config", "zero9"]) == 2
    assert "DeepSpeed config not found: zero9" in capsys.readouterr().err


def test_fp16_is_refused_on_cpu():
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve(DEFAULT_DS_CONFIG, precision="fp16")


def test_shipped_ds_configs_resolve_with_matching_recipes():
    assert {"cpu", "zero2_bf16", "zero3_offload"} <= set(shipped_ds_configs())
    for name in shipped_ds_configs():
        ds, _ = load_ds_config(name)
        precision = "fp16" if "fp16" in name else "bf16"
        out = resolve_ds_config(ds, TrainConfig(precision=precision), micro_batch=4, world_size=8,
                                device_type="cuda", source=name)
        assert out[precision]["enabled"] is True, name


# ---- schedule ---------------------------------------------------------------------------------------


def test_cosine_schedule_with_warmup_and_floor():
    f = [cosine_factor(s, total=100, warmup=10, min_ratio=0.01) for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.01 + 0.99 * 0.5)
    assert f[100] == pytest.approx(0.01) and min(f) >= 0.01 - 1e-12
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_warmup_ratio_and_steps():
    assert TrainConfig(steps=1000, warmup_ratio=0.1).warmup == 100
    assert TrainConfig(steps=1000, warmup_steps=30).warmup == 30


# ---- launcher detection -----------------------------------------------------------------------------


def test_detect_torchrun_deepspeed_and_single():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.master_addr, d.master_port, d.launcher) == \
        (1, 2, 1, "10.0.0.1", 1234, "deepspeed")
    assert detect({**env, "TORCHELASTIC_RUN_ID": "x"}).launcher == "torchrun"
    single = detect({})
    assert (single.rank, single.world_size, single.launcher) == (0, 1, "single") and single.master_port > 0


def test_detect_slurm_maps_variables_and_falls_back_to_localhost():
    env = {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "nosuchnode[7-8]", "SLURM_JOB_ID": "123456"}
    d = detect(env)
    assert (d.rank, d.world_size, d.local_rank, d.launcher) == (3, 4, 1, "slurm")
    assert d.master_addr == "127.0.0.1"  # nosuchnode7 does not resolve
    # Every rank of a job derives the same port without talking to the others; MASTER_PORT overrides it.
    assert detect({**env, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}).master_port == d.master_port
    assert 1024 < d.master_port < 65536 and detect({**env, "MASTER_PORT": "4321"}).master_port == 4321
    assert detect({**env, "SLURM_STEP_NODELIST": "localhost"}).master_addr == "localhost"


def test_first_host_parses_node_lists_without_scontrol(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert first_host("gpu[003-010,012],cpu1") == "gpu003"
    assert first_host("n1,n2") == "n1"
    assert first_host("single") == "single"


def test_bad_rank_environment_is_an_error():
    with pytest.raises(ValueError, match="rank 2 is not in"):
        detect({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="RANK='x' is not an integer"):
        detect({"RANK": "x", "WORLD_SIZE": "2"})


# ---- checkpoints -----------------------------------------------------------------------------------


def test_only_complete_checkpoints_are_found(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):
        d = ckpts / runs.tag_for(step)
        d.mkdir(parents=True)
        if complete:
            (d / runs.COMPLETE).write_text("{}")
    assert runs.complete_tags(str(ckpts)) == [(2, "step00000002"), (4, "step00000004")]
    assert runs.find_checkpoint(str(tmp_path / "run")) == (str(ckpts), "step00000004")
    assert runs.find_checkpoint(str(ckpts / "step00000002")) == (str(ckpts), "step00000002")
    with pytest.raises(ConfigError, match="incomplete"):
        runs.find_checkpoint(str(ckpts / "step00000006"))
    with pytest.raises(FileNotFoundError):
        runs.find_checkpoint(str(tmp_path / "nothing"))


def test_prune_keeps_the_newest_complete_and_never_touches_incomplete(tmp_path):
    for step in (1, 2, 3, 4):
        d = tmp_path / runs.tag_for(step)
        d.mkdir()
        if step != 2:
            (d / runs.COMPLETE).write_text("{}")
    (tmp_path / runs.tag_for(9)).mkdir()  # a save in progress (newer than every complete one)
    checkpoint._prune(str(tmp_path), keep_last=2)
    assert sorted(os.listdir(tmp_path)) == ["step00000002", "step00000003", "step00000004", "step00000009"]


def test_resume_auto_over_incomplete_step_directories_is_refused_naming_them(tmp_path):
    from onepeace.train.cli import resolve_resume

    run = tmp_path / "run"
    assert resolve_resume("auto", str(run)) is None  # nothing there: a fresh start
    for step in (5, 10):
        (run / "checkpoints" / runs.tag_for(step)).mkdir(parents=True)
    for arg in ("auto", "none"):
        with pytest.raises(ConfigError, match="step00000005, step00000010.*no complete|no complete.*step00000005"):
            resolve_resume(arg, str(run))
    (run / "checkpoints" / "step00000005" / runs.COMPLETE).write_text("{}")
    assert resolve_resume("auto", str(run)) == (str(run / "checkpoints"), "step00000005", False)
    with pytest.raises(ConfigError, match="already has checkpoints"):
        resolve_resume("none", str(run))
    other = tmp_path / "other" / "checkpoints" / "step00000003"
    other.mkdir(parents=True)
    (other / runs.COMPLETE).write_text("{}")
    with pytest.raises(ConfigError, match="another run's step directories"):
        resolve_resume(str(other), str(run))
    assert resolve_resume(str(other), str(tmp_path / "fresh")) == (str(other.parent), "step00000003", True)
    assert resolve_resume(str(other.parent.parent), str(tmp_path / "fresh")).explicit is False  # a run: may fall back


def test_incompatible_model_config_is_named():
    saved = {**vars(model_config("tiny"))}
    saved["modalities"] = list(saved["modalities"])
    checkpoint.check_compatible(saved, model_config("tiny", attention_backend="math"), "ckpt")  # runtime field
    with pytest.raises(ConfigError, match=r"model.depth: checkpoint 2, now 3"):
        checkpoint.check_compatible(saved, model_config("tiny", depth=3), "ckpt")


# ---- warm start, freezing, optimizer groups ---------------------------------------------------------------


def test_stage2_warm_start_and_freezing(tmp_path):
    stage1 = OnePeace(model_config("tiny", modalities=["text", "image"]))
    with torch.no_grad():
        stage1.logit_scale.fill_(4.0)
    stage1.save_pretrained(str(tmp_path / "s1"))
    recipe = load_recipe("stage2_al_tiny")
    stage2 = OnePeace(recipe.model)
    report = warm_start(stage2, str(tmp_path / "s1"), recipe.train.init_exclude, recipe.train.reset)
    assert report["reset"] == 1 and report["unused"] > 0  # the image branch is left out
    s1 = stage1.state_dict()
    for name, value in stage2.state_dict().items():
        if "audio" not in name and name != "logit_scale":
            assert torch.equal(value, s1[name]), name
    assert stage2.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    trainable, frozen = freeze_all_but(stage2, recipe.train.trainable)
    names = {n for n, p in stage2.named_parameters() if p.requires_grad}
    groups = param_groups(stage2, 0.05)
    assert sum(len(g["params"]) for g in groups) == len(names)  # frozen parameters are not optimised
    assert trainable + frozen == sum(p.numel() for p in stage2.parameters())


def reference_stage2_trainable(name: str) -> bool:
    """The reference's stage 2, in this model's names: the encoder (adapters, shared layers, per-modality
    FFNs and norms, bias tables) and the text projection are frozen; then the audio adapter (which holds
    the audio relative position bias table), the audio final norm and every layer's audio FFN train
    again. Everything outside the encoder trains: the audio projection, the logit scale and the whole
    decoder (its input and output projections, mask tokens, positions, layers)."""
    audio_adapter = name.startswith("adapters.audio.") or name == "rel_bias.tables.audio"
    audio_ffn = re.fullmatch(r"encoder\.layers\.\d+\.ffn\.audio\..+", name) is not None
    return (audio_adapter or audio_ffn or name.startswith(("encoder.final_norm.audio.", "proj.audio.", "decoder."))
            or name == "logit_scale")


def test_stage2_trains_exactly_what_the_reference_trains():
    recipes = {n: load_recipe(n).train for n in shipped_recipes() if n.startswith("stage2")}
    assert recipes
    tiny = next(iter(recipes.values()))
    for name, train in recipes.items():  # every size trains the same parts
        assert (train.trainable, train.reset, train.init_exclude) == (tiny.trainable, tiny.reset, tiny.init_exclude), \
            name
    model = OnePeace(model_config("tiny", modalities=["text", "audio"]))
    freeze_all_but(model, tiny.trainable)
    names = [n for n, _ in model.named_parameters()]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(filter(reference_stage2_trainable, names))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"rel_bias.tables.audio", "logit_scale", "decoder.mask_token.audio", "decoder.mask_token.text",
            "adapters.audio.pos_conv.0.0.weight", "encoder.layers.1.ffn.audio.wi.weight"} <= trained
    assert not {"rel_bias.tables.text", "adapters.text.token_embed.weight", "encoder.layers.0.attn.qkv.weight",
                "encoder.layers.0.gamma1", "encoder.layers.0.ffn.text.wi.weight", "encoder.final_norm.text.weight",
                "proj.text.weight"} & trained
    model.unshare_rel_bias()  # per-layer tables keep their names, so the same patterns still hold
    freeze_all_but(model, tiny.trainable)
    assert model.rel_bias.tables["audio"].requires_grad and not model.rel_bias.tables["text"].requires_grad
    assert tiny.reset == ["logit_scale"] and tiny.init_exclude == ["*audio*"]


def test_warm_start_refuses_missing_parameters(tmp_path):
    OnePeace(model_config("tiny", modalities=["text", "image"])).save_pretrained(str(tmp_path / "s1"))
    with pytest.raises(ConfigError, match="lacks .* parameters of this model"):
        warm_start(OnePeace(model_config("tiny")), str(tmp_path / "s1"))


def test_no_weight_decay_on_vectors_positions_and_tokens():
    model = OnePeace(model_config("tiny"))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert {"logit_scale", "adapters.image.pos_embed", "adapters.text.cls_token", "rel_bias.tables.text",
            "decoder.mask_token.image", "encoder.layers.0.attn.q_bias"} <= no_decay_names
    assert "encoder.layers.0.attn.qkv.weight" in {names[id(p)] for p in decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    # The engine's module is the objective (names start with "model."): the same split.
    wrapped = param_groups(PretrainObjective(model, {"pairs": "image-text"}, LossWeights()), 0.05)
    assert [[id(p) for p in g["params"]] for g in wrapped] == [[id(p) for p in g["params"]] for g in (decay, no_decay)]


def test_one_table_names_components_and_weight_decay():
    from onepeace.model.accounting import parameter_groups
    from onepeace.model.parameters import classify

    assert classify("adapters.image.pos_embed") == ("image adapter", False)
    assert classify("encoder.layers.3.ffn.audio.wi.weight") == ("audio FFNs", True)
    assert classify("encoder.layers.3.attn.qkv.weight") == ("shared attention", True)
    assert classify("decoder.mask_token.text") == ("decoder", False)
    with pytest.raises(KeyError, match="encoder.extra.weight belongs to no component: add a rule"):
        classify("encoder.extra.weight")
    model = OnePeace(model_config("tiny"))
    assert sum(parameter_groups(model).values()) == sum(p.numel() for p in model.parameters())


# ---- the step objective -----------------------------------------------------------------------------------


def image_text_batch(B=3):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 1000, (B, 6), generator=g)
    tokens[0, 4:] = 0
    return {"images": torch.randn(B, 3, 64, 64, generator=g), "text_tokens": tokens,
            "text_padding_mask": tokens == 0, "text_keep": torch.tensor([[0, 1, 3], [0, 2, 4], [1, 3, 5]]),
            "image_keep": torch.stack([torch.arange(4) * 4 + i for i in range(B)]),
            "pair_text_keep": torch.tensor([[2, -1], [1, 3], [0, 5]]),
            "pair_image_keep": torch.stack([torch.arange(5) * 3 + i for i in range(B)])}


def test_stage1_terms_and_weights():
    model = OnePeace(model_config("tiny", modalities=["text", "image"]))
    objective = PretrainObjective(model, {"pairs": "image-text"}, LossWeights())
    total, terms = objective({"pairs": image_text_batch()})
    assert set(terms) == {"pairs/itc", "pairs/dcl_text", "pairs/dcl_image", "pairs/dcl_pair_text",
                          "pairs/dcl_pair_image"}
    w = {"itc": 1.0, "dcl_text": 0.5, "dcl_image": 1.0, "dcl_pair_text": 0.5, "dcl_pair_image": 0.5}
    expected = sum(w[k.split("/")[1]] * v for k, v in terms.items())
    torch.testing.assert_close(total.detach(), expected)
    total.backward()
    assert model.logit_scale.grad is not None and model.decoder.mask_token["image"].grad.abs().sum() > 0


def audio_text_batch(B=3, seconds=1):
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, 1000, (B, 6), generator=g)
    tokens[1, 3:] = 0
    frames = audio_frame_count(16000 * seconds)

    def keep(ratio):
        return torch.stack([torch.randperm(frames, generator=g)[: int(frames * (1 - ratio))].sort().values
                            for _ in range(B)])

    audio = torch.randn(B, 16000 * seconds, generator=g)
    return {"audio": audio, "audio_padding_mask": torch.zeros(audio.shape, dtype=torch.bool), "text_tokens": tokens,
            "text_padding_mask": tokens == 0, "text_keep": torch.tensor([[0, 1, 3], [0, 2, -1], [1, 3, 5]]),
            "audio_keep": keep(0.55), "pair_text_keep": torch.tensor([[2, -1], [1, -1], [0, 5]]),
            "pair_audio_keep": keep(0.45)}


@pytest.mark.parametrize("kind, other, target_view", [("audio-text", "audio", "pair"), ("image-text", "image", "alone")])
def test_single_view_dcl_target_stage2_from_the_unmasked_pair_stage1_from_the_modality_alone(kind, other,
                                                                                              target_view):
    """Stage 2's audio-only DCL target is the audio part of the unmasked audio-text pair forward; stage 1's
    image-only target is the image-only forward. Recomputed by hand from the model's public calls."""
    model = OnePeace(model_config("tiny", modalities=["text", other])).eval()  # eval: no drop path on either side
    with torch.no_grad():  # full-strength attention, so the text visibly moves the other modality's tokens
        for name, p in model.named_parameters():
            if ".gamma" in name:
                p.fill_(1.0)  # (LayerScale 1e-6 would make the pair and lone outputs all but equal)
            if name.startswith("encoder.") and ("attn.qkv." in name or "attn.out_proj.weight" in name):
                p.mul_(50.0)
    batch = audio_text_batch() if other == "audio" else image_text_batch()
    objective = PretrainObjective(model, {"pairs": kind}, LossWeights())
    calls = []
    forward_encoder = model.forward_encoder

    def counting_forward_encoder(**kw):
        calls.append((tuple(sorted(kw["adapted"])), tuple(k for k in kw if k.endswith("_keep"))))
        return forward_encoder(**kw)

    model.forward_encoder = counting_forward_encoder
    with torch.no_grad():
        _, terms = objective({"pairs": batch})
    del model.forward_encoder
    assert calls.count(((other, "text"), ())) == 1  # one unmasked pair forward serves every term that reads it

    raw = {"audio": {"audio": batch.get("audio"), "audio_padding_mask": batch.get("audio_padding_mask")},
           "image": {"image": batch.get("images")}}[other]
    with torch.no_grad():
        pair = model.forward_encoder(text=batch["text_tokens"], text_padding_mask=batch["text_padding_mask"], **raw)
        alone = model.forward_encoder(**raw)
        masked = model.forward_encoder(**raw, **{f"{other}_keep": batch[f"{other}_keep"]})[other]
        pred = model.decode({other: masked})[other]
    valid = target_positions(masked.full_padding_mask, pred.shape[0], pred.shape[1], pred.device)

    def dcl(target):
        return denoising_loss(pred, target.tokens, masked.masked_positions(), valid)

    by_hand = {"pair": dcl(pair[other]), "alone": dcl(alone[other])}
    # Random predictions make the loss only mildly sensitive to its target: the two candidates differ by
    # ~1e-3 or more, far beyond the float noise of recomputing the same one (~1e-6).
    assert (by_hand["pair"] - by_hand["alone"]).abs() > 1e-4
    torch.testing.assert_close(terms[f"pairs/dcl_{other}"], by_hand[target_view], rtol=0, atol=1e-5)


def test_zero_weights_skip_their_terms():
    model = OnePeace(model_config("tiny", modalities=["text", "image"]))
    weights = LossWeights(itc=0.0, dcl_text=0.0, dcl_pair_text=0.0, dcl_pair_image=0.0)
    total, terms = PretrainObjective(model, {"pairs": "image-text"}, weights)({"pairs": image_text_batch()})
    assert set(terms) == {"pairs/dcl_image"}
    with pytest.raises(ValueError, match="weight 0"):
        PretrainObjective(model, {"pairs": "image-text"}, LossWeights(**{k: 0.0 for k in vars(LossWeights())}))(
            {"pairs": image_text_batch()})


def test_every_shipped_recipe_loads():
    for name in shipped_recipes():
        recipe = load_recipe(name)
        assert recipe.data.train and recipe.train.steps > 0


def test_a_stage_recipe_takes_the_size_dependent_values_from_its_preset_row():
    large = load_recipe("stage1_vl", ["model.preset=large"])
    assert (large.name, large.model.embed_dim, large.model.depth) == ("stage1_vl_large", 1024, 24)
    assert (large.data.train["image-text"].batch_size, large.data.eval["image-text"].batch_size) == (32, 32)
    assert (large.data.num_workers, large.model.checkpoint_activations, large.train.lr) == (6, False, 5e-4)
    big = load_recipe("stage2_al_4b")  # the old name: the stage recipe at that preset
    assert big.to_dict() == load_recipe("stage2_al", ["model.preset=onepeace-4b"]).to_dict()
    assert (big.name, big.model.embed_dim, big.data.train["audio-text"].batch_size) == ("stage2_al_4b", 1536, 16)
    assert big.model.checkpoint_activations and big.train.init_from == "runs/stage1_vl_4b"
    assert load_recipe("stage2_al").train.init_from == "runs/stage1_vl_base"  # the file's own preset: base
    tiny = load_recipe("stage1_vl_tiny", ["data.train.image-text.batch_size=3", "model.checkpoint_activations=true"])
    assert tiny.data.train["image-text"].batch_size == 3 and tiny.model.checkpoint_activations  # --set wins
    assert load_recipe("stage1_vl_tiny", ["model.preset=base"]).data.train["image-text"].batch_size == 64


def test_preset_rows_must_fit(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {preset: large}\npresets:\n  tiny: {data.num_workers: 1}\n")
    with pytest.raises(ConfigError, match=r"presets has no row for model.preset 'large'; it has tiny"):
        load_recipe(str(path))
    assert load_recipe(str(path), ["model.preset=tiny"]).data.num_workers == 1
    path.write_text("model: {preset: tiny}\npresets:\n  huge: {data.num_workers: 1}\n")
    with pytest.raises(ConfigError, match=r"presets names unknown model presets huge"):
        load_recipe(str(path))
    path.write_text("model: {preset: tiny}\ndata: {num_workers: 2}\npresets:\n  tiny: {data.num_workers.x: 1}\n")
    with pytest.raises(ConfigError, match=r"presets.tiny.data.num_workers.x: 'num_workers' is not a mapping"):
        load_recipe(str(path))


def test_one_switch_for_activation_checkpointing():
    assert "activation_checkpointing" not in TrainConfig.__dataclass_fields__
    # A run config written when the train section held the switch (and overrode the model's) still loads.
    old = build_recipe({"model": {"preset": "tiny", "checkpoint_activations": False},
                        "train": {"activation_checkpointing": True}})
    assert old.model.checkpoint_activations and OnePeace(old.model).encoder.checkpoint_activations


def test_recipe_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown top-level key optimizer"):
        build_recipe({"optimizer": {}})
    with pytest.raises(ConfigError, match=r"unknown key train.stpes"):
        build_recipe({"train": {"stpes": 3}})
    with pytest.raises(ConfigError, match=r"neither a file nor a shipped recipe"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_export_refuses_run_directories_files_and_non_empty_directories(tmp_path, capsys):
    from onepeace.train.export import main as export_main

    run = tmp_path / "run"
    (run / "checkpoints" / "step00000002").mkdir(parents=True)
    (run / "checkpoints" / "step00000002" / "rng_rank00000.pt").write_text("x")
    (run / "config.yaml").write_text("model: {}\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    cases = {str(run): "training run or checkpoint directory", str(run / "checkpoints"): "training run",
             str(run / "checkpoints" / "step00000002"): "training run", str(tmp_path / "afile"): "is a file",
             str(tmp_path / "full"): "not empty: pass --force"}
    for out, words in cases.items():
        assert export_main([str(run), out]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    for out in (str(run), str(run / "checkpoints" / "step00000002")):  # --force does not open a run directory
        assert export_main([str(run), out, "--force"]) == 2
        assert "training run" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == "model: {}\n" and (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_saving_over_an_older_save_of_the_same_step_drops_its_marker_first(tmp_path):
    """A run resumed from before a (damaged) step N saves step N again: until that save is whole, the
    directory must not count as complete."""
    old = tmp_path / "step00000003"
    old.mkdir()
    (old / runs.COMPLETE).write_text(json.dumps({"step": 3, "files": {}}))
    seen = {}

    class Engine:
        def save_checkpoint(self, ckpt_dir, tag, client_state, save_latest):
            seen["complete_during_save"] = (tmp_path / tag / runs.COMPLETE).exists()
            (tmp_path / tag / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)

    checkpoint.save(Engine(), str(tmp_path), 3, {}, model_config("tiny"), keep_last=3, rank=0)
    assert seen == {"complete_during_save": False}
    marker = json.loads((old / runs.COMPLETE).read_text())
    assert marker["files"]["mp_rank_00_model_states.pt"] == 10 and "rng_rank00000.pt" in marker["files"]


# ---- the sync-free step: non-finite updates left to the engine, losses summed on the device -------------


@pytest.mark.parametrize("ds, skips", [
    ({"zero_optimization": {"stage": 0}, "bf16": {"enabled": False}}, False),  # fp32 without ZeRO applies NaNs
    ({"zero_optimization": {"stage": 0}, "bf16": {"enabled": True}}, True),
    ({"zero_optimization": {"stage": 0}, "fp16": {"enabled": True}}, True),
    ({"zero_optimization": {"stage": 1}, "bf16": {"enabled": False}}, True),
    ({"zero_optimization": {"stage": 2, "compute_grad_norm": False}, "bf16": {"enabled": False}}, False),
    ({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True, "check_grad_overflow": False}}, False),
    ({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}, True),
    ({"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}, True),
])
def test_which_engines_drop_non_finite_updates_themselves(ds, skips):
    from onepeace.train.engine import skips_nonfinite_steps

    assert skips_nonfinite_steps(ds) is skips


def test_a_non_finite_loss_poisons_every_gradient_and_a_finite_one_is_untouched():
    from onepeace.train.trainer import poison_nonfinite

    w = torch.nn.Parameter(torch.tensor([1.5, -2.0]))
    (poison_nonfinite((w * 3).sum())).backward()
    assert w.grad.tolist() == [3.0, 3.0]
    assert torch.equal(poison_nonfinite(torch.tensor(0.7)), torch.tensor(0.7))  # bit-identical
    w.grad = None
    (poison_nonfinite((w * 3).sum() + torch.log(torch.tensor(0.0)))).backward()  # -inf
    assert torch.isnan(w.grad).all()


def test_metrics_sum_device_losses_and_read_them_once_when_logged(tmp_path):
    from onepeace.train.metrics import TrainMetrics, count_tokens

    m = TrainMetrics(str(tmp_path), False, torch.device("cpu"), None)
    m.record(torch.tensor(2.0), {"t/itc": torch.tensor(1.0)}, 4, 10, 0.5, 0.1)
    m.record(torch.tensor(4.0), {"t/itc": torch.tensor(3.0)}, 4, 10, 0.5, 0.1)
    assert not m.sums.keys() & {"loss/total", "loss/t/itc"}  # still on the device
    out = m.log(2, 10, {})
    assert out["loss/total"] == 3.0 and out["loss/t/itc"] == 2.0 and out["perf/samples_per_s"] == 8.0
    step = {"a": {"text_padding_mask": torch.tensor([[False, False, True], [False, True, True]]),
                  "audio_padding_mask": torch.zeros(2, 720, dtype=torch.bool)}}
    assert count_tokens(step, 16) == 3 + 2 * 2  # 720 samples: 2 frames each


def test_a_save_that_runs_out_of_space_fails_naming_the_checkpoint_and_leaves_it_unmarked(tmp_path):
    """A full disk during a save: torch's zip writer reports the failed write only as "unexpected pos";
    the error must name the checkpoint, and neither its marker nor ``latest`` may be written."""
    import resource

    class Engine:
        def save_checkpoint(self, ckpt_dir, tag, client_state, save_latest):
            os.makedirs(tmp_path / tag, exist_ok=True)
            torch.save({"w": torch.zeros(1 << 18)}, tmp_path / tag / "mp_rank_00_model_states.pt")  # 1 MiB

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, hard))  # writes past 64 KiB fail, as on a full disk
    try:
        with pytest.raises(checkpoint.CheckpointSaveError) as err:
            checkpoint.save(Engine(), str(tmp_path), 3, {}, model_config("tiny"), keep_last=3, rank=0)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(err.value)
    assert message.startswith(f"could not save checkpoint {tmp_path / 'step00000003'}: ") and "free there now" in message
    assert "no COMPLETE marker" in message
    assert not (tmp_path / "step00000003" / runs.COMPLETE).exists() and not (tmp_path / "latest").exists()

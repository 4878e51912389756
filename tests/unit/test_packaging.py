"""The package as installed from a wheel: shipped data inside, and a light core import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("deepspeed", "webdataset", "tensorboard", "soundfile", "torchaudio", "PIL")  # installed, yet not loaded


def _can_build_offline() -> bool:
    """setuptools builds wheels itself from 70.1 on; before that it needs the ``wheel`` package ([dev])."""
    import importlib.util

    import setuptools

    return importlib.util.find_spec("wheel") is not None or \
        tuple(int(x) for x in setuptools.__version__.split(".")[:2]) >= (70, 1)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build leaves nothing in the repository)."""
    if not _can_build_offline():
        pytest.skip("building a wheel offline needs setuptools >= 70.1 or the wheel package (pip install .[dev])")
    src = tmp_path_factory.mktemp("src")
    for name in ("onepeace", "data_tools"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("onepeace-*.whl")
    return path


@pytest.mark.slow
def test_wheel_ships_recipes_ds_configs_and_console_scripts(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for shipped in ("onepeace/recipes/stage1_vl.yaml", "onepeace/recipes/stage2_al.yaml", "onepeace/recipes/demo.yaml",
                    "onepeace/ds_configs/zero2_bf16.json", "onepeace/ds_configs/cpu.json",
                    "data_tools/build_shards.py"):
        assert shipped in names, shipped
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script in ("onepeace-pretrain", "onepeace-eval", "onepeace-export", "onepeace-build-shards",
                   "onepeace-train-tokenizer", "onepeace-verify-shards"):
        assert f"{script} = " in entry_points, script
    requires = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    core = [line for line in requires.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not [line for line in core if any(h.lower() in line.lower() for h in ("deepspeed", "webdataset",
                                                                                 "tensorboard", "soundfile"))], core


@pytest.mark.slow
def test_the_installed_model_needs_no_training_stack(wheel, tmp_path):
    """From outside the repository, with only the unpacked wheel on the path: load a saved model, encode,
    find shipped recipes and DeepSpeed configs by name; none of the training or data-tool packages load."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = f"""
import sys, torch
from onepeace.config import model_config
from onepeace.model import OnePeace
OnePeace(model_config("tiny")).save_pretrained("m")
model = OnePeace.from_pretrained("m")
emb = model.encode_text(torch.tensor([[5, 6, 7]]))
from onepeace.recipe import load_recipe
from onepeace.train.engine import ds_config_path
assert load_recipe("stage1_vl", ["model.preset=large"]).data.train["image-text"].batch_size == 32
assert ds_config_path("zero2_bf16").startswith({str(site)!r})
import onepeace
assert onepeace.__file__.startswith({str(site)!r}), onepeace.__file__
print(tuple(emb.shape), sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}))
"""
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "(1, 64) []"

"""Run under the deepspeed launcher: restore a run's checkpoint the way the trainer does (DeepSpeed's own
loader, ZeRO partitions and all) and compare its embeddings with the exported model's.

    deepspeed --num_gpus 2 tests/e2e/engine_embeddings.py RECIPE RUN_DIR EXPORT_DIR DS_CONFIG
"""

import sys

import torch

from onepeace.model import OnePeace
from onepeace.recipe import load_recipe
from onepeace.runs import find_checkpoint
from onepeace import distributed
from onepeace.train import checkpoint
from onepeace.train.cli import micro_batch_size
from onepeace.train.engine import initialize, load_ds_config, resolve_ds_config
from onepeace.train.objective import PretrainObjective

args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
recipe_path, run_dir, export_dir, ds_path = args
recipe = load_recipe(recipe_path)
dist = distributed.detect()
distributed.init(dist, 120)
ds, _ = load_ds_config(ds_path)
ds = resolve_ds_config(ds, recipe.train, micro_batch=micro_batch_size(recipe),
                       world_size=dist.world_size, device_type="cpu")
model = OnePeace(recipe.model)
objective = PretrainObjective(model, {n: t.kind for n, t in recipe.data.train.items()}, recipe.train.loss_weights)
engine, _, _ = initialize(objective, ds, recipe.train)
checkpoint.load(engine, *find_checkpoint(run_dir), recipe.model, dist.rank)
engine.eval()

g = torch.Generator().manual_seed(5)
images = torch.randn(3, 3, 64, 64, generator=g)
audio = torch.randn(3, 8000, generator=g)
text = torch.randint(3, 200, (3, 7), generator=g)
with torch.no_grad():
    live = engine.module.model
    got = [live.encode_image(images), live.encode_audio(audio), live.encode_text(text)]
    exported = OnePeace.from_pretrained(export_dir).eval()
    want = [exported.encode_image(images), exported.encode_audio(audio), exported.encode_text(text)]
diff = max((a - b).abs().max().item() for a, b in zip(got, want))
if dist.rank == 0:
    print(f"max difference {diff}")
distributed.shutdown()

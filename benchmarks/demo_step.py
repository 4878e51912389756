"""Where a demo step's time goes: one rank's share of the demo recipe, on one CPU thread.

Builds a small corpus of one ``make_demo`` family, reads batches through the real training loader at
the demo recipe's per-rank batch sizes (32 image-text, 16 audio-text pairs with 2 s crops), and times:
- the forward and backward of the whole stage-1 objective on one batch (what a rank computes per step,
  without DeepSpeed, the all-reduce and the optimizer);
- the forward and backward of the audio adapter's conv feature extractor alone on that batch's audio;
- one batch from the data pipeline (in the process; the demo runs it in one worker per rank).

    PYTHONPATH=. python benchmarks/demo_step.py --family shapes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # run from a plain checkout

from benchmarks._common import machine_name, print_table, time_it, write_json  # noqa: E402
from data_tools.make_demo import FAMILIES, make_demo  # noqa: E402
from onepeace.data import build_train_loader  # noqa: E402
from onepeace.demo import _recipe_paths  # noqa: E402
from onepeace.model import OnePeace  # noqa: E402
from onepeace.recipe import load_recipe  # noqa: E402
from onepeace.train.objective import PretrainObjective  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="shapes", choices=list(FAMILIES))
    p.add_argument("--train-size", type=int, default=256, help="training samples per pair kind to draw")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # the demo's ranks run with OMP_NUM_THREADS=1
    cpu = torch.device("cpu")

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        make_demo(str(corpus), family=args.family, train_size=args.train_size, val_size=8, log=lambda msg: None)
        recipe = load_recipe("demo", _recipe_paths(corpus) + ["data.num_workers=0"])
        torch.manual_seed(0)
        model = OnePeace(recipe.model)
        objective = PretrainObjective(model, {n: t.kind for n, t in recipe.data.train.items()},
                                      recipe.train.loss_weights)
        stream = iter(build_train_loader(recipe.data, recipe.model, rank=0, world_size=2))
        batch = next(stream)
        data_s = time_it(lambda: next(stream), cpu, warmup=1, repeats=args.repeats)

    def step():
        model.zero_grad(set_to_none=True)
        loss, _ = objective(batch)
        loss.backward()

    extractor = model.adapters["audio"].feature_extractor
    waveforms = batch["audio-text"]["audio"].unsqueeze(1)

    def features():
        extractor.zero_grad(set_to_none=True)
        extractor(waveforms).sum().backward()

    step_s = time_it(step, cpu, warmup=1, repeats=args.repeats)
    features_s = time_it(features, cpu, warmup=1, repeats=args.repeats)
    rows = [["stage-1 forward + backward, one rank's batch", f"{step_s:.3f}", "1.00"],
            ["  of which: audio conv feature extractor", f"{features_s:.3f}", f"{features_s / step_s:.2f}"],
            ["data pipeline, one batch (in its worker)", f"{data_s:.3f}", f"{data_s / step_s:.2f}"]]
    print_table(["part", "seconds", "share of the step"], rows,
                f"demo recipe, {args.family}, per rank: 32 image-text + 16 audio-text pairs, 1 thread; "
                f"{machine_name(cpu)}")
    payload = {"family": args.family, "step_s": step_s, "audio_features_s": features_s, "data_s": data_s}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()

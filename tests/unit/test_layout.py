"""The house rules of DESIGN.md, checked on the source: who may import whom, and what data workers load."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Module prefix -> group. The longest matching prefix wins. Pure configuration modules (dataclasses and
# their loaders) form one group at the bottom, wherever they live, so a recipe can compose them.
GROUPS = {
    "onepeace": "root", "onepeace.geometry": "geometry", "onepeace.files": "files",
    "onepeace.distributed": "distributed",
    "onepeace.config": "config", "onepeace.data.config": "config", "onepeace.data.formats": "config",
    "onepeace.train.config": "config", "onepeace.recipe": "config", "onepeace.recipes": "config",
    "onepeace.ops": "ops", "onepeace.data": "data", "onepeace.losses": "losses", "onepeace.model": "model",
    "onepeace.runs": "runs", "onepeace.train": "train", "onepeace.eval": "eval",
    "onepeace.demo": "apps", "onepeace.summary": "apps", "onepeace.integrations": "apps",
    "data_tools": "data_tools",
}
# Bottom to top: a group imports its own modules and groups of lower layers only.
LAYERS = [
    {"root", "geometry", "files", "distributed"},
    {"config", "ops"},
    {"data", "losses", "model"},
    {"runs"},
    {"train", "eval", "data_tools"},
    {"apps"},
]
SAME_LAYER_ALLOWED = {("train", "eval")}  # periodic evaluation during training; eval never imports train
LOWER_FORBIDDEN = {("data_tools", "model"), ("data_tools", "losses"), ("data_tools", "runs")}  # data's contract only


def layer(group: str) -> int:
    return next(i for i, groups in enumerate(LAYERS) if group in groups)


def group_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in GROUPS:
            return GROUPS[".".join(parts[:n])]
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = REPO.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, function-level ones included, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                out.append((node.lineno, full if is_module(full) else base))
    return out


def source_files() -> list[Path]:
    return sorted([*REPO.joinpath("onepeace").rglob("*.py"), *REPO.joinpath("data_tools").rglob("*.py")])


def test_every_module_has_a_group():
    assert [module_name(p) for p in source_files() if group_of(module_name(p)) is None] == []


def violations(files: list[Path]) -> list[str]:
    bad = []
    for path in files:
        mine = group_of(module_name(path))
        for line, target in imported_modules(path):
            theirs = group_of(target)
            if theirs is None or theirs == mine:
                continue
            ok = layer(theirs) < layer(mine) or (mine, theirs) in SAME_LAYER_ALLOWED
            if not ok or (mine, theirs) in LOWER_FORBIDDEN:
                bad.append(f"{path.relative_to(REPO)}:{line}: {mine} imports {target} ({theirs})")
    return bad


def test_imports_follow_the_layers():
    assert violations(source_files()) == []


def test_the_rule_catches_upward_and_sideways_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    for name, text in {"eval/x.py": "from ..train import checkpoint\nfrom ..runs import load_model\n",
                       "data/y.py": "def f():\n    from onepeace.model.adapters import audio_frame_count\n",
                       "train/checkpoint.py": "", "runs.py": "", "model/adapters.py": ""}.items():
        (tmp_path / "onepeace" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "onepeace" / name).write_text(text)
    bad = violations(sorted(tmp_path.rglob("*.py")))
    assert bad == ["onepeace/data/y.py:2: data imports onepeace.model.adapters (model)",
                   "onepeace/eval/x.py:1: eval imports onepeace.train.checkpoint (train)"]


def test_geometry_and_files_need_only_the_standard_library():
    for name in ("geometry", "files"):
        imports = {t.split(".")[0] for _, t in imported_modules(REPO / "onepeace" / f"{name}.py")}
        assert imports <= {"__future__", "os"}, (name, imports)


def test_data_workers_do_not_load_the_model():
    """The modules a DataLoader worker runs (decode, transform, mask, collate) must not pull in the model."""
    code = ("import sys; import onepeace.data.loaders, onepeace.data.pipelines, onepeace.data.batching, "
            "onepeace.data.transforms; print(sorted(m for m in sys.modules if m.startswith(('onepeace.model', "
            "'onepeace.losses', 'onepeace.runs', 'onepeace.train', 'onepeace.eval'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

"""The package's layers: a module imports only from layers below its own, so the data flow reads one way."""

import ast
from pathlib import Path

import pytest

import hf_resnet

PACKAGE = Path(hf_resnet.__file__).parent

# Bottom to top; a module may import from any earlier layer, never from its own or a later one.
LAYERS = [
    ["constants", "errors", "flags"],
    ["bundled", "data.imagenet", "data.images", "hub", "space", "sweep.study"],
    ["training.alignment", "training.preemption", "training.run_lock", "data.folders"],
    ["model_config", "strategy_config"],
    ["configs"],
    ["settings", "data.loading", "data.transforms", "data.skips", "training.metrics", "training.checkpoints",
     "training.losses", "training.optim"],
    ["parser", "data.gpu_decode", "training.ema", "training.modeling", "training.preflight", "training.balance",
     "data.tta"],
    ["data.inputs", "sweep.space", "training.tta", "training.calibration"],
    ["training.strategies", "inference", "reports.model_card", "reports.predictions", "data.audit",
     "reports.confusion", "reports.plots", "reports.gradcam", "reports.top_losses"],
    ["training.callbacks", "training.distributed", "reports.evaluation", "export", "demo", "sweep.outputs"],
    ["trainer", "demo_cli", "predict_cli"],
    ["run"],
    ["sweep.trial", "lr_find"],
    ["sweep.runner"],
    ["sweep.command", "lr_find_cli"],
    ["cli"],
]


def imports_of(path: Path, module: str) -> set[str]:
    """The package modules `module` imports (relative imports, resolved)."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            found.add(".".join([*base, node.module] if node.module else base))
    return found


def test_imports_only_go_down_the_layers():
    layer_of = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    modules = {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
        for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
    }
    assert set(modules) == set(layer_of), "every module has a layer (add new ones to LAYERS)"
    upward = [
        f"{module} -> {target}"
        for module, path in modules.items()
        for target in imports_of(path, module)
        if layer_of[target] >= layer_of[module]
    ]
    assert upward == []


def test_public_names_import_lazily():
    assert set(hf_resnet.__all__) >= {"main", "parse_args", "ImageClassificationTrainer", "audit_folder"}
    for name in hf_resnet.__all__:
        assert getattr(hf_resnet, name) is not None, name
    assert hf_resnet.__version__.count(".") == 2


def test_modules_and_functions_stay_small():
    """Modules of at most 400 lines; a function over 60 lines says why in its docstring ("Kept whole: ...")."""
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                if "Kept whole:" not in (ast.get_docstring(node) or ""):
                    too_long.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_the_top_level_model_card_is_the_packaged_template():
    """`model_card.md` at the top is what users read; the wheel ships `hf_resnet/templates/model_card.md`. One text:
    after editing one, copy it over the other."""
    top = PACKAGE.parent / "model_card.md"
    if not top.is_file():
        pytest.skip("an installed wheel has no top-level model_card.md; the repository's checkout does")
    assert top.read_bytes() == (PACKAGE / "templates" / "model_card.md").read_bytes()

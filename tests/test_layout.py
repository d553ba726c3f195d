"""The package's layers: a module imports only from layers below its own, so the data flow reads one way."""

import ast
from pathlib import Path

import hf_resnet

PACKAGE = Path(hf_resnet.__file__).parent

# Bottom to top; a module may import from any earlier layer, never from its own or a later one.
LAYERS = [
    ["constants", "errors"],
    ["bundled", "data.folders", "data.images", "hub"],
    ["configs", "strategy_config"],
    ["settings", "data.loading", "data.transforms", "data.skips", "training.metrics", "training.checkpoints",
     "training.losses", "training.optim"],
    ["parser", "data.gpu_decode", "training.ema", "training.modeling", "training.preflight", "training.balance"],
    ["data.inputs"],
    ["training.strategies", "inference", "reports.model_card", "reports.predictions", "data.audit",
     "reports.confusion", "reports.plots", "reports.gradcam"],
    ["training.callbacks", "training.distributed", "reports.evaluation", "export"],
    ["trainer"],
    ["run"],
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

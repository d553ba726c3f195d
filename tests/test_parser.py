"""Recipes and the command line: YAML sets defaults, flags override them, unknown or misspelt keys are errors,
and the shipped recipes are found by name."""

import pytest
from conftest import REPO

from hf_resnet.errors import ConfigError
from hf_resnet.parser import RECIPES, find_recipe, parse_args, shipped_recipes


def write_recipe(tmp_path, body: str):
    path = tmp_path / "recipe.yaml"
    base = f"model_name_or_path: null\nconfig_name: bundled:resnet-smoke\ntrain_dir: {tmp_path}\n"
    path.write_text(base + f"output_dir: {tmp_path / 'out'}\nreport_to: none\n" + body)
    return str(path)


def test_unknown_yaml_key_names_key_and_close_field(tmp_path):
    path = write_recipe(tmp_path, "learning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"Unknown key 'learning_rat'.*Did you mean 'learning_rate'\?"):
        parse_args(["--config", path])


def test_yaml_sets_defaults_and_cli_overrides(tmp_path):
    path = write_recipe(tmp_path, "learning_rate: 0.1\nhorizontal_flip: 0.0\n")
    model_args, data_args_, _, train_args = parse_args(["--config", path])
    assert train_args.learning_rate == 0.1 and data_args_.horizontal_flip == 0.0
    assert model_args.model_name_or_path is None and data_args_.train_dir == str(tmp_path)
    _, data_args_, _, train_args = parse_args([f"--config={path}", "--learning_rate", "0.5"])
    assert train_args.learning_rate == 0.5 and data_args_.horizontal_flip == 0.0


def test_unknown_cli_flag(tmp_path):
    path = write_recipe(tmp_path, "")
    with pytest.raises(ConfigError, match=r"Unknown command-line arguments \['--learning_rte', '0.5'\]"):
        parse_args(["--config", path, "--learning_rte", "0.5"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match=r"neither a YAML file nor a shipped recipe; .* smoke/digits_smoke"):
        parse_args(["--config", str(tmp_path / "nope.yaml")])


def test_abbreviated_cli_flag_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="learning_rat"):
        parse_args(["--train_dir", str(tmp_path), "--output_dir", str(tmp_path), "--learning_rat", "0.5"])


@pytest.mark.parametrize("recipe", shipped_recipes())
def test_every_shipped_recipe_parses(recipe, tmp_path):
    text = (RECIPES / f"{recipe}.yaml").read_text()
    data = [] if "dataset_name:" in text or "train_dir:" in text else ["--train_dir", str(tmp_path)]
    model_args, data_args, strategy_args, training_args = parse_args(["--config", recipe, *data])
    assert training_args.output_dir.startswith("outputs/")
    strategy_args.check_with(training_args)  # no strategy setting contradicts a Trainer setting


def test_shipped_recipes_are_found_by_name_path_or_old_spelling():
    assert "smoke/digits_smoke" in shipped_recipes() and "resnet50/imagefolder_full" in shipped_recipes()
    shipped = RECIPES / "smoke" / "digits_smoke.yaml"
    for name in ("smoke/digits_smoke", "smoke/digits_smoke.yaml", "recipes/smoke/digits_smoke.yaml", str(shipped)):
        assert find_recipe(name).resolve() == shipped.resolve(), name
    with pytest.raises(ConfigError, match="shipped recipe"):
        find_recipe("../../pyproject.toml")  # a name never reaches outside the recipes folder
    assert not (REPO / "recipes" / "smoke").exists()  # the YAML lives in the package only: one copy


def test_null_on_the_command_line_clears_an_optional_field(tmp_path):
    path = write_recipe(tmp_path, "head_learning_rate: 0.1\nmax_train_samples: 10\nhub_model_id: me/x\n")
    for null in ("null", "None", "~", ""):
        _, data_args, strategy_args, training_args = parse_args(
            ["--config", path, "--head_learning_rate", null, f"--max_train_samples={null}", "--hub_model_id", null]
        )
        assert strategy_args.head_learning_rate is None and data_args.max_train_samples is None, null
        assert training_args.hub_model_id is None
    *_, training_args = parse_args(["--config", path, "--report_to", "none"])
    assert training_args.report_to in ("none", [], ["none"])  # transformers' own "no tracker", not a null
    with pytest.raises(ConfigError, match="`--num_train_epochs` cannot be null"):
        parse_args(["--config", path, "--num_train_epochs", "null"])


def test_a_data_source_on_the_command_line_replaces_the_recipes(tmp_path):
    folders = ["--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val")]
    _, data_args, *_ = parse_args(["--config", "smoke/digits_smoke", *folders])
    assert data_args.dataset_name is None and data_args.train_dir == str(tmp_path / "train")
    _, data_args, *_ = parse_args(["--config", "smoke/digits_smoke", "--dataset_name", "null", *folders])
    assert data_args.dataset_name is None
    recipe = write_recipe(tmp_path, "validation_dir: /somewhere/val\n")  # a recipe of folders
    _, data_args, *_ = parse_args(["--config", recipe, "--dataset_name", "someone/dataset"])
    assert data_args.dataset_name == "someone/dataset" and data_args.train_dir is data_args.validation_dir is None

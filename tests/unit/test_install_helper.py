"""triton-warmup-install-helper: the helper's folder into a user's repository."""

import pathlib

import pytest

from triton_warmup.client import install_helper

PROJECT_HELPER = pathlib.Path(__file__).resolve().parents[2] / "model_repository" / "warmup_helper"


def files_of(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_the_helper_lands_whole_and_equal_to_the_shipped_one(tmp_path, capsys):
    assert install_helper.main([str(tmp_path)]) == 0
    installed = files_of(tmp_path / "warmup_helper")
    assert set(installed) == set(install_helper.HELPER_FILES)
    assert all(installed[name] == (PROJECT_HELPER / name).read_bytes() for name in installed)
    # Nothing else: no staging folder is left beside it.
    assert [path.name for path in tmp_path.iterdir()] == ["warmup_helper"]
    assert "PASS:" in capsys.readouterr().out


def test_an_existing_helper_is_replaced_only_with_force(tmp_path):
    install_helper.install_helper(tmp_path)
    model = tmp_path / "warmup_helper" / "1" / "model.py"
    model.write_text(model.read_text() + "\n# an older version\n")
    with pytest.raises(FileExistsError, match="--force"):
        install_helper.install_helper(tmp_path)
    install_helper.install_helper(tmp_path, force=True)
    assert model.read_bytes() == (PROJECT_HELPER / "1" / "model.py").read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["warmup_helper"]


def test_a_folder_of_that_name_that_is_not_a_helper_is_never_replaced(tmp_path, capsys):
    theirs = tmp_path / "warmup_helper" / "1"
    theirs.mkdir(parents=True)
    (theirs / "model.py").write_text("print('their own model')\n")
    assert install_helper.main([str(tmp_path), "--force"]) == 1
    assert "is not a warmup helper" in capsys.readouterr().err
    assert (theirs / "model.py").read_text() == "print('their own model')\n"


def test_a_missing_repository_is_a_clear_error(tmp_path, capsys):
    assert install_helper.main([str(tmp_path / "absent")]) == 1
    assert "is not a folder" in capsys.readouterr().err


def helper_parameters(folder):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in config.parameters.items()}


def test_warm_on_start_all_is_set_in_the_installed_config_and_nothing_else_changes(tmp_path, capsys):
    assert install_helper.main([str(tmp_path), "--warm-on-start", "all"]) == 0
    installed = helper_parameters(tmp_path / "warmup_helper")
    shipped = helper_parameters(PROJECT_HELPER)
    assert installed == {**shipped, "warm_on_start": "all"}
    assert "it warms every model at start" in capsys.readouterr().out


def test_a_start_plan_is_checked_then_copied_beside_the_config(tmp_path, capsys):
    plan = tmp_path / "plans" / "start.yaml"
    plan.parent.mkdir()
    plan.write_text("models:\n  model-v1: {group_size_max: 2}\n")
    repository = tmp_path / "models"
    repository.mkdir()
    assert install_helper.main([str(repository), "--warm-on-start", str(plan)]) == 0
    helper = repository / "warmup_helper"
    assert (helper / "start.yaml").read_bytes() == plan.read_bytes()
    assert helper_parameters(helper)["warm_on_start"] == "start.yaml"


def test_a_bad_start_plan_installs_nothing(tmp_path, capsys):
    plan = tmp_path / "start.yaml"
    plan.write_text("models:\n  model-v1: {group_size_max: 0}\n")
    repository = tmp_path / "models"
    repository.mkdir()
    assert install_helper.main([str(repository), "--warm-on-start", str(plan)]) == 2
    assert list(repository.iterdir()) == []
    assert "start.yaml, line 2" in capsys.readouterr().err


def test_the_parameter_names_are_the_helpers_own():
    from triton_warmup.helper import start_warmup

    assert (install_helper.WARM_ON_START, install_helper.WARM_ALL) == (start_warmup.PARAMETER, start_warmup.WARM_ALL)


def test_the_pass_line_adds_the_auto_complete_flag_only_where_no_model_needs_auto_complete(tmp_path, capsys):
    assert install_helper.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(
        "--load-model=warmup_helper --disable-auto-complete-config (no model here needs Triton's auto-complete)")
    (tmp_path / "their-model" / "1").mkdir(parents=True)  # no config.pbtxt: Triton fills one in
    assert install_helper.main([str(tmp_path), "--force"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("--load-model=warmup_helper")

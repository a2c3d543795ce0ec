"""triton-warmup-install-helper: the helper's folder into a user's repository."""

import pathlib

import pytest

from triton_warmup import install_helper

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

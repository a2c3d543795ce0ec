"""Where the helper finds its models: repository URLs as Triton takes them,
credentials as Triton finds them, and the choice between a folder and a
bucket. The S3 round trip itself runs against a real S3 server in
tests/integration/test_object_storage.py."""

import json
import pathlib

import pytest

from triton_warmup.helper.repository import (
    LocalRepository,
    ObjectStoreRepository,
    RepositoryError,
    choose_repository,
    repository_flags,
    store_address,
)
from triton_warmup.helper.repository_guard import READ_ONLY_MARKER, folder_unwritable_reason, unwritable_reason

AWS = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "SECRET", "AWS_DEFAULT_REGION": "eu-west-1"}


@pytest.mark.parametrize(
    "url, root, endpoint",
    [
        ("s3://bucket/path/to/repo", "bucket/path/to/repo", None),
        ("s3://bucket", "bucket", None),
        ("s3://minio.local:9000/bucket/repo/", "bucket/repo", "http://minio.local:9000"),
        ("s3://http://127.0.0.1:4566/models/repo", "models/repo", "http://127.0.0.1:4566"),
        ("s3://https://store.example:443/models", "models", "https://store.example:443"),
    ],
)
def test_s3_urls_in_every_form_triton_takes(url, root, endpoint):
    address = store_address(url, AWS)
    assert (address.protocol, address.root) == ("s3", root)
    assert address.options["client_kwargs"].get("endpoint_url") == endpoint
    assert (address.options["key"], address.options["secret"]) == ("AKID", "SECRET")
    assert address.options["client_kwargs"]["region_name"] == "eu-west-1"
    # Triton's S3 client addresses buckets by path, not by host name.
    assert address.options["config_kwargs"] == {"s3": {"addressing_style": "path"}}


def test_gcs_and_azure_urls_take_triton_s_variables():
    gcs = store_address("gs://bucket/repo", {"GOOGLE_APPLICATION_CREDENTIALS": "/keys/sa.json"})
    assert (gcs.protocol, gcs.root, gcs.options) == ("gcs", "bucket/repo", {"token": "/keys/sa.json"})
    azure = store_address("as://account/container/repo", {"AZURE_STORAGE_KEY": "k"})
    assert (azure.protocol, azure.root) == ("abfs", "container/repo")
    assert azure.options == {"account_name": "account", "account_key": "k"}
    named = store_address("as://ignored/container", {"AZURE_STORAGE_ACCOUNT": "real"})
    assert named.options == {"account_name": "real"}


def test_the_credential_file_wins_with_its_longest_matching_prefix(tmp_path):
    credentials = tmp_path / "cloud.json"
    credentials.write_text(json.dumps({"s3": {
        "": {"key_id": "DEFAULT", "secret_key": "d"},
        "s3://bucket/team": {"key_id": "TEAM", "secret_key": "t", "region": "us-west-2"},
    }}))
    environ = {**AWS, "TRITON_CLOUD_CREDENTIAL_PATH": str(credentials)}
    assert store_address("s3://bucket/team/repo", environ).options["key"] == "TEAM"
    assert store_address("s3://other/repo", environ).options["key"] == "DEFAULT"
    credentials.write_text(json.dumps({"s3": {"s3://bucket/team": {"key_id": "TEAM", "secret_key": "t"}}}))
    with pytest.raises(RepositoryError, match="has no credential for s3://other/repo"):
        store_address("s3://other/repo", environ)
    credentials.write_text("{not json")
    with pytest.raises(RepositoryError, match="TRITON_CLOUD_CREDENTIAL_PATH .* cannot be read"):
        store_address("s3://bucket/team/repo", environ)


@pytest.mark.parametrize("url", ["s3://", "as://account", "ftp://host/repo", "/a/folder"])
def test_urls_triton_would_not_take_are_refused(url):
    with pytest.raises(RepositoryError):
        store_address(url, {})


def test_repository_flags_in_both_spellings():
    argv = ["tritonserver", "--model-repository=/models", "--model-repository", "s3://b/r", "--model-store=/old"]
    assert repository_flags(argv) == ["/models", "s3://b/r", "/old"]


def test_the_helper_warms_its_own_folder_s_repository_unless_it_came_from_a_bucket(tmp_path):
    repository = tmp_path / "repo"
    helper = repository / "warmup_helper"
    helper.mkdir(parents=True)
    local = choose_repository(helper, ["tritonserver", f"--model-repository={repository}"])
    assert isinstance(local, LocalRepository) and local.root == repository.resolve()
    # A relative flag is relative to the server's working folder.
    relative = choose_repository(helper, ["tritonserver", "--model-repository=repo"], server_cwd=tmp_path)
    assert isinstance(relative, LocalRepository)
    # Triton's temporary download of the helper: the bucket is the repository.
    download = tmp_path / "folderXYZ" / "warmup_helper"
    download.mkdir(parents=True)
    cloud = choose_repository(download, ["tritonserver", "--model-repository=s3://bucket/repo"])
    assert isinstance(cloud, ObjectStoreRepository) and cloud.location == "s3://bucket/repo"
    with pytest.raises(RepositoryError, match="set the helper's model_repository parameter"):
        choose_repository(download, ["tritonserver", "--model-repository=s3://a/r", "--model-repository=gs://b/r"])
    configured = choose_repository(download, None, configured="gs://b/r")
    assert isinstance(configured, ObjectStoreRepository) and configured.address.protocol == "gcs"
    # No command line to read: the parent folder, as before.
    assert choose_repository(helper, None).root == repository.resolve()


def test_a_marked_repository_is_read_only_to_every_guard_with_its_reason(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.pbtxt").write_text('name: "m"')
    assert unwritable_reason(model / "config.pbtxt") is None
    (tmp_path / READ_ONLY_MARKER).write_text("the repository s3://b/r is in object storage")
    assert unwritable_reason(model / "config.pbtxt") == "the repository s3://b/r is in object storage"
    assert folder_unwritable_reason(tmp_path) == "the repository s3://b/r is in object storage"


def test_a_missing_driver_says_which_extra_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_fsspec(name, *args, **kwargs):
        if name == "fsspec":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fsspec)
    with pytest.raises(RepositoryError, match=r"needs gcsfs: pip install 'triton-warmup\[gcs\]'"):
        ObjectStoreRepository("gs://bucket/repo", {}).filesystem()


class _ListedFiles:
    """An fsspec-shaped stand-in for the listing and download calls, so the
    local copy's layout is checked without a network; the real S3 round trip
    is the integration test's."""

    def __init__(self, objects):
        self.objects = objects
        self.fetched = []

    def find(self, root, detail=True):
        return {key: {"type": "file", "size": len(body), "LastModified": 1_700_000_000} for key, body in self.objects.items()}

    def get(self, keys, paths):
        for key, path in zip(keys, paths):
            self.fetched.append(key)
            pathlib.Path(path).write_bytes(self.objects[key])


def test_the_local_copy_holds_configs_and_data_first_and_model_files_on_demand():
    objects = {
        "b/repo/m/config.pbtxt": b'name: "m"',
        "b/repo/m/warmup/x.bin": b"\0" * 8,
        "b/repo/m/1/model.pt": b"weights",
        "b/repo/n/config.pbtxt": b'name: "n"',
        "b/repo/n/1/model.pt": b"other weights",
        "b/repo/README": b"not a model",
    }
    listed = _ListedFiles(objects)
    copy = ObjectStoreRepository("s3://b/repo", {}, filesystem=listed).mirror()
    try:
        root = copy.root
        assert sorted(listed.fetched) == ["b/repo/m/config.pbtxt", "b/repo/m/warmup/x.bin", "b/repo/n/config.pbtxt"]
        assert (root / "m" / "1").is_dir() and not (root / "m" / "1" / "model.pt").exists()
        assert (root / "m" / "config.pbtxt").stat().st_mtime == 1_700_000_000
        copy.fetch_model_files(["m"])
        assert (root / "m" / "1" / "model.pt").read_bytes() == b"weights"
        assert not (root / "n" / "1" / "model.pt").exists()
        assert folder_unwritable_reason(root / "m").startswith("the repository s3://b/repo is in object storage")
        assert copy.public(f"no model 'x' in the model repository {root}") == "no model 'x' in the model repository s3://b/repo"
    finally:
        copy.close()
    assert not root.exists()

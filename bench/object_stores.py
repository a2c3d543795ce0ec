"""Real object stores on this machine, for the tests and the benchmarks,
one process per use, both from PyPI:

* ``s3_server``: moto's S3 server (``moto.server``). With ``enforce_auth``
  it checks every request's signature against the IAM users it knows, so
  wrong credentials are refused as AWS refuses them.
* ``gcs_server``: the GCS emulator of ``gcp-storage-emulator``, which
  tritonserver's GCS client reaches through ``CLOUD_STORAGE_EMULATOR_ENDPOINT``.

The product talks to them exactly as to the clouds (s3fs and gcsfs in the
helper, the AWS and Google SDKs inside tritonserver); nothing is mocked
inside either.
"""

import contextlib
import dataclasses
import hashlib
import json
import pathlib
import subprocess
import sys
import time
import urllib.request
from typing import Dict, Iterator

import boto3

from triton_warmup.embedded import free_port

REGION = "us-east-1"
BUCKET = "models"
PREFIX = "repo"
READER = "reader"
# How long moto's server takes to answer on a busy machine, with room.
START_TIMEOUT_S = 60


@dataclasses.dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    process: subprocess.Popen

    def stop(self) -> None:
        """Stop the server: the bucket becomes unreachable."""
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def revoke_key(self) -> None:
        """Delete the IAM access key the server was started with."""
        self._iam().delete_access_key(UserName=READER, AccessKeyId=self.key_id)

    def _iam(self):
        return boto3.client(
            "iam", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
        )

    @property
    def environment(self) -> Dict[str, str]:
        """What tritonserver (and so the helper) reads its credentials from."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": REGION,
            # No instance metadata to ask on this machine.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def url(self, bucket: str = BUCKET, prefix: str = PREFIX) -> str:
        """The repository URL in Triton's form for S3-compatible stores."""
        return f"s3://{self.endpoint}/{bucket}/{prefix}"

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
        )

    def upload(self, folder: pathlib.Path, bucket: str = BUCKET, prefix: str = PREFIX, public: bool = False) -> None:
        """Put ``folder`` into a new bucket; ``public``: anyone may list and read it."""
        client = self.client()
        acl = {"ACL": "public-read"} if public else {}
        client.create_bucket(Bucket=bucket, **acl)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}",
                                   ExtraArgs=acl or None)

    def snapshot(self, bucket: str = BUCKET) -> Dict[str, str]:
        """Every object's key and the SHA-256 of its bytes."""
        client = self.client()
        objects = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                objects[item["Key"]] = hashlib.sha256(body).hexdigest()
        return objects


def _wait_until_answering(probe: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        try:
            urllib.request.urlopen(probe, timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answered at {probe} within {START_TIMEOUT_S} s")


@contextlib.contextmanager
def s3_server(log: pathlib.Path, enforce_auth: bool = False) -> Iterator[S3Server]:
    """Start moto's S3 server on a free port; stop it afterwards."""
    port = free_port()
    endpoint = f"http://localhost:{port}"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_answering(f"{endpoint}/moto-api/", process)
            server = S3Server(endpoint, "testing", "testing", process)
            if enforce_auth:
                server = _with_a_reader(server)
            yield server
        finally:
            server_process_stop(process)


def server_process_stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=30)


def _with_a_reader(server: S3Server) -> S3Server:
    """An IAM user allowed every S3 and IAM action; from then on the server
    checks every request's credentials."""
    iam = server._iam()
    iam.create_user(UserName=READER)
    key = iam.create_access_key(UserName=READER)["AccessKey"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*", "iam:*"], "Resource": "*"}]}
    iam.put_user_policy(UserName=READER, PolicyName="s3", PolicyDocument=json.dumps(policy))
    request = urllib.request.Request(
        f"{server.endpoint}/moto-api/reset-auth", data=b"0", method="POST", headers={"Content-Type": "text/plain"}
    )
    urllib.request.urlopen(request, timeout=10).read()
    return S3Server(server.endpoint, key["AccessKeyId"], key["SecretAccessKey"], server.process)


@dataclasses.dataclass
class GcsServer:
    """A GCS emulator (``gcp-storage-emulator`` from PyPI) on this machine."""

    endpoint: str
    process: subprocess.Popen

    @property
    def environment(self) -> Dict[str, str]:
        """Where tritonserver's GCS client (google-cloud-cpp) and the helper's
        gcsfs find the emulator; no credentials, as the emulator wants none."""
        return {"CLOUD_STORAGE_EMULATOR_ENDPOINT": self.endpoint, "STORAGE_EMULATOR_HOST": self.endpoint}

    def url(self, bucket: str = BUCKET, prefix: str = PREFIX) -> str:
        return f"gs://{bucket}/{prefix}"

    def _client(self):
        import os

        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        os.environ["STORAGE_EMULATOR_HOST"] = self.endpoint
        return storage.Client(credentials=AnonymousCredentials(), project="test")

    def upload(self, folder: pathlib.Path, bucket: str = BUCKET, prefix: str = PREFIX) -> None:
        target = self._client().create_bucket(bucket)
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                target.blob(f"{prefix}/{path.relative_to(folder).as_posix()}").upload_from_filename(str(path))

    def snapshot(self, bucket: str = BUCKET) -> Dict[str, str]:
        """Every object's name and the SHA-256 of its bytes."""
        return {
            blob.name: hashlib.sha256(blob.download_as_bytes()).hexdigest()
            for blob in self._client().list_blobs(bucket)
        }


@contextlib.contextmanager
def gcs_server(log: pathlib.Path) -> Iterator[GcsServer]:
    """Start the GCS emulator, in memory, on a free port; stop it afterwards."""
    port = free_port()
    endpoint = f"http://localhost:{port}"
    emulator = pathlib.Path(sys.executable).parent / "gcp-storage-emulator"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [str(emulator), "start", "--host", "localhost", "--port", str(port), "--in-memory"],
            stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_answering(f"{endpoint}/storage/v1/b?project=test", process)
            yield GcsServer(endpoint, process)
        finally:
            server_process_stop(process)

"""A real S3-compatible server on 127.0.0.1 for tests: moto in server mode.

``S3Server(auth=True)`` makes the server check signatures and IAM permissions
(moto's INITIAL_NO_AUTH_ACTION_COUNT): the first requests, made by the fixture,
create a bucket and an IAM user allowed to use it; from then on only that user's
key is accepted, so a test can see what wrong credentials do.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

SETUP_REQUESTS = 5        # create bucket, its policy, user, user policy, access key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class S3Server:
    def __init__(self, log: Path, bucket: str = "mirror", *, auth: bool = False) -> None:
        self.port = free_port()
        self.bucket = bucket
        self.auth = auth
        self.log = log
        self.key_id = "test"
        self.secret = "test"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http_base(self, prefix: str = "") -> str:
        """The bucket's plain HTTP address (what `pull --mirror` takes)."""
        return f"{self.url}/{self.bucket}/" + (prefix.strip("/") + "/" if prefix else "")

    def env(self, **override: str) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                **override}

    def client(self, **override: str) -> Any:
        import boto3
        e = self.env(**override)
        return boto3.session.Session(
            aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1").client("s3", endpoint_url=self.url)

    def __enter__(self) -> S3Server:
        env = {**os.environ, "MOTO_PORT": str(self.port)}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(SETUP_REQUESTS)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                 str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1):
                    break
            except OSError as exc:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {self.log.read_text()}"
                                       ) from exc
                time.sleep(0.1)
        self._setup()
        return self

    def new_bucket(self, name: str) -> None:
        """Make *name* (readable by anyone) the bucket the helpers use."""
        self.bucket = name
        c = self.client()
        c.create_bucket(Bucket=self.bucket)
        # what an operator does to serve a mirror from a bucket: anyone may read
        c.put_bucket_policy(Bucket=self.bucket, Policy=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                            "Resource": f"arn:aws:s3:::{self.bucket}/*"}]}))

    def _setup(self) -> None:
        import boto3
        self.new_bucket(self.bucket)
        if not self.auth:
            return
        iam = boto3.session.Session(aws_access_key_id="setup", aws_secret_access_key="x",
                                    region_name="us-east-1").client(
                                        "iam", endpoint_url=self.url)
        iam.create_user(UserName="publisher")
        iam.put_user_policy(UserName="publisher", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="publisher")["AccessKey"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def objects(self) -> dict[str, str]:
        """key -> ETag of every object in the bucket."""
        out: dict[str, str] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["ETag"]
        return out

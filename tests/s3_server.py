"""A real S3-compatible server (moto in server mode, from PyPI) on 127.0.0.1 for the object-storage tests.

The environment set here is what users set for any S3-compatible store (see README, "Object storage"):
``AWS_ENDPOINT_URL`` for botocore/s3fs, ``AWS_S3_ENDPOINT`` + ``AWS_HTTPS`` + ``AWS_VIRTUAL_HOSTING`` for
GDAL's /vsis3/, and keys. Workers of local clusters started afterwards inherit it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

BUCKET = "polarxr-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_environment(port: int) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "polarxr", "AWS_SECRET_ACCESS_KEY": "polarxr-secret", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_S3_ENDPOINT": f"127.0.0.1:{port}",
        "AWS_HTTPS": "NO", "AWS_VIRTUAL_HOSTING": "FALSE", "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }


@pytest.fixture(scope="session")
def s3_bucket():
    """``s3://polarxr-test`` on a moto server of this session; the S3 environment is set for the session."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = s3_environment(port)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("the moto S3 server did not start")
                time.sleep(0.2)
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Shared test configuration: GPU tests run only where CUDA is present; ``backend``
parametrizes a test over the cache's storage formats."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(params=["zarr", "hdf5"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; none is available here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_configure(config: pytest.Config) -> None:
    # The test models are tiny: one thread is faster than two fighting over the cores
    # with loky workers, and it keeps CPU timings of the suite steady.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 HTTP endpoint on 127.0.0.1 (moto's server), for this session.

    Dummy credentials and a region are set in the environment (inherited by worker
    processes); profiles, instance metadata and proxies are switched off, so nothing
    reaches any address but this server.
    """
    server_module = pytest.importorskip(
        "moto.server", reason="the object storage tests need moto[server]"
    )
    pytest.importorskip("s3fs", reason="the object storage tests need s3fs")
    import socket

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(name, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "kdpipe-test-key")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "kdpipe-test-secret")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_CONFIG_FILE", str(config))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str):
    """A fresh, empty bucket: ``(url, storage_options)``; the options name the endpoint."""
    import uuid

    import s3fs

    options = {"endpoint_url": s3_endpoint}
    name = f"kdpipe-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(name)
    return f"s3://{name}", options


@pytest.fixture(scope="session")
def s3_cluster(s3_endpoint: str):
    """A dask.distributed client of two worker processes (one thread each) on 127.0.0.1.

    Started after the S3 server's environment is set, so the workers inherit its dummy
    credentials; shared by the tests that need worker processes (each start costs seconds).
    """
    distributed = pytest.importorskip("distributed")
    # the scheduler's HTTP server on a free port, not dask's default 8787: this cluster lives
    # for the session, and a later LocalCluster finding 8787 taken warns (an error here)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client

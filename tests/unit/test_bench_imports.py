"""The GPU machines we benchmark on have only torch, transformers and pillow: the model-path bench must run there."""

from __future__ import annotations

import pytest

from tests.unit.test_import_boundaries import modules_after


@pytest.mark.parametrize(
    "bench", ["bench.model_path", "bench.decode_pool", "bench.worker_batches", "bench.hybrid_split"]
)
def test_the_benches_for_gpu_machines_need_only_torch_transformers_and_pillow(bench: str) -> None:
    loaded = modules_after(f"import {bench}")
    assert {"torch", "transformers", "PIL", "worker"} <= loaded
    service_only = {"celery", "kombu", "redis", "boto3", "botocore", "flask", "pydantic", "pydantic_settings",
                    "pytest", "requests", "urllib3", "standardwebhooks"}
    assert not loaded & service_only, loaded & service_only

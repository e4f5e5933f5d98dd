"""The GPU machines we benchmark on have only torch, transformers and pillow: the model-path bench must run there."""

from __future__ import annotations

from tests.unit.test_import_boundaries import modules_after


def test_the_model_path_bench_needs_only_torch_transformers_and_pillow() -> None:
    loaded = modules_after("import bench.model_path")
    assert {"torch", "transformers", "PIL", "worker"} <= loaded
    service_only = {"celery", "kombu", "redis", "boto3", "botocore", "flask", "pydantic", "pydantic_settings",
                    "pytest", "requests", "urllib3", "standardwebhooks"}
    assert not loaded & service_only, loaded & service_only

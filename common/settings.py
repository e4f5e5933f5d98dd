"""The one settings object: read from the environment once, then passed to whoever needs it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "Salesforce/blip-image-captioning-base"
# A request rate in the `limits` package's notation (api/ratelimit.py): "600/minute", "10 per second".
RATE_LIMIT = r"^\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?$"
# REDIS_SENTINELS: "host:port,host:port" (the port may be left out), or empty.
SENTINELS = r"^\s*([^\s,:]+(:\d{1,5})?\s*(,\s*[^\s,:]+(:\d{1,5})?\s*)*)?$"
SENTINEL_PORT = 26379


class Settings(BaseSettings):
    """Every knob of the service. Names without the CAPTIONER_ prefix follow the usual conventions."""

    model_config = SettingsConfigDict(
        env_prefix="CAPTIONER_", extra="ignore", frozen=True, populate_by_name=True
    )

    # Every /v1 request needs an API key ("on"); "off" makes every request the one built-in tenant, for a
    # throwaway local service. With "on", the API refuses to start while no key exists.
    auth: Literal["on", "off"] = "on"
    # Requests one key may make to /v1, unless the key was given its own (`captioner keys create --rate-limit`):
    # "N/second", "N/minute", "N/hour" or "N/day" (the `limits` package's notation); past it, 429.
    default_rate_limit: str = Field("1200/minute", pattern=RATE_LIMIT)
    # Images one key may have queued or running at once, unless the key was given its own
    # (`captioner keys create --max-in-flight`); a submission past it gets 429.
    default_max_in_flight: int = Field(256, ge=1)
    # Images of interactive jobs waiting in the whole service past which new jobs get 503 rather than waiting
    # for hours; 0: no bound. Bulk work waits in its own lane and does not count.
    max_backlog_images: int = Field(100_000, ge=0)

    # Model: a hub id or a local directory written by save_pretrained.
    model: str = DEFAULT_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The model's precision. "auto": fp16 on a GPU; on a CPU, bf16 where it computes bf16 in hardware (AMX or
    # AVX-512 BF16), else fp32. Reduced precision is faster (BENCHMARKS.md, "Speed, round two"); fp32 alone gives
    # every batched caption exactly as the image alone would get it. "int8": the vision encoder's multiplies in int8
    # on CPUs with AVX-512 VNNI, faster again; opt-in, as its captions are checked only on the tests' tiny model.
    dtype: Literal["auto", "float32", "bfloat16", "float16", "int8"] = "auto"
    # The model's id on the OpenAI-compatible endpoints (`model` in requests and answers, GET /v1/models); None:
    # CAPTIONER_MODEL itself, or a local directory's name.
    model_name: str | None = None
    # Files of the OpenAI-compatible Files API (purpose "batch"): the caps OpenAI documents for a batch's input.
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    max_file_lines: int = Field(50_000, ge=1)
    # How long POST /v1/chat/completions waits for its caption before it gives up on the job (504).
    sync_timeout_seconds: float = Field(60.0, gt=0, le=600)

    # Services. Aliases keep the conventional, unprefixed names (REDIS_URL, AWS_*).
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    # Connect and read timeout of every Redis command: how long a Redis that stopped answering (a hung host, a lost
    # network) holds an API request before its 503, or a worker's command before its next try (common/redis_client.py).
    # At least 2: the bulk lane waits on Redis for 1 s at a time.
    redis_timeout_seconds: float = Field(5.0, ge=2, le=60)
    # Redis Sentinel (docs/reliability.md, "Redis with Sentinel"): the sentinels as comma-separated host:port (the
    # port defaults to 26379), and the name they monitor the primary under. Set, every client asks the sentinels
    # where the primary is, and follows a failover; REDIS_URL's host and port are then unused, its database number,
    # user name and password still apply. Empty: REDIS_URL alone.
    redis_sentinels: str = Field("", validation_alias="REDIS_SENTINELS", pattern=SENTINELS)
    redis_sentinel_master: str = Field("mymaster", validation_alias="REDIS_SENTINEL_MASTER", min_length=1)
    # Replicas that must have a job before the API answers its 202 (Redis's WAIT after the job is stored and queued),
    # and how long to wait for them; when fewer answer in time, the API answers 202 anyway and logs it. 0: no wait.
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(500, ge=1, le=1000)
    s3_endpoint_url: str | None = Field(None, validation_alias="S3_ENDPOINT_URL")
    s3_bucket: str = Field("captioner", validation_alias="S3_BUCKET")
    aws_access_key_id: str | None = Field(None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: str | None = Field(None, validation_alias="AWS_SECRET_ACCESS_KEY")
    aws_region: str = Field(
        "us-east-1", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION")
    )

    # Intake limits.
    max_images_per_job: int = Field(16, ge=1, le=1024)
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_prompt_chars: int = Field(300, ge=1)
    # Longest prompt in the served model's tokens (common/prompts.py): every image of a prompt's batches pays for its
    # tokens, and BLIP's prompts are a few words ("a picture of"); the model's own positions bound it as well.
    max_prompt_tokens: int = Field(64, ge=1, le=512)
    # Uploads up to this size are kept in Redis beside their job record, and deleted when the job ends, instead
    # of going to S3: a thumbnail-sized job then costs no S3 round trips, a large share of a small job's CPU
    # (bench/results/2026-11-29-service-path.md). Redis holds at most the uploads of unfinished jobs. 0: all to S3.
    redis_upload_max_bytes: int = Field(128 * 1024, ge=0, le=16 * 1024 * 1024)

    # Batching on the worker: a batch runs when it is full or its oldest image waited this long.
    # "auto": 16 on CPU; on a GPU, 256 (64 under 20 GiB of GPU memory): throughput there grows with the batch
    # (BENCHMARKS.md, "GPU model path, one H200"), and a batch runs as soon as its oldest image has waited
    # batch_wait_ms, full or not.
    batch_size: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"
    batch_wait_ms: int = Field(20, ge=0, le=10_000)
    # Prepare the next batch (stack and upload its pixels) while the model runs this one, on a thread of its
    # own: "auto" does it on a GPU, which would otherwise sit idle while it is done
    # (bench/results/2026-11-29-gpu-h200.md, "prepared ahead"); on CPU the cores are the model's.
    prepare_ahead: Literal["auto", "on", "off"] = "auto"
    # Threads torch uses inside one model call on the CPU; 0: torch's default, one per core. A worker sharing
    # its cores with the API, Redis and S3 (the local stack) runs a small model faster on 1: with 2, each op
    # waits for a thread another process has taken its core from (bench/results/2026-11-29-service-path.md).
    torch_threads: int = Field(0, ge=0, le=256)
    # Processes that decode and resize images for a worker; 0: the threads that hold the jobs do it. On a GPU
    # host those threads take the GIL from the thread driving the model and slow it; processes leave the
    # worker's own process a small fraction of the CPU per image that threads cost it (BENCHMARKS.md, "Decoding
    # in processes").
    # "auto": on a GPU, one per core but two (at most 32); on CPU none, as the model needs every core there.
    decode_processes: Annotated[int, Field(ge=0, le=256)] | Literal["auto"] = "auto"
    # Run the vision encoder through torch.compile (GPU only): a small gain in images/s on large batches, at the
    # price of compiling on the worker's first batch and once more on its first batch of another size
    # (BENCHMARKS.md, "GPU model path, one H200"). A compile that fails falls back to eager, logged.
    compile_encoder: bool = False
    # Decode JPEGs on the GPU (nvJPEG, through torchvision, which the pytorch images have) and resize them there,
    # in the batch's preparation; a job's thread only reads their headers. For hosts whose cores cannot decode
    # as fast as the GPU captions (BENCHMARKS.md, "Worker path from JPEG bytes, one H200"). Progressive, CMYK
    # and damaged JPEGs and other formats are decoded on the CPU as before. Off by default until a GPU run has
    # checked it end to end.
    decode_jpeg_on_gpu: bool = False
    # Jobs a worker process holds at once (Celery threads); more jobs in hand means fuller batches: a batch can
    # hold no more single-image jobs than this. "auto": twice the batch size (one batch running, the next
    # filling), at least 32, at most 1024; 32 on CPU, 512 with a GPU's batches of 256.
    worker_concurrency: Annotated[int, Field(ge=1, le=1024)] | Literal["auto"] = "auto"

    # Bulk captioning (POST /v1/bulk). Buckets a bulk job may read and write: comma-separated, or "*" for any
    # bucket the service's S3 credentials reach.
    bulk_buckets: str = "*"
    # Objects per chunk (one unit of work), and how many chunks may be queued at once per bulk job.
    bulk_chunk_size: int = Field(256, ge=1, le=10_000)
    bulk_max_queued_chunks: int = Field(32, ge=2, le=10_000)
    # Chunks a worker works on at once, and its threads fetching and decoding their images. Each GET waits on
    # S3's latency, so the threads bound the images/s: too few and they, not the model, set the pace
    # (BENCHMARKS.md, "Bulk, local stack"); a GPU worker, captioning faster, wants more in flight still.
    bulk_concurrency: int = Field(2, ge=0, le=64)
    bulk_fetch_threads: int = Field(64, ge=1, le=256)
    # A worker that has not reported on a piece of bulk work for this long is presumed dead; it is redone.
    bulk_lease_seconds: float = Field(15.0, ge=1.0)
    # bulk.progress webhooks go out at most this often per bulk job.
    bulk_progress_interval_seconds: float = Field(30.0, ge=0.0)

    # Outbound requests to user-supplied URLs (image fetches, webhooks).
    fetch_timeout_seconds: float = Field(10.0, gt=0)
    allow_private_networks: bool = False
    # Ports user-supplied URLs may use: a comma-separated list, or "*" for any port.
    outbound_allowed_ports: str = Field("80,443", pattern=r"^\s*(\*|\d{1,5}(\s*,\s*\d{1,5})*)\s*$")

    # Webhooks (Standard Webhooks): the signing secret, and a retry budget of about a day by default.
    webhook_secret: str | None = Field(None, pattern=r"^whsec_[A-Za-z0-9+/=]+$")
    webhook_max_attempts: int = Field(10, ge=1, le=50)
    webhook_first_retry_seconds: float = Field(5.0, gt=0)
    webhook_max_retry_seconds: float = Field(6 * 3600.0, gt=0)
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    webhook_concurrency: int = Field(8, ge=1, le=256)
    # Where clients reach the API, for the links inside webhook payloads (relative links if unset).
    public_url: str | None = None

    # How long an Idempotency-Key is remembered: a repeat within it gets the original job again.
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60)
    # Job records expire from Redis this long after they were last written.
    job_ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    # Days each UTC day's usage counts (GET /v1/usage) are kept after that day.
    usage_retention_days: int = Field(400, ge=1, le=3660)
    # The broker gives an unacknowledged task to another worker after this long (a killed worker's work).
    # Longer than any job should take (16 images, each fetch capped at 10 s); a job that outlasts it runs
    # twice, harmlessly (tasks are idempotent by image index).
    visibility_timeout_seconds: int = Field(300, ge=5)
    # A worker not heard from for this long is presumed dead, and the jobs it held run again on other workers
    # (worker/jobs/recovery.py); it reports five times as often. Shorter recovers sooner; a worker whose reports
    # stall longer than this (Redis unreachable from it alone) has its jobs run twice, harmlessly.
    worker_silence_seconds: float = Field(10.0, ge=2.0)
    # A job held by a worker that died this many times is failed rather than run again: one of its images may crash
    # the decoder or the model every time. Once a worker has died holding it, it runs alone (worker/jobs/tasks.py).
    max_attempts: int = Field(3, ge=1)

    # Prometheus metrics (docs/operations.md, "Metrics"). The worker serves its own on this port (0: none); the API
    # serves them at /metrics on its own port. With a token, both ask scrapers for `Authorization: Bearer <token>`:
    # the metrics name tenants, so a deployment whose metrics port is reachable by its clients should set one.
    metrics_port: int = Field(9100, ge=0, le=65535)
    metrics_token: str | None = Field(None, min_length=16)

    # Log lines: "json" (one JSON object a line, with the request, job, tenant, batch and worker they concern:
    # common/log_setup.py) for the services, whose logs a collector parses; "plain" for people reading a terminal.
    # `captioner up` and the client commands use "plain" unless this is set.
    log_format: Literal["json", "plain"] = "json"

    # The API process (gunicorn).
    api_workers: int = Field(2, ge=1)
    # Threads per process: a long-polling GET (?wait=N) holds one for up to N seconds, so be generous.
    api_threads: int = Field(32, ge=1)

    @field_validator("s3_endpoint_url", mode="before")
    @classmethod
    def _empty_endpoint_means_aws(cls, value: object) -> object:
        return value or None

    @model_validator(mode="after")
    def _sentinels_reach_plain_redis(self) -> Settings:
        # The sentinels hand out a host and port to reach over plain TCP; TLS or a socket would need more than that.
        if self.redis_sentinels.strip() and not self.redis_url.startswith("redis://"):
            raise ValueError("REDIS_SENTINELS needs a redis:// REDIS_URL (for its database and password): TLS "
                             "(rediss://) and sockets are not supported with Sentinel")
        return self

    @classmethod
    def env_names(cls, field: str) -> list[str]:
        """The environment variables a field is read from, preferred first."""
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, AliasChoices):
            return [str(choice) for choice in alias.choices]
        if isinstance(alias, str):
            return [alias]
        return [f"CAPTIONER_{field.upper()}"]

    def child_env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` (e.g. this process's environment) less any variable of the service's own settings, plus these
        settings: the environment of a child `captioner api` / `captioner worker` that runs with exactly them."""
        inherited = {k: v for k, v in base.items() if not k.startswith(("CAPTIONER_", "AWS_", "S3_"))}
        return inherited | self.to_env()

    def to_env(self) -> dict[str, str]:
        """These settings as the environment of a child process (`captioner api`, `captioner worker`).

        Unset (None) settings are left out, so the child falls back to the same default.
        """
        env = {}
        for field in type(self).model_fields:
            value = getattr(self, field)
            if value is not None:
                env[self.env_names(field)[0]] = str(value).lower() if isinstance(value, bool) else str(value)
        return env

    @property
    def served_model_id(self) -> str:
        """What the OpenAI-compatible endpoints call the served model."""
        if self.model_name:
            return self.model_name
        return Path(self.model).name if Path(self.model).is_dir() else self.model

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty when Sentinel is not used."""
        addresses = []
        for item in self.redis_sentinels.split(","):
            host, _, port = item.strip().partition(":")
            if host:
                addresses.append((host, int(port) if port else SENTINEL_PORT))
        return addresses

    @property
    def max_request_bytes(self) -> int:
        """The largest request body worth reading: every image at its cap, base64-inflated, plus slack."""
        return self.max_images_per_job * (self.max_image_bytes * 4 // 3 + 1024) + 64 * 1024


    def bulk_bucket_allowed(self, bucket: str) -> bool:
        allowed = {name.strip() for name in self.bulk_buckets.split(",") if name.strip()}
        return "*" in allowed or bucket in allowed or bucket == self.s3_bucket


def load_settings() -> Settings:
    """Read the environment once; everything else receives the result."""
    return Settings()

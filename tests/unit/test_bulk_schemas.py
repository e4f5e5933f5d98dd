"""The bulk contract: defaults, validation, and when an earlier result still holds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cli.bulk import UsageError, build_request, parse_s3_url
from common.bulk_schemas import IMAGE_PATTERNS, BulkRequest, BulkStatus, ManifestCounts, ResultLine
from common.schemas import GenerationOptions, JobRequest, WebhookEvent
from worker.bulk.layout import KeyFilter, errors_key, latest_manifest_key, results_key, run_manifest_key
from worker.bulk.manifest import status_for


def request(**body: object) -> BulkRequest:
    return BulkRequest.model_validate({"source": {"bucket": "photos", "prefix": "2024/"}, **body})


def test_the_default_output_is_beside_the_source() -> None:
    output = request().resolved_output()
    assert (output.bucket, output.prefix) == ("photos", "captioner-results/2024/")
    assert request().source.include == IMAGE_PATTERNS
    assert request(output={"bucket": "out", "prefix": "caps"}).resolved_output().prefix == "caps/"


@pytest.mark.parametrize("source", [
    {"bucket": "Not_A_Bucket"}, {"bucket": "ab"}, {"bucket": "photos", "include": []},
    {"bucket": "photos", "max_objects": 0}, {"bucket": "photos", "surprise": True},
])
def test_bad_sources_are_refused(source: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        BulkRequest.model_validate({"source": source})


def test_a_bulk_webhook_defaults_to_the_bulk_terminal_events_and_takes_no_job_events() -> None:
    hooked = request(webhook={"url": "https://example.com/hook"})
    assert hooked.webhook is not None
    assert hooked.webhook.events == [WebhookEvent.BULK_COMPLETED, WebhookEvent.BULK_FAILED, WebhookEvent.BULK_CANCELED]
    with pytest.raises(ValidationError, match="bulk"):
        request(webhook={"url": "https://example.com/hook", "events": ["job.succeeded"]})
    with pytest.raises(ValidationError, match="job"):
        JobRequest.model_validate({"webhook": {"url": "https://example.com/hook", "events": ["bulk.progress"]}})


def test_a_result_holds_only_for_the_same_etag_model_prompt_and_options() -> None:
    line = ResultLine(key="a.jpg", etag="e1", caption="c", model="m", prompt=None, options=GenerationOptions())
    assert line.made_like("e1", "m", None, GenerationOptions())
    assert not line.made_like("e2", "m", None, GenerationOptions())
    assert not line.made_like("e1", "other", None, GenerationOptions())
    assert not line.made_like("e1", "m", "a picture of", GenerationOptions())
    assert not line.made_like("e1", "m", None, GenerationOptions(num_beams=3))


def test_include_patterns_match_names_or_paths_ignoring_case_and_never_our_own_files() -> None:
    req = request(source={"bucket": "photos", "prefix": "2024/", "include": ["*.jpg", "raw/*.png"]})
    keep = KeyFilter(req.source, req.resolved_output())
    assert keep("2024/a.jpg") and keep("2024/deep/down/B.JPG") and keep("2024/raw/c.png")
    assert not keep("2024/c.png") and not keep("2024/notes.txt") and not keep("2024/rawer/c.png")
    assert keep("2024/raw/deep/c.png")  # fnmatch: "*" matches "/" too
    # Results written inside the source (output prefix empty, same bucket) are not work for the next run.
    inside = request(source={"bucket": "photos", "prefix": "", "include": ["*"]}, output={"bucket": "photos"})
    keep_all = KeyFilter(inside.source, inside.resolved_output())
    assert keep_all("x.jpg") and not keep_all("manifest.json") and not keep_all("runs/abc/results/part-000000.jsonl")


def test_run_files_are_named_by_run_and_chunk() -> None:
    output = request().resolved_output()
    assert results_key(output, "r1", 7) == "captioner-results/2024/runs/r1/results/part-000007.jsonl"
    assert errors_key(output, "r1", 7) == "captioner-results/2024/runs/r1/errors/part-000007.jsonl"
    assert run_manifest_key(output, "r1") == "captioner-results/2024/runs/r1/manifest.json"
    assert latest_manifest_key(output) == "captioner-results/2024/manifest.json"


@pytest.mark.parametrize(("counts", "status"), [
    (ManifestCounts(), BulkStatus.SUCCEEDED),
    (ManifestCounts(captioned=3), BulkStatus.SUCCEEDED),
    (ManifestCounts(captioned=3, failed=1), BulkStatus.PARTIAL),
    (ManifestCounts(skipped=3, failed=1), BulkStatus.PARTIAL),
    (ManifestCounts(failed=2), BulkStatus.FAILED),
])
def test_a_finished_run_is_succeeded_partial_or_failed_by_its_counts(
    counts: ManifestCounts, status: BulkStatus
) -> None:
    assert status_for(counts)[0] is status


def test_the_cli_turns_s3_urls_and_flags_into_a_request() -> None:
    assert parse_s3_url("s3://photos/2024/x") == {"bucket": "photos", "prefix": "2024/x"}
    body = build_request("s3://photos/2024/", output="s3://out/caps/", prompt="a photo of", include=["*.png"],
                         max_objects=10, full=True, dry_run=True)
    parsed = BulkRequest.model_validate(body)
    assert (parsed.source.include, parsed.source.max_objects, parsed.incremental, parsed.dry_run) == (
        ("*.png",), 10, False, True)
    assert parsed.resolved_output().bucket == "out" and parsed.prompt == "a photo of"
    with pytest.raises(UsageError):
        parse_s3_url("https://photos/2024/")

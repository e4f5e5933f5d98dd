"""`captioner caption PATH_OR_URL...`: caption image files, whole folders and URLs through a running API, with the
Python client (captioner/client.py).

Each image is a job of its own, `--concurrency` at a time, so each caption prints as soon as it is ready. With
`--out`, each result is appended to a JSON Lines file as a whole line as it comes, and a run skips what the file
already holds. Ctrl-C sends nothing more and lets the images in flight end and be written (a second one stops at
once): the same command then goes on where it stopped, repeating none.

Exit codes: 0 every image captioned, 1 some failed, 2 a usage or connection error (130 on Ctrl-C). The parsers of
`status`, `cancel` and `jobs` (cli/jobs.py) are added here too, with the same --api and --key.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tqdm import tqdm

from captioner.client import APIConnectionError, APIError, AuthenticationError, Client

# What a folder's walk takes as images; a file named explicitly is sent whatever its name.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# More than this many images and a terminal gets a progress bar.
PROGRESS_FROM = 4
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

CAPTION_EXAMPLE = """example:
  captioner caption ./photos --out captions.jsonl     # a folder, resumable after Ctrl-C
  captioner caption cat.jpg https://example.com/dog.png --prompt "a picture of" --json

exit codes: 0 every image captioned, 1 some failed, 2 a usage or connection error
"""

# The commands add_parsers adds, and run runs.
COMMANDS = ("caption", "status", "cancel", "jobs")


class UsageError(ValueError):
    pass


def add_parsers(commands: Any) -> None:
    """`captioner caption`, `status`, `cancel` and `jobs`, on the `captioner` command's subparsers."""
    caption = commands.add_parser(
        "caption", help="caption image files, folders and URLs (through the API)",
        epilog=CAPTION_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    caption.add_argument("inputs", nargs="+", metavar="PATH_OR_URL", help="image files, folders (walked), http(s) URLs")
    caption.add_argument("--prompt", help="text the captions continue")
    caption.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                         help="a generation option, e.g. max_new_tokens=20 (repeatable)")
    caption.add_argument("--json", action="store_true", help="print JSON lines rather than a table")
    caption.add_argument("--out", type=Path, help="append results to this JSON Lines file; a rerun skips what it holds")
    caption.add_argument("--concurrency", type=int, default=8, help="images in flight at once (default 8)")
    for name, help_text in (("status", "show a job"), ("cancel", "cancel a job")):
        job = commands.add_parser(name, help=help_text, epilog=f"example:\n  captioner {name} JOB_ID",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        job.add_argument("job_id")
    jobs = commands.add_parser("jobs", help="list your jobs, newest first",
                               epilog="example:\n  captioner jobs --limit 5",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    for command in (caption, commands.choices["status"], commands.choices["cancel"], jobs):
        # A client's settings, not the service's: read here, at the command line's edge.
        command.add_argument("--api", default=os.environ.get("CAPTIONER_API_URL"),
                             help="the API's URL (default CAPTIONER_API_URL, else http://127.0.0.1:8000)")
        command.add_argument("--key", default=os.environ.get("CAPTIONER_API_KEY"),
                             help="the API key (default CAPTIONER_API_KEY)")


def run(args: argparse.Namespace) -> int:
    if args.command == "caption":
        return run_caption(args.inputs, api=args.api, key=args.key, prompt=args.prompt, options=args.option,
                           as_json=args.json, out=args.out, concurrency=args.concurrency)
    from cli.jobs import run_job_command

    return run_job_command(args.command, api=args.api, key=args.key, job_id=getattr(args, "job_id", None),
                           limit=getattr(args, "limit", 20))


def is_url(image: str) -> bool:
    return image.startswith(("http://", "https://"))


def images_of(inputs: list[str]) -> list[str]:
    """Every image the inputs name, in order: URLs as given, files as given, folders walked in sorted order."""
    found: list[str] = []
    for given in inputs:
        if is_url(given):
            found.append(given)
            continue
        path = Path(given)
        if path.is_dir():
            found += [str(p) for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            found.append(str(path))
        else:
            raise UsageError(f"{given}: no such file, folder or http(s) URL")
    return found


def parse_options(pairs: list[str]) -> dict[str, int | float]:
    """--option k=v ... as generation options, numbers as numbers (the service checks names and ranges)."""
    options: dict[str, int | float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--option {pair!r}: expected NAME=VALUE, e.g. max_new_tokens=20")
        try:
            options[name] = int(value)
        except ValueError:
            try:
                options[name] = float(value)
            except ValueError as exc:
                raise UsageError(f"--option {pair!r}: {value!r} is not a number") from exc
    return options


def done_in(out: Path | None) -> dict[str, bool]:
    """The images an --out file already holds a line for, each with whether it failed (a partial last line, from a
    kill, is not one)."""
    if out is None or not out.exists():
        return {}
    held = {}
    for line in out.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        held[record.get("path") or record.get("url")] = "error" in record
    return held


def caption_one(client: Client, image: str, prompt: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """One image's line: `path` or `url`, then `caption` or `error`, and the job's id."""
    key = "url" if is_url(image) else "path"
    job = client.wait(client.submit([image], prompt, **options).id, timeout_s=600)
    line: dict[str, Any] = {key: image}
    result = job.results[0] if job.results else None
    if result is not None and result.caption is not None:
        line["caption"] = result.caption
    else:
        error = (result.error if result is not None else None) or job.error
        line["error"] = error.model_dump() if error else {"code": job.status.value, "message": "no caption"}
    line["job_id"] = job.id
    return line


def run_caption(
    inputs: list[str], *, api: str | None, key: str | None, prompt: str | None, options: list[str],
    as_json: bool, out: Path | None, concurrency: int, stdout: IO[str] = sys.stdout, stderr: IO[str] = sys.stderr,
) -> int:
    try:
        images = images_of(inputs)
        generation = parse_options(options)
    except UsageError as exc:
        print(f"captioner caption: {exc}", file=stderr)
        return EXIT_USAGE
    held = done_in(out)
    todo = [image for image in images if image not in held]
    if held:
        print(f"captioner caption: {len(images) - len(todo)} of {len(images)} already in {out}", file=stderr)
    failed = sum(held.get(image, False) for image in images)  # the exit code speaks for every image asked for
    write_lock = threading.Lock()
    stopping = threading.Event()
    sink = out.open("a") if out is not None else None
    bar = tqdm(total=len(todo), unit="image", file=stderr,
               disable=not (stderr.isatty() and len(todo) >= PROGRESS_FROM))

    def interrupted(signum: int, frame: FrameType | None) -> None:
        """The first Ctrl-C sends nothing more and finishes the images in flight, whose lines are written, so
        that the next run repeats none; a second one stops at once."""
        if stopping.is_set():
            raise KeyboardInterrupt
        stopping.set()
        print("captioner caption: finishing the images in flight (Ctrl-C again to stop now)", file=stderr)

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        with Client(api, key) as client, ThreadPoolExecutor(max(1, concurrency)) as pool:
            for line in _as_completed(pool, max(1, concurrency), client, todo, prompt=prompt, options=generation,
                                      stopping=stopping):
                failed += "error" in line
                with write_lock:
                    if sink is not None:
                        sink.write(json.dumps(line) + "\n")
                        sink.flush()
                    text = json.dumps(line) if as_json else _row(line)
                    if bar.disable:
                        print(text, file=stdout, flush=True)
                    else:
                        bar.write(text, file=stdout)  # above the bar, which stays at the bottom
                    bar.update()
    except (APIConnectionError, AuthenticationError) as exc:
        print(f"captioner caption: {exc}", file=stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        stopping.set()
    finally:
        signal.signal(signal.SIGINT, previous)
        bar.close()
        if sink is not None:
            sink.close()
    if stopping.is_set():
        print("captioner caption: interrupted; run the same command again to go on", file=stderr)
        return EXIT_INTERRUPTED
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _as_completed(
    pool: ThreadPoolExecutor, width: int, client: Client, images: list[str], *, prompt: str | None,
    options: dict[str, Any], stopping: threading.Event,
) -> Iterator[dict[str, Any]]:
    """Each image's line as it ends, with at most `width` jobs in flight; none sent once `stopping` is set."""
    pending = iter(images)
    in_flight: set[Future[dict[str, Any]]] = set()
    while True:
        while len(in_flight) < width and not stopping.is_set() and (image := next(pending, None)) is not None:
            in_flight.add(pool.submit(_caption_or_error, client, image, prompt, options))
        if not in_flight:
            return
        ended, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in ended:
            yield future.result()


def _caption_or_error(client: Client, image: str, prompt: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """One image's line; an error the service gives for this image alone (a bad file, say) is its line's error."""
    key = "url" if is_url(image) else "path"
    try:
        return caption_one(client, image, prompt, options)
    except (APIConnectionError, AuthenticationError):
        raise
    except APIError as exc:
        return {key: image, "error": {"code": exc.code, "message": exc.message}}
    except OSError as exc:  # the file went away, or cannot be read
        return {key: image, "error": {"code": "unreadable", "message": str(exc)}}


def _row(line: dict[str, Any]) -> str:
    name = line.get("path") or line.get("url")
    if "caption" in line:
        return f"{name}\t{line['caption']}"
    return f"{name}\terror: {line['error']['code']}: {line['error']['message']}"

"""Oversized and pathological input is bounded in time and memory: each case runs through
the real inbox and processor in a child process with a 2 GB address-space limit and a
timeout (tests/reliability/bounds_worker.py), and ends stored with a reason, its raw bytes
kept. The 100,000-recipient envelope at SMTP time is in test_security.py
(test_the_recipient_limit_answers_452_and_keeps_only_the_first)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.bounds_worker import GZIP_INFLATED, MAX_ATTACHMENT

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 2 << 30
# case -> (seconds allowed, peak RSS allowed in MB): generous against a 2-core CI machine,
# tight enough to catch a quadratic loop or a decompressed bomb.
CASES = {
    "header_1mb": (30, 600),
    "folded_header_1mb": (30, 600),
    "header_lines_100k": (60, 800),
    "nesting_1000": (60, 600),
    "base64_oversized": (30, 800),
    "gzip_bomb": (30, 600),
    "recipients_100k": (60, 800),
}


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_case(name: str, tmp_path: Path) -> dict[str, object]:
    seconds, _ = CASES[name]
    done = subprocess.run(
        [sys.executable, "-m", "tests.reliability.bounds_worker", name, str(tmp_path)],
        cwd=ROOT, capture_output=True, timeout=seconds * 3, preexec_fn=_limit_memory,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(done.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", list(CASES))
def test_pathological_mail_is_bounded_and_kept(name: str, tmp_path: Path) -> None:
    result = run_case(name, tmp_path)
    seconds, megabytes = CASES[name]
    assert result["status"] in ("done", "rejected", "held", "discarded"), result
    assert str(result["reason"]).strip(), result
    assert result["raw_kept"] is True
    assert float(result["seconds"]) < seconds, result  # type: ignore[arg-type]
    assert float(result["peak_rss_mb"]) < megabytes, result  # type: ignore[arg-type]
    attachments = result["attachments"]
    assert isinstance(attachments, list)
    if name == "base64_oversized":
        # Over max_attachment_size: recorded with its size, not written to the store.
        [big] = attachments
        assert big["size"] > MAX_ATTACHMENT and big["sha256"] == "" and not big["stored"]
    if name == "gzip_bomb":
        # Stored as the compressed bytes it arrived as; nothing ever inflates it.
        [bomb] = attachments
        assert bomb["stored"] and bomb["size"] < GZIP_INFLATED // 100
    if name == "recipients_100k":
        assert "elsewhere.example" in str(result["reason"])  # the refusals, truncated

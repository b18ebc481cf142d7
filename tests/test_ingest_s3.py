"""Ingest from S3 (moto's server on 127.0.0.1): the same files give the same corpus as from a
local directory, and an unusable bucket or endpoint fails clearly before any output."""

from __future__ import annotations

import socket

import boto3
import pytest

from stages.runner import StageInputError
from tests.test_ingest import all_outputs, ingest_only, local, run_ingest, write_formats  # noqa: F401
from tests.test_ingest_bad_input import EXPECTED_SKIPS, write_bad

SECRET = "s3cr3t-never-logged"


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ingest-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def s3(name: str, url: str) -> dict:
    return {"name": name, "kind": "s3", "url": url}


def test_s3_corpus_equals_local(tmp_path, s3_server, s3_bucket, creds, monkeypatch, capsys):
    files = tmp_path / "files"
    write_formats(files)
    write_bad(files / "bad")
    bucket = s3_bucket("ingest")
    client = boto3.client("s3", endpoint_url=s3_server)
    for f in sorted(p for p in files.rglob("*") if p.is_file()):
        client.put_object(
            Bucket=bucket, Key=f"raw/{f.relative_to(files).as_posix()}", Body=f.read_bytes()
        )
    client.put_object(Bucket=bucket, Key="raw-other/x.txt", Body=b"outside the prefix")
    ingest = {"max_doc_chars": 1000, "heldout_fraction": 0.3}

    from_local = run_ingest(tmp_path / "local", {**ingest, "sources": [local("web", str(files))]})
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # the environment's endpoint
    from_s3 = run_ingest(tmp_path / "s3", {**ingest, "sources": [s3("web", f"s3://{bucket}/raw")]})

    data = {k: v for k, v in all_outputs(tmp_path / "s3").items() if k.startswith("data/")}
    assert data == {k: v for k, v in all_outputs(tmp_path / "local").items() if k in data}
    assert len([k for k in data if k.endswith(".parquet")]) > 2  # shards keyed by object bucket
    assert from_s3["sources"]["web"].pop("kind") == "s3"
    assert from_local["sources"]["web"].pop("kind") == "local"
    assert from_s3 == from_local and from_s3["kept"] == 13 and from_s3["skipped"] == EXPECTED_SKIPS
    assert SECRET not in capsys.readouterr().err
    assert all(SECRET.encode() not in v for v in all_outputs(tmp_path / "s3").values())

    # a refresh after one object changed fetches that object only (ETag), same outputs as local
    client.put_object(Bucket=bucket, Key="raw/a.txt", Body=b"plain text, revised")
    (files / "a.txt").write_text("plain text, revised")
    run_ingest(tmp_path / "s3", {**ingest, "sources": [s3("web", f"s3://{bucket}/raw")]})
    run_ingest(tmp_path / "local", {**ingest, "sources": [local("web", str(files))]},
               ingest_cache=None)
    err = capsys.readouterr().err
    assert "source web: 1 objects read, 20 unchanged ones from the ingest cache" in err
    data = {k: v for k, v in all_outputs(tmp_path / "s3").items() if k.startswith("data/")}
    assert data == {k: v for k, v in all_outputs(tmp_path / "local").items() if k in data}


def test_s3_missing_bucket_or_prefix(tmp_path, s3_server, s3_bucket, creds):
    bucket = s3_bucket("empty")
    cases = {
        "s3://no-such-bucket-for-ingest/raw": "does not exist",
        f"s3://{bucket}/nothing-here": "no objects below this prefix",
    }
    for url, words in cases.items():
        with pytest.raises(StageInputError) as err:
            run_ingest(
                tmp_path / "root", {"sources": [s3("remote", url)]}, s3_endpoint_url=s3_server
            )  # the endpoint from runtime params
        assert "'remote'" in str(err.value) and url in str(err.value) and words in str(err.value)
        assert not (tmp_path / "root/data").exists()


def test_s3_unreachable_endpoint(tmp_path, creds):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StageInputError, match="'remote'.*s3://bucket/raw: cannot list"):
        run_ingest(
            tmp_path / "root",
            {"sources": [s3("remote", "s3://bucket/raw")]},
            s3_endpoint_url=f"http://127.0.0.1:{port}",
        )
    assert not (tmp_path / "root/data").exists()

"""Object-store locations and settings: pure parsing, no store."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawler.errors import UsageError
from crawler.pipeline.objectstore import ObjectLocation, StoreSettings, is_object_url
from crawler.pipeline.shard import Shard, ShardRun


def test_locations_keep_the_scheme_and_join_keys_under_the_prefix() -> None:
    location = ObjectLocation.parse("obs://inventory/cbr/2026-12-05/")
    assert (location.scheme, location.bucket, location.prefix) == ("obs", "inventory", "cbr/2026-12-05")
    assert location.key("acme/x.ndjson") == "cbr/2026-12-05/acme/x.ndjson"
    assert location.url("manifest.json") == "obs://inventory/cbr/2026-12-05/manifest.json"
    bare = ObjectLocation.parse("s3://inventory")
    assert bare.key("manifest.json") == "manifest.json" and bare.url() == "s3://inventory"
    assert is_object_url("s3://b/p") and is_object_url("obs://b") and not is_object_url("/data/s3://x")


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "gs://bucket/x", "s3://b/a/../c", "s3://b/a//c"])
def test_bad_locations_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError):
        ObjectLocation.parse(url)


def test_settings_come_from_env_with_the_aws_fallbacks() -> None:
    settings = StoreSettings.from_env({"AWS_REGION": "cn-north-4", "CBR_CRAWLER_S3_ADDRESSING": "virtual"})
    assert (settings.endpoint_url, settings.region, settings.addressing) == (None, "cn-north-4", "virtual")
    own = StoreSettings.from_env(
        {"CBR_CRAWLER_S3_REGION": "cn-east-3", "AWS_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "3"}
    )
    assert (own.region, own.max_attempts) == ("cn-east-3", 3)
    for env in ({"CBR_CRAWLER_S3_ADDRESSING": "sideways"}, {"AWS_MAX_ATTEMPTS": "0"},
                {"CBR_CRAWLER_S3_ACCESS_KEY_FILE": "/k"}):  # fmt: skip
        with pytest.raises(UsageError):
            StoreSettings.from_env(env)


def test_key_files_are_read_and_the_secret_never_shown(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("AKIDEXAMPLE\n")
    (tmp_path / "secret").write_text("very-secret-value\n")
    settings = StoreSettings.from_env(
        {
            "CBR_CRAWLER_S3_ACCESS_KEY_FILE": str(tmp_path / "key"),
            "CBR_CRAWLER_S3_SECRET_KEY_FILE": str(tmp_path / "secret"),
        }
    )
    assert settings.credentials() == {
        "aws_access_key_id": "AKIDEXAMPLE",
        "aws_secret_access_key": "very-secret-value",
    }
    assert "very-secret-value" not in repr(settings)


def test_a_shard_of_a_bucket_output_writes_below_its_prefix() -> None:
    run = ShardRun(Shard(2, 3))
    assert run.shard.output_dir("s3://inventory/cbr/") == f"s3://inventory/cbr/{run.shard.name}"


def test_bucket_places_join_and_relate_like_posix_paths() -> None:
    from crawler.commands.places import BucketPlace, LocalPlace, place

    root = place("s3://inv/cbr/2026-12-05")
    assert isinstance(root, BucketPlace) and str(root) == "s3://inv/cbr/2026-12-05"
    shard = root / "shard-0-of-2"
    data = shard / "acme/cn-north-4/p/backups.private.no-ep.ndjson.gz"
    assert data.relpath(root) == "shard-0-of-2/acme/cn-north-4/p/backups.private.no-ep.ndjson.gz"
    assert (root / data.relpath(root)) == data
    assert (shard / "../manifest.json") == root / "manifest.json"  # a merged manifest's path, resolved
    assert root.parent == place("s3://inv/cbr") and root.name == "2026-12-05"
    assert str(place("obs://inv/x") / "y") == "obs://inv/x/y"
    assert isinstance(place("out/dir"), LocalPlace)
    assert place("s3://inv/a") != place("s3://other/a")

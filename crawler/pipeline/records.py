"""A record as the crawler writes it: the API's bytes, plus one added key, ``_crawl`` (provenance).

A record is written byte for byte as the API sent it (every field, unknown ones too, in the API's
key order and number formats); the provenance object is spliced in before its closing brace,
serialised once per page. A record that already holds a ``_crawl`` key (never seen from the API)
is parsed and re-serialised instead, so that each line stays valid JSON with one such key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

PROVENANCE_KEY = "_crawl"
_KEY_PREFIX = b',"' + PROVENANCE_KEY.encode() + b'":'


def encode_lines(
    records: Sequence[bytes], keep: Sequence[int], clashing: Sequence[int], provenance: dict[str, Any]
) -> bytes:
    """NDJSON lines of ``records[i]`` for each ``i`` in ``keep`` (in that order), each stamped with
    ``provenance``. ``clashing``: indexes of records that already carry the key."""
    if not keep:
        return b""
    tail = _KEY_PREFIX + orjson.dumps(provenance) + b"}\n"
    if not clashing:
        return b"".join([records[i][:-1] + tail for i in keep])
    lines = []
    clash = set(clashing)
    for i in keep:
        if i in clash:
            record = orjson.loads(records[i])
            record[PROVENANCE_KEY] = provenance
            lines.append(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        else:
            lines.append(records[i][:-1] + tail)
    return b"".join(lines)

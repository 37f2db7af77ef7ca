"""Shared fixtures.

The official Huawei SDK writes `$HOME/.huaweicloud/` when imported, so HOME is pointed at a
temporary directory before any test module imports it.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

_SDK_HOME = tempfile.mkdtemp(prefix="cbr-crawler-home-")
os.environ["HOME"] = _SDK_HOME
# Removed when the test process ends, or every run would leave one behind in $TMPDIR.
atexit.register(functools.partial(shutil.rmtree, _SDK_HOME, ignore_errors=True))

# The crawler honours HTTPS_PROXY / HTTP_PROXY (aiohttp's trust_env); the tests talk to servers on
# loopback, which a machine's proxy settings must not reroute. The proxy tests set their own.
for _name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy"):
    os.environ.pop(_name, None)

"""Shared fixtures.

The official Huawei SDK writes `$HOME/.huaweicloud/` when imported, so HOME is pointed at a
temporary directory before any test module imports it.
"""

from __future__ import annotations

import os
import tempfile

_SDK_HOME = tempfile.mkdtemp(prefix="cbr-crawler-home-")
os.environ["HOME"] = _SDK_HOME

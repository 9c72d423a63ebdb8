"""Hypothesis keeps its files (example database, constants cache) in the temp directory, not the working tree."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis.configuration import set_hypothesis_home_dir

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "tls-scanner-hypothesis")

"""MkDocs hooks for the documentation build (``mkdocs.yml``: ``hooks``).

The examples marked ``exec="on"`` run while the site builds (markdown-exec). They run in a
scratch folder, made here before the build and removed after it, so a command such as
``clayflow train --out runs/first`` writes there, never into the repository. ``picture``
embeds a PNG that an example wrote into the page, as the example's own output.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

_state: dict[str, str] = {}
_started: dict[str, float] = {}
log = logging.getLogger("mkdocs.hooks.clayflow")


def on_pre_build(config, **kwargs) -> None:
    """Enter a fresh scratch folder; pictures are drawn without a screen."""
    _state["home"] = os.getcwd()
    _state["scratch"] = tempfile.mkdtemp(prefix="clayflow-docs-")
    os.environ["MPLBACKEND"] = "Agg"
    sys.path.insert(0, str(Path(__file__).parent))  # examples import this module for ``picture``
    os.chdir(_state["scratch"])


def on_post_build(config, **kwargs) -> None:
    """Leave and remove the scratch folder."""
    os.chdir(_state.pop("home"))
    shutil.rmtree(_state.pop("scratch"), ignore_errors=True)


def on_page_markdown(markdown, page, **kwargs):
    """Start the clock of a page (its examples run while its Markdown is converted)."""
    _started[page.file.src_path] = time.perf_counter()
    return markdown


def on_page_content(html, page, **kwargs):
    """Say how long the page took: its examples' time, for keeping the build short."""
    log.info("%s: %.1f s", page.file.src_path, time.perf_counter() - _started.pop(page.file.src_path))
    return html


def picture(path: str | Path, alt: str = "", width: int | None = None) -> str:
    """An ``<img>`` element holding the PNG at ``path`` (relative to the scratch folder)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img alt="{alt}" src="data:image/png;base64,{data}"{size}>'

"""MkDocs hooks for the documentation build (``mkdocs.yml``: ``hooks``).

The examples marked ``exec="on"`` run while the site builds (markdown-exec), each page's in a
folder of its own inside a scratch folder made here before the build and removed after it, so a
command such as ``clayflow train --out runs/first`` writes there, never into the repository,
and no page sees another's files. Shell examples run with ``set -eo pipefail`` (through
``BASH_ENV``): a command that fails anywhere in a block, even piped into ``tail``, fails the
build. ``picture`` embeds a PNG that an example wrote into the page, as the example's output.
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
    """Make the scratch folder; pictures are drawn without a screen; shells stop at a failure."""
    _state["home"] = os.getcwd()
    scratch = Path(tempfile.mkdtemp(prefix="clayflow-docs-"))
    _state["scratch"] = str(scratch)
    (scratch / "strict.sh").write_text("set -eo pipefail\n")
    os.environ["BASH_ENV"] = str(scratch / "strict.sh")  # read by every non-interactive bash
    os.environ["MPLBACKEND"] = "Agg"
    sys.path.insert(0, str(Path(__file__).parent))  # examples import this module for ``picture``


def on_page_markdown(markdown, page, **kwargs):
    """Enter the page's own folder (its examples run while its Markdown is converted), and
    start its clock."""
    folder = Path(_state["scratch"], page.file.src_path.removesuffix(".md").replace("/", "-"))
    folder.mkdir()
    os.chdir(folder)
    _started[page.file.src_path] = time.perf_counter()
    return markdown


def on_page_content(html, page, **kwargs):
    """Say how long the page took: its examples' time, for keeping the build short."""
    log.info("%s: %.1f s", page.file.src_path, time.perf_counter() - _started.pop(page.file.src_path))
    os.chdir(_state["scratch"])
    return html


def on_post_build(config, **kwargs) -> None:
    """Leave and remove the scratch folder."""
    _clean_up()


def on_build_error(error, **kwargs) -> None:
    """As after a build: a failed one leaves no scratch folder and the working directory as it was."""
    _clean_up()


def _clean_up() -> None:
    if "home" in _state:
        os.chdir(_state.pop("home"))
    shutil.rmtree(_state.pop("scratch", ""), ignore_errors=True)
    os.environ.pop("BASH_ENV", None)


def picture(path: str | Path, alt: str = "", width: int | None = None) -> str:
    """An ``<img>`` element holding the PNG at ``path`` (relative to the page's folder)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img alt="{alt}" src="data:image/png;base64,{data}"{size}>'

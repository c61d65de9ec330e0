"""Look at the built site in a real browser: headless Chromium renders pages of ``site/`` to
PNG files, and each is checked to hold a page (not a blank or an error page).

    mkdocs build --strict && python docs/screenshots.py [--site site] [--out screenshots]

Needs a Chromium (Debian: ``apt-get install chromium``; or ``--chromium PATH``). The default
pages are the landing page, a guide whose pictures the build generated, and an API page.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageStat

PAGES = ["index.html", "guides/glow/index.html", "api/core/index.html"]
# Without the background-networking flags Chromium keeps trying to reach Google's hosts.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,1800"]  # fmt: skip


def screenshot(chromium: str, page: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}", page.as_uri()],
                       check=True, capture_output=True, timeout=120)  # fmt: skip


def looks_like_a_page(path: Path) -> str:
    """Why the screenshot is not a rendered page, or '' if it is one: mostly one colour means
    a blank or failed render."""
    image = Image.open(path).convert("L")
    spread = ImageStat.Stat(image).stddev[0]
    return "" if spread > 20 else f"almost uniform (grey-level spread {spread:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", type=Path, default=Path("site"))
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("pages", nargs="*", default=PAGES)
    args = parser.parse_args()
    if not args.chromium:
        parser.error("no chromium found; install it (apt-get install chromium) or pass --chromium PATH")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for page in args.pages:
        out = args.out / (page.replace("/index.html", "").replace("/", "-").removesuffix(".html") + ".png")
        screenshot(args.chromium, (args.site / page).resolve(), out)
        problem = looks_like_a_page(out)
        failed += bool(problem)
        print(f"{out}: {problem or 'rendered'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

"""Screenshot the Dagster asset graph with headless Chromium (Debian `chromium`) for the README.

Usage: python scripts/screenshot_asset_graph.py docs/asset_graph.png
Starts dagster-webserver on 127.0.0.1 against this project with $DAGSTER_HOME (so what the
pipeline materialized shows), then captures the `pipeline` asset group.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestration.webserver import webserver  # noqa: E402


def main(out: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    home = Path(os.environ.get("DAGSTER_HOME", ROOT / ".dagster_home"))
    with webserver(ROOT, home) as ui, tempfile.TemporaryDirectory() as profile:
        ui.query("mutation { setNuxSeen }")  # no "join the community" dialog over the graph
        url = f"{ui.url}/asset-groups/pipeline"
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--hide-scrollbars",
                "--window-size=1600,1000",
                "--virtual-time-budget=15000",
                f"--screenshot={out.resolve()}",
                url,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/asset_graph.png"))

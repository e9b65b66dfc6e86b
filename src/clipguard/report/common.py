"""What every report page shares: the Jinja2 environment (autoescape on: captions, class names and
targets are untrusted text), reading a run folder's ``run.json``, image files inlined as PNG data URIs,
and the page written atomically.

Example::

    run = read_run(run_dir, "`clipguard audit`")
    html = render("audit.html.j2", title="...", run=run)
    write_page(run_dir / "report.html", html, run_dir)
"""
from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image

from clipguard.errors import ConfigError
from clipguard.utils.io import atomic_path

__all__ = ["ENV", "read_run", "image_uri", "render", "write_page", "pct", "num"]

log = logging.getLogger("clipguard")


def pct(value: Any, digits: int = 1) -> str:
    """``0.3725`` -> ``"37.3%"``; ``"n/a"`` for a missing or non-finite value."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:.{digits}f}%"


def num(value: Any, spec: str = ".4g") -> str:
    """A number formatted with ``spec`` (default 4 significant digits); ``"n/a"`` when missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a" if value is None else str(value)
    return format(value, spec)


ENV = Environment(loader=PackageLoader("clipguard.report", "templates"), autoescape=select_autoescape(["j2", "html"]))
"""The templates of :mod:`clipguard.report` (``templates/*.html.j2``), every value escaped unless marked safe."""
ENV.filters["pct"] = pct
ENV.filters["num"] = num


def read_run(run_dir: str | os.PathLike, producer: str, commands: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``run.json`` of ``run_dir`` as a dict (``config`` always a dict).

    Args:
        run_dir: a run folder.
        producer: the command(s) that write such folders, for the messages (``"`clipguard audit`"``).
        commands: the ``command`` values accepted (any when empty).

    Raises:
        ConfigError: no readable JSON object in ``run_dir/run.json``, or another command wrote it.
    """
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no run.json; pass the output folder of {producer}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); rerun {producer}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a run record (a JSON object); rerun {producer}")
    if commands and data.get("command") not in commands:
        raise ConfigError(f"{path} was written by `clipguard {data.get('command')}`, not {producer}; "
                          "`clipguard report RUN_DIR` picks the page for any run")
    if not isinstance(data.get("config"), dict):
        data["config"] = {}
    return data


def image_uri(path: str | os.PathLike, within: str | os.PathLike, size: int | None = None) -> str | None:
    """The image file ``path`` re-encoded as a PNG data URI (shrunk to fit ``size`` x ``size`` if given).

    ``path`` must lie inside the folder ``within`` (paths come from files of the run, which are not
    trusted to point elsewhere). A missing, outside or unreadable file gives ``None`` (shown as "no
    image") and a warning.
    """
    p, root = Path(path), Path(within).resolve()
    try:
        if not p.resolve().is_relative_to(root):
            log.warning("%s lies outside %s; not inlined in the report", p, root)
            return None
        with Image.open(p) as im:
            im.load()
            img = im if im.mode in ("L", "RGB", "RGBA") else im.convert("RGBA")
            if size is not None:
                img = img.copy()
                img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
    except (OSError, ValueError) as exc:
        log.warning("image %s not inlined in the report (%s)", p, exc)
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render(template: str, **context: Any) -> str:
    """``template`` rendered with ``context`` plus ``generated`` (the time) and ``json`` (a value as JSON)."""
    return ENV.get_template(template).render(generated=time.strftime("%Y-%m-%d %H:%M"),
                                             json=lambda v: json.dumps(v, default=str), **context)


def write_page(path: str | os.PathLike, html: str, run_dir: str | os.PathLike, t0: float | None = None) -> Path:
    """Write ``html`` to ``path`` atomically, readable by everyone (a page to share); log its size."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(html, encoding="utf-8")
        tmp.chmod(0o644)  # the temporary file was private
    took = f" in {time.perf_counter() - t0:.1f} s" if t0 is not None else ""
    log.info("report of %s written to %s%s (%.1f MB)", run_dir, path, took, path.stat().st_size / 1e6)
    return path

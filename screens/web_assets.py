"""The node's web page (``screens/web/``) as bytes, for ``peer.web`` (which never imports
``screens``: cli.py reads them and passes them in)."""

from __future__ import annotations

from importlib import resources

__all__ = ["ASSETS", "web_assets"]

ASSETS = ("index.html", "app.js", "style.css")


def web_assets() -> dict[str, bytes]:
    """Read from the package, so a wheel or swarm.pyz serves the same files as a checkout."""
    folder = resources.files(__package__).joinpath("web")
    return {name: folder.joinpath(name).read_bytes() for name in ASSETS}

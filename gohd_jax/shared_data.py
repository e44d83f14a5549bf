"""The one way to reach the project's shared folder (oracles and example media).

The shared folder is not part of the repository. It is found through the
environment variable ``GOHD_SHARED`` (default: ``../shared`` relative to the
repository root, i.e. a sibling of the checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GOHD_SHARED"
_REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path | None:
    """Returns the shared folder if it exists, else None."""
    raw = os.environ.get(ENV_VAR)
    path = Path(raw).expanduser() if raw else _REPO_ROOT.parent / "shared"
    return path.resolve() if path.is_dir() else None


def shared_path(*parts: str) -> Path | None:
    """Returns ``shared/<parts...>`` if the shared folder and that entry exist, else None."""
    root = shared_dir()
    if root is None:
        return None
    path = root.joinpath(*parts)
    return path if path.exists() else None


def describe_missing(*parts: str) -> str:
    """A one-line explanation for when ``shared_path(*parts)`` is None."""
    where = os.environ.get(ENV_VAR) or str(_REPO_ROOT.parent / "shared")
    return (f"shared data {'/'.join(parts) or 'folder'} not found under {where!r}; "
            f"set {ENV_VAR} to the folder that holds reference/ and assets/")

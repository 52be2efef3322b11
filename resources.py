"""Data files shipped inside the package (templates, runtime C, RTL, native hook source, target files).

Everything is found through the installed package (importlib.resources), never through a source checkout, so
a wheel install works from any folder. The files must be real files on disk (compilers and Verilator read
them by path): a zip import of tinydeploy is refused with one line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .errors import TinyDeployError


def package_path(*parts: str) -> Path:
    """The on-disk path of a file or folder inside the installed tinydeploy package."""
    node = resources.files("tinydeploy").joinpath(*parts)
    if not isinstance(node, Path):
        raise TinyDeployError(f"tinydeploy's data file {'/'.join(parts)} is not on disk (zip import?): "
                              "install tinydeploy as a regular package")
    if not node.exists():
        raise TinyDeployError(f"tinydeploy's data file {'/'.join(parts)} is missing from the installed package "
                              f"({node}): reinstall tinydeploy")
    return node

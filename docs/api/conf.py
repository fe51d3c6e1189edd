"""Sphinx configuration of the API reference: ``python -m sphinx -W -b html docs/api OUTDIR``.

Everything comes from the docstrings (autodoc); the build runs with warnings as errors in the test
suite (tests/test_docs_build.py), so a docstring that breaks reStructuredText fails the tests.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

# Document the checkout this file belongs to, whether or not it is the installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

project = "sipimdn"
author = "the sipimdn authors"
copyright = "the sipimdn authors"
try:
    release = importlib.metadata.version("sipimdn")
except importlib.metadata.PackageNotFoundError:
    from sipimdn import __version__ as release
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
# Signatures keep their annotations; the descriptions show them once, in the signature.
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# No intersphinx (a build must not need the network), so references to the standard library and
# lxml cannot resolve: nitpicky mode stays off; -W still fails on broken markup, duplicate
# descriptions and modules that do not import.
nitpicky = False
# Some names are exported by two modules (sipimdn.parser.Limits and sipimdn.cpim.Limits; the
# tracker's DispositionState, re-exported by sipimdn.events), so an annotation naming just
# "Limits" finds more than one target. That ambiguity (only it) is not an error.
suppress_warnings = ["ref.python"]

html_theme = "alabaster"
html_title = f"sipimdn {release} API reference"
exclude_patterns = ["_build"]

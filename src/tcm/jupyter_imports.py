"""Importing the Jupyter stack (papermill, nbformat, nbconvert) without a grammar it never uses.

nbformat loads jsonschema, and jsonschema imports ``rfc3987_syntax`` where it is installed (jupyter-events
asks for ``jsonschema[format-nongpl]``). That package compiles a Lark grammar at import: 1.4 s of
papermill's 2.1 s import on 2 cores, paid by every stage of `dvc repro` (``tcm notebook``) and by the
report's HTML renders. Its one use is jsonschema's "iri" and "iri-reference" format checks, and neither
nbformat, nbclient, nbconvert nor papermill validates with a format checker.
"""

from __future__ import annotations

import sys


def skip_iri_grammar() -> None:
    """Call before importing papermill, nbformat or nbconvert: ``import rfc3987_syntax`` then fails,
    and jsonschema leaves the two IRI formats unchecked as it does where the package is not installed.
    Does nothing where something imported the package already."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # None: "not importable"

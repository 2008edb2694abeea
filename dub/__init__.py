"""dub: synchronized soundtracks for silent videos, at dataset scale, offline.

dub.model, dub.workflows and dub.manifests live in the repository's model/, workflows/ and
manifests/ folders (pyproject's package-dir). Run from a source checkout with a non-editable
install, Python finds this folder first and the installed subpackages would be hidden;
extend_path adds the installed `dub` so they are found either way.
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"

"""Sphinx configuration of kdpipe's documentation.

Build: ``python -m sphinx -W docs docs/_build/html`` (warnings are errors).

The build needs no network: intersphinx reads the small inventories shipped in
``docs/_inventories/`` (written by ``docs/_inventories/make_inventories.py``, listing
the names these docs refer to, with the real URLs of scikit-learn's, NumPy's, PyTorch's,
zarr's and Dask's documentation), never the sites' own ``objects.inv``.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # this checkout's kdpipe, also when not installed
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

project = "kdpipe"
author = "the kdpipe developers"
copyright = "2026, the kdpipe developers"
try:
    release = metadata.version("kdpipe")
except metadata.PackageNotFoundError:
    release = "0+unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_inventories",
    "**/README.rst",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.json",
]
root_doc = "index"

# -- API reference ---------------------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # the numpydoc Parameters sections carry the types
autodoc_member_order = "groupwise"
numpydoc_show_class_members = False  # the class template lists the members itself
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- links into the libraries kdpipe builds on (local inventories: see the docstring) ---
_INV = DOCS / "_inventories"
intersphinx_mapping = {
    "sklearn": ("https://scikit-learn.org/stable/", str(_INV / "sklearn.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(_INV / "numpy.inv")),
    "torch": ("https://docs.pytorch.org/docs/stable/", str(_INV / "torch.inv")),
    "zarr": ("https://zarr.readthedocs.io/en/stable/", str(_INV / "zarr.inv")),
    "dask": ("https://docs.dask.org/en/stable/", str(_INV / "dask.inv")),
    "distributed": ("https://distributed.dask.org/en/stable/", str(_INV / "distributed.inv")),
    "python": ("https://docs.python.org/3/", str(_INV / "python.inv")),
}
intersphinx_timeout = 1

# -- gallery ---------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": str(DOCS.parent / "examples" / "gallery"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "doc_module": ("kdpipe",),
    "backreferences_dir": "generated/backreferences",
    "reference_url": {"kdpipe": None},
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
    "matplotlib_animations": False,
    "show_memory": False,
    "plot_gallery": "True",
}

# -- HTML ------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"kdpipe {release}"
html_theme_options = {
    "navbar_align": "left",
    "show_prev_next": False,
    "secondary_sidebar_items": ["page-toc"],
}
html_static_path: list[str] = []
html_show_sourcelink = False

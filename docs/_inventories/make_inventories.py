"""Write the small intersphinx inventories that ``docs/conf.py`` reads (no network).

Each inventory lists the names kdpipe's documentation refers to, with the page each has
on its library's real documentation site. Run it after adding a reference:
``python docs/_inventories/make_inventories.py`` (needs ``sphobjinv``).
"""

from __future__ import annotations

from pathlib import Path

import sphobjinv as soi

HERE = Path(__file__).resolve().parent

# inventory -> (project, version, [(name, role, uri relative to the site root)])
_SK = "modules/generated/{}.html#{}"
_NP = "reference/generated/{}.html#{}"
_TORCH = "generated/{}.html#{}"
# scikit-learn's generated set_fit_request/set_score_request docstrings (kdpipe's
# estimators inherit them) refer to these two entries of scikit-learn's own docs
STD = {
    "meta-estimator": ("term", "glossary.html#term-meta-estimator", "meta-estimator"),
    "metadata_routing": ("label", "metadata_routing.html#metadata-routing", "Metadata Routing"),
}
INVENTORIES: dict[str, tuple[str, str, list[tuple[str, str, str]]]] = {
    "sklearn": (
        "scikit-learn",
        "1.6",
        [
            *(
                (n, "class", _SK.format(n, n))
                for n in (
                    "sklearn.model_selection.GridSearchCV",
                    "sklearn.model_selection.RandomizedSearchCV",
                    "sklearn.pipeline.Pipeline",
                    "sklearn.preprocessing.StandardScaler",
                    "sklearn.preprocessing.LabelEncoder",
                    "sklearn.linear_model.LogisticRegression",
                    "sklearn.neural_network.MLPClassifier",
                    "sklearn.frozen.FrozenEstimator",
                    "sklearn.base.BaseEstimator",
                    "sklearn.base.ClassifierMixin",
                )
            ),
            *(
                (n, "function", _SK.format(n, n))
                for n in (
                    "sklearn.model_selection.cross_val_score",
                    "sklearn.model_selection.cross_validate",
                    "sklearn.model_selection.train_test_split",
                    "sklearn.datasets.load_digits",
                    "sklearn.base.clone",
                    "sklearn.set_config",
                    "sklearn.config_context",
                    "sklearn.utils.estimator_checks.parametrize_with_checks",
                )
            ),
        ],
    ),
    "numpy": (
        "NumPy",
        "2.0",
        [
            ("numpy.ndarray", "class", _NP.format("numpy.ndarray", "numpy.ndarray")),
            ("numpy.memmap", "class", _NP.format("numpy.memmap", "numpy.memmap")),
            (
                "numpy.random.Generator",
                "class",
                "reference/random/generator.html#numpy.random.Generator",
            ),
            (
                "numpy.random.RandomState",
                "class",
                "reference/random/legacy.html#numpy.random.RandomState",
            ),
            (
                "numpy.random.SeedSequence",
                "class",
                "reference/random/bit_generators/generated/numpy.random.SeedSequence.html#numpy.random.SeedSequence",
            ),
            ("numpy.load", "function", _NP.format("numpy.load", "numpy.load")),
            ("numpy.save", "function", _NP.format("numpy.save", "numpy.save")),
        ],
    ),
    "torch": (
        "PyTorch",
        "2.13",
        [
            ("torch.Tensor", "class", "tensors.html#torch.Tensor"),
            ("torch.device", "class", "tensor_attributes.html#torch.device"),
            ("torch.nn.Module", "class", _TORCH.format("torch.nn.Module", "torch.nn.Module")),
            ("torch.utils.data.Dataset", "class", "data.html#torch.utils.data.Dataset"),
            ("torch.jit.script", "function", _TORCH.format("torch.jit.script", "torch.jit.script")),
            ("torch.jit.trace", "function", _TORCH.format("torch.jit.trace", "torch.jit.trace")),
            ("torch.save", "function", _TORCH.format("torch.save", "torch.save")),
            ("torch.load", "function", _TORCH.format("torch.load", "torch.load")),
            (
                "torch.nn.functional.log_softmax",
                "function",
                _TORCH.format("torch.nn.functional.log_softmax", "torch.nn.functional.log_softmax"),
            ),
            (
                "torch.nn.functional.kl_div",
                "function",
                _TORCH.format("torch.nn.functional.kl_div", "torch.nn.functional.kl_div"),
            ),
        ],
    ),
    "zarr": (
        "zarr",
        "3.1",
        [
            ("zarr.Array", "class", "api/zarr/index.html#zarr.Array"),
            ("zarr.Group", "class", "api/zarr/index.html#zarr.Group"),
            ("zarr.open_array", "function", "api/zarr/index.html#zarr.open_array"),
            ("zarr.open_group", "function", "api/zarr/index.html#zarr.open_group"),
            ("zarr.create_array", "function", "api/zarr/index.html#zarr.create_array"),
            (
                "zarr.storage.FsspecStore",
                "class",
                "api/zarr/storage/index.html#zarr.storage.FsspecStore",
            ),
            (
                "zarr.storage.LocalStore",
                "class",
                "api/zarr/storage/index.html#zarr.storage.LocalStore",
            ),
        ],
    ),
    "dask": (
        "Dask",
        "2024.8",
        [
            ("dask.array.Array", "class", "generated/dask.array.Array.html#dask.array.Array"),
            (
                "dask.array.from_array",
                "function",
                "generated/dask.array.from_array.html#dask.array.from_array",
            ),
            (
                "dask.diagnostics.ProgressBar",
                "class",
                "diagnostics-local.html#dask.diagnostics.ProgressBar",
            ),
        ],
    ),
    "distributed": (
        "Dask.distributed",
        "2024.8",
        [
            ("distributed.Client", "class", "api.html#distributed.Client"),
            ("distributed.LocalCluster", "class", "api.html#distributed.LocalCluster"),
            ("dask.distributed.Client", "class", "api.html#distributed.Client"),
            ("dask.distributed.LocalCluster", "class", "api.html#distributed.LocalCluster"),
        ],
    ),
    "python": (
        "Python",
        "3.11",
        [
            ("ValueError", "exception", "library/exceptions.html#ValueError"),
            ("ImportError", "exception", "library/exceptions.html#ImportError"),
            ("FileNotFoundError", "exception", "library/exceptions.html#FileNotFoundError"),
            ("Exception", "exception", "library/exceptions.html#Exception"),
            ("pathlib.Path", "class", "library/pathlib.html#pathlib.Path"),
            ("os.PathLike", "class", "library/os.html#os.PathLike"),
            (
                "importlib.metadata.version",
                "function",
                "library/importlib.metadata.html#importlib.metadata.version",
            ),
        ],
    ),
}


def main() -> None:
    for key, (project, version, names) in INVENTORIES.items():
        inv = soi.Inventory()
        inv.project, inv.version = project, version
        for name, role, uri in names:
            inv.objects.append(
                soi.DataObjStr(
                    name=name,
                    domain="py",
                    role=role,
                    priority="1",
                    uri=uri,
                    dispname="-",
                )
            )
        if key == "sklearn":
            for name, (role, uri, title) in STD.items():
                inv.objects.append(
                    soi.DataObjStr(
                        name=name,
                        domain="std",
                        role=role,
                        priority="-1",
                        uri=uri,
                        dispname=title,
                    )
                )
        path = HERE / f"{key}.inv"
        soi.writebytes(path, soi.compress(inv.data_file(contract=True)))
        print(f"{path}: {len(names)} names")


if __name__ == "__main__":
    main()

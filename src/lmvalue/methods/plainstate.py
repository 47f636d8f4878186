"""Save and load the scikit-learn methods' models as plain data: no pickle in a model folder.

A fitted pipeline (TF-IDF, NB-LR, word vectors, probe) is written as ``model.json`` (its structure,
parameters, vocabularies and small values) and ``model.safetensors`` (its numeric arrays). Loading
rebuilds the objects of an allow-list of classes (``ALLOWED``) by setting their attributes: no code from
the folder runs, and a file naming any other class is refused. Functions (e.g. a tokenizer passed as a
vectorizer's ``analyzer``) are allowed only from ``lmvalue.methods``.

Folders written by lmvalue <= 0.3 hold ``tfidf.joblib``, a pickle: :func:`load` reads one only when the
caller trusts it (``--trust-pickle``), since unpickling runs whatever code the file names.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from lmvalue.errors import CheckpointError

log = logging.getLogger("lmvalue")

STATE_FILE = "model.json"
ARRAYS_FILE = "model.safetensors"
PICKLE_FILE = "tfidf.joblib"  # lmvalue <= 0.3
FORMAT = "lmvalue-plain-state/1"

# The classes a model file may name; loading sets their attributes, it never calls their code.
ALLOWED = {
    "sklearn.pipeline.Pipeline",
    "sklearn.pipeline.FeatureUnion",
    "sklearn.feature_extraction.text.TfidfVectorizer",
    "sklearn.feature_extraction.text.TfidfTransformer",
    "sklearn.feature_extraction.text.CountVectorizer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.preprocessing._data.StandardScaler",
    "gensim.models.keyedvectors.KeyedVectors",
    "gensim.utils.SaveLoad",
    "lmvalue.methods.embeddings.MeanVectors",
    "lmvalue.methods.embeddings.VectorClassifier",
    "lmvalue.methods.nbsvm.NBSVM",
    "lmvalue.methods.nbsvm._Stacked",
    "lmvalue.methods.probe.EncoderFeatures",
    "lmvalue.methods.probe.ProbeClassifier",
}
FUNCTION_PREFIX = "lmvalue.methods."
SCALARS = (bool, int, float, str, type(None))


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _resolve(path: str, *, what: str):
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"the model file names {what} {path}, which this lmvalue cannot find") from None


class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def array(self, a: np.ndarray) -> dict:
        if a.dtype.kind in "biuf":
            key = f"a{len(self.arrays)}"
            self.arrays[key] = np.ascontiguousarray(a)
            return {"__array__": key}
        if a.dtype.kind in "OUS":  # labels, feature names
            return {"__strings__": [str(x) for x in a.tolist()], "dtype": a.dtype.str, "shape": list(a.shape)}
        raise TypeError(f"arrays of dtype {a.dtype} are not saved")

    def encode(self, obj: Any) -> Any:
        if isinstance(obj, SCALARS):
            if isinstance(obj, float) and not np.isfinite(obj):
                return {"__float__": repr(obj)}
            return obj
        if isinstance(obj, np.generic):
            return self.encode(obj.item())
        if isinstance(obj, np.ndarray):
            return self.array(obj)
        if isinstance(obj, list):
            return [self.encode(v) for v in obj]
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v) for v in obj]}
        if isinstance(obj, set | frozenset):
            return {"__set__": sorted(self.encode(v) for v in obj)}
        if isinstance(obj, dict):
            if all(isinstance(k, str) for k in obj):
                if obj and all(
                    isinstance(v, int | np.integer) and not isinstance(v, bool) for v in obj.values()
                ):
                    keys = list(obj)  # a vocabulary: the values as one array
                    return {
                        "__vocab__": keys,
                        "ids": self.array(np.asarray([obj[k] for k in keys], dtype=np.int64)),
                    }
                return {"__dict__": {k: self.encode(v) for k, v in obj.items()}}
            return {"__items__": [[self.encode(k), self.encode(v)] for k, v in obj.items()]}
        if isinstance(obj, type):
            name = f"{obj.__module__}.{obj.__qualname__}"
            if obj.__module__ != "numpy":
                raise TypeError(f"type {name} is not saved")
            return {"__type__": name}
        if type(obj).__name__ == "function":
            name = f"{obj.__module__}.{obj.__qualname__}"
            if name.startswith(FUNCTION_PREFIX) and "<" not in name:
                return {"__function__": name}
            raise TypeError(f"function {name} is not saved (only module-level lmvalue.methods functions)")
        name = _qualname(obj)
        if name in ALLOWED:
            state = obj.__getstate__() if hasattr(obj, "__getstate__") else obj.__dict__
            if not isinstance(state, dict):
                state = obj.__dict__
            return {"__object__": name, "state": {k: self.encode(v) for k, v in state.items()}}
        raise TypeError(f"{name} is not a type the plain model format saves")


def _decode(node: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if "__array__" in node:
        return arrays[node["__array__"]]
    if "__strings__" in node:
        return np.asarray(
            node["__strings__"], dtype=np.dtype(node["dtype"]) if node["dtype"] != "|O" else object
        ).reshape(node["shape"])
    if "__float__" in node:
        return float(node["__float__"])
    if "__tuple__" in node:
        return tuple(_decode(v, arrays) for v in node["__tuple__"])
    if "__set__" in node:
        return set(_decode(v, arrays) for v in node["__set__"])
    if "__vocab__" in node:
        ids = arrays[node["ids"]["__array__"]]
        return {k: int(i) for k, i in zip(node["__vocab__"], ids.tolist(), strict=True)}
    if "__dict__" in node:
        return {k: _decode(v, arrays) for k, v in node["__dict__"].items()}
    if "__items__" in node:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in node["__items__"]}
    if "__type__" in node:
        if not node["__type__"].startswith("numpy."):
            raise CheckpointError(f"the model file names type {node['__type__']}, which is not allowed")
        return _resolve(node["__type__"], what="type")
    if "__function__" in node:
        if not node["__function__"].startswith(FUNCTION_PREFIX):
            raise CheckpointError(
                f"the model file names function {node['__function__']}, which is not allowed"
            )
        return _resolve(node["__function__"], what="function")
    if "__object__" in node:
        name = node["__object__"]
        if name not in ALLOWED:
            raise CheckpointError(
                f"the model file names class {name}, which lmvalue does not load (allowed: the scikit-learn, "
                "gensim and lmvalue classes its methods use)"
            )
        cls = _resolve(name, what="class")
        obj = cls.__new__(cls)
        obj.__dict__.update({k: _decode(v, arrays) for k, v in node["state"].items()})
        return obj
    raise CheckpointError(f"the model file has an entry lmvalue cannot read: {sorted(node)[:3]}")


def save(obj: Any, folder: Path) -> None:
    """Write ``obj`` (a fitted pipeline) as ``model.json`` + ``model.safetensors`` in ``folder``."""
    from safetensors.numpy import save_file

    enc = _Encoder()
    root = enc.encode(obj)
    folder = Path(folder)
    save_file(enc.arrays, str(folder / ARRAYS_FILE))
    (folder / STATE_FILE).write_text(
        json.dumps({"format": FORMAT, "root": root}, ensure_ascii=False), encoding="utf-8"
    )


def load(folder: Path, *, trust_pickle: bool = False) -> Any:
    """The pipeline saved in ``folder``; a pickled one (lmvalue <= 0.3) only with ``trust_pickle``.

    Raises:
        CheckpointError: no model, a pickle without ``trust_pickle``, or a file naming a class or
            function outside the allow-list.
    """
    folder = Path(folder)
    if (folder / STATE_FILE).is_file():
        from lmvalue.weights import load_safetensors

        try:
            data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read {folder / STATE_FILE}: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{folder / STATE_FILE} is not an lmvalue model file ({FORMAT})")
        arrays = (
            {k: v.numpy() for k, v in load_safetensors(folder / ARRAYS_FILE).items()}
            if (folder / ARRAYS_FILE).is_file()
            else {}
        )
        return _decode(data["root"], arrays)
    if (folder / PICKLE_FILE).is_file():
        if not trust_pickle:
            raise CheckpointError(
                f"{folder} holds a pickled model ({PICKLE_FILE}, written by lmvalue 0.3 or older): loading it "
                "would run any code inside it. Fit it again with this lmvalue (it saves plain data), or, only "
                "if you trust where the folder came from, pass --trust-pickle"
            )
        import joblib

        log.warning("loading the pickled model %s (--trust-pickle): it can run any code it contains", folder)
        return joblib.load(folder / PICKLE_FILE)
    raise CheckpointError(f"{folder} has no saved model ({STATE_FILE}); it is not a complete model folder")

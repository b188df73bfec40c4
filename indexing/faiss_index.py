"""FAISS indexes over a collection's vectors: choosing how to build, building, searching.

On a GPU (FAISS built with GPU support and a device visible) the default is CAGRA, built on
the GPU and converted to ``IndexHNSWCagra`` so the graph serves on the CPU; on the CPU it is
HNSW, or IVF for very large sets. Every index maps FAISS results back to document keys, and
scores are "higher is better" like the rest of unidb: cosine similarity, inner product, or
minus the L2 distance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import faiss as _faiss
import numpy as np

# FAISS's bundled stubs lack the GPU, CAGRA and search-parameter classes used here
faiss: Any = _faiss

# above this many vectors `auto` on the CPU builds IVF: HNSW's build time and memory grow
# faster than IVF's
IVF_FROM = 5_000_000
DEFAULT_HNSW_M = 16
DEFAULT_EF_CONSTRUCTION = 40
DEFAULT_EF_SEARCH = 256
DEFAULT_CAGRA_DEGREE = 32


# the distributions that ship a `faiss` module: two installed overwrite each other's files
FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu-cu12-cuvs", "faiss-gpu-cu12", "faiss-gpu")


def installed_faiss() -> list[str]:
    """The FAISS distributions installed in this environment (one, unless misinstalled)."""
    found = []
    for name in FAISS_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def faiss_install_problem() -> str | None:
    """What is wrong with the FAISS installation: two distributions sharing the module."""
    found = installed_faiss()
    if len(found) < 2:
        return None
    return (
        f"{' and '.join(found)} are installed together and overwrite each other's `faiss` "
        f"module; keep one: pip uninstall -y {' '.join(found)}, then install "
        "'unidb[server]' (FAISS for the CPU) or 'unidb[gpu]' (FAISS for NVIDIA GPUs)"
    )


class BuildRefused(ValueError):
    """The requested build cannot run here; the message says why, ``field`` what to change."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def gpus() -> int:
    """GPUs FAISS can use in this process (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


@dataclass(frozen=True)
class Plan:
    kind: str  # hnsw | ivf | cagra
    device: str  # cpu | gpu
    params: dict[str, Any]
    note: str | None = None  # why auto chose what it chose


def plan(kind: str, device: str, count: int, params: dict[str, Any]) -> Plan:
    """What to build for ``count`` vectors; raises `BuildRefused` when it cannot be done."""
    has_gpu = gpus() > 0 and hasattr(faiss, "GpuIndexCagra")
    if device == "gpu" and not has_gpu:
        raise BuildRefused(
            "device 'gpu' asked, but FAISS sees no GPU here (install unidb[gpu] on a machine "
            "with an NVIDIA GPU, or use device 'auto' or 'cpu')",
            field="device",
        )
    if kind == "cagra" and not has_gpu:
        raise BuildRefused("CAGRA builds on a GPU, and FAISS sees none here", field="kind")
    if kind == "hnsw" and device == "gpu":
        raise BuildRefused(
            "HNSW builds on the CPU; on a GPU use kind 'cagra' or 'ivf'", field="kind"
        )
    note = None
    if device == "auto":
        device = "gpu" if has_gpu and kind in ("auto", "cagra", "ivf") else "cpu"
        if not has_gpu:
            note = "no GPU visible to FAISS: built on the CPU"
    if kind == "auto":
        kind = "cagra" if device == "gpu" else ("ivf" if count >= IVF_FROM else "hnsw")
    return Plan(kind, device, {k: v for k, v in params.items() if v is not None}, note)


def faiss_metric(metric: str) -> int:
    return int(faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as FAISS takes them: float32, contiguous, unit length for cosine."""
    ready = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        ready = ready.copy()
        faiss.normalize_L2(ready)
    return ready


@dataclass
class Builder:
    """Adds vectors chunk by chunk (CPU kinds) or gathers them (CAGRA), then finishes."""

    dim: int
    metric: str
    plan: Plan
    expected: int
    _index: Any = None
    _pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.plan.params
        if self.plan.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(
                self.dim, p.get("m", DEFAULT_HNSW_M), faiss_metric(self.metric)
            )
            hnsw.hnsw.efConstruction = p.get("ef_construction", DEFAULT_EF_CONSTRUCTION)
            hnsw.hnsw.efSearch = p.get("ef_search", DEFAULT_EF_SEARCH)
            self._index = faiss.IndexIDMap2(hnsw)

    @property
    def search_params(self) -> dict[str, Any]:
        p = self.plan.params
        if self.plan.kind == "ivf":
            return ivf_search_params(p, self._nlist())
        return {"ef_search": p.get("ef_search", DEFAULT_EF_SEARCH)}

    def _nlist(self) -> int:
        return ivf_lists(self.plan.params, self.expected)

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        ready = prepare(vectors, self.metric)
        if self.plan.kind == "hnsw":
            self._index.add_with_ids(ready, keys)
        elif self.plan.kind == "ivf":
            if self._index is not None:
                self._index.add_with_ids(ready, keys)
                return
            self._pending.append((keys, ready))
            if sum(len(k) for k, _ in self._pending) >= ivf_training_size(self._nlist()):
                self._train_ivf()
        else:
            self._pending.append((keys, ready))

    def _train_ivf(self) -> None:
        keys = np.concatenate([k for k, _ in self._pending])
        vectors = np.concatenate([v for _, v in self._pending])
        self._pending.clear()
        # the first vectors in key order, however they came in chunks: a sharded build
        # (`unidb index build --ray`) trains on the very same sample
        sample = vectors[: ivf_training_size(self._nlist())]
        self._index = trained_ivf(sample, self.dim, self.metric, self._nlist(), self.plan.device)
        self._index.add_with_ids(vectors, keys)

    def finish(self) -> Any:
        """The index, ready to serve on the CPU."""
        if self.plan.kind == "ivf" and self._index is None and self._pending:
            self._train_ivf()
        if self.plan.kind != "cagra":
            if self._index is None:  # no vectors at all
                self._index = faiss.IndexIDMap2(
                    faiss.IndexFlat(self.dim, faiss_metric(self.metric))
                )
            return self._index
        keys = np.concatenate([k for k, _ in self._pending]) if self._pending else np.empty(0)
        vectors = (
            np.concatenate([v for _, v in self._pending])
            if self._pending
            else np.empty((0, self.dim), np.float32)
        )
        self._pending.clear()
        return _cagra_to_cpu(vectors, keys.astype(np.int64), self.dim, self.metric, self.plan)


def ivf_lists(params: dict[str, Any], expected: int) -> int:
    return int(params.get("nlist", max(1, int(4 * np.sqrt(max(expected, 1))))))


def ivf_search_params(params: dict[str, Any], nlist: int) -> dict[str, Any]:
    return {"nprobe": params.get("nprobe", max(1, nlist // 16))}


def ivf_training_size(nlist: int) -> int:
    """k-means wants about 39 points a list; training on that many keeps memory bounded."""
    return 39 * nlist


def trained_ivf(sample: np.ndarray, dim: int, metric: str, nlist: int, device: str) -> Any:
    """An empty IVF-Flat index whose coarse quantizer is trained on ``sample`` (prepared)."""
    nlist = max(1, min(nlist, len(sample)))
    quantizer = faiss.IndexFlat(dim, faiss_metric(metric))
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss_metric(metric))
    if device == "gpu":  # pragma: no cover - needs a GPU build of FAISS and a GPU
        resources = faiss.StandardGpuResources()
        gpu = faiss.index_cpu_to_gpu(resources, 0, ivf)
        gpu.train(sample)
        return faiss.index_gpu_to_cpu(gpu)
    ivf.train(sample)
    return ivf


def _cagra_to_cpu(
    vectors: np.ndarray, keys: np.ndarray, dim: int, metric: str, plan: Plan
) -> Any:  # pragma: no cover - needs a GPU build of FAISS and a GPU
    resources = faiss.StandardGpuResources()
    config = faiss.GpuIndexCagraConfig()
    config.graph_degree = plan.params.get("graph_degree", DEFAULT_CAGRA_DEGREE)
    config.intermediate_graph_degree = config.graph_degree * 2
    cagra = faiss.GpuIndexCagra(resources, dim, faiss_metric(metric), config)
    cagra.train(vectors)
    served = faiss.IndexHNSWCagra()
    served.base_level_only = True
    cagra.copyTo(served)
    return keyed(served, keys, ef_search=plan.params.get("ef_search", DEFAULT_EF_SEARCH))


def keyed(served: Any, keys: np.ndarray, *, ef_search: int) -> Any:
    """``served``, a filled HNSW graph (the ``IndexHNSWCagra`` a GPU build converts to),
    answering with document keys: its i-th vector is ``keys[i]``. FAISS refuses to wrap a
    filled index in an id map, so the map is made around an empty stand-in and then given
    ``served``; the map and the graph are written to the snapshot together."""
    if len(keys) != served.ntotal:
        raise ValueError(f"{len(keys)} keys for an index of {served.ntotal} vectors")
    served.hnsw.efSearch = ef_search
    mapped = faiss.IndexIDMap2(faiss.IndexFlat(served.d, served.metric_type))
    mapped.index = served
    mapped.own_fields = False  # ``served`` is Python's to free, and kept alive here
    mapped.referenced_objects = [served]
    mapped.ntotal = served.ntotal
    faiss.copy_array_to_vector(np.ascontiguousarray(keys, dtype=np.int64), mapped.id_map)
    mapped.construct_rev_map()
    return mapped


def score(metric: str, raw: float) -> float:
    # FAISS gives inner products (cosine on unit vectors) or squared L2 distances
    return -float(np.sqrt(max(raw, 0.0))) if metric == "l2" else float(raw)


def search(
    index: Any,
    query: np.ndarray,
    k: int,
    metric: str,
    *,
    selector: Any = None,
    search_params: dict[str, Any] | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` nearest (document key, score), only among the ids ``selector`` (a FAISS
    ``IDSelector`` over the index's ids) admits when given."""
    if index.ntotal == 0 or k <= 0:
        return []
    distances, labels = nearest(
        index, prepare_query(query, metric), k, selector=selector, search_params=search_params
    )
    return [
        (int(key), score(metric, float(raw)))
        for key, raw in zip(labels, distances, strict=True)
        if key >= 0
    ]


def prepare_query(query: np.ndarray, metric: str) -> np.ndarray:
    return prepare(np.asarray(query, dtype=np.float32).reshape(1, -1), metric)


def nearest(
    index: Any,
    ready: np.ndarray,
    k: int,
    *,
    selector: Any = None,
    search_params: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's raw answer for one prepared query: (distances, ids), -1 ids for no hit."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    options = search_params or {}
    params: Any
    if isinstance(inner, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=selector, nprobe=options.get("nprobe", 16))
    elif isinstance(inner, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW(
            sel=selector, efSearch=max(options.get("ef_search", DEFAULT_EF_SEARCH), k)
        )
    else:
        params = faiss.SearchParameters(sel=selector)
    distances, labels = index.search(ready, min(k, index.ntotal), params=params)
    return distances[0], labels[0]

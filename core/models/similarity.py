"""Similar-image search: pooled patch features of a category's images in a Qdrant collection.

Embedded local mode (a folder on disk) by default; pass a server URL for larger deployments.
One collection per category (``inspect_<category>``); payloads keep path, split, defect and label.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client.http import models as qm

from core.data.dataset import CategoryData, Sample, legacy_key, read_batches
from core.types import NO_CONTROL, TrainControl

BATCH = 16


@dataclass(frozen=True)
class Hit:
    """One neighbour: ``key`` is the image's identity in its category (:attr:`core.data.dataset.Sample.key`)."""

    path: str
    similarity: float
    split: str
    defect: str
    label: int
    key: str


def open_client(local_path: str | Path | None = None, url: str | None = None) -> QdrantClient:
    """A Qdrant client: a server at ``url`` if given, else embedded local mode stored at ``local_path``."""
    if url:
        return QdrantClient(url=url, timeout=10)
    if local_path is None:
        return QdrantClient(location=":memory:")
    Path(local_path).mkdir(parents=True, exist_ok=True)
    return QdrantClient(path=str(local_path))


def collection_name(category: str) -> str:
    return f"inspect_{category}"


class SimilarityIndex:
    """Feature search over one client. ``embed(images) -> [N, D]`` supplies the vectors."""

    def __init__(self, client: QdrantClient) -> None:
        self.client = client

    def count(self, category: str) -> int:
        name = collection_name(category)
        if not self.client.collection_exists(name):
            return 0
        return int(self.client.count(name, exact=True).count)

    def build(self, data: CategoryData, embed: Callable[[Sequence[np.ndarray]], np.ndarray],
              control: TrainControl = NO_CONTROL) -> tuple[int, list[str]]:
        """(Re)index every train and test image of ``data`` with ``embed(images) -> [N, D]``.

        Returns (number indexed, problems with unreadable images).
        """
        samples: list[Sample] = [*data.train, *data.test]
        name = collection_name(data.name)
        problems: list[str] = []
        created = False
        point_id = 0
        for batch in read_batches(samples, BATCH):
            control.report(f"indexing {batch.start}/{len(samples)}", batch.start / max(1, len(samples)))
            problems.extend(batch.problems)
            chunk = batch.samples
            if not batch.images:
                continue
            vectors = np.asarray(embed(batch.images), dtype=np.float32)
            if not created:
                if self.client.collection_exists(name):
                    self.client.delete_collection(name)
                self.client.create_collection(name, vectors_config=qm.VectorParams(size=vectors.shape[1],
                                                                                   distance=qm.Distance.COSINE))
                created = True
            points = [qm.PointStruct(id=point_id + i, vector=v.tolist(),
                                     payload={"path": str(s.path.resolve()), "key": s.key, "split": s.split,
                                              "defect": s.defect, "label": s.label})
                      for i, (s, v) in enumerate(zip(chunk, vectors, strict=True))]
            point_id += len(points)
            self.client.upsert(name, points=points, wait=True)
        control.report("index ready", 1.0)
        return point_id, problems

    def query(self, category: str, vector: np.ndarray, k: int) -> list[Hit]:
        name = collection_name(category)
        if not self.client.collection_exists(name):
            raise LookupError(f"expected a similarity index for {category!r}, found none: build it first")
        result = self.client.query_points(name, query=np.asarray(vector, dtype=np.float32).tolist(), limit=k,
                                          with_payload=True)
        hits = []
        for p in result.points:
            payload = p.payload or {}
            hits.append(Hit(payload["path"], float(p.score), payload["split"], payload["defect"], int(payload["label"]),
                            payload.get("key") or legacy_key(payload["path"])))  # indexed before keys existed
        return hits

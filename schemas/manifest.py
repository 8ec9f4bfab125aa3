"""``OUT/manifest.json``: the provenance of a run, and what decides whether a rerun on an
existing output root is a resume (same identity) or a different job (refused)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tagcap.schemas import SCHEMA_VERSION


@dataclass
class InputFingerprint:
    """The sorted input list, each URL with its size and etag/mtime where the store has one."""

    urls: list[str]
    sizes: list[int | None]
    etags: list[str | None]

    def digest_source(self) -> list[Any]:
        return [self.urls, self.sizes, self.etags]


@dataclass
class RunManifest:
    tagcap_version: str
    captioner: str
    checkpoint_sha256: str | None
    generation_params: dict[str, Any]
    filter_params: dict[str, Any] | None
    input_fingerprint: dict[str, Any]
    config: dict[str, Any]
    identity: str  # sha256 of everything that changes the bytes of the output
    started: str
    finished: str | None = None
    status: str = "running"  # running | complete | incomplete
    shards_total: int = 0
    shards_committed: int = 0
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard -> reason
    # The stages after the captioner: stage, model_id, sha256, params (chain order).
    stages: list[dict[str, Any]] = field(default_factory=list)
    # The exclusion lists (name, url, sha256, kind, entries) and how they matched.
    exclusions: dict[str, Any] = field(default_factory=dict)
    samples_in: int = 0
    samples_written: int = 0
    samples_failed: int = 0
    schema: int = SCHEMA_VERSION

    def to_json_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, indent=1).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> RunManifest:
        raw = json.loads(data)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})

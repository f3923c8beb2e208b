"""Entering a model folder into a running server over HTTP: its files as blobs, then /api/create."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from modelyard.store.local import sha256_file

SMOLLM2 = "smollm2:135m"


def cache_root() -> Path:
    """Where tests keep what is slow to build (converted models): MODELYARD_TEST_CACHE or ~/.cache/modelyard."""
    return Path(os.environ.get("MODELYARD_TEST_CACHE") or Path.home() / ".cache" / "modelyard")


def upload_folder(url: str, folder: Path) -> dict[str, str]:
    """Every file of the folder as a blob; relative path -> digest."""
    files = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest = "sha256:" + sha256_file(path)
            if client.head(f"/api/blobs/{digest}").status_code != 200:
                with open(path, "rb") as file:
                    assert client.post(f"/api/blobs/{digest}", content=file).status_code == 201
            files[path.relative_to(folder).as_posix()] = digest
    return files


def create_from_folder(url: str, name: str, folder: Path, **fields: object) -> httpx.Response:
    body = {"model": name, "files": upload_folder(url, folder), "stream": False, **fields}
    return httpx.post(url + "/api/create", json=body, timeout=120)

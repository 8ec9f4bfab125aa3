"""A transformers model folder (what ``save_pretrained`` writes), checked without torch.

:func:`check_model_folder` runs on the driver before Ray starts: it lists the folder (local
or any fsspec URL), requires ``config.json`` and safetensors weights (pickled weights are
never loaded), optionally a processor and a chat template, and the architecture the config
names among the classes the installed transformers defines (read from its source files,
so that nothing imports torch). It returns a :class:`ModelFolder` with the weights'
sha256, or raises ValueError with one line that says what is wrong.

:func:`local_folder` is the actor's side: the folder as a local path (a remote one is
copied once per process).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from tagcap.schemas.layout import join_url
from tagcap.workers.storage import Storage

_CHUNK = 8 << 20
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


@dataclass(frozen=True)
class ModelFolder:
    """What the driver knows of a model folder: its files, config and weights' digest."""

    url: str
    files: tuple[str, ...]
    config: dict[str, Any]
    sha256: str
    json_files: dict[str, dict[str, Any]] = field(default_factory=dict)  # the folder's small JSON files, parsed

    @property
    def architecture(self) -> str:
        return str((self.config.get("architectures") or [""])[0])


def _weights_sha256(storage: Storage, url: str, names: list[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        with storage.open_read(join_url(url, name)) as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def architecture_defined(model_type: str, architecture: str) -> bool:
    """Whether the installed transformers defines ``architecture`` for ``model_type``,
    from its source files (no import of the model code, so no torch)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return False
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "models", model_type.replace("-", "_"))
    if not os.path.isdir(folder):
        return False
    needle = f"class {architecture}("
    for name in os.listdir(folder):
        if name.startswith("modeling_") and name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as fh:
                if needle in fh.read():
                    return True
    return False


def check_model_folder(
    url: str,
    storage: Storage,
    kind: str,
    needs_processor: bool = False,
    needs_chat_template: bool = False,
) -> ModelFolder:
    """The folder at ``url`` checked as described in the module's docstring. ``kind`` names
    the SPEC in messages (``alm``, ``lm``, ``hf``)."""
    if not url:
        raise ValueError(f"{kind} needs a model folder: {kind}:PATH_OR_URL")
    try:
        entries = storage.list_dir(url)
    except (FileNotFoundError, NotADirectoryError):
        entries = []
    names = sorted(e["url"].rstrip("/").rsplit("/", 1)[-1] for e in entries)
    if not names:
        raise ValueError(f"{kind}:{url}: no such model folder")
    if "config.json" not in names:
        raise ValueError(f"{kind}:{url}: no config.json (not a save_pretrained folder)")
    weights = [n for n in names if n.endswith(".safetensors")]
    if not weights:
        raise ValueError(f"{kind}:{url}: no .safetensors weights (pickled weights are not loaded)")
    json_files: dict[str, dict[str, Any]] = {}
    for name in names:
        if name.endswith(".json") and not name.endswith(".index.json") and name != "tokenizer.json":
            try:
                json_files[name] = json.loads(storage.read_bytes(join_url(url, name)))
            except ValueError as exc:
                raise ValueError(f"{kind}:{url}: {name} is not valid JSON ({exc})") from None
    config = json_files["config.json"]
    architecture = str((config.get("architectures") or [""])[0])
    model_type = str(config.get("model_type", ""))
    if not architecture or not model_type:
        raise ValueError(f"{kind}:{url}: config.json names no architecture and model_type")
    if not architecture_defined(model_type, architecture):
        raise ValueError(
            f"{kind}:{url}: the installed transformers has no {architecture} for model_type {model_type!r}"
        )
    if needs_processor and not any(n in names for n in PROCESSOR_FILES):
        raise ValueError(f"{kind}:{url}: no processor_config.json or preprocessor_config.json (save the processor too)")
    if needs_chat_template and not _has_chat_template(names, json_files):
        raise ValueError(
            f"{kind}:{url}: no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)"
        )
    if "tokenizer.json" not in names and "tokenizer_config.json" not in names:
        raise ValueError(f"{kind}:{url}: no tokenizer (tokenizer.json or tokenizer_config.json)")
    return ModelFolder(url, tuple(names), config, _weights_sha256(storage, url, weights), json_files)


def _has_chat_template(names: list[str], json_files: dict[str, dict[str, Any]]) -> bool:
    if any(n in names for n in CHAT_TEMPLATE_FILES):
        return True
    return any(json_files.get(n, {}).get("chat_template") for n in ("tokenizer_config.json", "processor_config.json"))


def local_folder(url: str, storage: Storage) -> str:
    """The model folder as a local path: itself where it is local, else a copy made once
    for this call (in a fresh temporary folder)."""
    fs, path = storage.fs(url)
    if storage.is_local(fs):
        return path
    local = tempfile.mkdtemp(prefix="tagcap-model-")
    for entry in storage.find(url):
        rel = entry["url"][len(url.rstrip("/")) + 1 :]
        dest = os.path.join(local, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with open(dest, "wb") as fh:
            fh.write(storage.read_bytes(entry["url"]))
    return local

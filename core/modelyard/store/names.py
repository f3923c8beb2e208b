"""Model names with Ollama's rules: `[host/][namespace/]model[:tag]`.

`llama3.2` is `registry.ollama.ai/library/llama3.2:latest`; the display form drops the default host and
namespace but always keeps the tag. Parts are validated before any of them reaches a file path.
"""

from __future__ import annotations

import re

import msgspec

from modelyard.errors import BadRequest

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_DIGEST = re.compile(r"sha256[:-][0-9a-fA-F]{64}")
_MODEL_OR_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


class ModelName(msgspec.Struct, frozen=True):
    host: str
    namespace: str
    model: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> ModelName:
        """The fully qualified name, or BadRequest("invalid model name")."""
        rest = text.split("://", 1)[1] if "://" in text else text
        rest, at, digest = rest.partition("@")
        if at and not _DIGEST.fullmatch(digest):
            raise BadRequest("invalid model name")
        tag = DEFAULT_TAG
        colon, slash = rest.rfind(":"), rest.rfind("/")
        if colon > slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
        parts = rest.split("/")
        if len(parts) > 3:
            raise BadRequest("invalid model name")
        model = parts[-1]
        namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
        host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
        name = cls(host=host, namespace=namespace, model=model, tag=tag)
        if not name.is_valid():
            raise BadRequest("invalid model name")
        return name

    def is_valid(self) -> bool:
        return bool(
            _HOST.fullmatch(self.host)
            and _NAMESPACE.fullmatch(self.namespace)
            and _MODEL_OR_TAG.fullmatch(self.model)
            and _MODEL_OR_TAG.fullmatch(self.tag)
            and ".." not in self.host
        )

    @property
    def display(self) -> str:
        """Ollama's DisplayShortest: `smollm2:135m`, `user/model:latest`, `host:5000/ns/m:tag`."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def fully_qualified(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """The path parts of the manifest below `manifests/`."""
        return (self.host, self.namespace, self.model, self.tag)

    def folded(self) -> tuple[str, ...]:
        """The key under which names match: Ollama matches local models case-insensitively."""
        return tuple(part.lower() for part in self.parts)


def strip_source(text: str) -> str:
    """The name without Ollama's `:local` source suffix (every model is local here).

    `:cloud` names ollama.com's hosted models, which modelyard does not proxy: such a name is left as it
    is (and is not found), except that asking for both sources is Ollama's 400.
    """
    base, sources = text, set()
    while base.endswith((":local", ":cloud")):
        sources.add(base[-5:])
        base = base[:-6]
    if "local" in sources and ("cloud" in sources or base.endswith("-cloud")):
        raise BadRequest(f'use either :local or :cloud, not both: "{text}"')
    return base if sources == {"local"} else text

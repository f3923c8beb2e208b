"""Model sources: where a requested name resolves to a model. The local store is one source; a backend
can offer models of its own (`Backend.models()`), which are listed, shown and run like stored ones."""

from __future__ import annotations

from modelyard.runtime.contract import ModelView
from modelyard.runtime.plugins import Backends
from modelyard.store.local import ModelStore
from modelyard.store.names import ModelName, strip_source


class ModelCatalog:
    def __init__(self, store: ModelStore, backends: Backends) -> None:
        self.store = store
        self.backends = backends

    def find(self, requested: str) -> ModelView | None:
        """The model a request names: the store's first, then those the backends offer."""
        name = ModelName.parse(strip_source(requested))
        stored = self.store.find(name)
        if stored is not None:
            return stored.view
        for backend in self.backends.backends:
            for offered in backend.models():
                if ModelName.parse(offered.name) == name:
                    return offered
        return None

"""Model sources: where a requested name resolves to a model. The local store is one source; a backend
can offer models of its own (`Backend.models()`), which are listed, shown and run like stored ones.

A stored model wins over an offered one of the same name, and among backends the first (by priority)
wins. Backends' `models()` is asked on every lookup that misses the store and on every listing, so a
backend whose list is costly to make keeps it cached itself.
"""

from __future__ import annotations

import builtins
import logging

from modelyard.errors import BadRequest
from modelyard.runtime.contract import ModelView
from modelyard.runtime.plugins import Backends
from modelyard.store.local import ModelStore, StoredModel
from modelyard.store.names import ModelName, strip_source

log = logging.getLogger(__name__)


class ModelCatalog:
    def __init__(self, store: ModelStore, backends: Backends) -> None:
        self.store = store
        self.backends = backends

    def find(self, requested: str) -> ModelView | None:
        """The model a request names: the store's first, then those the backends offer."""
        found = self.lookup(requested)
        return found.view if isinstance(found, StoredModel) else found

    def lookup(self, requested: str) -> StoredModel | ModelView | None:
        """Like `find`, with the store's own record for a stored model (for what only the store knows:
        licenses, modification time, the format's model_info)."""
        name = ModelName.parse(strip_source(requested))
        stored = self.store.find(name)
        if stored is not None:
            return stored
        wanted = name.folded()
        return next((view for view_name, view in self._offered() if view_name.folded() == wanted), None)

    def offered(self, stored: builtins.list[StoredModel] | None = None) -> builtins.list[ModelView]:
        """The models backends offer that the store does not hold (`stored`: its listing, when the caller
        has it), first offer of a name only."""
        taken = {model.name.folded() for model in (self.store.list() if stored is None else stored)}
        views = []
        for name, view in self._offered():
            if name.folded() not in taken:
                taken.add(name.folded())
                views.append(view)
        return views

    def list(self) -> list[ModelView]:
        """Every model by name: the store's (most recently modified first), then the offered ones."""
        return [model.view for model in self.store.list()] + self.offered()

    def _offered(self) -> builtins.list[tuple[ModelName, ModelView]]:
        offered = []
        for backend in self.backends.backends:
            for view in backend.models():
                try:
                    offered.append((ModelName.parse(view.name), view))
                except BadRequest:  # a name no client could ask for: the backend's mistake, not the request's
                    log.warning("backend %s offers a model with an invalid name: %r", backend.name, view.name)
        return offered

"""The registry's sensitivity cache: engine/search/cache.py's protocol over the tables
sensitivity_scopes and sensitivities. Entries are only ever added; one that is already there
(a concurrent search of the same model measured it first) keeps its first value."""

from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.dialects import postgresql, sqlite

from qrecipe.engine.search.cache import CacheScope, Key

from .db import read_session, write_session
from .models import Sensitivity, SensitivityScope, utcnow


class RegistrySensitivityCache:
    def __init__(self, engine: Engine):
        self.engine = engine

    def load(self, scope: CacheScope) -> dict[Key, float]:
        with read_session(self.engine) as s:
            rows = s.execute(select(Sensitivity.measure, Sensitivity.unit, Sensitivity.candidate, Sensitivity.value)
                             .where(Sensitivity.scope_key == scope.key)).all()
        return {(m, u, c): v for m, u, c, v in rows}

    def _insert(self):
        return (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert

    def store(self, scope: CacheScope, entries: dict[Key, float]) -> None:
        if not entries:
            return
        insert = self._insert()
        now = utcnow()
        with write_session(self.engine) as s:
            s.execute(insert(SensitivityScope).values(key=scope.key, model=scope.model, fingerprint=scope.fingerprint,
                                                      settings=scope.settings, created_at=now)
                      .on_conflict_do_nothing(index_elements=["key"]))
            s.execute(insert(Sensitivity).values([
                {"scope_key": scope.key, "measure": m, "unit": u, "candidate": c, "value": float(v), "created_at": now}
                for (m, u, c), v in entries.items()]).on_conflict_do_nothing(
                    index_elements=["scope_key", "measure", "unit", "candidate"]))

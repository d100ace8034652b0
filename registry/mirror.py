"""The MLflow Model Registry mirror of who holds which stage.

The SQL registry is the source of truth (stage_pointers, promotions); MLflow mirrors it:

    registered model   one per base model, named like its experiment: qrecipe-<model>
    model version      one per promoted variant, tagged qrecipe.variant_id, its recipe, target,
                       hashes and its metrics (metric.<name>); its source is the checkpoint:
                       the folder's path with a local store (sqlite:, file:), and with a
                       tracking server (which rejects local paths) runs:/<run>/model, the
                       checkpoint uploaded as an artifact of the variant's MLflow run (or of
                       a run made for it when that run is not in this store)
    alias              one per stage and target, e.g. production-cpu, production-h100
                       (aliases, not the stages MLflow deprecated in 2.9); it moves with
                       promotion and rollback

A pointer whose mirrored_promotion_id differs from its promotion_id is pending. sync()
applies every pending pointer (all of them with everything=True) and marks each mirrored
only if the pointer did not move meanwhile (else it applies the new state), so repeated and
concurrent syncs converge. Applying is idempotent: the version of a variant is found by its
tag before one is created. promote/rollback sync after their commit, every `qrecipe
variants` command catches up on pending pointers, and `qrecipe variants sync` does it on
demand; while MLflow cannot be reached the pointers stay pending and nothing else is held up.
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from sqlalchemy import Engine, or_, select, update

from qrecipe.engine.config.settings import Settings
from qrecipe.engine.errors import QRecipeError

from .artifacts import CHECKPOINT_MARKER, checkpoint_dir
from .db import read_session, write_session
from .models import StagePointer, Variant
from .promotion import alias_name
from .tracking import artifact_root, client_for, experiment_id, experiment_name, numeric_metrics, tracking_uri

log = logging.getLogger(__name__)

_REMOTE_SCHEMES = ("http://", "https://", "databricks")
_ARTIFACT = "model"  # the checkpoint's folder among a run's artifacts
_PASSES = 3  # re-applies when a pointer moves while it is being mirrored


class MirrorUnavailable(QRecipeError):
    """MLflow cannot be reached or refused the mirror's calls; the pointers stay pending."""


@dataclass(frozen=True)
class Slot:
    """A pointer as read for mirroring."""

    pointer_id: int
    promotion_id: int
    model: str
    target: str
    stage: str
    variant_id: str

    @property
    def label(self) -> str:
        return f"{self.model}/{self.target}/{self.stage}"


@dataclass
class SyncReport:
    synced: list[str] = field(default_factory=list)  # slot labels now mirrored
    pending: dict[str, str] = field(default_factory=dict)  # slot label -> why it is not

    def line(self) -> str:
        parts = []
        if self.synced:
            parts.append(f"mirrored {len(self.synced)} stage pointer(s) ({', '.join(self.synced)})")
        if self.pending:
            why = "; ".join(f"{k}: {v}" for k, v in self.pending.items())
            parts.append(f"{len(self.pending)} still pending ({why}); `qrecipe variants sync` retries")
        return "MLflow mirror: " + ("; ".join(parts) if parts else "up to date")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:300]


def _slot(pointer: StagePointer) -> Slot:
    return Slot(pointer.id, pointer.promotion_id, pointer.base_model.name, pointer.target, pointer.stage,
                pointer.variant_id)


def pending_slots(engine: Engine, everything: bool = False) -> list[Slot]:
    """The pointers MLflow does not reflect yet (every pointer with everything=True)."""
    with read_session(engine) as session:
        query = select(StagePointer).order_by(StagePointer.id)
        if not everything:
            query = query.where(or_(StagePointer.mirrored_promotion_id.is_(None),
                                    StagePointer.mirrored_promotion_id != StagePointer.promotion_id))
        return [_slot(p) for p in session.scalars(query).unique()]


def _mark_mirrored(engine: Engine, slot: Slot) -> bool:
    """Record that MLflow reflects slot's promotion, unless the pointer moved meanwhile."""
    with write_session(engine) as session:
        done = session.execute(update(StagePointer).where(StagePointer.id == slot.pointer_id,
                                                          StagePointer.promotion_id == slot.promotion_id)
                               .values(mirrored_promotion_id=slot.promotion_id))
        return done.rowcount == 1


def _reread(engine: Engine, pointer_id: int) -> Slot:
    with read_session(engine) as session:
        return _slot(session.get(StagePointer, pointer_id))


class ModelRegistryMirror:
    """Mirrors the stage pointers into the MLflow Model Registry of settings' tracking store."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.uri = tracking_uri(settings)
        self.remote = self.uri.startswith(_REMOTE_SCHEMES)
        self._errors: dict[str, str] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "ModelRegistryMirror | None":
        """None where tracking is off: there is no MLflow to mirror into."""
        return cls(settings) if settings.tracking.enabled else None

    def registered_model_name(self, model: str) -> str:
        return experiment_name(self.settings, model)

    def sync(self, engine: Engine, everything: bool = False) -> SyncReport:
        report = SyncReport()
        slots = pending_slots(engine, everything)
        if not slots:
            return report
        try:
            client = self._client()
        except Exception as e:  # noqa: BLE001 - any failure to reach MLflow leaves the pointers pending
            for slot in slots:
                report.pending[slot.label] = self._errors[slot.label] = _first_line(e)
            return report
        for slot in slots:
            try:
                self._catch_up(client, engine, slot)
            except Exception as e:  # noqa: BLE001 - one slot's failure must not hold up the others
                report.pending[slot.label] = self._errors[slot.label] = _first_line(e)
                log.debug("mirroring %s failed", slot.label, exc_info=True)
                continue
            self._errors.pop(slot.label, None)
            report.synced.append(slot.label)
        return report

    def slot_status(self, engine: Engine, model: str, target: str, stage: str) -> str:
        """'synced', or 'pending: WHY' for one slot (after sync)."""
        label = f"{model}/{target}/{stage}"
        for slot in pending_slots(engine):
            if slot.label == label:
                return f"pending: {self._errors.get(label, 'not mirrored yet')}"
        return "synced"

    def _client(self):
        if self.remote:
            self._check_answers()
        return client_for(self.settings)

    def _check_answers(self) -> None:
        """Fail fast when a server is down (MLflow's own client retries for minutes)."""
        try:
            with urllib.request.urlopen(f"{self.uri.rstrip('/')}/health", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answered (an auth proxy, an older server): MLflow's calls will tell
        except (OSError, ValueError) as e:
            raise MirrorUnavailable(f"MLflow at {self.uri} does not answer ({getattr(e, 'reason', e)})") from e

    def _catch_up(self, client, engine: Engine, slot: Slot) -> None:
        for _ in range(_PASSES):
            self._apply(client, engine, slot)
            if _mark_mirrored(engine, slot):
                return
            slot = _reread(engine, slot.pointer_id)  # promoted again meanwhile: mirror the new state
        raise MirrorUnavailable(f"the pointer kept moving during {_PASSES} attempts to mirror it")

    def _apply(self, client, engine: Engine, slot: Slot) -> None:
        with read_session(engine) as session:
            variant = session.get(Variant, slot.variant_id)
        name = self.registered_model_name(slot.model)
        self._ensure_registered_model(client, name, slot.model)
        version = self._version_of(client, name, variant)
        client.set_registered_model_alias(name, alias_name(slot.stage, slot.target), version)

    @staticmethod
    def _ensure_registered_model(client, name: str, model: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(name)
        except MlflowException:
            try:
                client.create_registered_model(name, tags={"qrecipe.model": model},
                                               description=f"qrecipe variants of {model}; aliases name the variant "
                                                           f"that holds a stage on a target (production-cpu, ...)")
            except MlflowException:
                client.get_registered_model(name)  # a concurrent sync created it; anything else raises here

    @staticmethod
    def _versions_of(client, name: str, variant_id: str) -> list[int]:
        found = client.search_model_versions(f"name = '{name}' and tags.`qrecipe.variant_id` = '{variant_id}'")
        return sorted(int(v.version) for v in found)

    def _version_of(self, client, name: str, variant: Variant) -> str:
        """The variant's model version, created (with its checkpoint as source) if it has none."""
        existing = self._versions_of(client, name, variant.id)
        if existing:
            return str(existing[0])
        source, run_id = self._source(client, variant)
        created = client.create_model_version(
            name, source, run_id=run_id, tags=version_tags(variant),
            description=f"{variant.recipe_name} of {variant.base_model.name} for {variant.target} "
                        f"(qrecipe variant {variant.id})")
        # Two syncs at once may both have created one: keep the oldest, drop ours if it is not.
        oldest = self._versions_of(client, name, variant.id)[0]
        if int(created.version) != oldest:
            client.delete_model_version(name, created.version)
        return str(oldest)

    def _source(self, client, variant: Variant) -> tuple[str, str | None]:
        """(model version source, run id): the checkpoint by path, or as a run artifact on a server."""
        folder = checkpoint_dir(variant.output_dir)
        if folder is None:
            raise MirrorUnavailable(f"variant {variant.id}: its checkpoint is not under {variant.output_dir} on this "
                                    f"machine; sync from the machine that holds it")
        run_id = self._run_in_store(client, variant.mlflow_run_id)
        if not self.remote:
            return str(folder.resolve()), run_id
        run_id = run_id or self._checkpoint_run(client, variant)
        if f"{_ARTIFACT}/{CHECKPOINT_MARKER}" not in {a.path for a in client.list_artifacts(run_id, _ARTIFACT)}:
            client.log_artifacts(run_id, str(folder), _ARTIFACT)
        return f"runs:/{run_id}/{_ARTIFACT}", run_id

    @staticmethod
    def _run_in_store(client, run_id: str | None) -> str | None:
        """run_id if this store has that run (the variant may have been tracked elsewhere)."""
        if not run_id:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return client.get_run(run_id).info.run_id
        except MlflowException:
            return None

    def _checkpoint_run(self, client, variant: Variant) -> str:
        """A run that holds the checkpoint of a variant whose own run is not in this store."""
        model = variant.base_model.name
        exp = experiment_id(client, experiment_name(self.settings, model), artifact_root(self.settings))
        tag = f"tags.`qrecipe.checkpoint_of` = '{variant.id}'"
        found = client.search_runs([exp], tag, max_results=1)
        if found:
            return found[0].info.run_id
        run = client.create_run(exp, run_name=f"checkpoint of {variant.id}",
                                tags={"qrecipe.checkpoint_of": variant.id, "qrecipe.variant_id": variant.id})
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id


def version_tags(variant: Variant) -> dict[str, str]:
    """What a model version carries: the variant's identity and its metrics."""
    tags = {"qrecipe.variant_id": variant.id, "qrecipe.model": variant.base_model.name,
            "qrecipe.recipe": variant.recipe_name, "qrecipe.target": variant.target,
            "qrecipe.scheme_mix": variant.scheme_mix, "qrecipe.plan_hash": variant.plan_hash,
            "qrecipe.recipe_hash": variant.recipe_hash, "qrecipe.output_dir": variant.output_dir or "",
            "qrecipe.mlflow_run_id": variant.mlflow_run_id or ""}
    tags.update({f"metric.{k}": repr(v) for k, v in numeric_metrics(variant.metrics or {}).items()})
    return tags

"""Like with like: which run of each variant the decision matrix, the report and the gates use.

A variant's figures come from its latest successful run under one eval protocol (how it was
measured: texts, windows, sequence length, task prompts, speed workload, device and dtype;
engine/evaluate/protocol.py). The protocol asked for is, unless told otherwise, the one the
command's own config would measure under on this machine (`qrecipe run` with the same
overrides): `requested_protocol(settings)`. `--protocol HASH` names another; `--any-protocol`
takes each variant's latest successful run whatever it was measured under, and the tables are
then split by protocol, each under its own heading, never mixed.

Runs recorded before protocols were (registry revision 0004) have none: they count as one
protocol of their own, "not recorded", which only --any-protocol shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from qrecipe.engine.evaluate.protocol import describe_protocol, eval_protocol, protocol_hash

from .db import RegistryError, read_session
from .models import SUCCEEDED, Variant, VariantRun

UNRECORDED = "unrecorded"


def requested_protocol(settings) -> tuple[str, dict[str, Any]]:
    """(hash, protocol) that `qrecipe run` with these settings measures under, on this machine."""
    from qrecipe.engine.models.loading import resolve_dtype
    from qrecipe.engine.planning import local_device

    device = local_device(settings)
    spec = eval_protocol(settings, device, resolve_dtype(settings.model.dtype, device))
    return protocol_hash(spec), spec


@dataclass(frozen=True)
class Measured:
    """One variant with the run its figures come from."""

    variant: Variant
    run: VariantRun

    @property
    def metrics(self) -> dict[str, Any]:
        return self.run.metrics or {}

    @property
    def protocol(self) -> str:
        return self.run.eval_protocol or UNRECORDED


@dataclass
class Selection:
    """The runs chosen under one protocol (or under any, split by protocol)."""

    protocol: str | None  # the protocol asked for; None: any
    rows: list[Measured] = field(default_factory=list)
    missing: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # variant -> its (hash, description)s
    specs: dict[str, dict[str, Any] | None] = field(default_factory=dict)  # hash -> protocol

    def by_protocol(self) -> dict[str, list[Measured]]:
        groups: dict[str, list[Measured]] = {}
        for row in self.rows:
            groups.setdefault(row.protocol, []).append(row)
        return groups

    def describe(self, protocol: str) -> str:
        return f"eval protocol {protocol}: {describe_protocol(self.specs.get(protocol))}"

    def missing_lines(self) -> list[str]:
        return [f"{vid}: no successful run under eval protocol {self.protocol}; measured under "
                + ("; ".join(f"{h} ({d})" for h, d in found) or "no protocol: it has no successful run")
                for vid, found in self.missing.items()]


def resolve_protocol(engine: Engine, ref: str) -> str:
    """The recorded protocol hash that is `ref` or starts with it."""
    with read_session(engine) as session:
        found = sorted(set(session.scalars(select(VariantRun.eval_protocol).where(
            VariantRun.eval_protocol.startswith(ref, autoescape=True)))))
    if len(found) == 1:
        return found[0]
    if not found:
        raise RegistryError(f"--protocol {ref}: no run in the registry was measured under such an eval protocol; "
                            f"`qrecipe variants show VARIANT` lists each run's")
    raise RegistryError(f"--protocol {ref}: matches {len(found)} protocols ({', '.join(found)}); give more of it")


def select_runs(engine: Engine, variants: list[Variant], protocol: str | None) -> Selection:
    """Per variant its latest successful run under `protocol` (None: under any)."""
    ids = [v.id for v in variants]
    with read_session(engine) as session:
        runs = list(session.scalars(select(VariantRun).where(VariantRun.variant_id.in_(ids),
                                                             VariantRun.status == SUCCEEDED)
                                    .order_by(VariantRun.run_number.desc())))
    selection = Selection(protocol)
    for r in runs:
        selection.specs.setdefault(r.eval_protocol or UNRECORDED, r.eval_protocol_spec)
    for v in variants:
        mine = [r for r in runs if r.variant_id == v.id]
        chosen = next((r for r in mine if protocol is None or (r.eval_protocol or UNRECORDED) == protocol), None)
        if chosen is not None:
            selection.rows.append(Measured(v, chosen))
        else:
            found = {r.eval_protocol or UNRECORDED: describe_protocol(r.eval_protocol_spec) for r in mine}
            selection.missing[v.id] = list(found.items())
    return selection


def choose_runs(engine: Engine, settings, variants: list[Variant], *, protocol: str | None = None,
                any_protocol: bool = False, named: bool = False, what: str = "variants compare") -> Selection:
    """The runs a matrix uses: under `protocol` (a hash or prefix), else under any protocol
    when `any_protocol`, else under the one `settings` measures under on this machine. Variants
    the caller `named` must all have such a run: a table silently missing one is refused."""
    spec = None
    if any_protocol:
        wanted = None
    elif protocol:
        wanted = resolve_protocol(engine, protocol)
    else:
        wanted, spec = requested_protocol(settings)
    selection = select_runs(engine, variants, wanted)
    if wanted is not None:
        selection.specs.setdefault(wanted, spec)
    if named and selection.missing:
        raise RegistryError(
            f"{what}: {len(selection.missing)} of the named variants have no successful run under eval protocol "
            f"{wanted} ({describe_protocol(selection.specs.get(wanted))}), so they cannot be put in one table with "
            f"the others: " + "; ".join(selection.missing_lines()) + ". Pass --protocol HASH to compare them under "
            "one they share, or --any-protocol to see each under its own protocol, in separate tables")
    return selection

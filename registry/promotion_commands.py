"""The promotion commands (registry/commands.py registers them under `qrecipe variants`):

    promote VARIANT [--stage production] [--force --reason R] [--actor A] [--any-protocol] [--json]
    rollback MODEL --target T [--stage production] [--reason R] [--actor A] [--json]
    history MODEL [--target T] [--stage S] [--json]
    sync [--all] [--json]

Each also takes config overrides (registry.url=..., tracking.uri=..., gates.max_kl_mean=...).
Who acts: --actor, else $QRECIPE_ACTOR, else the OS user. A refused promotion exits 3.
"""

from __future__ import annotations

import json
import sys

from qrecipe.engine.errors import ConfigError


def _parts(args, what: str, usage: str):
    """(the one positional argument, settings, registry engine, mirror)."""
    from .commands import open_for, one_ref, settings_for
    from .mirror import ModelRegistryMirror

    ref, overrides = one_ref(args.items, f"variants {args.variants_command}: name one {what}, e.g. {usage}")
    settings = settings_for(overrides)
    # promote and rollback sync the mirror themselves, after their commit
    engine = open_for(settings, catch_up=args.variants_command == "history")
    return ref, settings, engine, ModelRegistryMirror.from_settings(settings)


def _actor(args) -> str:
    from .promotion import default_actor

    return args.actor if args.actor is not None else default_actor()


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    if not result.changed:
        print(f"{result.variant_id} already holds {result.stage} of {result.model} for {result.target}: "
              f"nothing recorded")
    else:
        verb = "promoted" if result.action == "promote" else "rolled back to"
        replaced = f", replacing {result.previous_variant_id}" if result.previous_variant_id else ""
        print(f"{verb} {result.variant_id}: {result.stage} of {result.model} for {result.target}{replaced}")
        forced = f", FORCED past failed gates: {result.reason}" if result.forced else \
            (f", reason: {result.reason}" if result.reason else "")
        print(f"  promotion #{result.promotion_id} by {result.actor} at {str(result.created_at)[:19]}{forced}")
    if result.checks:
        print("  gates: " + "; ".join(("ok " if c.passed else "FAILED ") + c.describe() for c in result.checks))
    print(f"  MLflow alias {result.alias}: {result.mirror}")


def cmd_promote(args) -> int:
    from .gates import GatePolicy
    from .promotion import promote

    from .protocols import requested_protocol

    ref, settings, engine, mirror = _parts(args, "variant (its id or a unique prefix)",
                                           "qrecipe variants promote 3f9a --stage production")
    policy = GatePolicy.from_settings(settings)
    needs_default = not (args.any_protocol or policy.any_protocol or policy.protocol)
    protocol = policy.required_protocol(requested_protocol(settings)[0] if needs_default else None, args.any_protocol)
    result = promote(engine, ref, stage=args.stage, force=args.force, reason=args.reason, actor=_actor(args),
                     gates=policy, mirror=mirror, protocol=protocol)
    _print_result(result, args.json)
    return 0


def cmd_rollback(args) -> int:
    from .promotion import rollback

    model, _, engine, mirror = _parts(args, "base model",
                                       "qrecipe variants rollback smollm2-135m --target h100")
    result = rollback(engine, model, args.target, stage=args.stage, reason=args.reason, actor=_actor(args),
                      mirror=mirror)
    _print_result(result, args.json)
    return 0


def _gates_cell(gates: dict | None) -> str:
    if not gates:
        return "-"
    checks = gates.get("checks", [])
    failed = [c for c in checks if not c["passed"]]
    if not failed:
        return f"{len(checks)} passed" if checks else "none set"
    return "failed: " + ", ".join(f"{c['metric']} {c['value']:.4g}" if c["value"] is not None
                                  else f"{c['metric']} unmeasured" for c in failed)


def cmd_history(args) -> int:
    from qrecipe.engine.tables import text_table

    from .promotion_history import history, stage_holders

    model, _, engine, _mirror = _parts(args, "base model", "qrecipe variants history smollm2-135m")
    entries = history(engine, model, args.target, args.stage)
    holders = [p for p in stage_holders(engine, model) if (not args.target or p.target == args.target)
               and (not args.stage or p.stage == args.stage)]
    if args.json:
        print(json.dumps({"model": model, "trail": [e.to_dict() for e in entries],
                          "now": [{"target": p.target, "stage": p.stage, "variant_id": p.variant_id,
                                   "promotion_id": p.promotion_id,
                                   "mirrored": p.mirrored_promotion_id == p.promotion_id} for p in holders]}))
        return 0
    if not entries:
        print(f"no promotions of {model} yet: `qrecipe variants promote VARIANT` records one")
        return 0
    rows = [[str(e.id), str(e.created_at)[:19], e.action, e.target, e.stage, e.previous_variant_id or "-",
             f"{e.variant_id} ({e.variant_recipe})", e.actor, "yes" if e.forced else "", _gates_cell(e.gates),
             e.reason or ""] for e in entries]
    print(text_table(["#", "when (UTC)", "action", "target", "stage", "from", "to", "who", "forced", "gates", "reason"],
                 rows))
    for p in holders:
        mirrored = "mirrored in MLflow" if p.mirrored_promotion_id == p.promotion_id else "MLflow mirror pending"
        print(f"now: {p.stage} for {p.target} is {p.variant_id} (promotion #{p.promotion_id}; {mirrored})")
    return 0


def cmd_sync(args) -> int:
    from .commands import open_for, split_items, store_settings_for
    from .mirror import ModelRegistryMirror

    refs, overrides = split_items(args.items)
    if refs:
        raise ConfigError(f"variants sync: unexpected argument {refs[0]!r}; it takes only KEY=VALUE overrides "
                          f"and --all")
    settings = store_settings_for(overrides)
    mirror = ModelRegistryMirror.from_settings(settings)
    if mirror is None:
        raise ConfigError("tracking.enabled: tracking is off in this config, so there is no MLflow to sync; "
                          "drop tracking=off")
    report = mirror.sync(open_for(settings, catch_up=False), everything=args.all)
    if args.json:
        print(json.dumps({"synced": report.synced, "pending": report.pending}))
    else:
        print(report.line())
    return 0 if not report.pending else 1


def catch_up_mirror(settings, engine) -> None:
    """Mirror pending promotions into MLflow before a registry command (cheap when none are)."""
    from .mirror import ModelRegistryMirror, pending_slots

    mirror = ModelRegistryMirror.from_settings(settings)
    if mirror is None or not pending_slots(engine):
        return
    print(mirror.sync(engine).line(), file=sys.stderr)


def add_promotion_commands(vsub, common_flags) -> None:
    """Register promote, rollback, history and sync under `qrecipe variants`."""
    from .stages import STAGES

    def items(q, metavar: str) -> None:
        common_flags(q)
        q.add_argument("--json", action="store_true", help="print JSON")
        q.add_argument("items", nargs="*", metavar=metavar, help="then config overrides such as registry.url=...")

    q = vsub.add_parser("promote", help="make a variant the one that serves (quality gates, audit trail, MLflow alias)")
    q.add_argument("--stage", default="production", choices=STAGES)
    q.add_argument("--force", action="store_true", help="promote even though gates fail (needs --reason)")
    q.add_argument("--reason", help="why (recorded in the trail; required with --force)")
    q.add_argument("--actor", help="who promotes (default: $QRECIPE_ACTOR, else the OS user)")
    q.add_argument("--any-protocol", action="store_true",
                   help="judge the variant's latest run whatever eval protocol it was measured under")
    items(q, "VARIANT|KEY=VALUE")
    q.set_defaults(func=cmd_promote)

    q = vsub.add_parser("rollback", help="give a stage back to the variant that held it before")
    q.add_argument("--target", required=True, help="the deployment target whose stage to roll back (e.g. h100, cpu)")
    q.add_argument("--stage", default="production", choices=STAGES)
    q.add_argument("--reason", help="why (recorded in the trail)")
    q.add_argument("--actor", help="who rolls back (default: $QRECIPE_ACTOR, else the OS user)")
    items(q, "MODEL|KEY=VALUE")
    q.set_defaults(func=cmd_rollback)

    q = vsub.add_parser("history", help="the append-only promotion trail of a base model")
    q.add_argument("--target", help="only this target")
    q.add_argument("--stage", choices=STAGES, help="only this stage")
    items(q, "MODEL|KEY=VALUE")
    q.set_defaults(func=cmd_history)

    q = vsub.add_parser("sync", help="bring the MLflow Model Registry in line with the registry's stage pointers")
    q.add_argument("--all", action="store_true", help="re-apply every pointer, not only the pending ones")
    items(q, "KEY=VALUE")
    q.set_defaults(func=cmd_sync)

"""Promotion as a user does it, on two real TinyStories-656K variants recorded by `qrecipe run`:
a refusal that names the failed gates with the variant's own numbers, a passing promotion, a
forced one with its reason and actor, the trail, a rollback, and MLflow's registry read back
through its own client agreeing with the SQL registry at every step; then `qrecipe export`
of a registered variant, loaded by transformers."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
import torch
from conftest import STORIES, TINY_RUN

pytestmark = pytest.mark.slow

MODEL = "tinystories-656k"
RECIPES = {"w8a16": ["recipe=w8a16"],  # passes the default gates
           "w4a16": ["recipe=w4a16", "recipe.base.group_size=32"]}  # fails them (ppl, KL, top-1)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def recorded(home) -> dict[str, dict]:
    """recipe -> the run's summary (variant_id, metrics, output_dir, mlflow_run_id, tracking_uri)."""
    from qrecipe.engine.config import compose
    from qrecipe.engine.run import run
    from qrecipe.registry.recorder import RunRecorder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QRECIPE_HOME", str(home))
        return {name: run(compose(TINY_RUN + overrides), recorder=RunRecorder(), progress=False).summary()
                for name, overrides in RECIPES.items()}


@pytest.fixture
def cli(home, monkeypatch, capsys):
    """cli(*args) -> (exit code, stdout, stderr) against the module's registry and MLflow store."""
    from qrecipe.registry.cli import main

    monkeypatch.setenv("QRECIPE_HOME", str(home))

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # only this command's output
        rc = main(list(args))
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return call


def _production_in_mlflow(tracking_uri: str) -> tuple[str, object]:
    from mlflow.tracking import MlflowClient

    version = MlflowClient(tracking_uri).get_model_version_by_alias(f"qrecipe-{MODEL}", "production-cpu")
    return version.tags["qrecipe.variant_id"], version


def test_refuse_promote_force_history_rollback_and_mlflow_agrees(recorded, cli, monkeypatch):
    good, bad = recorded["w8a16"], recorded["w4a16"]
    g, b, m = good["variant_id"], bad["variant_id"], bad["metrics"]

    # the gates judge runs measured like the promoting config measures: the default config scores
    # WikiText-2, these variants were scored on TinyStories, so the gates refuse to judge them
    rc, out, err = cli("variants", "promote", g)
    assert rc == 3 and "has no successful run under eval protocol" in err and good["metrics"]["eval_protocol"] in err
    rc, out, err = cli("variants", "promote", b[:8], *TINY_RUN)
    assert rc == 3 and out == ""
    assert err.startswith(f"error: variant {b} (w4a16 of {MODEL} for cpu) fails 3 quality gates: ")
    assert (f"ppl_delta_pct {m['ppl_delta_pct']:.4g} > max_ppl_increase_pct 3; kl_mean {m['kl_mean']:.4g} > "
            f"max_kl_mean 0.05; top1_agreement {m['top1_agreement']:.4g} < min_top1_agreement 0.9") in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    rc, out, _ = cli("variants", "promote", g, "--json", *TINY_RUN)
    promoted = json.loads(out)
    assert rc == 0 and (promoted["variant_id"], promoted["actor"], promoted["mirror"]) == (g, getpass.getuser(),
                                                                                          "synced")
    assert _production_in_mlflow(good["tracking_uri"])[0] == g

    rc, _, err = cli("variants", "promote", b, "--force")
    assert rc == 2 and err.startswith("error: --reason: a forced promotion needs a reason")
    monkeypatch.setenv("QRECIPE_ACTOR", "release-bot")
    rc, out, _ = cli("variants", "promote", b, "--force", "--reason", "the 4-bit memory saving is worth it",
                     "gates.max_kl_mean=0.05", "--any-protocol")  # an override after the options is still an override
    assert rc == 0 and f"promoted {b}: production of {MODEL} for cpu, replacing {g}" in out
    assert "FORCED past failed gates: the 4-bit memory saving is worth it" in out
    held, version = _production_in_mlflow(bad["tracking_uri"])
    assert held == b and version.source == str(Path(bad["output_dir"]) / "model")
    assert float(version.tags["metric.kl_mean"]) == m["kl_mean"] and version.run_id == bad["mlflow_run_id"]

    rc, out, _ = cli("variants", "rollback", MODEL, "--target", "cpu", "--actor", "oncall", "--reason", "complaints")
    assert rc == 0 and f"rolled back to {g}: production of {MODEL} for cpu, replacing {b}" in out
    assert _production_in_mlflow(good["tracking_uri"])[0] == g

    rc, out, _ = cli("variants", "history", MODEL, "--json")
    shown = json.loads(out)
    assert [(e["action"], e["previous_variant_id"], e["variant_id"], e["actor"], e["forced"], e["reason"])
            for e in shown["trail"]] == [
        ("promote", None, g, getpass.getuser(), False, None),
        ("promote", g, b, "release-bot", True, "the 4-bit memory saving is worth it"),
        ("rollback", b, g, "oncall", False, "complaints")]
    assert [c["value"] for c in shown["trail"][1]["gates"]["checks"]] == \
        [m["ppl_delta_pct"], m["kl_mean"], m["top1_agreement"]]
    assert shown["now"] == [{"target": "cpu", "stage": "production", "variant_id": g,
                             "promotion_id": shown["trail"][2]["id"], "mirrored": True}]
    rc, out, _ = cli("variants", "history", MODEL)
    assert rc == 0 and "release-bot" in out and f"now: production for cpu is {g}" in out
    assert "failed: ppl_delta_pct" in out and "mirrored in MLflow" in out


def test_export_a_registered_variant_and_load_it_with_transformers(recorded, cli, tmp_path):
    from mlflow.tracking import MlflowClient
    from transformers import AutoModelForCausalLM

    from qrecipe.engine.checkpoint import load_checkpoint

    good = recorded["w8a16"]
    rc, out, _ = cli("export", good["variant_id"][:6], str(tmp_path / "ct"), "--json")
    record = json.loads(out)
    assert rc == 0 and (record["variant_id"], record["format"]) == (good["variant_id"], "compressed-tensors")
    ours, tokenizer, _ = load_checkpoint(Path(good["output_dir"]) / "model")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "ct").eval()
    tokens = torch.tensor([tokenizer(STORIES.read_text()[:4000])["input_ids"][:128]])
    with torch.no_grad():
        assert (ours(tokens).logits - theirs(tokens).logits).abs().max().item() <= 1e-4
    run = MlflowClient(good["tracking_uri"]).get_run(good["mlflow_run_id"])
    assert run.data.tags["qrecipe.export.compressed-tensors"] == str(tmp_path / "ct")

    rc, _, err = cli("export", "nosuchvariant", str(tmp_path / "other"))
    assert rc == 2 and err.startswith("error: variant 'nosuchvariant': no such variant in the registry")
    rc, _, err = cli("export", good["variant_id"], str(tmp_path / "ct"))
    assert rc == 2 and "already exists; choose a new folder" in err

"""`trtkit build` bundles: contents, verification gate, checksums, determinism, tampering."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.build import BuildOptions, build
from deploy.bundle import BundleError, VerifyPolicy, check_bundle


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trtkit.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="session")
def bundle(tiny_mxfp4, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "engine"
    build(tiny_mxfp4, out, BuildOptions(), log=lambda m: None)
    return out


def test_bundle_contents(bundle, tiny_mxfp4):
    names = {p.name for p in bundle.iterdir()}
    assert names == {"checkpoint", "recipes", "verification.json", "VERIFICATION.md", "manifest.json", "README.md"}
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key in ("created", "trtkit_version", "dependencies", "tensorrt_llm_target", "source", "files"):
        assert key in manifest, key
    assert manifest["source"]["path"] == str(tiny_mxfp4.resolve())
    assert manifest["dependencies"]["torch"] and "tensorrt_llm" in manifest["dependencies"]
    assert manifest["smoke_test"]["ran"] is False
    recipes = sorted(p.parent.relative_to(bundle / "recipes").as_posix()
                     for p in (bundle / "recipes").glob("*/*/recipe.yaml"))
    profiles = ("balanced", "latency", "throughput")
    assert recipes == sorted([f"{g}/{p}" for g in ("b200", "gb200", "h100", "h200") for p in profiles]
                             + [f"{g}/{p}-nvfp4" for g in ("h100", "h200") for p in profiles])
    for doc in (yaml.safe_load(p.read_text()) for p in (bundle / "recipes").glob("h*/*/recipe.yaml")):
        assert doc["layout"]["quant_algo"] != "NVFP4"   # Hopper never serves NVFP4 W4A4
        # the MXFP4 source, or this checkpoint's NVFP4 experts weight-only on the trtkit::moe plugin
        assert (doc["model"]["checkpoint"], doc["layout"]["moe_backend"] == "TRTKIT") in {("mxfp4", False),
                                                                                         ("nvfp4", True)}
    report = json.loads((bundle / "verification.json").read_text())
    assert report["passed"] and report["weights_only"]["kl_max"] == 0.0
    assert report["weights_only"]["top1_agreement"] == 1.0
    assert report["w4a4_emulated"]["kl_mean"] > 0
    ckpt_manifest = json.loads((bundle / "checkpoint" / "trtkit_manifest.json").read_text())
    assert ckpt_manifest["quantization"]["weights_only"] is False
    assert "Predicted figures" in (bundle / "README.md").read_text()
    assert check_bundle(bundle) == []


def test_bundle_check_detects_tampering(bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    r = cli("bundle", "check", str(copy))
    assert r.returncode == 0, r.stderr
    target = copy / "recipes" / "b200" / "balanced" / "llm_options.yaml"
    target.write_text(target.read_text().replace("max_batch_size", "max_batch_size ", 1))
    (copy / "extra.txt").write_text("x")
    (copy / "checkpoint" / "tokenizer.json").unlink()
    r = cli("bundle", "check", str(copy))
    assert r.returncode == 1
    assert "recipes/b200/balanced/llm_options.yaml: sha256 differs" in r.stderr
    assert "extra.txt: not listed in the manifest" in r.stderr
    assert "checkpoint/tokenizer.json: missing" in r.stderr


def test_failed_verification_fails_the_build_and_writes_nothing(tiny_mxfp4, tmp_path):
    out = tmp_path / "engine"
    strict = VerifyPolicy(w4a4_max_kl=0.0)  # W4A4 emulation always has some KL: must fail
    with pytest.raises(BundleError, match="verification failed: .* W4A4 KL mean"):
        build(tiny_mxfp4, out, BuildOptions(policy=strict), log=lambda m: None)
    assert not out.exists() and not (tmp_path / ".engine.partial").exists()


def test_build_is_deterministic_but_for_time_stamps(tiny_mxfp4, bundle, tmp_path):
    """The same source into the same OUT twice: every file identical except manifest's `created`."""
    out = bundle.parent / "engine-again"
    again_src = bundle.parent / "again"
    shutil.copytree(bundle, again_src)  # keep the session bundle; rebuild in its place
    build(tiny_mxfp4, bundle, BuildOptions(force=True), log=lambda m: None)
    a = json.loads((again_src / "manifest.json").read_text())
    b = json.loads((bundle / "manifest.json").read_text())
    assert a["files"] == b["files"]
    assert {k: v for k, v in a.items() if k != "created"} == {k: v for k, v in b.items() if k != "created"}
    assert not out.exists()


def test_cli_build_include_source(tiny_mxfp4, tmp_path):
    r = cli("build", "--gpus", "h100,b200", "--include-source", "--json", str(tiny_mxfp4), str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["verification"] == "passed" and summary["fallback_blocks"] == 0
    assert sorted({x.split("/")[0] for x in summary["recipes"]}) == ["b200", "h100"]
    assert (tmp_path / "e" / "source" / "config.json").is_file()
    bad = cli("build", "--gpus", "a100", str(tiny_mxfp4), str(tmp_path / "f"))
    assert bad.returncode == 2 and "choose from h100, h200, b200, gb200" in bad.stderr


def edited_manifest(bundle: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    edit(doc)
    (copy / "manifest.json").write_text(json.dumps(doc))
    return copy


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d.update(files=sorted(d["files"])), '"files" must map each file to its sha256, got list'),
    (lambda d: d.update(format="other/9"), "format 'other/9' is not 'trtkit.bundle/1'"),
    (lambda d: d.update(files={**d["files"], "README.md": "x"}), "\"files\"['README.md'] is not a sha256"),
    (lambda d: d.pop("verification"), '"verification" must be {"passed": true|false'),
])
def test_bundle_check_refuses_a_manifest_that_is_not_ours(bundle, tmp_path, edit, needle):
    copy = edited_manifest(bundle, tmp_path, edit)
    r = cli("bundle", "check", str(copy))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"trtkit: error: {copy / 'manifest.json'}: ") and needle in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    j = cli("bundle", "check", "--json", str(copy))
    doc = json.loads(j.stdout)
    assert j.returncode == 1 and doc["ok"] is False and needle in doc["problems"][0]


def test_bundle_check_fails_a_failed_verification(bundle, tmp_path):
    copy = edited_manifest(bundle, tmp_path, lambda d: d["verification"].update(passed=False))
    r = cli("bundle", "check", str(copy))
    assert r.returncode == 1 and "every file matches" not in r.stdout
    assert "verification.passed is false" in r.stderr
    report = json.loads((bundle / "verification.json").read_text())
    report["passed"] = False  # a report that failed, listed with its own hash: still refused
    (copy / "verification.json").write_text(json.dumps(report))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["verification.json"] = hashlib.sha256((copy / "verification.json").read_bytes()).hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    r = cli("bundle", "check", str(copy))
    assert r.returncode == 1 and r.stderr.strip() == f"{copy}: verification.json: does not say passed; do not " \
                                                     "serve this bundle, rebuild it"


def test_bundle_check_json(bundle):
    r = cli("bundle", "check", "--json", str(bundle))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert json.loads(r.stdout) == {"bundle": str(bundle), "ok": True, "files": len(manifest["files"]),
                                    "problems": []}
    assert manifest["sizes"] == {k: (bundle / k).stat().st_size for k in manifest["files"]}
    text = cli("bundle", "check", str(bundle))
    assert text.stdout == f"{bundle}: verification passed, {len(manifest['files'])} files; every file matches " \
                          "manifest.json\n"

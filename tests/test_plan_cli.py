"""`trtkit plan` and `trtkit plan estimate`: the contract scripts depend on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from recipes.recipe import FILES
from trtkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
ESTIMATE_KEYS = {"ttft_ms", "tpot_ms", "tps_per_user", "tps_per_gpu", "fits_memory", "max_concurrency", "breakdown"}


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_plan_json_writes_recipes_and_frontier(tmp_path):
    res = run("plan", "--model", "gpt-oss-120b", "--gpu", "gb200", "--gpus", "72", "--isl", "1024", "--osl", "1024",
              "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert set(doc["picks"]) == {"latency", "balanced", "throughput"}
    assert doc["frontier"] and all(c["fleet_gpus"] == 72 for c in doc["frontier"])
    users = [c["tps_per_user"] for c in doc["frontier"]]
    gpus = [c["tps_per_gpu"] for c in doc["frontier"]]
    assert users == sorted(users, reverse=True) and gpus == sorted(gpus)  # a Pareto frontier
    assert all(c["tp"] <= 72 and 128 % c["ep"] == 0 for c in doc["frontier"])
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for profile in doc["picks"]:
        assert sorted(p.name for p in (tmp_path / profile).iterdir()) == sorted(FILES)


def test_plan_table_marks_the_picks(tmp_path):
    res = run("plan", "--model", "gpt-oss-20b", "--gpu", "h200", "--gpus", "8", "--isl", "8192", "--osl", "1024",
              "--max-tpot-ms", "50", "--out", str(tmp_path))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("gpt-oss-20b on 8 x H200 SXM, ISL 8192 / OSL 1024, SLA TPOT <= 50 ms")
    assert lines[1].split()[:3] == ["pick", "GPUs/inst", "layout"]
    for profile in ("latency", "balanced", "throughput"):
        assert any(line.startswith(profile) or f",{profile}" in line for line in lines[3:]), profile
    tpots = [float(line.split()[-4]) for line in lines[3:-1]]
    assert tpots and max(tpots) <= 50


def test_target_users_sizes_the_fleet(tmp_path):
    res = run("plan", "--model", "gpt-oss-120b", "--gpu", "b200", "--isl", "1024", "--osl", "1024",
              "--target-users", "10000", "--min-tps-user", "50", "--out", str(tmp_path), "--json")
    assert res.exit_code == 0, res.output
    fleet = json.loads(res.output)["fleet_pick"]
    assert fleet["users"] >= 10000 and fleet["tps_per_user"] >= 50 and fleet["tp"] <= 8
    assert fleet["fleet_gpus"] == fleet["replicas"] * fleet["tp"]
    doc = yaml.safe_load((tmp_path / "balanced" / "recipe.yaml").read_text())
    assert doc["gpu"]["replicas"] * doc["workload"]["concurrency_per_instance"] >= 10000


def test_estimate_json_contract():
    res = run("plan", "estimate", "--model", "gpt-oss-120b", "--gpu", "b200", "--tp", "8", "--ep", "8",
              "--attention-dp", "--batch", "128", "--isl", "1024", "--osl", "1024", "--concurrency", "1024", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert ESTIMATE_KEYS <= set(doc)
    assert doc["fits_memory"] is True and doc["max_concurrency"] > 1024
    assert doc["tps_per_user"] == 1000 / doc["tpot_ms"]
    b = doc["breakdown"]
    assert b["layout"] == {"tp": 8, "ep": 8, "moe_tp": 1, "attention_dp": True, "moe_backend": "TRTLLM",
                           "quant": "NVFP4", "kv_dtype": "fp8", "max_batch_size": 128, "max_num_tokens": 8192,
                           "max_seq_len": 2048}
    assert set(b["decode_iteration"]["components"]) == {"dense", "attention", "moe", "lm_head"}
    assert {"bytes", "flops", "memory_ms", "compute_ms"} <= set(b["decode_iteration"]["components"]["moe"])
    assert "moe" in b["efficiency"] and "kv_budget" in b["memory"]["arithmetic"]


def test_estimate_hopper_defaults_to_mxfp4_and_rejects_w4a4():
    ok = json.loads(run("plan", "estimate", "--model", "gpt-oss-20b", "--gpu", "h100", "--tp", "1", "--batch", "8",
                        "--isl", "1024", "--osl", "1024", "--json").output)
    assert ok["breakdown"]["layout"]["quant"] == "W4A16_MXFP4" and ok["breakdown"]["layout"]["moe_backend"] == "TRITON"
    res = CliRunner().invoke(main, ["plan", "estimate", "--model", "gpt-oss-20b", "--gpu", "h100", "--tp", "1",
                                    "--batch", "8", "--isl", "1024", "--osl", "1024", "--quant", "NVFP4"])
    assert res.exit_code == 1
    assert res.output.startswith("trtkit: error: NVFP4 needs FP4 tensor cores (Blackwell, SM100)")
    assert len(res.output.strip().splitlines()) == 1


def test_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(main, ["plan", "estimate", "--model", "gpt-oss-120b", "--gpu", "gb200", "--tp", "72",
                                    "--ep", "72", "--attention-dp", "--batch", "8", "--isl", "1024", "--osl", "1024"])
    assert res.exit_code == 1
    assert res.output == ("trtkit: error: 128 experts do not divide over moe_expert_parallel_size=72 (128 / 72 = "
                          "1.78); use ep in [1, 2, 4, 8] (divides 128 and tp=72)\n")
    res = CliRunner().invoke(main, ["plan", "--model", "gpt-oss-120b", "--gpu", "h100", "--gpus", "8", "--isl", "1024",
                                    "--osl", "1024", "--min-tps-user", "5000", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "meets the SLA (tokens/s/user >= 5000)" in res.output
    res = CliRunner().invoke(main, ["plan", "--model", "no-such-model", "--gpu", "h100", "--gpus", "8", "--isl", "1",
                                    "--osl", "1", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "neither a built-in model" in res.output
    res = CliRunner().invoke(main, ["plan", "--gpu", "h100", "--gpus", "8"])
    assert res.exit_code == 2 and "missing --model, --isl, --osl" in res.output


def test_module_entry_point_runs_estimate():
    out = subprocess.run([sys.executable, "-m", "trtkit.cli", "plan", "estimate", "--model", "gpt-oss-20b", "--gpu",
                          "gb200", "--tp", "1", "--batch", "64", "--isl", "1024", "--osl", "1024", "--json"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert ESTIMATE_KEYS <= set(json.loads(out.stdout))


# ---- --out is written whole or not at all ------------------------------------------------------------

PLAN = ("plan", "--model", "gpt-oss-20b", "--gpu", "h100", "--gpus", "8", "--isl", "1024", "--osl", "1024")


def plan_cli(*args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """The real console script; `limit_bytes` caps any file it writes (RLIMIT_FSIZE: a full disk)."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "trtkit.cli", *PLAN, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, preexec_fn=cap if limit_bytes else None)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("trtkit: error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, (needle, r.stderr)


def test_plan_out_full_disk_leaves_nothing(tmp_path):
    out = tmp_path / "plan"
    r = plan_cli("--out", str(out), limit_bytes=20_000)  # recipes fit, frontier.png (~80 kB) does not
    one_line_error(r, str(out), "nothing was written")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no .plan.partial


def test_plan_out_existing_needs_force_and_is_replaced_whole(tmp_path):
    out = tmp_path / "plan"
    out.mkdir()
    (out / "stale.txt").write_text("from an older plan")
    one_line_error(plan_cli("--out", str(out)), "exists and is not empty; pass --force")
    assert sorted(p.name for p in out.iterdir()) == ["stale.txt"]
    r = plan_cli("--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["balanced", "frontier.png", "latency", "throughput"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan"]


def test_plan_out_unusable_locations(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(plan_cli("--out", str(afile)), "exists and is not a directory")
    one_line_error(plan_cli("--out", str(afile / "sub")), f"cannot create OUT {afile / 'sub'}: {afile} is a file")
    one_line_error(plan_cli("--out", "/proc/self/x"), "cannot create OUT /proc/self/x: ")


def test_search_options_before_estimate_are_refused_not_dropped():
    est = ["estimate", "--model", "gpt-oss-20b", "--gpu", "h100", "--tp", "1", "--batch", "8", "--isl", "1024",
           "--osl", "1024"]
    res = CliRunner().invoke(main, ["plan", "--gpus", "8", *est])
    assert res.exit_code == 2
    assert res.output == ("trtkit: error: `trtkit plan estimate` never sees the search options given before it "
                          "(--gpus): drop --gpus (`plan estimate` has no such option)\n")
    res = CliRunner().invoke(main, ["plan", "--model", "gpt-oss-120b", *est])
    assert res.exit_code == 2 and "(--model): put --model after `estimate`" in res.output
    assert run("plan", *est).exit_code == 0

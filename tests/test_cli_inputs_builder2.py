"""More bad inputs refused by the builder commands (convert --calibrate, verify, synth, forward): one
line naming the file/option and the fix, a non-zero exit, no traceback, nothing half-written. Driven
through the real CLI (subprocess) on real files."""

from __future__ import annotations

import json
import subprocess

import pytest
from cli_runner import TRTKIT, error_line, run_cli, usage_error


# ---- convert --calibrate --calib-input-ids: the same checked reader as forward --input-ids ---------
@pytest.mark.parametrize("content, reason", [
    (b"\xff\xfe\x00", "cannot read token ids"),
    (b"[[99999999999999999999999]]", "outside the vocabulary"),
    (b"[[true, false]]", "not an integer"),
    (b"[[1, 600]]", "outside the vocabulary (vocab_size 512"),
    (b"[[1, 2], []]", "row 1 is empty"),
    (b"{\"ids\": [1]}", "not a list"),
])
def test_calib_input_ids_bad_file_is_one_line_naming_it(tiny_mxfp4, tmp_path, content, reason):
    ids = tmp_path / "calib_ids.json"
    ids.write_bytes(content)
    out = tmp_path / "out"
    line = error_line(run_cli("convert", "--quiet", "--calibrate", "--calib-input-ids", str(ids),
                                  str(tiny_mxfp4), str(out)))
    assert str(ids) in line and reason in line, line
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


# ---- verify --num-tokens is bounded (no overflow, no multi-GB id tensor) -------------------------
@pytest.mark.parametrize("value", ["100000000000000000000", "1000000000", "1048577"])
def test_verify_num_tokens_is_bounded(tiny_mxfp4, value):
    line = usage_error(run_cli("verify", str(tiny_mxfp4), str(tiny_mxfp4), "--num-tokens", value))
    assert "'--num-tokens'" in line and "1<=x<=1048576" in line, line


# ---- synth --layers is bounded (10**8 built a 14 GB tensor list before the disk check) ------------
@pytest.mark.parametrize("value", ["100000000", "1025"])
def test_synth_layers_is_bounded(tmp_path, value):
    out = tmp_path / "big"
    r = subprocess.run([*TRTKIT, "synth", "--quiet", "--layers", value, str(out)], capture_output=True,
                       text=True, timeout=20)
    line = usage_error(r)
    assert "'--layers'" in line and "1<=x<=1024" in line, line
    assert not out.exists() and not list(tmp_path.iterdir())


# ---- --force onto a symlink replaces the link, never touches its target ---------------------------
def test_force_onto_symlink_keeps_target_and_leaves_no_old(tmp_path):
    target, link = tmp_path / "z0", tmp_path / "zlink"
    subprocess.run([*TRTKIT, "synth", "--quiet", str(target)], check=True, capture_output=True, timeout=120)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    link.symlink_to("z0")
    r = run_cli("synth", "--quiet", "--force", "--seed", "3", str(link))
    assert r.returncode == 0, r.stderr
    assert link.is_dir() and not link.is_symlink()
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z0", "zlink"]  # no .zlink.old, no .partial


def test_force_onto_dangling_symlink(tmp_path):
    link = tmp_path / "dang"
    link.symlink_to("nowhere")
    r = run_cli("synth", "--quiet", "--force", str(link))
    assert r.returncode == 0, r.stderr
    assert link.is_dir() and not link.is_symlink() and (link / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dang"]


# ---- ids longer than max_position_embeddings (tiny: 4096) are refused, as plan refuses them --------
@pytest.mark.parametrize("command", ["forward", "verify", "convert"])
def test_input_ids_longer_than_max_positions(tiny_mxfp4, tmp_path, command):
    ids = tmp_path / "long_ids.json"
    ids.write_text(json.dumps([[1] * 5000]))
    out = tmp_path / "out"
    args = {"forward": ["forward", str(tiny_mxfp4), "--input-ids", str(ids), "--out", str(out)],
            "verify": ["verify", str(tiny_mxfp4), str(tiny_mxfp4), "--input-ids", str(ids)],
            "convert": ["convert", "--quiet", "--calibrate", "--calib-input-ids", str(ids), str(tiny_mxfp4),
                        str(out)]}[command]
    line = error_line(run_cli(*args))
    assert str(ids) in line and "5000 ids" in line and "max_position_embeddings 4096" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long_ids.json"]


# ---- verify of a folder against itself: a warning, not an error -----------------------------------
def test_verify_same_folder_warns(tiny_mxfp4, tmp_path):
    link = tmp_path / "alias"
    link.symlink_to(tiny_mxfp4)
    r = run_cli("verify", "--json", "--num-tokens", "8", str(tiny_mxfp4), str(link))
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("trtkit: warning: ")]
    assert len(warnings) == 1 and "same folder" in warnings[0] and "Traceback" not in r.stderr, r.stderr
    assert json.loads(r.stdout)["passed"] is True


def test_verify_different_folders_do_not_warn(tiny_mxfp4, tiny_bf16):
    r = run_cli("verify", "--json", "--num-tokens", "8", str(tiny_mxfp4), str(tiny_bf16))
    assert "warning" not in r.stderr, r.stderr


# ---- SIGTERM cleans up like Ctrl-C: no .OUT.partial left ------------------------------------------
def test_sigterm_during_synth_removes_partial(tmp_path):
    import signal
    import time

    out, partial = tmp_path / "big", tmp_path / ".big.partial"
    # one gpt-oss-20b layer plus its 201088-token embeddings: a few GB, seconds of writing
    proc = subprocess.Popen([*TRTKIT, "synth", "--quiet", "--shape", "gpt-oss-20b", "--layers", "1", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert partial.exists(), "synth never started writing"
        time.sleep(0.5)  # inside the write
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, (proc.returncode, stderr)
    assert "Traceback" not in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_forward_logits_file_follows_the_umask(tiny_mxfp4, tmp_path):
    """The logits go through a private temporary file (mode 0600); the file left behind is an ordinary
    output, readable as the user's umask says (0644 under 022)."""
    ids, out = tmp_path / "ids.json", tmp_path / "logits.safetensors"
    ids.write_text(json.dumps([[1, 2, 3]]))
    r = subprocess.run(["sh", "-c", 'umask 022 && exec "$@"', "sh", *TRTKIT, "forward", str(tiny_mxfp4),
                        "--input-ids", str(ids), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_mode & 0o777 == 0o644


# ---- synth --seed: the generators take 0 .. 2**63 - 1; outside, two seeds would silently give one checkpoint --

@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_synth_refuses_a_seed_the_generators_would_wrap(tmp_path, seed):
    out = tmp_path / "ckpt"
    r = run_cli("synth", "--quiet", "--seed", seed, str(out))
    assert "Invalid value for '--seed'" in usage_error(r) and not out.exists()

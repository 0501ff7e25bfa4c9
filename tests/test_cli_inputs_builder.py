"""Bad command-line values and bad files refused by the builder commands (synth, convert, forward, verify):
one line naming the option/file/tensor/field and the fix, a non-zero exit, no traceback, nothing
half-written. Driven through the real CLI (subprocess) on real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runner import error_line, run_cli, usage_error


@pytest.fixture
def src(tiny_mxfp4, tmp_path) -> Path:
    out = tmp_path / "src"
    shutil.copytree(tiny_mxfp4, out)
    return out


# ---- --max-shard-gb -------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["synth", "convert"])
@pytest.mark.parametrize("value, reason", [("nan", "'nan' is not a finite number"),
                                           ("inf", "'inf' is not a finite number"),
                                           ("0", "0.0 is not in the range 0<x"),
                                           ("-1", "-1.0 is not in the range 0<x")])
def test_max_shard_gb_must_be_finite_and_positive(tiny_mxfp4, tmp_path, command, value, reason):
    out = tmp_path / "out"
    args = [str(out)] if command == "synth" else [str(tiny_mxfp4), str(out)]
    line = usage_error(run_cli(command, "--quiet", "--max-shard-gb", value, *args))
    assert "'--max-shard-gb'" in line and reason in line, line
    assert not out.exists()


# ---- verify thresholds ----------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, reason", [
    ("--max-kl", "nan", "'nan' is not a finite number"),
    ("--max-kl", "-0.5", "-0.5 is not in the range x>=0"),
    ("--min-top1", "1.5", "1.5 is not in the range 0<=x<=1"),
    ("--min-top1", "-0.1", "-0.1 is not in the range 0<=x<=1"),
    ("--min-top1", "nan", "'nan' is not a finite number"),
])
def test_verify_thresholds_are_range_checked(tiny_mxfp4, option, value, reason):
    line = usage_error(run_cli("verify", option, value, str(tiny_mxfp4), str(tiny_mxfp4)))
    assert f"'{option}'" in line and reason in line, line


# ---- verify --num-tokens --------------------------------------------------------------------------
def test_verify_refuses_num_tokens_with_input_ids(tiny_mxfp4, tmp_path):
    ids = tmp_path / "ids.json"
    ids.write_text("[[1, 2, 3]]")
    line = usage_error(run_cli("verify", "--num-tokens", "8", "--input-ids", str(ids), str(tiny_mxfp4),
                               str(tiny_mxfp4)))
    assert "--num-tokens" in line and "--input-ids" in line and "one or the other" in line, line
    ok = run_cli("verify", "--json", "--input-ids", str(ids), str(tiny_mxfp4), str(tiny_mxfp4))
    assert ok.returncode == 0 and '"positions": 3' in ok.stdout, ok.stderr


def test_verify_num_tokens_rounding_is_documented(tiny_mxfp4):
    """--num-tokens 200 runs 2 whole 128-token sequences; the help says so, with that very example."""
    assert "200 runs 2 x 128 = 256" in " ".join(run_cli("verify", "--help").stdout.split())
    r = run_cli("verify", "--json", "--num-tokens", "200", str(tiny_mxfp4), str(tiny_mxfp4))
    assert r.returncode == 0 and '"positions": 256' in r.stdout, r.stderr


# ---- config.json typing -----------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("hidden_size", None), ("num_attention_heads", "four"),
                                          ("hidden_size", 128.5), ("swiglu_limit", "seven")])
def test_convert_refuses_mistyped_config_field(src, tmp_path, field, value):
    cfg = json.loads((src / "config.json").read_text())
    cfg[field] = value
    (src / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out"
    line = error_line(run_cli("convert", "--quiet", str(src), str(out)))
    assert f"{src / 'config.json'}: field '{field}' is {json.dumps(value)}; expected" in line, line
    assert not out.exists()


# ---- model.safetensors.index.json ------------------------------------------------------------------
@pytest.mark.parametrize("weight_map, fragment", [
    ([1, 2], 'not a valid safetensors index ("weight_map" [1, 2]; expected a "weight_map" object'),
    ({"model.norm.weight": 5}, "tensor model.norm.weight maps to 5, not a shard file name"),
])
def test_malformed_index_is_named(src, tmp_path, weight_map, fragment):
    index = src / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = weight_map if isinstance(weight_map, list) else {**data["weight_map"], **weight_map}
    index.write_text(json.dumps(data))
    out = tmp_path / "out"
    line = error_line(run_cli("convert", "--quiet", str(src), str(out)))
    assert line.startswith(f"trtkit: error: {index}: ") and fragment in line and "regenerate" in line, line
    assert not out.exists()


# ---- output locations that cannot be created ---------------------------------------------------------
def _commands(kind: str, tiny: Path, tmp_path: Path, out: Path) -> list[str]:
    ids = tmp_path / "ids.json"
    ids.write_text("[[1, 2, 3]]")
    return {"synth": ["synth", "--quiet", str(out)],
            "convert": ["convert", "--quiet", str(tiny), str(out)],
            "forward": ["forward", "--input-ids", str(ids), "--out", str(out), str(tiny)]}[kind]


@pytest.mark.parametrize("kind", ["synth", "convert", "forward"])
def test_out_under_a_file_cannot_be_created(tiny_mxfp4, tmp_path, kind):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    out = blocker / "out"
    line = error_line(run_cli(*_commands(kind, tiny_mxfp4, tmp_path, out)))
    assert line == f"trtkit: error: cannot create OUT {out}: {blocker} is a file, not a directory; choose another OUT"
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ["synth", "convert", "forward"])
def test_out_where_nothing_can_be_created(tiny_mxfp4, tmp_path, kind):
    """/proc/self exists and is a directory, but takes no new entries (root included): not 'out of disk space'."""
    out = Path("/proc/self/trtkit-out")
    line = error_line(run_cli(*_commands(kind, tiny_mxfp4, tmp_path, out)))
    assert line.startswith(f"trtkit: error: cannot create OUT {out}: /proc/self does not accept new files ("), line
    assert line.endswith("); choose another OUT") and "disk space" not in line


def test_forward_out_is_a_directory(tiny_mxfp4, tmp_path):
    line = error_line(run_cli(*_commands("forward", tiny_mxfp4, tmp_path, tmp_path)))
    assert line == (f"trtkit: error: {tmp_path}: is a directory; pass a file name for the logits, e.g. "
                    f"{tmp_path / 'logits.safetensors'}")


def test_creatable_check_leaves_nothing_behind(tmp_path):
    from builder.writer import check_creatable

    assert check_creatable(tmp_path / "a" / "b" / "out") == tmp_path
    assert list(tmp_path.iterdir()) == []

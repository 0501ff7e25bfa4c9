"""Bad input to `trtkit launch` and `trtkit build`: one line naming the file and field, a non-zero exit,
no traceback. Driven through the real CLI (click's runner) on real files."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from trtkit.cli import main

ROOT = Path(__file__).resolve().parents[1]
INV = Path(__file__).parent / "data" / "inventories"
CATALOG_RECIPE = ROOT / "recipes" / "catalog" / "gpt-oss-20b" / "h100" / "1k1k_balanced"


def trtkit(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(res, code: int, *needles: str) -> str:
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    err = res.stderr.strip()
    assert err.startswith("trtkit: error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ---- inventory YAML ----------------------------------------------------------------------------------

GOOD_GPU = "{name: NVIDIA H100 80GB HBM3, memory_gb: 79.6, compute_capability: '9.0', nvlink_links: 18}"


def inventory(tmp_path: Path, gpu: str = GOOD_GPU, extra: str = "") -> Path:
    path = tmp_path / "inv.yaml"
    path.write_text(f"hostname: n1\ndriver_version: '570.124.06'\ncuda_version: '12.8'\ngpu: {gpu}\ncount: 8\n"
                    f"{extra}")
    return path


def launch_dry(inv: Path):
    return trtkit("launch", str(CATALOG_RECIPE), "--dry-run", "--inventory", str(inv))


def test_unquoted_compute_capability_is_the_number_it_looks_like(tmp_path):
    res = launch_dry(inventory(tmp_path, GOOD_GPU.replace("'9.0'", "9.0")))
    assert res.exit_code == 0, res.output
    assert "sm 9.0" in res.stdout and "chosen: h100/balanced" in res.stdout


@pytest.mark.parametrize("gpu, extra, needle", [
    (GOOD_GPU.replace("'9.0'", "nine"), "", "gpu.compute_capability: 'nine' must be MAJOR.MINOR, like \"9.0\""),
    (GOOD_GPU.replace("79.6", "lots"), "", "gpu.memory_gb: 'lots' must be a number of GB"),
    (GOOD_GPU.replace("79.6", "-80"), "", "gpu.memory_gb: -80 must be > 0 GB"),
    (GOOD_GPU.replace("79.6", ".nan"), "", "gpu.memory_gb: nan must be a number of GB"),
    (GOOD_GPU.replace("}", ", mig: 'no'}"), "", "gpu.mig: 'no' must be true or false (unquoted)"),
    (GOOD_GPU.replace("nvlink_links: 18", "nvlink_links: 1.5"), "", "gpu.nvlink_links: 1.5 must be a whole number"),
    (GOOD_GPU.replace("memory_gb", "memory_GB"), "", "gpu.memory_GB: unknown field"),
    (GOOD_GPU, "env: {shm_gb: big}\n", "env.shm_gb: 'big' must be a number of GB"),
    (GOOD_GPU, "env: {gdrcopy: 'yes'}\n", "env.gdrcopy: 'yes' must be true or false"),
    (GOOD_GPU, "env: [1]\n", "env must be a mapping of imex_channels, shm_gb, gdrcopy"),
    ("[1, 2]", "", "gpu must be a mapping of name, memory_gb"),
])
def test_inventory_fields_are_checked(tmp_path, gpu, extra, needle):
    inv = inventory(tmp_path, gpu, extra)
    one_line_error(launch_dry(inv), 2, f"{inv}: {needle}")


def test_inventory_mig_yaml_booleans_still_work(tmp_path):
    off = launch_dry(inventory(tmp_path, GOOD_GPU.replace("}", ", mig: no}")))
    assert off.exit_code == 0, off.output
    on = launch_dry(inventory(tmp_path, GOOD_GPU.replace("}", ", mig: true}")))
    one_line_error(on, 2, "MIG enabled on GPU(s) [0, 1, 2, 3, 4, 5, 6, 7]")


@pytest.mark.parametrize("text, needle", [
    ("gpu: {name: x\n", "line 2, column 1: invalid YAML (expected ',' or '}', but got '<stream end>'"),
    ("a: b: c\n", "line 1, column 5: invalid YAML (mapping values are not allowed here)"),
    ("driver_version: '570\n", "line 2, column 1: invalid YAML (found unexpected end of stream while scanning a quoted scalar)"),
    ("- 1\n", "the inventory must be a mapping of hostname, driver_version"),
    ("hostname: n\ndriver_version: '1'\ncuda_version: '2'\n", "give either gpus: ["),
])
def test_inventory_yaml_errors_are_one_line(tmp_path, text, needle):
    inv = tmp_path / "inv.yaml"
    inv.write_text(text)
    one_line_error(launch_dry(inv), 2, f"{inv}: {needle}")

"""TensorRT-LLM's side of the trtkit plugins: how `trtllm-serve` finds the out-of-tree gpt-oss model.

`trtllm-serve CKPT --custom_module_dirs DIR` adds DIR's parent at the front of sys.path (unless it is
already there) and imports DIR's name as a top-level package, so every module beside it becomes importable under a bare name. This folder
therefore holds nothing but that package (`trtllm_gptoss/`); pointing at a package directly under
`plugins/` would expose `moe`, `formats`, `ops`, ... as top-level modules.

The facts a launcher needs, relative to the root of a trtkit checkout or install (`TRTKIT_DIR`: the
folder that holds `plugins/`). Both PYTHONPATH entries matter: `plugins.*` for the MoE module itself,
and `trtllm_gptoss` by its bare name. Plain `trtllm-serve` builds the model in an MPI worker that gets
the server's sys.path and unpickles the registered class by module name; but under
`trtllm-llmapi-launch` (Slurm) the model is built by a leader process that never sees
`--custom_module_dirs`, and Dynamo has no such flag: there only PYTHONPATH finds the package (read in
TensorRT-LLM's `tools/importlib_utils.py`, `executor/proxy.py`, `executor/worker.py`,
`llmapi/mpi_session.py`). Importing this package imports nothing else.
"""

PACKAGE = "trtllm_gptoss"
MODULE_DIR = "plugins/trtllm/" + PACKAGE       # --custom_module_dirs
PYTHONPATH = (".", "plugins/trtllm")           # sys.path entries for the server and its workers
STORAGE_ENV = "TRTKIT_MOE_STORAGE"             # expert storage of the MoE module: auto | frag | spread | kmajor
# the first is the default: auto = frag (the Gluon kernel) on Hopper with Triton >= 3.6, else spread
# (fastest first on H100: BENCHMARKS.md)
STORAGES = ("auto", "frag", "spread", "kmajor")
# TrtkitMoE's (spread, frag) arguments by storage (None: its own choice)
STORAGE_ARGS = {"auto": (None, None), "frag": (True, True), "spread": (True, False), "kmajor": (False, False)}


def pythonpath(root: str) -> list[str]:
    """The PYTHONPATH entries under a trtkit root written as `root` (a path, a mount point or a shell
    expansion such as '"$TRTKIT_DIR"')."""
    return [root if entry == "." else f"{root}/{entry}" for entry in PYTHONPATH]

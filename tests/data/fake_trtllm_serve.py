"""Stands in for `trtllm-serve` in launcher tests: a real process serving /health on loopback.

FAKE_MODE: ready (serve until SIGTERM/SIGINT, exit 0), never (never answers /health), crash (exit 7).
FAKE_ARGV_FILE: where to record argv (JSON), to check that values arrive as plain arguments.
FAKE_ENV_FILE: where to record PYTHONPATH, TRTKIT_MOE_STORAGE and which trtkit modules it can find.
"""

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

argv = sys.argv[1:]
if os.environ.get("FAKE_ARGV_FILE"):
    with open(os.environ["FAKE_ARGV_FILE"], "w") as f:
        json.dump(argv, f)
if os.environ.get("FAKE_ENV_FILE"):  # what a worker process of this server could import
    import importlib.util

    with open(os.environ["FAKE_ENV_FILE"], "w") as f:
        json.dump({"PYTHONPATH": os.environ.get("PYTHONPATH"),
                   "TRTKIT_MOE_STORAGE": os.environ.get("TRTKIT_MOE_STORAGE"),
                   "finds": {m: importlib.util.find_spec(m) is not None
                             for m in ("trtllm_gptoss", "plugins.moe_layer")}}, f)
mode = os.environ.get("FAKE_MODE", "ready")
if mode == "crash":
    time.sleep(0.2)
    print("fake server: crashing", flush=True)
    sys.exit(7)
port = int(argv[argv.index("--port") + 1])


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health" and mode == "ready"
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", port), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"fake server: listening on {port}", flush=True)


def stop(signum, frame):
    print(f"fake server: got signal {signum}", flush=True)
    server.shutdown()
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
deadline = time.time() + 60  # bounded: never outlives a test
while time.time() < deadline:
    time.sleep(0.1)
sys.exit(0)

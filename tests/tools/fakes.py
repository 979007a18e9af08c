"""Stand-ins for `grafana` and `otelcol-contrib`, which no registry here provides.

They test `stack up`'s wiring only (which binary it finds, the argv, environment
and generated config it hands over, the readiness URL it polls); the real
configs are checked against the real component lists elsewhere.  Each fake
records what it was given as JSON and answers its health URL.
"""

from __future__ import annotations

import sys
from pathlib import Path

_FAKE = """#!{python}
import http.server, json, os, sys
import yaml

name = os.path.basename(sys.argv[0])
record = {{"argv": sys.argv, "env": {{k: v for k, v in os.environ.items() if k.startswith("GF_")}}}}
if name == "grafana":
    host, port, path = "127.0.0.1", int(os.environ["GF_SERVER_HTTP_PORT"]), "/api/health"
else:
    cfg_path = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")][0]
    record["config"] = yaml.safe_load(open(cfg_path))
    host, port = record["config"]["extensions"]["health_check"]["endpoint"].split(":")
    port, path = int(port), "/"
with open(os.path.join({out!r}, name + ".json"), "w") as f:
    json.dump(record, f)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == path else 404)
        self.end_headers()
    def log_message(self, *a):
        pass

http.server.HTTPServer((host, port), H).serve_forever()
"""


def install_fakes(bin_dir: Path, out_dir: Path) -> Path:
    """Write fake `grafana` and `otelcol-contrib` into bin_dir; returns a fake Grafana home."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("grafana", "otelcol-contrib"):
        exe = bin_dir / name
        exe.write_text(_FAKE.format(python=sys.executable, out=str(out_dir)))
        exe.chmod(0o755)
    home = bin_dir.parent / "grafana-home"
    (home / "conf").mkdir(parents=True, exist_ok=True)
    (home / "conf" / "defaults.ini").write_text("; fake\n")
    return home

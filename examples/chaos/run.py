"""Run an example experiment end to end: start the shop and the fault proxy under a
Supervisor, then ``chaos validate`` and ``chaos run`` the experiment against them.

    python examples/chaos/run.py examples/chaos/stoic-experiment.json
    python examples/chaos/run.py examples/chaos/toxiproxy-experiment.json --journal out.json

Ports default to the ones in proxies.json (shop 8000, proxy 8100, API 8474). The exit status
is chaos's: 0 when the experiment completed with its steady state held before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from stoic.chaos import Supervisor

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--shop-port", type=int, default=8000)
    parser.add_argument("--proxy-port", type=int, default=8100)
    parser.add_argument("--api-port", type=int, default=8474)
    parser.add_argument("--journal", type=Path, help="keep the chaos journal here")
    args = parser.parse_args()
    args.experiment = args.experiment.resolve()
    bin_dir = Path(sys.executable).parent
    chaos = shutil.which("chaos", path=str(bin_dir)) or shutil.which("chaos")
    if chaos is None:
        raise SystemExit("chaos (chaostoolkit) is not installed: pip install chaostoolkit")

    with tempfile.TemporaryDirectory(prefix="stoic-chaos-") as tmp:
        work = Path(tmp)
        plan = work / "fault-plan.json"
        plan.write_text(json.dumps({"enabled": False, "faults": {}}))
        proxies = work / "proxies.json"
        proxies.write_text(json.dumps([{
            "name": "shop", "listen": f"127.0.0.1:{args.proxy_port}",
            "upstream": f"127.0.0.1:{args.shop_port}",
        }]))
        with Supervisor(state_dir=work / "state", log_dir=work / "logs", grace=2.0) as sup:
            # ready_port: start returns once the port accepts connections, or raises with the
            # process's log tail if it exits first
            sup.start("shop", [sys.executable, str(HERE / "shop.py"), str(args.shop_port)],
                      env={"STOIC_CHAOS": str(plan)}, ready_port=args.shop_port,
                      ready_timeout=15.0)
            sup.start("proxy", [sys.executable, "-c", "from stoic.cli import main; main()",
                                "proxy", "--port", str(args.api_port), "--config", str(proxies)],
                      ready_port=args.api_port, ready_timeout=15.0)
            env = {
                **os.environ,
                "STOIC_PROXY_URL": f"http://127.0.0.1:{args.api_port}",
                "TOXIPROXY_PORT": str(args.api_port),
                "SHOP_URL": f"http://127.0.0.1:{args.proxy_port}/",
                "SHOP_UPSTREAM_PORT": str(args.shop_port),
                "METRICS_URL": f"http://127.0.0.1:{args.shop_port}/metrics",
                "STOIC_STATE_DIR": str(work / "state"),
                "STOIC_CHAOS": str(plan),
            }
            common = [chaos, "--no-version-check", "--settings", str(work / "settings.yaml"),
                      "--log-file", str(work / "chaostoolkit.log")]
            journal = work / "journal.json"
            for command in (["validate", str(args.experiment)],
                            ["run", "--journal-path", str(journal), str(args.experiment)]):
                result = subprocess.run([*common, *command], env=env, cwd=work, check=False)
                if result.returncode != 0:
                    break
            if args.journal is not None and journal.exists():
                shutil.copy(journal, args.journal)
            if result.returncode != 0:
                for log in sorted((work / "logs").glob("*.log")):
                    sys.stderr.write(f"--- {log.name}\n{log.read_text()[-2000:]}\n")
            return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())

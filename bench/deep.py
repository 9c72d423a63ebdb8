"""What a deep scan costs: `python bench/deep.py [--repeat N]`.

`python -m scanner --once --deep` on five nginx server blocks (modern, all versions, AES256-SHA only, TLS 1.3 only,
a version gap) against `python -m sslyze` running the same scan commands (certificate info, the six cipher-suite
commands, curves and the vulnerability checks Mozilla's profile check needs) with `--mozilla_config=intermediate`.
Wall and CPU time and peak RSS from wait4(); TCP connections per endpoint with tcpdump on lo when it is installed.
The scanner's accepted suites per version are checked against the sslyze CLI's. Loopback only; every process started
here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import HOST, SynCounter, nginx_servers, run_measured, save  # noqa: E402
from bench.servers import NginxServer, free_ports  # noqa: E402

BLOCKS = {
    "modern": (["TLSv1.2", "TLSv1.3"], "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"),
    "all": (["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"], "DEFAULT:@SECLEVEL=0"),
    "aes256": (["TLSv1.2"], "AES256-SHA"),
    "tls13": (["TLSv1.3"], "DEFAULT"),
    "gap": (["TLSv1", "TLSv1.2"], "DEFAULT:@SECLEVEL=0"),
}
_SSLYZE_KEYS = {
    "SSLv2": "ssl_2_0_cipher_suites",
    "SSLv3": "ssl_3_0_cipher_suites",
    "TLSv1.0": "tls_1_0_cipher_suites",
    "TLSv1.1": "tls_1_1_cipher_suites",
    "TLSv1.2": "tls_1_2_cipher_suites",
    "TLSv1.3": "tls_1_3_cipher_suites",
}
SSLYZE_COMMANDS = [
    "--certinfo", "--sslv2", "--sslv3", "--tlsv1", "--tlsv1_1", "--tlsv1_2", "--tlsv1_3", "--elliptic_curves",
    "--heartbleed", "--robot", "--openssl_ccs", "--fallback", "--compression", "--reneg", "--ems",
]  # fmt: skip


def _suites_of_sslyze(path: Path) -> dict[int, dict[str, list[str]]]:
    """port -> protocol -> accepted suites, from sslyze's --json_out."""
    found: dict[int, dict[str, list[str]]] = {}
    for server in json.loads(path.read_text()).get("server_scan_results", []):
        scan = server.get("scan_result") or {}
        found[int(server["server_location"]["port"])] = {
            protocol: sorted(s["cipher_suite"]["name"] for s in ((scan.get(key) or {}).get("result") or {}).get(
                "accepted_cipher_suites", []
            ))
            for protocol, key in _SSLYZE_KEYS.items()
        }  # fmt: skip
    return found


def _suites_of_scanner(path: Path) -> dict[int, dict[str, list[str]]]:
    return {
        t["port"]: t["addresses"][0]["deep"]["cipher_suites"]
        for t in json.loads(path.read_text())["targets"]
        if t["addresses"] and t["addresses"][0].get("deep")
    }


def bench(repeat: int) -> dict[str, Any]:
    ports = dict(zip(BLOCKS, free_ports(len(BLOCKS)), strict=True))
    servers = [NginxServer(name, ports[name], versions, ciphers) for name, (versions, ciphers) in BLOCKS.items()]
    result: dict[str, Any] = {"endpoints": len(servers)}
    with tempfile.TemporaryDirectory(prefix="tls-bench-deep-") as tmp, nginx_servers(servers, 1):
        work = Path(tmp)
        config = work / "config.yaml"
        config.write_text(
            "targets:\n"
            + "".join(f"  - {{name: {name}, host: {HOST}, port: {port}}}\n" for name, port in ports.items())
        )
        runs: dict[str, list[Any]] = {"scanner": [], "sslyze": []}
        counts: dict[str, dict[int, int]] = {}
        commands = {
            "scanner": [sys.executable, "-m", "scanner", "--once", "--deep", "--format=json", f"--config={config}"],
            "sslyze": [
                sys.executable, "-m", "sslyze", *SSLYZE_COMMANDS, "--mozilla_config=intermediate",
                f"--json_out={work / 'sslyze.json'}", *(f"{HOST}:{port}" for port in ports.values()),
            ],
        }  # fmt: skip
        for n in range(repeat):
            for name, cmd in commands.items():
                with SynCounter(work) as counter:
                    measured = run_measured(cmd, 600, work / f"{name}.out", work / f"{name}.err", cwd=REPO)
                runs[name].append(measured)
                if n == 0 and counter.available:
                    counts[name] = {port: counter.per_port().get(port, 0) for port in ports.values()}
        for name, measured in runs.items():
            result[name] = {
                "wall_s_median": statistics.median(m.wall_s for m in measured),
                "cpu_s_median": statistics.median(m.cpu_s for m in measured),
                "maxrss_mb": max(m.maxrss_mb for m in measured),
                "returncodes": [m.returncode for m in measured],
                "connections_per_endpoint": counts.get(name),
            }
        ours, theirs = _suites_of_scanner(work / "scanner.out"), _suites_of_sslyze(work / "sslyze.json")
        result["suites_match"] = {name: ours.get(port) == theirs.get(port) for name, port in ports.items()}
        result["sslyze_cli_on_mozilla_intermediate_exit"] = runs["sslyze"][0].returncode
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    result = bench(args.repeat)
    for name in ("scanner", "sslyze"):
        r = result[name]
        conns = r["connections_per_endpoint"] or "n/a (no tcpdump)"
        print(
            f"{name:8} wall {r['wall_s_median']:.2f} s, CPU {r['cpu_s_median']:.2f} s,"
            f" peak RSS {r['maxrss_mb']:.0f} MB, connections/endpoint {conns}"
        )
    print(f"accepted suites per version equal the sslyze CLI's: {result['suites_match']}")
    print(f"saved {save('deep', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

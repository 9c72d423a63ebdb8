"""The Compose stack's alert receiver: takes Alertmanager's webhook notifications and logs one line per alert.

    python receiver.py [HOST]:PORT      # deploy/compose.yaml runs it as the alert-receiver service on :5001

Standard library only, so it runs in the stock Python image. Read the notifications with
`docker compose -f deploy/compose.yaml logs alert-receiver`; replace it with your real receivers (see alertmanager.yml).
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BODY = 1 << 20


def lines(path: str, notification: dict[str, Any]) -> list[str]:
    """One line per alert of a webhook notification: path, status, alert name, labels, summary."""
    found = []
    for alert in notification.get("alerts") or []:
        labels = dict(alert.get("labels") or {})
        name = labels.pop("alertname", "?")
        shown = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        summary = (alert.get("annotations") or {}).get("summary", "")
        found.append(f"{path} {alert.get('status', '?').upper()} {name} {{{shown}}} {summary}".rstrip())
    return found


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY:
            self.send_error(400, "expected a JSON body of at most 1 MiB")
            return
        try:
            notification = json.loads(self.rfile.read(length))
            if not isinstance(notification, dict):
                raise ValueError("not an object")
        except ValueError:
            self.send_error(400, "not an Alertmanager webhook notification")
            return
        for line in lines(self.path, notification):
            print(line, flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per alert is the log


def main(argv: list[str]) -> None:
    host, _, port = (argv[1] if len(argv) > 1 else ":5001").rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"alert receiver listening on {argv[1] if len(argv) > 1 else ':5001'}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main(sys.argv)

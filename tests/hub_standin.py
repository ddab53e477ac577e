"""A local stand-in for the Hugging Face hub's HTTP API: the calls ``huggingface_hub`` makes to
create a model repository and commit files to it (every file uploaded inline, as the hub asks
for small files), kept in memory. Tests point ``HF_ENDPOINT`` at it; nothing reaches the network.

    with HubStandIn() as hub:            # hub.endpoint: http://127.0.0.1:<port>
        ...                              # hub.repos: {"owner/name": {"visibility": str, "files": {path: bytes}}}
"""
from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self, refuse: int | None = None):
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []
        self.refuse = refuse  # answer every commit with this HTTP status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    repo = f"{req.get('organization') or 'me'}/{req['name']}"
                    if repo in outer.repos:
                        return self._reply(409, {"error": "You already created this model repo", "url": repo})
                    outer.repos[repo] = {"visibility": req.get("visibility"), "files": {}}
                    return self._reply(200, {"url": f"{outer.endpoint}/{repo}", "name": repo})
                if parts[:2] == ["api", "validate-yaml"]:  # the model card's metadata
                    return self._reply(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    if outer.refuse:
                        return self._reply(outer.refuse, {"error": "refused by the stand-in"})
                    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    header = next(x["value"] for x in lines if x["key"] == "header")
                    files = {x["value"]["path"]: base64.b64decode(x["value"]["content"])
                             for x in lines if x["key"] == "file"}
                    outer.repos[repo]["files"].update(files)
                    outer.commits.append({"repo": repo, "summary": header.get("summary"), "files": sorted(files)})
                    oid = f"{len(outer.commits):040x}"
                    return self._reply(200, {"commitUrl": f"{outer.endpoint}/{repo}/commit/{oid}", "commitOid": oid})
                return self._reply(404, {"error": f"the stand-in does not serve POST {self.path}"})

            def do_GET(self):
                return self._reply(404, {"error": f"the stand-in does not serve GET {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "HubStandIn":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

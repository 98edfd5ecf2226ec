#!/usr/bin/env bash
# Boot example_apps/httpd with host port 18080 -> guest 8080, fetch two pages, stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m ukl_build build example_apps/httpd
$PY -m ukl_build run example_apps/httpd --forward 18080:8080 --timeout 300 > /tmp/ukl-httpd-demo.log 2>&1 &
vm=$!
trap 'kill $vm 2>/dev/null || true' EXIT
for _ in $(seq 60); do
    grep -q "listening on port" /tmp/ukl-httpd-demo.log && break
    sleep 1
done
cat /tmp/ukl-httpd-demo.log
$PY - <<'PY'
import http.client
c = http.client.HTTPConnection("127.0.0.1", 18080, timeout=30)
for path in ("/", "/bytes/32"):
    c.request("GET", path)
    r = c.getresponse()
    print(f"GET {path} -> {r.status} {r.read()!r}")
PY

"""The app's own tests, through ukl-build's pytest plugin (the ukl_vm fixture):
`python -m pytest example_apps/httpd` boots the server and talks HTTP to it."""

import http.client


def test_serves_pages_through_a_forwarded_port(ukl_vm):
    vm = ukl_vm(forward={0: 8080})  # any free host port -> the guest's 8080
    vm.wait_for(r"httpd: listening on port 8080", timeout=180)
    conn = http.client.HTTPConnection("127.0.0.1", vm.port(8080), timeout=30)
    for _ in range(3):  # keep-alive: one connection, several requests
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
    conn.close()


def test_serves_in_user_mode_too(ukl_vm):
    # config_settings, like -C: the same sources as a static /init (ring 3), on the same
    # kernel configuration but CONFIG_UKL (and with page-table isolation).
    vm = ukl_vm(forward={0: 8080}, config_settings={"mode": "user"})
    vm.wait_for(r"httpd: listening on port 8080", timeout=180)
    conn = http.client.HTTPConnection("127.0.0.1", vm.port(8080), timeout=30)
    conn.request("GET", "/")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read()
    conn.close()

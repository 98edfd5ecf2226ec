"""The app's own tests, through ukl-build's pytest plugin (the ukl_vm fixture):
`python -m pytest example_apps/hello` builds the unikernel (a no-op when nothing
changed) and boots it under QEMU."""


def test_greets_and_exits_with_status_3(ukl_vm):
    vm = ukl_vm()
    assert vm.wait(timeout=120) == 3
    assert "Hello, world, from a unikernel! (CPL 0)" in vm.console  # ring 0: UKL mode


def test_greets_whom_it_is_told(ukl_vm):
    vm = ukl_vm(args=["pytest"])
    vm.wait_for(r"Hello, pytest, from a unikernel!", timeout=120)
    assert vm.wait(timeout=60) == 3

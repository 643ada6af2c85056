"""Run a module or a script as on a machine with no network, and report what tried to reach one.

    python tests/no_network.py -m sdft_kit.cli generate --prompt Hi
    python tests/no_network.py script.py

Every DNS look-up of a name and every connection to an address off this machine fails at once
(the network's absence without its timeouts) and is recorded. At exit one line goes to stderr:

    NO_NETWORK {"attempts": ["dns huggingface.co", ...], "imported": {"bitsandbytes": false, ...}}

`imported` tells which of WATCHED the process imported.
"""

import atexit
import json
import runpy
import socket
import sys

WATCHED = ("bitsandbytes", "kernels", "peft")
LOCAL_NAMES = {None, "localhost", "127.0.0.1", "::1", "0.0.0.0", ""}
attempts: list[str] = []

_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect


def _is_local(host) -> bool:
    return host in LOCAL_NAMES or (isinstance(host, str) and host.startswith("127."))


def getaddrinfo(host, *args, **kwargs):
    if not _is_local(host):
        attempts.append(f"dns {host}")
        raise socket.gaierror(socket.EAI_NONAME, f"no network here ({host})")
    return _getaddrinfo(host, *args, **kwargs)


def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        attempts.append(f"connect {address[0]}:{address[1]}")
        raise OSError(101, "Network is unreachable (no network here)")
    return _connect(self, address)


def report() -> None:
    imported = {name: name in sys.modules and sys.modules[name] is not None for name in WATCHED}
    print("NO_NETWORK " + json.dumps({"attempts": attempts, "imported": imported}), file=sys.stderr, flush=True)


def read_report(stderr: str) -> dict:
    """The report line in a process's stderr."""
    lines = [line for line in stderr.splitlines() if line.startswith("NO_NETWORK ")]
    assert lines, f"no NO_NETWORK line in: {stderr[-2000:]}"
    return json.loads(lines[-1][len("NO_NETWORK "):])


if __name__ == "__main__":
    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = connect
    atexit.register(report)
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")

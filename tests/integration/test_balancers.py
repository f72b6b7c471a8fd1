"""README's "More than one machine": the balancers' configurations as written there are ones
the balancers accept (nginx -t, haproxy -c), checked on this machine without starting them.
tests/system/test_haproxy.py runs the HAProxy one for real."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from harness import free_port, readme_block, replaced

NGINX_STREAM = Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def test_the_readme_nginx_stream_configuration_passes_nginx_t(tmp_path: Path) -> None:
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    if nginx is None or not NGINX_STREAM.exists():
        pytest.skip("nginx with its stream module is not installed (scripts/ensure-deps system)")
    # nginx -t binds what it listens on: the balancer's address becomes a loopback one.
    block = replaced(readme_block("nginx stream"), {"10.0.0.5:80": f"127.0.0.1:{free_port()}"})
    assert "proxy_protocol on;" in block
    # What Debian's nginx.conf around it provides: the module, events, and here a pid file
    # and an error log of our own (-t opens the log; the default one may not be ours).
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"load_module {NGINX_STREAM};\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{}}\n{block}"
    )
    argv = [nginx, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_the_readme_haproxy_configuration_passes_haproxy_c(tmp_path: Path) -> None:
    haproxy = shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    if haproxy is None:
        pytest.skip("haproxy is not installed (scripts/ensure-deps system)")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(readme_block("haproxy.cfg"))
    done = subprocess.run(
        [haproxy, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout + done.stderr, done.stdout + done.stderr

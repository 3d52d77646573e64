"""nginx as a baseline: a minimal configuration with one worker (like the single event loop of
the others), no access log, a keep-alive upstream and a fixed token, streaming as it reads."""

from __future__ import annotations

from pathlib import Path


def nginx_conf(prefix: Path, port: int, upstream_port: int, token: str, connections: int) -> str:
    """A minimal nginx.conf: one worker, no access log, keep-alive upstream, a fixed token."""
    temp = {f"{kind}_temp_path": prefix / kind for kind in ("client_body", "proxy", "fastcgi")}
    temp |= {f"{kind}_temp_path": prefix / kind for kind in ("uwsgi", "scgi")}
    temp_lines = "".join(f"    {key} {path};\n" for key, path in temp.items())
    return f"""\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_lines}    upstream webapp {{
        server 127.0.0.1:{upstream_port};
        keepalive {connections};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://webapp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer {token}";
            # Streamed as it arrives, with backpressure and no temporary files, as the gateway
            # and the bare proxy do; 64 KiB reads, as theirs (proxy_buffers only so that
            # nginx accepts a 64 KiB proxy_buffer_size).
            proxy_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
        }}
    }}
}}
"""

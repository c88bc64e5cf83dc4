"""pipeline: zero-downtime blue-green deploys of a Dockerised Java service behind nginx."""

from ._lazy import defer_import

__version__ = "0.1.0"

# paramiko (with invoke, which paramiko.config imports) is a fifth of a second of every start, and a
# rollback to a running release is a switch meant to be served in under a second from the
# command's start (issue 10). The tool speaks SSH only when NGINX_HOST or DOCKER_HOST=ssh:// asks
# for it, but the docker SDK imports paramiko whenever it is installed (docker/transport/sshconn.py).
# Deferred here, before any module of ours imports docker: `import paramiko` anywhere gives a module
# that loads on its first attribute use (pipeline/_lazy.py). tests/unit/test_startup.py checks that
# nothing uses it early.
defer_import("paramiko")
# requests imports charset_normalizer (0.04-0.1 s here) for guessing the encoding of an answer that
# names none, which the docker engine's and the health endpoint's answers do not need; at import
# it reads only the version.
defer_import("charset_normalizer", version_from="version")

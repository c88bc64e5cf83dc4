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
# paramiko.config imports invoke (0.05 s, with its vendored yaml and unittest.mock) for one thing
# only: `Match exec` lines of an ssh_config, which our connections never read (the docker SDK's
# ssh:// transport may: then invoke loads when paramiko first asks it for anything). Deferred, so
# an SSH rollback does not pay for it (issue 15).
defer_import("invoke")
# requests imports charset_normalizer (0.04-0.1 s here) for guessing the encoding of an answer that
# names none, which the docker engine's and the health endpoint's answers do not need; at import
# it reads only the version.
defer_import("charset_normalizer", version_from="version")

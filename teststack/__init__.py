"""The real stack for tests and benchmarks: what tests/integration and bench/ both stand on.

Not part of the tool (the `pipeline` package never imports it, and it is not installed with it).
It drives the real parts on this machine: docker networks and the demo service (`realstack`),
an nginx of its own on free 127.0.0.1 ports (`realstack.Nginx`), the test swarm (`swarmstack`),
an nginx host of its own in network and mount namespaces, reached over SSH, and a router to put
one on another subnet (`nginxhost`),
the switch modes and deploys measured under wrk (`switchmodes`), and the load and watchers that
see what clients see (`loadgen`, `traffic`, `timeline`, `switchwatch`). Every one of them sends
traffic only to 127.0.0.0/8, to containers on a docker network that exists while probed, or to
network namespaces made here (no default route in any of them).

tests/integration and bench/ import it from the repository root (pytest's rootdir; bench scripts
run as `python -m bench.NAME` from there); neither imports the other.
"""

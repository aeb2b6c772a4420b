#!/usr/bin/env bash
# umbra's load benchmark (`make bench`): the same wrk load against the primary
# directly and through umbra, NGINX and HAProxy, each proxy pinned to one core.
# Settings are environment variables; see bench/README.md. The work is done by
# bench.py, which starts every process itself and kills each one by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian's python3: the one `make deps` installs, with only the stdlib needed.
py=/usr/bin/python3
[[ -x $py ]] || py=python3

# bench.py cleans up on SIGINT/SIGTERM/SIGHUP and its children die with it
# (PR_SET_PDEATHSIG); exec keeps one PID between the caller and that cleanup.
exec "$py" bench/bench.py "$@"

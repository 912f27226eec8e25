#!/bin/bash
# The official redis image's entrypoint contract, for the stand-in image: options alone mean
# `redis-server OPTIONS`; the server runs as the `redis` user in /data, protected mode off (the
# official build's default; the command's own options come after, so they win).
set -euo pipefail

if [ "${1#-}" != "${1:-}" ] || [ "${1%.conf}" != "${1:-}" ]; then
    set -- redis-server "$@"
fi
if [ "${1:-}" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
    if [ "$(id -u)" = 0 ]; then
        find . \! -user redis -exec chown redis '{}' +
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi
exec "$@"

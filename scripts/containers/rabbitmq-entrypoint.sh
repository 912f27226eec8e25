#!/bin/bash
# The official rabbitmq image's entrypoint contract, for the stand-in image: the account and
# vhost from RABBITMQ_DEFAULT_* (written as rabbitmq.conf settings, which RabbitMQ applies on
# the node's first boot only), no `guest`, listeners on every address, then the server as the
# `rabbitmq` user.
set -euo pipefail

conf=/etc/rabbitmq/conf.d/10-defaults.conf
{
    echo 'listeners.tcp.default = 5672'
    echo 'management.tcp.port = 15672'
    echo 'loopback_users = none'
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
        echo "default_user = $RABBITMQ_DEFAULT_USER"
    fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
        echo "default_pass = $RABBITMQ_DEFAULT_PASS"
    fi
    if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
        echo "default_vhost = $RABBITMQ_DEFAULT_VHOST"
    fi
} >"$conf"
chown rabbitmq:rabbitmq "$conf"
chmod 600 "$conf"

if [ "${1:-}" = rabbitmq-server ] && [ "$(id -u)" = 0 ]; then
    # A fresh volume may be owned by root.
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq
    # Debian's rabbitmq-server switches to the rabbitmq user itself.
fi
exec "$@"

#!/bin/sh
# A 3-node RabbitMQ cluster on one machine, beside any broker already running there,
# for trying the gateway's list of broker nodes (docs/deployment.md, "Broker cluster").
#
#   deploy/rabbitmq/local-cluster.sh start [DIR]   nodes rb1..rb3@localhost, AMQP 5681..5683
#   deploy/rabbitmq/local-cluster.sh stop  [DIR]   stop them and remove DIR
#
# Each node has its own node name, AMQP and distribution ports, data and log directory,
# configuration and (empty) plugin list, so that the system broker (rabbit@localhost,
# 5672) is not touched. Run as root or as the rabbitmq user (the nodes run as rabbitmq
# and share its Erlang cookie). Then:
#   MAAGW_BROKER_URL=amqp://guest:guest@127.0.0.1:5681/,amqp://guest:guest@127.0.0.1:5682/,amqp://guest:guest@127.0.0.1:5683/
#   MAAGW_TEST_CLUSTER=rb1@localhost=amqp://guest:guest@127.0.0.1:5681/,rb2@localhost=...  (the test)
set -eu
cmd=${1:-start}
dir=${2:-/tmp/maagw-rabbitmq-cluster}

run_as_rabbitmq() {
    if [ "$(id -u)" = "$(id -u rabbitmq)" ]; then sh -c "$1"; else su rabbitmq -s /bin/sh -c "$1"; fi
}

case "$cmd" in
start)
    for i in 1 2 3; do
        mkdir -p "$dir/n$i/mnesia" "$dir/n$i/log"
        echo "[]." > "$dir/n$i/enabled_plugins"
        printf 'listeners.tcp.local = 127.0.0.1:568%s\nloopback_users = none\n' "$i" > "$dir/n$i/rabbitmq.conf"
        : > "$dir/n$i/env.conf"   # not /etc/rabbitmq/rabbitmq-env.conf, which names the system node
    done
    [ "$(id -u)" = 0 ] && chown -R rabbitmq:rabbitmq "$dir"
    for i in 1 2 3; do
        run_as_rabbitmq "cd /var/lib/rabbitmq && env HOME=/var/lib/rabbitmq \
            RABBITMQ_CONF_ENV_FILE=$dir/n$i/env.conf RABBITMQ_NODENAME=rb$i@localhost \
            RABBITMQ_NODE_PORT=568$i RABBITMQ_DIST_PORT=2568$i \
            RABBITMQ_MNESIA_BASE=$dir/n$i/mnesia RABBITMQ_LOG_BASE=$dir/n$i/log \
            RABBITMQ_CONFIG_FILE=$dir/n$i/rabbitmq.conf \
            RABBITMQ_ENABLED_PLUGINS_FILE=$dir/n$i/enabled_plugins RABBITMQ_PID_FILE=$dir/n$i/pid \
            ERL_EPMD_ADDRESS=127.0.0.1 ERL_FLAGS='-kernel inet_dist_use_interface {127,0,0,1}' \
            nohup /usr/lib/rabbitmq/bin/rabbitmq-server > $dir/n$i/stdout 2>&1 &"
    done
    for i in 1 2 3; do
        # await_startup needs the node registered with epmd: wait for that first
        tries=0
        until rabbitmqctl -n "rb$i@localhost" -q ping >/dev/null 2>&1; do
            tries=$((tries + 1))
            [ "$tries" -lt 120 ] || { echo "rb$i@localhost did not start: see $dir/n$i/log" >&2; exit 1; }
            sleep 1
        done
        rabbitmqctl -n "rb$i@localhost" -q await_startup --timeout 120
    done
    for i in 2 3; do
        rabbitmqctl -n "rb$i@localhost" -q stop_app
        rabbitmqctl -n "rb$i@localhost" -q join_cluster rb1@localhost
        rabbitmqctl -n "rb$i@localhost" -q start_app
    done
    rabbitmqctl -n rb1@localhost -q cluster_status | sed -n '/Running Nodes/,/Versions/p' | grep '@'
    ;;
stop)
    for i in 3 2 1; do rabbitmqctl -n "rb$i@localhost" -q stop 2>/dev/null || true; done
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Make sure the local services the demo and the tests use are reachable:
# RabbitMQ (required), PostgreSQL (the audit log's second backend), and the
# xmlsec1 and openssl command-line tools (interop tests), HAProxy (the load-balancer test).
# Starts an installed server that is not running; as root on Debian, installs
# a missing one from Debian's packages. Idempotent and quick when all is up.
set -u

say() { echo "ensure-services: $*" >&2; }
is_root() { [ "$(id -u)" = 0 ]; }
apt_updated=0
apt_install() {
  if ! is_root || ! command -v apt-get >/dev/null; then
    say "cannot install $* (not root on Debian): install it yourself"
    return 1
  fi
  if [ $apt_updated = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    apt_updated=1
  fi
  say "installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- RabbitMQ ---------------------------------------------------------------------
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server || true
  if command -v rabbitmq-server >/dev/null; then
    say "starting RabbitMQ (rabbitmq-server -detached)"
    # Debian's package cannot start it through the init system on these machines.
    rabbitmq-server -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do
      if port_open 5672 && rabbitmqctl -q status >/dev/null 2>&1; then break; fi
      sleep 1
    done
  fi
fi
if port_open 5672; then
  # quorum queues' at-least-once dead-lettering needs every feature flag on
  rabbitmqctl -q enable_feature_flag all >/dev/null 2>&1 || true
else
  say "RabbitMQ is not reachable on 127.0.0.1:5672; start it with: rabbitmq-server -detached"
fi

# --- PostgreSQL -----------------------------------------------------------------
if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then apt_install postgresql || true; fi
  if ls /etc/postgresql/*/main >/dev/null 2>&1; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start >/dev/null 2>&1 || true
    for _ in $(seq 1 30); do port_open 5432 && break; sleep 1; done
  fi
fi
port_open 5432 || say "PostgreSQL is not reachable on 127.0.0.1:5432 (PostgreSQL tests will skip or fail in CI)"

# --- command-line tools used by interop tests -------------------------------------
command -v xmlsec1 >/dev/null || apt_install xmlsec1 || say "xmlsec1 missing: its interop tests cannot run"
command -v openssl >/dev/null || apt_install openssl || say "openssl missing"
command -v haproxy >/dev/null || apt_install haproxy || say "haproxy missing: the load-balancer tests cannot run"
exit 0

#!/usr/bin/env bash
# Installs the system packages fedmq needs where missing: the Mosquitto broker and its CLI clients, openssl
# (the admin tool's CA and certificates), and
# Node.js with npm for the JavaScript device client (clients/js), headless Chromium for its browser test,
# and the other brokers the integration suite runs on: nats-server (JetStream + MQTT 3.1.1, also the
# cluster test) and rabbitmq-server (its MQTT plugin; the tests start private nodes, not the service).
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || need+=(openssl)  # fedmq init: the federation's CA and certificates
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need+=(rabbitmq-server)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  # Brokers are started by the tests themselves: keep apt from starting (or failing to start) their system
  # services, which containers without an init system cannot run (policy-rc.d, exit 101 = "not allowed").
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi

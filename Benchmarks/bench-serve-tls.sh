#!/usr/bin/env bash
# nbdcopy (4 connections, to null:) of a 256 MiB file over TCP loopback: `erofs serve` against
# nbdkit's file plugin, each in plain text and with TLS (certificates made here by openssl),
# interleaved, ROUNDS rounds of 3 copies each. Prints one line per copy: NAME SECONDS.
# Usage: Benchmarks/bench-serve-tls.sh [ROUNDS]   (ERofs binary: $EROFS, default .build/release/erofs)
set -euo pipefail

rounds=${1:-2}
erofs=$(realpath "${EROFS:-.build/release/erofs}")
work=$(mktemp -d /tmp/bench-serve-tls.XXXXXX)
pids=()
cleanup() {
  ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"

head -c $((256 << 20)) /dev/urandom > image
mkdir ca nbdkit
curve=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${curve[@]}" -keyout ca-key.pem -out ca/ca-cert.pem -days 2 -subj /CN=bench-CA 2>/dev/null
openssl req "${curve[@]}" -keyout nbdkit/server-key.pem -out server.csr -subj /CN=localhost 2>/dev/null
echo "subjectAltName=DNS:localhost" > ext.cnf
openssl x509 -req -in server.csr -CA ca/ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
  -out nbdkit/server-cert.pem -days 2 -extfile ext.cnf 2>/dev/null
cp ca/ca-cert.pem nbdkit/

"$erofs" serve image --tcp 127.0.0.1:10820 2>/dev/null & pids+=($!)
"$erofs" serve image --tcp 127.0.0.1:10821 \
  --tls-certificate nbdkit/server-cert.pem --tls-key nbdkit/server-key.pem 2>/dev/null & pids+=($!)
nbdkit -f -p 10822 -i 127.0.0.1 -r file image & pids+=($!)
nbdkit -f -p 10823 -i 127.0.0.1 -r --tls=require --tls-certificates="$work/nbdkit" file image & pids+=($!)
sleep 1

copy() {  # NAME URI
  for _ in 1 2 3; do
    local start end
    start=$(date +%s.%N)
    nbdcopy --connections=4 "$2" null:
    end=$(date +%s.%N)
    echo "$1 $(echo "$end - $start" | bc)"
  done
}
for ((round = 0; round < rounds; round++)); do
  copy erofs-plain nbd://localhost:10820/
  copy nbdkit-plain nbd://localhost:10822/
  copy erofs-tls "nbds://localhost:10821/?tls-certificates=$work/ca"
  copy nbdkit-tls "nbds://localhost:10823/?tls-certificates=$work/ca"
done

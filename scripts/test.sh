#!/usr/bin/env bash
# Runs every check and test of Strata on a fresh machine: formatting, lints,
# then the whole workspace's tests (unit, integration against a real server on
# an ephemeral port, and end-to-end tests of the `strata` binary, including
# SIGKILL crash tests). Installs and starts what the tests need: an
# S3-compatible server on loopback (MinIO if present, else moto from PyPI)
# and pyarrow as an independent Parquet reader; schemathesis, which fuzzes
# the API from /openapi.json; and, as root, a small loop-mounted ext4
# volume for the full-disk test (the power-loss test mounts its own FUSE
# file system, also as root).
#
#   scripts/test.sh [cargo test args]
#   S3_SERVER=garage scripts/test.sh [cargo test args]
#       runs against Garage instead (built from crates.io into target/garage
#       on first use, ~15 min on 2 cores): a store that checks signatures
#       but ignores conditional writes, so AWS_CONDITIONAL_PUT=disabled.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs first" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The cold-tier tests need a real S3-compatible server over loopback, and
# the external-reader tests need pyarrow. Use MinIO when the user has one
# (S3_ENDPOINT pointing at it, or a `minio` binary on PATH; with Docker,
# start examples/minio and set S3_ENDPOINT); otherwise install moto's S3
# server from PyPI into a venv (it implements conditional writes, which
# the manifest commit relies on).
# The TLS tests make their certificates with the openssl command.
if ! command -v openssl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing openssl (the TLS tests make certificates with it)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null || true
  else
    echo "openssl not found: install it (the TLS tests make certificates with it)" >&2
    exit 1
  fi
  if ! command -v openssl >/dev/null 2>&1; then
    echo "could not install openssl: install it (the TLS tests make certificates with it)" >&2
    exit 1
  fi
fi

venv=target/test-venv
# The lake tests read the Delta tables with delta-rs (the deltalake package)
# and DuckDB's delta extension, whose wheel carries the extension binary
# (loaded from the file, never downloaded).
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pyarrow, moto, schemathesis, deltalake, duckdb, duckdb_extension_delta" 2>/dev/null; then
  echo "== installing the test tools (moto S3 server, pyarrow, schemathesis, deltalake, DuckDB) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[s3]==5.2.5" flask flask-cors pyarrow \
    "schemathesis==4.32.5" "deltalake==1.6.6" "duckdb==1.5.5" "duckdb-extension-delta==1.5.5"
fi
export STRATA_TEST_PYTHON="$PWD/$venv/bin/python"

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3_pid=""
cleanup() {
  [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null
  rm -rf "${minio_dir:-}"
  [ -n "${unmount_small_disk:-}" ] && umount "$small_disk" && rm -f target/small-disk.img
  true
}
trap cleanup EXIT

# The full-disk test needs a small real file system that returns ENOSPC: a
# 48 MiB ext4 image, loop-mounted (root only; unmounted on exit).
small_disk=$PWD/target/small-disk
if ! mountpoint -q "$small_disk" 2>/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "the full-disk test loop-mounts a small file system: run this script as root" >&2
    exit 1
  fi
  if ! command -v mkfs.ext4 >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq e2fsprogs >/dev/null || true
  fi
  echo "== mounting a 48 MiB ext4 volume at $small_disk (the full-disk test fills it)"
  mkdir -p "$small_disk"
  rm -f target/small-disk.img
  truncate -s 48M target/small-disk.img
  mkfs.ext4 -q -F target/small-disk.img
  mount -o loop target/small-disk.img "$small_disk"
  unmount_small_disk=1
fi
export STRATA_TEST_SMALL_DISK=$small_disk
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-strata-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-strata-test-secret}
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_ALLOW_HTTP=true
bucket=strata-test
if [ -n "${S3_ENDPOINT:-}" ]; then
  echo "== S3: using $S3_ENDPOINT"
  export AWS_ENDPOINT=$S3_ENDPOINT
elif [ "${S3_SERVER:-}" = garage ]; then
  garage=target/garage/bin/garage
  if [ ! -x "$garage" ]; then
    echo "== installing Garage 2.5.0 from crates.io into target/garage"
    cargo install garage --version 2.5.0 --locked --no-default-features \
      --features bundled-libs,sqlite --root target/garage
  fi
  port=$(free_port)
  minio_dir=$(mktemp -d)
  # Garage wants its own key formats: GK + 24 hex digits, 64 hex digits.
  export AWS_ACCESS_KEY_ID=GK0123456789abcdef01234567
  export AWS_SECRET_ACCESS_KEY=$(printf 'strata-garage-test%.0s' 1 2 3 4 | sha256sum | cut -c1-64)
  export AWS_REGION=garage AWS_CONDITIONAL_PUT=disabled
  cat >"$minio_dir/garage.toml" <<TOML
metadata_dir = "$minio_dir/meta"
data_dir = "$minio_dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$(free_port)"
rpc_secret = "$(printf 'strata-garage-rpc' | sha256sum | cut -c1-64)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$port"
TOML
  echo "== S3: starting Garage on 127.0.0.1:$port (no conditional writes)"
  GARAGE_DEFAULT_ACCESS_KEY=$AWS_ACCESS_KEY_ID GARAGE_DEFAULT_SECRET_KEY=$AWS_SECRET_ACCESS_KEY \
    GARAGE_DEFAULT_BUCKET=$bucket "$garage" -c "$minio_dir/garage.toml" server --single-node \
    --default-bucket >"$minio_dir.log" 2>&1 &
  s3_pid=$!
  export AWS_ENDPOINT="http://127.0.0.1:$port"
elif command -v minio >/dev/null 2>&1; then
  port=$(free_port)
  minio_dir=$(mktemp -d)
  echo "== S3: starting MinIO on 127.0.0.1:$port"
  MINIO_ROOT_USER=$AWS_ACCESS_KEY_ID MINIO_ROOT_PASSWORD=$AWS_SECRET_ACCESS_KEY \
    minio server --address "127.0.0.1:$port" "$minio_dir" >"$minio_dir.log" 2>&1 &
  s3_pid=$!
  export AWS_ENDPOINT="http://127.0.0.1:$port"
else
  port=$(free_port)
  echo "== S3: starting moto_server on 127.0.0.1:$port"
  "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >target/moto.log 2>&1 &
  s3_pid=$!
  export AWS_ENDPOINT="http://127.0.0.1:$port"
fi
for _ in $(seq 100); do curl -s -o /dev/null "$AWS_ENDPOINT" && break; sleep 0.2; done
"$venv/bin/python" - "$AWS_ENDPOINT" "$bucket" <<'PY'
import os, sys, time, urllib.request
endpoint, bucket = sys.argv[1], sys.argv[2]
# moto accepts an unsigned PUT; MinIO and AWS need a signed one (boto3 ships
# with moto). Garage creates its default bucket a moment after it listens.
deadline = time.monotonic() + 30
while True:
    try:
        try:
            import boto3
        except ImportError:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/{bucket}", method="PUT"))
            break
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=os.environ["AWS_REGION"])
        if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=bucket)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
PY
export STRATA_TEST_S3="s3://$bucket/ci-$$"

echo "== cargo test"
cargo test --workspace --locked "$@"

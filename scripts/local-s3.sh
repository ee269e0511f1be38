#!/usr/bin/env bash
# A local S3 to try kvstore on: ./scripts/local-s3.sh [--bucket NAME] [--dir DIR] [--background | --stop]
#
# Starts LocalStack's S3 on 127.0.0.1 (a free port; no Docker), the way the tests do
# (tests/servers.py), creates a bucket (default: kvstore), and prints the endpoint and the
# environment variables to export. They are also written to DIR/env, so any shell can
# `source .local-s3/env`.
#
#   (default)     stay in the foreground until Ctrl-C, then stop LocalStack
#   --background  return once S3 is ready; LocalStack keeps running (pid in DIR/pid)
#   --stop        stop the one started with --background
#   --dir DIR     state, pid, env file and log (default .local-s3 in the repository)
#
# The data lives only as long as LocalStack runs. The first run creates .venv and
# .localstack-venv like ./scripts/test.sh does: it needs Python 3.13 and access to PyPI.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bucket=kvstore
dir=.local-s3
mode=foreground
while (($#)); do
    case $1 in
        --bucket) bucket=${2:?--bucket needs a name}; shift 2 ;;
        --dir) dir=${2:?--dir needs a directory}; shift 2 ;;
        --background) mode=background; shift ;;
        --stop) mode=stop; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "local-s3.sh: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
stop_command="$0 --stop"
[[ $dir == .local-s3 ]] || stop_command+=" --dir $dir"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# shellcheck source=scripts/venvs.sh
source scripts/venvs.sh

running_pid() {  # the pid of a --background LocalStack still running, or nothing
    local pid
    [[ -f $dir/pid ]] || return 1
    pid=$(<"$dir/pid")
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

if [[ $mode == stop ]]; then
    pid=$(running_pid) || die "no local S3 started with --background is running (no live pid in $dir/pid)"
    kill -TERM "$pid"
    for _ in $(seq 150); do  # LocalStack stops in ~2 s; give it 15
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "pid $pid did not stop in 15 s; kill it with: kill -9 $pid"
    rm -f "$dir/pid" "$dir/env"
    say "stopped"
    exit 0
fi

if pid=$(running_pid); then
    die "a local S3 is already running (pid $pid): source $dir/env to use it, or stop it with $stop_command"
fi
if ! [[ -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c 'import kvstore, aiobotocore' 2>/dev/null; then
    setup_test_venv
fi
setup_localstack_venv
rm -f "$dir/env" "$dir/pid"

# Runs as long as LocalStack does: LocalStack is tied to it (it dies with its parent), and
# SIGINT/SIGTERM stop both.
read -r -d '' SERVE <<'PY' || true
import asyncio, signal, sys
from pathlib import Path

sys.path.insert(0, "tests")
from servers import TEST_CREDENTIALS, TEST_REGION, s3_client, start_localstack

workdir, bucket = Path(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on `kill` too
server = start_localstack(workdir / "localstack")
try:
    async def create_bucket() -> None:
        async with s3_client(server.endpoint_url) as s3:
            await s3.create_bucket(Bucket=bucket)

    asyncio.run(create_bucket())
    exports = {
        "AWS_ENDPOINT_URL": server.endpoint_url,       # the kvstore command, botocore
        "KVSTORE_ENDPOINT_URL": server.endpoint_url,   # the examples/
        "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["aws_access_key_id"],  # LocalStack takes any
        "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["aws_secret_access_key"],
        "AWS_DEFAULT_REGION": TEST_REGION,
    }
    env = "".join(f"export {k}={v}\n" for k, v in exports.items())
    (workdir / "env.tmp").write_text(env)
    (workdir / "env.tmp").replace(workdir / "env")  # whole or absent: --background waits for it
    print(f"local S3 (LocalStack) at {server.endpoint_url}, bucket {bucket!r} created.\n"
          f"In another shell: source {workdir}/env   (or paste:)\n\n{env}\n"
          f"then e.g.: kvstore init s3://{bucket}/app", flush=True)
    server.process.wait()
    sys.exit(f"LocalStack exited with code {server.process.returncode}; log: {server.log_path}")
except KeyboardInterrupt:
    pass
finally:
    server.stop()
    (workdir / "env").unlink(missing_ok=True)
PY

if [[ $mode == foreground ]]; then
    say "starting LocalStack S3 (a few seconds; Ctrl-C stops it)"
    exec "$VENV/bin/python" -c "$SERVE" "$dir" "$bucket"
fi

say "starting LocalStack S3 in the background (log: $dir/serve.log)"
nohup "$VENV/bin/python" -c "$SERVE" "$dir" "$bucket" >"$dir/serve.log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$dir/pid"
for _ in $(seq 900); do  # up to 90 s: a cold first start builds LocalStack's caches
    [[ -f $dir/env ]] && break
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/pid"; die "it failed to start: $(tail -20 "$dir/serve.log")"; }
    sleep 0.1
done
[[ -f $dir/env ]] || die "not ready after 90 s (pid $pid still running; see $dir/serve.log; stop it with $stop_command)"
cat "$dir/serve.log"
echo "stop it with: $stop_command"

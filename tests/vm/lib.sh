# Helpers for the in-VM tests (busybox sh). Sourced by /vm/[0-9]*.sh.
pass() { echo "VMTEST PASS $1"; }
fail() { echo "VMTEST FAIL $1: $2"; }
# check NAME COMMAND...: PASS when the command succeeds.
check() { n=$1; shift; if "$@"; then pass "$n"; else fail "$n" "$*"; fi; }

# wait_for SECONDS COMMAND...: polls every 0.2 s until the command succeeds; 1 on timeout.
wait_for() {
    limit=$(( $1 * 5 )); shift
    i=0
    while [ $i -lt $limit ]; do
        "$@" 2>/dev/null && return 0
        sleep 0.2; i=$((i + 1))
    done
    return 1
}

# start_sensor CONFIG LOG: starts `sensor run -c CONFIG` in the background: stdout (records)
# to LOG.out, its log to LOG.err and to the console (`VMTEST LOG`); SENSOR_PID.
start_sensor() {
    ( /bin/sensor run -c "$1" 2>&1 >"$2.out" | tee "$2.err" | while read -r l; do echo "VMTEST LOG $l"; done ) &
    wait_for 10 pidof sensor >/dev/null
    SENSOR_PID=$(pidof sensor)
}

ready() { wget -q -T 2 -O /dev/null http://127.0.0.1:9990/readyz; }
metric() { wget -q -T 5 -O - http://127.0.0.1:9990/metrics | grep "^$1" ; }

stop_sensor() {
    kill "$SENSOR_PID" 2>/dev/null
    wait_for 30 sh -c "! kill -0 $SENSOR_PID"
}

# kill9_sensor: SIGKILL, as a crash would.
kill9_sensor() {
    kill -9 "$SENSOR_PID" 2>/dev/null
    wait_for 10 sh -c "! kill -0 $SENSOR_PID"
}

# blocked_records LOG: how many records in LOG.out say `"action":"blocked"`.
blocked_records() { grep -c '"action":"blocked"' "$1.out"; }
killed_records() { grep -c '"action":"killed"' "$1.out"; }

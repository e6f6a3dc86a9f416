# One sensor start per VM (the verifier runs under software emulation: minutes): it loads and
# attaches every program, BPF-LSM hooks included; then BPF-LSM enforcement: each Block rule
# denies the operation before it happens: the process gets EPERM and lives (exit status is not
# 137 = SIGKILL), nothing changed on disk, and the record says `blocked`. The matrix only holds
# kernels with BPF-LSM: without it every check here fails.
. /vm/lib.sh
D=/tmp/lsm
L=$D/sensor
mkdir -p $D/policies $D/data/secret $D/data/pub $D/bin
echo SECRET >$D/data/secret/token
echo KEEP >$D/data/secret/keep
echo PUB >$D/data/pub/file
echo NEW >$D/data/pub/new
cp /bin/busybox $D/bin/true
printf '#!/bin/sh\nexit 0\n' >$D/bin/tool.sh
chmod 755 $D/bin/tool.sh
printf '#!/bin/sh\necho script-ran\n' >$D/data/secret/run.sh
chmod 755 $D/data/secret/run.sh
cat >$D/policies/vm.yaml <<EOP
apiVersion: sensor.dev/v1alpha1
kind: HostPolicy
metadata: {name: vm-lsm}
spec:
  selector: {host: true}
  action: Block
  executables:
  - {prefix: $D/bin/}
  files:
  - {prefix: $D/data/secret/, access: [read, write, create, delete, rename]}
EOP
cat >$D/config.yaml <<EOC
mode: enforce
policy_dir: $D/policies
metrics_addr: 127.0.0.1:9990
EOC
t0=$(cut -d' ' -f1 /proc/uptime)
start_sensor $D/config.yaml $L
if wait_for 1500 ready; then
    pass load-and-attach
    echo "VMTEST INFO sensor ready: started at ${t0}s, ready at $(cut -d' ' -f1 /proc/uptime)s uptime"
else
    fail load-and-attach "not ready in 1500 s"
fi
metric sensor_kernel_feature | sed 's/^/VMTEST INFO /'
check lsm-hooks-pinned sh -c 'ls /sys/fs/bpf/sensor/ | grep -q lsm_file_open'
echo "VMTEST INFO pins: $(ls /sys/fs/bpf/sensor | tr '\n' ' ')"
watched() { metric sensor_host_watched_cgroups | grep -qv ' 0$'; }
wait_for 60 watched || fail lsm-start "no watched cgroup: $(metric sensor_host_watched_cgroups)"
grep -q 'denied before the call (BPF-LSM): \[file_open' $L.err \
    && pass lsm-active || fail lsm-active "start-up line: $(grep 'host blocking' $L.err)"

# denied NAME COMMAND: the command fails, is not killed, and a new blocked record appears.
denied() {
    name=$1; shift
    before=$(blocked_records $L)
    "$@" >/tmp/out 2>&1; rc=$?
    if [ $rc -eq 0 ]; then fail "$name" "allowed: $(head -c 200 /tmp/out)"; return 1; fi
    if [ $rc -eq 137 ]; then fail "$name" "killed (SIGKILL) instead of denied"; return 1; fi
    if ! wait_for 20 sh -c "[ \$(grep -c '\"action\":\"blocked\"' $L.out) -gt $before ]"; then
        fail "$name" "no blocked record"; return 1
    fi
    return 0
}

denied exec-blocked $D/bin/true && pass exec-blocked
denied exec-script-blocked $D/bin/tool.sh && pass exec-script-blocked
denied script-read-blocked $D/data/secret/run.sh && pass script-read-blocked
denied open-read-blocked cat $D/data/secret/token \
    && check open-read-blocked sh -c '! grep -q SECRET /tmp/out'
denied open-trunc-blocked sh -c "echo x >$D/data/secret/keep" \
    && check open-trunc-blocked grep -qx KEEP $D/data/secret/keep
denied truncate-blocked truncate -s 0 $D/data/secret/keep \
    && check truncate-blocked grep -qx KEEP $D/data/secret/keep
denied unlink-blocked rm -f $D/data/secret/keep \
    && check unlink-blocked test -f $D/data/secret/keep
denied rename-out-blocked mv $D/data/secret/keep $D/data/pub/moved \
    && check rename-out-blocked sh -c "test -f $D/data/secret/keep && ! test -e $D/data/pub/moved"
denied rename-over-blocked mv $D/data/pub/new $D/data/secret/token \
    && check rename-over-blocked sh -c "grep -qx SECRET $D/data/secret/token && test -f $D/data/pub/new"
denied link-blocked ln $D/data/secret/token $D/data/pub/hardlink \
    && check link-blocked sh -c "! test -e $D/data/pub/hardlink"
# Outside the protected tree nothing is denied.
check unprotected-allowed sh -c "cat $D/data/pub/file | grep -qx PUB && mv $D/data/pub/file $D/data/pub/file2"
check no-killed-records sh -c "! grep -q '\"action\":\"killed\"' $L.out"
stop_sensor
/bin/sensor cleanup >/dev/null 2>&1
check lsm-cleanup-leaves-no-pins sh -c '[ -z "$(ls /sys/fs/bpf/sensor 2>/dev/null)" ]'
grep '"action"' $L.out | head -20 | sed 's/^/VMTEST REC /'

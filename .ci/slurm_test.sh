#!/usr/bin/env bash
# The workflow on a real SLURM: a single-node cluster started by hand (no systemd, no
# slurmdbd), the tiny synthetic cohort run once with profiles/local and once with
# profiles/slurm, then:
#   - every sbatch submission is a batch job in the slurmctld log, every non-local rule
#     job ran inside a SLURM job, only rules declared local ran on the submit host;
#   - the detect_cmb jobs asked for a GPU (when detect_cmb is in the DAG) and no other job did;
#   - the SLURM run's tables and images equal the local run's;
#   - a rerun of the GPU rule with --slurm-array-jobs runs as one array job, same outputs;
#   - a profile installed with `cmb profile install slurm` is found by a bare `--profile slurm`.
# Called by .ci/run after `make test` (needs .venv). Runs as root; state lives in a fresh
# temporary folder; the daemons are stopped by PID at exit.
#
#   bash .ci/slurm_test.sh   (CMB_SLURM_KEEP=1 keeps the temporary folder;
#                             CMB_SLURM_SETUP_ONLY=1 stops once the cluster runs a GPU job;
#                             CMB_SLURM_RUN_COMMAND="..." runs that command on the cluster
#                             instead of the checks, e.g. bench/bench_slurm_submit.py)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$REPO/.venv/bin
PARTITION=cmbci
RUN_TIMEOUT=${CMB_SLURM_RUN_TIMEOUT:-1200}   # seconds for each workflow run
GPU_RULE=${CMB_SLURM_GPU_RULE:-detect_cmb}   # the rule whose jobs must ask for a GPU
# Extra snakemake arguments for both runs (debugging), e.g. "--set-resources build_mars_map:gpu=1".
read -r -a EXTRA <<<"${CMB_SLURM_EXTRA_ARGS:-}"
# Both runs use the workflow's own settings: with `reproducible: true` (the default) it
# seeds ANTs and runs ANTs single-threaded, so two runs give bit-identical outputs.
T0=$SECONDS
log() { printf '[slurm-ci %4ds] %s\n' $((SECONDS - T0)) "$*"; }

if [[ $(id -u) -ne 0 ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "slurm_test.sh: CI must run this as root (it starts munged, slurmctld and slurmd)" >&2
        exit 1
    fi
    log "SKIPPED: needs root"
    exit 0
fi
if [[ ! -x $BIN/snakemake ]]; then
    echo "slurm_test.sh: $BIN/snakemake missing: run 'make env' first" >&2
    exit 1
fi
export PATH=$BIN:$PATH   # jobs call `python -m cmb.<stage>`

# ------------------------------------------------------------------ 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null ||
    ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    log "installing Debian's slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
fi
log "$(slurmctld -V), $(munged -V 2>&1 | head -1)"

# ------------------------------------------------------------------ 2. cluster
T=$(mktemp -d /tmp/cmb-slurm-ci.XXXXXX)
chmod 755 "$T"
mkdir -p "$T"/{etc,state,spool,log,run,munge}
chmod 711 "$T/munge"   # munged: clients need x on the socket's folder
DAEMONS=()   # "name:pid", stopped in reverse order

cleanup() {
    local rc=$?
    set +e
    if [[ -n ${SLURM_CONF:-} ]] && [[ ${#DAEMONS[@]} -gt 0 ]]; then
        scancel --partition="$PARTITION" >/dev/null 2>&1
    fi
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        local name=${DAEMONS[i]%%:*} pid=${DAEMONS[i]##*:}
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
            log "stopped $name (pid $pid)"
        fi
    done
    if [[ $rc -ne 0 ]]; then
        for f in "$T/log/slurmctld.log" "$T/log/slurmd.log" "$T/munge/munged.log" "$T/log/slurmctld.out" "$T/log/slurmd.out" "$T/slurm/snakemake.log"; do
            [[ -f $f ]] && { echo "----- last lines of $f"; tail -n 40 "$f"; }
        done
        find "$T/slurm/.snakemake/slurm_logs" -name '*.log' 2>/dev/null | head -n 5 | while read -r f; do
            echo "----- last lines of $f"; tail -n 30 "$f"
        done
    fi
    if [[ ${CMB_SLURM_KEEP:-0} == 1 ]]; then
        log "kept $T"
    else
        rm -rf "$T"
    fi
    exit $rc
}
trap cleanup EXIT

start() {  # start NAME CMD...: a daemon in the foreground of a background job, output to $T/log
    local name=$1
    shift
    "$@" >>"$T/log/$name.out" 2>&1 &
    DAEMONS+=("$name:$!")
}

dd if=/dev/urandom of="$T/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$T/munge/munge.key"
MUNGE_SOCKET=$T/munge/munge.socket
start munged munged --foreground --force --key-file="$T/munge/munge.key" --socket="$MUNGE_SOCKET" \
    --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" --seed-file="$T/munge/munged.seed"
for _ in $(seq 50); do
    munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 && break
    sleep 0.2
done
munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET" >/dev/null

# The node as slurmd sees it (CPUs, sockets, cores, memory), named localhost.
NODE=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost/')
export SLURM_CONF=$T/etc/slurm.conf
cat >"$SLURM_CONF" <<EOF
ClusterName=cmbci
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# squeue shows finished jobs this long: the plugin's squeue status needs >= 120 s, and the
# checks below read every job back with scontrol after the run.
MinJobAge=3600
GresTypes=gpu
$NODE Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
# A GPU that is /dev/null: enough for SLURM to schedule --gpus=1 / --gres=gpu:1 jobs.
echo "Name=gpu File=/dev/null" >"$T/etc/gres.conf"

# The slurm-jobstep plugin (0.6) removes SLURM_CONF from the environment of the srun it
# starts inside each job, so that srun looks for /etc/slurm/slurm.conf. Rather than
# write into /etc, jobs find this cluster's srun through a wrapper first on PATH (PATH
# is kept). On a real cluster slurm.conf sits at the default path, or comes from slurmd
# (configless); see docs/cluster.md.
mkdir -p "$T/bin"
printf '#!/bin/sh\nSLURM_CONF=%q exec %q "$@"\n' "$SLURM_CONF" "$(command -v srun)" >"$T/bin/srun"
chmod 755 "$T/bin/srun"
export PATH=$T/bin:$PATH

start slurmctld slurmctld -D -i -f "$SLURM_CONF"
start slurmd slurmd -D -N localhost -f "$SLURM_CONF"
for _ in $(seq 120); do
    state=$(sinfo -h -N -n localhost -o %T 2>/dev/null || true)
    [[ $state == idle ]] && break
    sleep 0.5
done
if [[ $state != idle ]]; then
    echo "slurm_test.sh: node localhost is '$state', not idle" >&2
    exit 1
fi
log "cluster up: $(sinfo -h -o '%P %D %c CPUs %m MB %G %T' | tr -s ' ')"

# A GPU job schedules on the /dev/null GPU, and srun works inside a job without SLURM_CONF
# (as in the jobstep plugin's jobs).
probe=$(sbatch --parsable -p "$PARTITION" --gpus=1 -t 1 --mem 100 -o "$T/log/probe.out" \
    --wrap 'env -u SLURM_CONF srun -n1 true')
for _ in $(seq 60); do
    st=$(squeue -h -j "$probe" -o %T --states=all 2>/dev/null || true)
    [[ $st == COMPLETED || $st == FAILED || $st == CANCELLED ]] && break
    sleep 0.5
done
[[ $st == COMPLETED ]] || { echo "slurm_test.sh: GPU probe job $probe is '$st'" >&2; cat "$T/log/probe.out"; exit 1; }
log "GPU probe job $probe COMPLETED ($(scontrol show job -o "$probe" | grep -o 'TresPerJob=[^ ]*'))"

if [[ -n ${CMB_SLURM_RUN_COMMAND:-} ]]; then
    log "running on partition $PARTITION: $CMB_SLURM_RUN_COMMAND"
    (cd "$REPO" && bash -c "$CMB_SLURM_RUN_COMMAND")
    exit $?
fi
if [[ ${CMB_SLURM_SETUP_ONLY:-0} == 1 ]]; then
    log "CMB_SLURM_SETUP_ONLY=1: stopping after the cluster checks"
    exit 0
fi

# ------------------------------------------------------------------ 3. the workflow, twice
"$BIN/cmb" synth --out "$T/bids" --preset tiny --n-subjects 2 --seed 7 >"$T/log/synth.log" 2>&1
log "cohort: 2 tiny subjects in $T/bids"

mkdir -p "$T/local" "$T/slurm"
log "local run (profiles/local)"
t=$SECONDS
if [[ -n ${CMB_SLURM_REUSE_LOCAL:-} ]]; then   # debugging: the out/ of an earlier local run of this cohort
    cp -a "$CMB_SLURM_REUSE_LOCAL" "$T/local/out"
else (cd "$T/local" && timeout "$RUN_TIMEOUT" "$BIN/snakemake" -s "$REPO/Snakefile" --profile "$REPO/profiles/local" \
    "${EXTRA[@]}" --config bids_dir="$T/bids" output_dir="$T/local/out" >"$T/local/snakemake.log" 2>&1) || {
    echo "slurm_test.sh: the local run failed"; tail -n 60 "$T/local/snakemake.log"; exit 1; }
fi
log "local run done in $((SECONDS - t)) s"

# --default-resources on the command line replaces the profile's list: keep its entries.
read -r -a RESOURCES <<<"$("$BIN/python" "$REPO/.ci/slurm_check.py" default-resources "$REPO/profiles/slurm/config.yaml")"
log "SLURM run (profiles/slurm, partition $PARTITION)"
t=$SECONDS
(cd "$T/slurm" && timeout "$RUN_TIMEOUT" "$BIN/snakemake" -s "$REPO/Snakefile" --profile "$REPO/profiles/slurm" \
    --default-resources "${RESOURCES[@]}" slurm_partition="$PARTITION" \
    --slurm-keep-successful-logs --slurm-init-seconds-before-status-checks 5 \
    "${EXTRA[@]}" --config bids_dir="$T/bids" output_dir="$T/slurm/out" >"$T/slurm/snakemake.log" 2>&1) || {
    echo "slurm_test.sh: the SLURM run failed (or ran past ${RUN_TIMEOUT} s)"; exit 1; }
log "SLURM run done in $((SECONDS - t)) s"

# ------------------------------------------------------------------ 4. assertions
# Every check runs; each prints [PASS], [FAIL] or [SKIP]; the script fails if any failed.
CHECKS=$T/log/checks.txt
echo "  [PASS] a --gpus=1 job ran on the single-node cluster (job $probe)" >"$CHECKS"
scontrol show job -o >"$T/log/scontrol_jobs.txt"
"$BIN/python" "$REPO/.ci/slurm_check.py" check --repo "$REPO" --log "$T/slurm/snakemake.log" \
    --slurmctld-log "$T/log/slurmctld.log" --scontrol "$T/log/scontrol_jobs.txt" \
    --expect-gpu-rule "$GPU_RULE" >>"$CHECKS" 2>&1 || true

if "$BIN/python" "$REPO/.ci/compare_outputs.py" "$T/local/out" "$T/slurm/out" >"$T/log/compare.txt" 2>&1; then
    echo "  [PASS] the SLURM run's outputs equal the local run's: $(head -n 1 "$T/log/compare.txt")" >>"$CHECKS"
else
    { echo "  [FAIL] the SLURM run's outputs differ from the local run's:"; sed 's/^/         /' "$T/log/compare.txt"; } >>"$CHECKS"
fi

# Optional array jobs: the GPU rule's jobs again, as one SLURM array (plugin
# --slurm-array-jobs); the outputs must not change.
log "array rerun (--slurm-array-jobs $GPU_RULE)"
t=$SECONDS
(cd "$T/slurm" && timeout "$RUN_TIMEOUT" "$BIN/snakemake" -s "$REPO/Snakefile" --profile "$REPO/profiles/slurm" \
    --default-resources "${RESOURCES[@]}" slurm_partition="$PARTITION" \
    --slurm-keep-successful-logs --slurm-init-seconds-before-status-checks 5 \
    --slurm-array-jobs "$GPU_RULE" --forcerun "$GPU_RULE" \
    "${EXTRA[@]}" --config bids_dir="$T/bids" output_dir="$T/slurm/out" >"$T/slurm/snakemake-array.log" 2>&1) ||
    echo "  [FAIL] the array rerun failed: $(tail -n 5 "$T/slurm/snakemake-array.log" | tr '\n' ' ')" >>"$CHECKS"
log "array rerun done in $((SECONDS - t)) s"
scontrol show job -o >"$T/log/scontrol_array.txt"
N_GPU_JOBS=$(grep -cE "Comment=rule_${GPU_RULE}(_wildcards_[^ ]*)?( |$)" "$T/log/scontrol_jobs.txt" || true)
"$BIN/python" "$REPO/.ci/slurm_check.py" array --scontrol "$T/log/scontrol_array.txt" --rule "$GPU_RULE" \
    --expect "$N_GPU_JOBS" >>"$CHECKS" 2>&1 || true
if "$BIN/python" "$REPO/.ci/compare_outputs.py" "$T/local/out" "$T/slurm/out" >"$T/log/compare_array.txt" 2>&1; then
    echo "  [PASS] after the array rerun the outputs still equal the local run's" >>"$CHECKS"
else
    { echo "  [FAIL] after the array rerun the outputs differ from the local run's:"
      sed 's/^/         /' "$T/log/compare_array.txt"; } >>"$CHECKS"
fi

# The documented route: an installed profile, found by its bare name.
XDG_CONFIG_HOME=$T/xdg "$BIN/cmb" profile install slurm --partition "$PARTITION" >"$T/log/install.txt" 2>&1 || true
# Only the installed copy has the partition: it shows in the dry run's job resources.
mkdir -p "$T/dry"
(cd "$T/dry" && XDG_CONFIG_HOME=$T/xdg "$BIN/snakemake" -n --profile slurm -s "$REPO/Snakefile" \
    --config bids_dir="$T/bids" output_dir="$T/dry/out" >"$T/log/dry.txt" 2>&1) || true
if grep -q "^Using profile slurm for" "$T/log/dry.txt" && grep -q "slurm_partition=$PARTITION" "$T/log/dry.txt" &&
    grep -q "slurm_partition: '$PARTITION'" "$T/xdg/snakemake/slurm/config.yaml"; then
    echo "  [PASS] 'cmb profile install slurm --partition $PARTITION' is found by 'snakemake --profile slurm'" >>"$CHECKS"
else
    { echo "  [FAIL] the installed profile was not used by 'snakemake --profile slurm':"
      cat "$T/log/install.txt"; head -n 20 "$T/log/dry.txt"; } >>"$CHECKS"
fi

log "checks:"
cat "$CHECKS"
passed=$(grep -c '^  \[PASS\]' "$CHECKS" || true)
failed=$(grep -c '^  \[FAIL\]' "$CHECKS" || true)
skipped=$(grep -c '^  \[SKIP\]' "$CHECKS" || true)
log "setup and both runs took $((SECONDS - T0)) s"
echo "slurm: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 && $passed -gt 0 ]]

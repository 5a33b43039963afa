#!/usr/bin/env bash
# The container image, built and run here (docs/cluster.md, "Containers"):
#   1. containers/build.sh builds the image from a debootstrapped Debian 12 and the pinned
#      PyPI packages, and writes its OCI archive (what `apptainer build cmb.sif
#      oci-archive://...` reads); the image runs as a non-root user with entrypoint cmb;
#   2. the demo subject (cmb synth --preset tiny, 1 subject with a T1w) runs inside it with
#      `podman run --network=none --read-only`, the BIDS input bound read-only, a writable
#      output and work folder bound in, and no writable home; the input is unchanged after;
#   3. the same workflow (the image's own /opt/cmb, copied out) runs bare-metal with the
#      host's .venv, and .ci/compare_exact.py holds the two output folders byte for byte
#      apart from the provenance fields it names (versions, source tree, paths, times), and
#      float images to float32 rounding (its docstring says why);
#   4. bad input inside the image: an unbound input folder and an unbound output folder
#      are refused by `cmb run` before Snakemake starts, naming the path; the GPU the
#      config asks for by default (detection.use_gpu) is not visible, and each detect_cmb
#      job log has exactly one warning line saying it runs on the CPU.
# Called by .ci/run after `make test` (needs .venv). Each check prints PASS, FAIL or SKIP.
#
# Properties of this CI/test machine, not of the image: podman must use `--runtime runc`
# (crun refuses the machine's hybrid cgroup layout) and `--ulimit nofile=4096:4096
# --ulimit nproc=4096:4096` (podman's default limits exceed the machine's hard limits:
# EPERM from setrlimit). CMB_PODMAN_ARGS replaces them elsewhere (e.g. CMB_PODMAN_ARGS="").
#
#   bash .ci/container_test.sh
#   CMB_IMAGE=cmb:0.1.0-cpu bash .ci/container_test.sh   # an image already built: no build
#   CMB_WHEELS=DIR ...      reuse build.sh's wheel folder;  CMB_CONTAINER_KEEP=1 keeps the folder
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=$REPO/.venv/bin
RUN_TIMEOUT=${CMB_CONTAINER_RUN_TIMEOUT:-1800}   # seconds for each workflow run
read -r -a PODMAN_ARGS <<<"${CMB_PODMAN_ARGS---runtime runc --ulimit nofile=4096:4096 --ulimit nproc=4096:4096}"
T0=$SECONDS
log() { printf '[container-ci %4ds] %s\n' $((SECONDS - T0)) "$*"; }
skip() { log "SKIPPED: $*"; echo "container: 0 passed, 0 failed, 1 skipped ($*)"; exit 0; }

if [[ ! -x $BIN/python ]]; then
    echo "container_test.sh: $BIN/python missing: run 'make env' first" >&2
    exit 1
fi
# The tools: Debian 12 packages. As root (CI) they are installed when missing; elsewhere
# the stage is skipped with the reason.
need=()
for tool in podman runc; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [[ -z ${CMB_IMAGE:-} ]]; then
    for tool in buildah debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
fi
if [[ ${#need[@]} -gt 0 ]]; then
    if [[ $(id -u) -ne 0 ]]; then
        skip "${need[*]} not installed, and not root to install them (apt-get install debootstrap buildah podman runc)"
    fi
    log "installing Debian's ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ -z ${CMB_IMAGE:-} && $(id -u) -ne 0 ]]; then
    skip "containers/build.sh needs root (buildah mount); set CMB_IMAGE to test an image already built"
fi
log "$(podman --version), $(runc --version | head -n 1)"

T=$(mktemp -d "${TMPDIR:-/tmp}/cmb-container-ci.XXXXXX")
chmod 755 "$T"
CHECKS=$T/checks.txt
: >"$CHECKS"
pass() { echo "  [PASS] $*" >>"$CHECKS"; }
fail() { echo "  [FAIL] $*" >>"$CHECKS"; }
BUILT=""
cleanup() {
    local rc=$?
    set +e
    podman rm -f "cmb-ci-copy-$$" >/dev/null 2>&1
    [[ -n $BUILT ]] && podman rmi -f "$BUILT" >/dev/null 2>&1
    if [[ ${CMB_CONTAINER_KEEP:-0} == 1 ]]; then log "kept $T"; else rm -rf "$T"; fi
    exit $rc
}
trap cleanup EXIT

# ------------------------------------------------------------------ 1. the image
if [[ -n ${CMB_IMAGE:-} ]]; then
    IMAGE=$CMB_IMAGE
    log "image $IMAGE (given, not built)"
else
    IMAGE=cmb:ci-$$
    BUILT=$IMAGE
    log "building $IMAGE with containers/build.sh"
    b0=$SECONDS
    if bash "$REPO/containers/build.sh" --tag "$IMAGE" --archive "$T/cmb-oci.tar" \
        ${CMB_WHEELS:+--wheels "$CMB_WHEELS"} >"$T/build.log" 2>&1; then
        size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
        pass "containers/build.sh built $IMAGE in $((SECONDS - b0)) s: $((size / 1000000)) MB, archive $(du -m "$T/cmb-oci.tar" | cut -f1) MiB"
        # the OCI layout that apptainer's oci-archive:// reads
        # (listed into a file first: grep -q closing the pipe early kills tar with SIGPIPE,
        # which pipefail turns into a failed check although the entry is there)
        tar -tf "$T/cmb-oci.tar" >"$T/cmb-oci.list"
        if grep -qx -e 'oci-layout' -e './oci-layout' "$T/cmb-oci.list" \
            && grep -qx -e 'index.json' -e './index.json' "$T/cmb-oci.list"; then
            pass "the archive is an OCI image layout (oci-layout, index.json)"
        else
            fail "the archive has no oci-layout/index.json: apptainer build oci-archive:// would refuse it"
        fi
        rm -f "$T/cmb-oci.tar"
    else
        fail "containers/build.sh failed:"
        sed 's/^/         /' "$T/build.log" | tail -n 30 >>"$CHECKS"
        cat "$CHECKS"
        exit 1
    fi
fi
config=$(podman image inspect --format '{{.Config.User}}|{{json .Config.Entrypoint}}' "$IMAGE")
if [[ $config == 'cmb|["/opt/venv/bin/cmb"]' ]]; then
    pass "the image runs as user cmb with entrypoint cmb"
else
    fail "user|entrypoint is $config, not cmb|[\"/opt/venv/bin/cmb\"]"
fi

# ------------------------------------------------------------------ 2. input
log "demo cohort (tiny, 1 subject with a T1w, seed 42)"
"$BIN/cmb" synth --out "$T/bids" --preset tiny --n-subjects 1 --seed 42 --t1w --n-cmb 6 >"$T/synth.log" 2>&1
chmod -R a-w "$T/bids"
(cd "$T/bids" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/bids.sha256"
mkdir -p "$T/ctr/out" "$T/ctr/work" "$T/host"
chown -R 1000:1000 "$T/ctr" 2>/dev/null || chmod -R a+rwx "$T/ctr"   # the image's user cmb is uid 1000

ctr() {  # podman run of the image with this machine's settings, no network, read-only root
    podman run --rm "${PODMAN_ARGS[@]}" --network=none --read-only "$@"
}

# ------------------------------------------------------------------ 3. the image's run
log "the workflow inside the image (podman run --network=none --read-only, input :ro)"
c0=$SECONDS
set +e
timeout "$RUN_TIMEOUT" podman run --rm "${PODMAN_ARGS[@]}" --network=none --read-only \
    -v "$T/bids:/data/bids:ro" -v "$T/ctr/out:/data/out" -v "$T/ctr/work:/data/work" \
    "$IMAGE" run --config bids_dir=/data/bids output_dir=/data/out work_dir=/data/work \
    >"$T/ctr.log" 2>&1
rc=$?
set -e
ctr_s=$((SECONDS - c0))
if [[ $rc -eq 0 && -f $T/ctr/out/cohort/cmb_counts.csv ]]; then
    pass "the demo subject ran inside the image in $ctr_s s (no network, read-only root and input, no writable home)"
else
    fail "the run inside the image failed (exit $rc):"
    tail -n 30 "$T/ctr.log" | sed 's/^/         /' >>"$CHECKS"
fi
if (cd "$T/bids" && sha256sum --quiet -c "$T/bids.sha256") >/dev/null 2>&1 &&
    [[ $(cd "$T/bids" && find . -type f | wc -l) -eq $(wc -l <"$T/bids.sha256") ]]; then
    pass "the BIDS input is unchanged ($(wc -l <"$T/bids.sha256") files)"
else
    fail "the BIDS input changed"
fi

# GPU asked for (detection.use_gpu true, the default), none visible: one warning line per job
logs=$(find "$T/ctr/out/logs/detect_cmb" -type f 2>/dev/null | sort || true)
if [[ -z $logs ]]; then
    fail "no detect_cmb log in the image's run"
else
    bad=""
    for f in $logs; do
        n=$(grep -c 'GPU requested but' "$f" || true)
        w=$(grep -c 'WARNING' "$f" || true)
        [[ $n -eq 1 && $w -eq 1 ]] || bad+=" ${f#"$T"/} ($n GPU line(s), $w warning(s))"
    done
    if [[ -z $bad ]]; then
        pass "GPU requested, none visible: detection ran on the CPU with one warning line: $(grep -h -m1 'GPU requested but' $logs | head -n 1 | cut -c1-160)"
    else
        fail "detect_cmb logs without exactly one warning line:$bad"
    fi
fi

# ------------------------------------------------------------------ 4. bare metal
log "the same workflow bare-metal (the image's /opt/cmb, the host's .venv)"
podman create --name "cmb-ci-copy-$$" "$IMAGE" >/dev/null
podman cp "cmb-ci-copy-$$:/opt/cmb" "$T/workflow"
podman rm -f "cmb-ci-copy-$$" >/dev/null
h0=$SECONDS
set +e
(cd "$T/host" && PATH=$BIN:$PATH PYTHONPATH=$T/workflow CMB_WORKFLOW_DIR=$T/workflow \
    timeout "$RUN_TIMEOUT" "$BIN/python" -m cmb.cli run \
    --config bids_dir="$T/bids" output_dir="$T/host/out" work_dir="$T/host/work") >"$T/host.log" 2>&1
rc=$?
set -e
if [[ $rc -eq 0 && -f $T/host/out/cohort/cmb_counts.csv ]]; then
    pass "the same workflow ran bare-metal in $((SECONDS - h0)) s"
    if "$BIN/python" "$REPO/.ci/compare_exact.py" "$T/host/out" "$T/ctr/out" \
        --paths "$T/host/out=/data/out" --paths "$T/bids=/data/bids" --paths "$T/host/work=/data/work" \
        --paths "$T/workflow=/opt/cmb" >"$T/compare.txt" 2>&1; then
        pass "the image's outputs equal the bare-metal run's: $(head -n 1 "$T/compare.txt")"
    else
        fail "the image's outputs differ from the bare-metal run's:"
        sed 's/^/         /' "$T/compare.txt" | head -n 40 >>"$CHECKS"
    fi
else
    fail "the bare-metal run failed (exit $rc):"
    tail -n 30 "$T/host.log" | sed 's/^/         /' >>"$CHECKS"
fi

# ------------------------------------------------------------------ 5. missing bind mounts
set +e
ctr -v "$T/ctr/out:/data/out" "$IMAGE" run --config bids_dir=/data/bids output_dir=/data/out \
    work_dir=/data/out/w >"$T/nobids.log" 2>&1
rc=$?
set -e
if [[ $rc -eq 2 ]] && grep -q '^cmb run: error: bids_dir /data/bids: no such folder; in a container, bind it there' "$T/nobids.log" &&
    ! grep -q Traceback "$T/nobids.log"; then
    pass "input not bound: exit 2, '$(head -n 1 "$T/nobids.log" | cut -c1-110)...'"
else
    fail "input not bound: exit $rc, expected 2 and the path named:"
    sed 's/^/         /' "$T/nobids.log" | tail -n 10 >>"$CHECKS"
fi
set +e
ctr -v "$T/bids:/data/bids:ro" "$IMAGE" run --config bids_dir=/data/bids output_dir=/data/out >"$T/noout.log" 2>&1
rc=$?
set -e
if [[ $rc -eq 2 ]] && grep -q '^cmb run: error: output_dir /data/out: /[a-z]* is read-only here' "$T/noout.log" &&
    grep -q '^cmb run: error: work_dir (empty, so <output_dir>-work) /data/out-work: /[a-z]* is read-only here' "$T/noout.log"; then
    pass "output not bound: exit 2, output_dir and the default work_dir named"
else
    fail "output not bound: exit $rc, expected 2 and output_dir, work_dir named:"
    sed 's/^/         /' "$T/noout.log" | tail -n 10 >>"$CHECKS"
fi

log "checks:"
cat "$CHECKS"
passed=$(grep -c '^  \[PASS\]' "$CHECKS" || true)
failed=$(grep -c '^  \[FAIL\]' "$CHECKS" || true)
log "container stage took $((SECONDS - T0)) s"
echo "container: $passed passed, $failed failed, 0 skipped"
[[ $failed -eq 0 && $passed -gt 0 ]]

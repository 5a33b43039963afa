#!/usr/bin/env bash
# Build the cmb OCI image from a clean root: a debootstrapped Debian 12 (bookworm) minbase,
# Debian's Python 3.11, the pinned packages of requirements-cpu.txt (the project's one pin
# list, as `make env` uses it) and the workflow itself (Snakefile, rules, config, profiles,
# the cmb package with its shipped weights). No registry base image: the root filesystem
# comes from Debian packages, the Python packages from the pip index the build host's pip
# is configured with (PyPI by default). Nothing is downloaded when the image runs.
#
#   sudo containers/build.sh                      # CPU torch (default), image cmb:<version>
#   sudo containers/build.sh --torch cuda         # CUDA torch (for GPU nodes, --nv)
#   sudo containers/build.sh --archive cmb.tar    # also write an OCI archive (for apptainer)
#
# then, on the cluster:  apptainer build cmb.sif oci-archive://cmb.tar   (docs/cluster.md)
#
# Options (or the environment variables in brackets):
#   --torch cpu|cuda   [CMB_TORCH, default cpu] which torch build goes in. The torch pin of
#                      requirements-cpu.txt names the version only (torch==X). "cpu" requires
#                      that the host's pip resolves it to a CPU-only build (a local wheel, or
#                      an extra index of CPU wheels in the host's own pip configuration) and
#                      fails the build otherwise; "cuda" requires a CUDA build, which is what
#                      PyPI's default Linux x86_64 wheel of torch is (its CUDA runtime comes as
#                      nvidia-* wheels: the image is then several GB larger).
#   --tag NAME         [CMB_IMAGE, default cmb:<version>-<torch>] image name in containers-storage
#   --archive PATH     [CMB_ARCHIVE] also save the image as an OCI archive there
#   --work DIR         [CMB_BUILD_WORK, default a new folder in $TMPDIR] build folder (wheels)
#   --wheels DIR       [CMB_WHEELS] reuse a wheel folder made by an earlier build (no pip downloads)
#   --ref REF          [CMB_REF] take the workflow from git commit REF (git archive) instead of
#                      the working tree's tracked files (which include uncommitted edits)
#   --keep             keep the build folder
#   DEBIAN_MIRROR      debootstrap's mirror (default: debootstrap's own, deb.debian.org)
#
# Needs root (buildah mount), and the Debian 12 packages debootstrap, buildah, podman and
# runc. Prints the build time and the image size at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
torch_kind=${CMB_TORCH:-cpu}
tag=${CMB_IMAGE:-}
archive=${CMB_ARCHIVE:-}
work=${CMB_BUILD_WORK:-}
wheels=${CMB_WHEELS:-}
ref=${CMB_REF:-}
keep=0
suite=bookworm
while [ $# -gt 0 ]; do
    case "$1" in
        --torch) torch_kind=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --archive) archive=$2; shift 2 ;;
        --work) work=$2; shift 2 ;;
        --wheels) wheels=$2; shift 2 ;;
        --ref) ref=$2; shift 2 ;;
        --keep) keep=1; shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$torch_kind" in cpu|cuda) ;; *) echo "build.sh: --torch must be cpu or cuda, not $torch_kind" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (buildah mount of a scratch container)" >&2; exit 2; }
for tool in debootstrap buildah podman python3; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool not found (apt-get install debootstrap buildah podman runc)" >&2; exit 2; }
done

if [ -n "$ref" ]; then
    git -C "$repo" rev-parse --verify -q "$ref^{commit}" >/dev/null \
        || { echo "build.sh: --ref $ref is not a commit of $repo" >&2; exit 2; }
    version=$(git -C "$repo" show "$ref:cmb/__init__.py" | sed -n 's/^__version__ = "\(.*\)"/\1/p')
    revision=$(git -C "$repo" describe --always "$ref")
else
    version=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/cmb/__init__.py")
    revision=$(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown)
fi
tag=${tag:-cmb:$version-$torch_kind}
torch_pin=$(grep -E '^torch==' "$repo/requirements-cpu.txt")
# setuptools builds the editable install of cmb (pyproject: setuptools>=68); not in the pin list
setuptools_pin=${CMB_SETUPTOOLS:-setuptools==84.2.1}
t0=$(date +%s)
stamp() { echo "[build.sh $(( $(date +%s) - t0 )) s] $*"; }

if [ -z "$work" ]; then work=$(mktemp -d "${TMPDIR:-/tmp}/cmb-image-build.XXXXXX"); else mkdir -p "$work"; fi
ctr=""
cleanup() {
    if [ -n "$ctr" ]; then buildah umount "$ctr" >/dev/null 2>&1 || true; buildah rm "$ctr" >/dev/null 2>&1 || true; fi
    if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "build folder kept: $work"; fi
}
trap cleanup EXIT

# 1. Wheels, on the build host: the only step that uses a Python package index. Every
# sdist (docopt) is built into a wheel here, so the install inside the root is offline.
if [ -z "$wheels" ]; then
    wheels=$work/wheels
    mkdir -p "$wheels"
    stamp "wheels of requirements-cpu.txt ($torch_pin, $torch_kind) into $wheels"
    # (the filter drops one warning per package that a pip configured with file:// indexes prints)
    python3 -m pip wheel -q -r "$repo/requirements-cpu.txt" -w "$wheels" 2> >(grep -v 'is ignored: it is neither' >&2)
    python3 -m pip download -q --no-deps --only-binary=:all: "$setuptools_pin" -d "$wheels" \
        2> >(grep -v 'is ignored: it is neither' >&2)
fi

# 2. The root filesystem, debootstrapped straight into a scratch container's mount.
ctr=$(buildah from --name "cmb-build-$$" scratch)
mnt=$(buildah mount "$ctr")
stamp "debootstrap $suite (minbase) into $mnt"
# python3-venv: venv with pip; libgomp1: OpenMP (ANTs, torch); procps: ps, which Snakemake uses
# shellcheck disable=SC2086
debootstrap --variant=minbase --include=python3,python3-venv,libgomp1,procps \
    "$suite" "$mnt" ${DEBIAN_MIRROR:-} >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

# 3. The workflow: tracked files only (no venv, demo or outputs), as the working tree has
# them, or as commit --ref has them.
stamp "workflow into /opt/cmb (revision $revision)"
mkdir -p "$mnt/opt/cmb" "$mnt/tmp/wheels"
parts=(Snakefile rules config profiles envs cmb pyproject.toml README.md requirements-cpu.txt)
if [ -n "$ref" ]; then
    git -C "$repo" archive --format=tar "$ref" -- "${parts[@]}" | tar -xf - -C "$mnt/opt/cmb"
elif git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -z -- "${parts[@]}" | tar --null -T - --ignore-failed-read -cf -) \
        | tar -xf - -C "$mnt/opt/cmb"
else
    (cd "$repo" && tar --exclude=__pycache__ --exclude='*.egg-info' -cf - "${parts[@]}") | tar -xf - -C "$mnt/opt/cmb"
fi
cp "$wheels"/*.whl "$mnt/tmp/wheels/"

# 4. The Python environment, installed inside the root with no network.
stamp "venv inside the image (no network)"
buildah run --network none "$ctr" -- /bin/sh -eu -c "
    export PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wheels PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
    python3 -m venv /opt/venv
    /opt/venv/bin/pip install -q -r /opt/cmb/requirements-cpu.txt
    /opt/venv/bin/pip install -q --no-deps -e /opt/cmb
    /opt/venv/bin/python -m compileall -q /opt/cmb/cmb
    rm -rf /opt/cmb/*.egg-info /opt/cmb/build /tmp/wheels
    /opt/venv/bin/python -c 'import sys, torch, ants, nibabel, snakemake, cmb.cli, cmb.template
kind = \"cuda\" if torch.version.cuda else \"cpu\"
print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda)
sys.exit(0 if kind == \"$torch_kind\" else \"torch build is \" + kind + \", --torch $torch_kind asked for: see containers/build.sh --help\")'
    /opt/venv/bin/cmb --help >/dev/null
"

# 5. A non-root user, and a smaller root (no apt lists, docs, man pages, locales).
stamp "user cmb, clean-up"
echo 'cmb:x:1000:1000:cmb workflow:/home/cmb:/bin/sh' >>"$mnt/etc/passwd"
echo 'cmb:x:1000:' >>"$mnt/etc/group"
echo 'cmb:*:19000:0:99999:7:::' >>"$mnt/etc/shadow"
install -d -o 1000 -g 1000 -m 0755 "$mnt/home/cmb"
rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/var/cache/apt/* "$mnt"/var/cache/debconf/*-old \
    "$mnt"/usr/share/doc/* "$mnt"/usr/share/man/* "$mnt"/usr/share/info/* "$mnt"/var/log/* \
    "$mnt"/usr/share/locale/* "$mnt"/root/.cache
# (*.pyi stay: lazy_loader reads them at import time, snakebids for one)
buildah umount "$ctr" >/dev/null

# 6. Image configuration and commit.
# Writable places the image needs: /tmp only (Snakemake's state when no --directory is
# given, matplotlib's and cmb's caches). HOME is left alone (apptainer binds the user's).
buildah config \
    --entrypoint '["/opt/venv/bin/cmb"]' --cmd '["--help"]' \
    --user cmb --workingdir /tmp \
    --env PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env HOME=/home/cmb \
    --env PYTHONNOUSERSITE=1 --env PIP_NO_INDEX=1 --env LANG=C.UTF-8 \
    --env MPLCONFIGDIR=/tmp/cmb-matplotlib --env XDG_CACHE_HOME=/tmp/cmb-cache \
    --env CMB_WORKFLOW_DIR=/opt/cmb --env CMB_IN_CONTAINER=1 \
    --label org.opencontainers.image.title=cmb \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.description=cmb cerebral microbleed workflow, torch $torch_kind ($torch_pin)" \
    "$ctr"
stamp "commit $tag"
buildah commit -q --rm "$ctr" "$tag" >/dev/null
ctr=""
if [ -n "$archive" ]; then
    stamp "OCI archive $archive"
    rm -f "$archive"
    podman save -q --format oci-archive -o "$archive" "$tag"
fi
size=$(podman image inspect --format '{{.Size}}' "$tag")
stamp "done: $tag, $(( size / 1000000 )) MB uncompressed$( [ -n "$archive" ] && echo ", archive $(du -m "$archive" | cut -f1) MiB")"
echo "build time $(( $(date +%s) - t0 )) s"

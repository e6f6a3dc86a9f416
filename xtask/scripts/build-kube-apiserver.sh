#!/bin/bash
# Builds kube-apiserver v1.20.2 offline (every Go dependency is vendored) from Debian's
# kubernetes source tarball, for the Kubernetes end-to-end tests (tests/src/apiserver.rs).
# Run by `cargo xtask kube-apiserver` (and `cargo xtask test`), which first installs
# golang-1.19-go and etcd-server with apt.
#
#   build-kube-apiserver.sh OUT_DIR WORK_DIR
#
# Writes OUT_DIR/kube-apiserver. WORK_DIR keeps the downloads and the Go build cache while it
# runs and is removed after a successful build (about 2 GB at the peak; ~13 min on 2 cores).
#
# Two fixes to the tarball, both needed to build v1.20 with the Go Debian still ships:
# - pkg/generated/openapi/zz_generated.openapi.go is not in the tarball: it is generated with
#   the vendored openapi-gen, over every package tagged `+k8s:openapi-gen=`;
# - the vendored github.com/modern-go/reflect2 1.0.1 crashes at run time with Go >= 1.18
#   (its unsafe map iteration no longer matches the runtime): replaced by the 1.0.2 sources
#   of Debian's golang-github-modern-go-reflect2-dev, which has the fix.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 OUT_DIR WORK_DIR" >&2
    exit 2
fi
OUT=$(realpath -m "$1")
WORK=$(realpath -m "$2")

VERSION=1.20.2
POOL=${DEBIAN_POOL:-http://deb.debian.org/debian/pool/main}
TARBALL=kubernetes_1.20.5+really1.20.2.orig.tar.gz
TARBALL_URL=$POOL/k/kubernetes/$TARBALL
TARBALL_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
REFLECT2_DEB=golang-github-modern-go-reflect2-dev_1.0.2-2_all.deb
REFLECT2_URL=$POOL/g/golang-github-modern-go-reflect2/$REFLECT2_DEB
REFLECT2_SHA256=af150a5172cf4c19bb321a53e67103e7fb18d07c1baa1e816a235155265d3948
GOROOT_BIN=${GOROOT_BIN:-/usr/lib/go-1.19/bin}

step() { echo "build-kube-apiserver: $*" >&2; }
die() {
    echo "build-kube-apiserver: error: $*" >&2
    exit 1
}

for tool in curl tar sha256sum dpkg-deb; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
[ -x "$GOROOT_BIN/go" ] || die "$GOROOT_BIN/go is missing (apt-get install golang-1.19-go)"

mkdir -p "$WORK/downloads" "$OUT"

# fetch URL FILE SHA256: downloads once, always checks the digest.
fetch() {
    local url=$1 file=$WORK/downloads/$2 sum=$3
    if [ ! -f "$file" ]; then
        step "downloading $url"
        curl -fsSL --retry 3 --connect-timeout 20 -o "$file.part" "$url" ||
            die "download of $url failed"
        mv "$file.part" "$file"
    fi
    if ! echo "$sum  $file" | sha256sum --check --status; then
        rm -f "$file"
        die "$2: sha256 mismatch (expected $sum); removed, run again to download it anew"
    fi
}
fetch "$TARBALL_URL" "$TARBALL" "$TARBALL_SHA256"
fetch "$REFLECT2_URL" "$REFLECT2_DEB" "$REFLECT2_SHA256"

# A GOPATH build (GO111MODULE=off): the source must sit at src/k8s.io/kubernetes.
GOPATH_DIR=$WORK/gopath
SRC=$GOPATH_DIR/src/k8s.io/kubernetes
rm -rf "$SRC" "$WORK/reflect2"
mkdir -p "$SRC"
step "unpacking $TARBALL"
tar -xzf "$WORK/downloads/$TARBALL" -C "$SRC" --strip-components=1

step "replacing vendored reflect2 1.0.1 with Debian's 1.0.2"
dpkg-deb -x "$WORK/downloads/$REFLECT2_DEB" "$WORK/reflect2"
REFLECT2_SRC=$WORK/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2
[ -f "$REFLECT2_SRC/go_above_118.go" ] || die "$REFLECT2_DEB does not hold reflect2 1.0.2 sources"
REFLECT2_DST=$SRC/vendor/github.com/modern-go/reflect2
rm -rf "$REFLECT2_DST"
mkdir -p "$REFLECT2_DST"
cp "$REFLECT2_SRC"/*.go "$REFLECT2_SRC"/*.s "$REFLECT2_DST/"

export PATH=$GOROOT_BIN:$PATH GO111MODULE=off CGO_ENABLED=0 GOPATH=$GOPATH_DIR \
    GOCACHE=$WORK/gocache GOFLAGS= GOTOOLCHAIN=local
cd "$SRC"

step "building openapi-gen"
go build -o "$WORK/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen

step "generating pkg/generated/openapi"
# Every non-test package tagged +k8s:openapi-gen= (as hack/update-codegen.sh collects them),
# without the code generator's and the sample API server's own packages. vendor/k8s.io/* are
# symlinks into staging/: grep -R follows them (-r would skip k8s.io/api, apiextensions, ...).
DIRS=$(
    {
        grep -rl --include='*.go' '+k8s:openapi-gen=' pkg cmd plugin || true
        grep -Rl --include='*.go' '+k8s:openapi-gen=' vendor || true
    } | grep -v '_test.go' | xargs grep -l '^// *+k8s:' |
        grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' |
        xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd,
)
# Without these the server builds but exits at start: "unable to get openapi models".
for pkg in vendor/k8s.io/api/core/v1 vendor/k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1 \
    vendor/k8s.io/apimachinery/pkg/apis/meta/v1; do
    case ",$DIRS," in
    *",k8s.io/kubernetes/$pkg,"*) ;;
    *) die "openapi-gen input misses $pkg (found: $DIRS)" ;;
    esac
done
"$WORK/bin/openapi-gen" --logtostderr -i "$DIRS" -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$WORK/api-rule-violations.report"
[ -s pkg/generated/openapi/zz_generated.openapi.go ] || die "openapi-gen wrote nothing"

step "building kube-apiserver (about 10 minutes on 2 cores)"
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
go build -o "$WORK/bin/kube-apiserver" \
    -ldflags "-s -w -X $V.gitVersion=v$VERSION -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean" \
    ./cmd/kube-apiserver

got=$("$WORK/bin/kube-apiserver" --version)
[ "$got" = "Kubernetes v$VERSION" ] || die "built binary reports '$got', expected 'Kubernetes v$VERSION'"
cp "$WORK/bin/kube-apiserver" "$OUT/kube-apiserver.tmp"
mv "$OUT/kube-apiserver.tmp" "$OUT/kube-apiserver"
cd /
rm -rf "$WORK"
step "done: $OUT/kube-apiserver ($got)"

#!/usr/bin/env bash
# Builds, locally and only when missing, the two base images the Dockerfile
# names, for machines that reach Debian's apt mirror but no image registry:
#   docker.io/library/debian:bookworm-slim      debootstrap --variant=minbase bookworm, slimmed
#   docker.io/library/rust:1.95-slim-bookworm   that + gcc, libc6-dev, ca-certificates and the
#                                               host's Rust toolchain (`rustc --print sysroot`)
# Idempotent: an image that exists is left alone (delete it to rebuild it).
# Needs root, podman, buildah and debootstrap (apt-get install podman buildah runc debootstrap).
set -euo pipefail

DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim
RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
RUST_VERSION=1.95

die() { echo "base-images: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (rootful podman/buildah)"
for tool in podman buildah debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: apt-get install podman buildah runc debootstrap"
done

# Two concurrent runs would both debootstrap; the second waits and then finds the images.
exec 9>/run/lock/authd-base-images.lock
flock 9

rootfs="" ctr=""
cleanup() {
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  [ -z "$rootfs" ] || rm -rf "$rootfs" "$rootfs.log"
}
trap cleanup EXIT

# The first URI the host's apt uses for a suite (one-line .list and deb822 .sources files).
host_mirror() {
  local suite=$1 fallback=$2 uri
  uri=$(
    {
      cat /etc/apt/sources.list 2>/dev/null
      cat /etc/apt/sources.list.d/*.list 2>/dev/null
    } | awk -v s="$suite" '$1 == "deb" { sub(/\[[^]]*\] */, ""); if ($3 == s) { print $2; exit } }'
  )
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v s="$suite" '
      function flush() { if (!found && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " s " ")) { split(uris, u, " "); print u[1]; found = 1 } types = uris = suites = "" }
      /^[ \t]*$/ { flush(); next }
      /^Types:/  { sub(/^Types:[ \t]*/, "");  types = $0 }
      /^URIs:/   { sub(/^URIs:[ \t]*/, "");   uris = $0 }
      /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
      END { flush() }')
  fi
  echo "${uri:-$fallback}"
}

build_debian() {
  local mirror security
  mirror=$(host_mirror bookworm http://deb.debian.org/debian)
  security=$(host_mirror bookworm-security http://deb.debian.org/debian-security)
  rootfs=$(mktemp -d /var/tmp/authd-debootstrap.XXXXXX)
  echo "base-images: debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 20 "$rootfs.log" >&2; die "debootstrap failed"; }

  # What Debian's own slim images do: no docs, man pages or locales, now or on later installs.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/* "$rootfs"/var/cache/apt/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  # debootstrap copies the host's resolver and name; the container runtime provides its own.
  : >"$rootfs/etc/resolv.conf"
  : >"$rootfs/etc/hostname"
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

  tar --numeric-owner --xattrs -C "$rootfs" -c . \
    | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        - "$DEBIAN_IMAGE" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  rootfs=""
}

build_rust() {
  local sysroot version mnt
  version=$(rustc --version 2>/dev/null) || die "rustc is missing: the Rust image copies the host's toolchain"
  case "$version" in
    "rustc $RUST_VERSION."*) ;;
    *) die "the host has '$version'; $RUST_IMAGE needs Rust $RUST_VERSION.x" ;;
  esac
  sysroot=$(rustc --print sysroot)
  [ -x "$sysroot/bin/cargo" ] || die "no cargo in $sysroot/bin"

  ctr=$(buildah from --pull-never "$DEBIAN_IMAGE")
  echo "base-images: $RUST_IMAGE from $DEBIAN_IMAGE + gcc libc6-dev ca-certificates + $version"
  # Same packages as the official rust:*-slim-bookworm image (less wget: nothing downloads Rust here).
  buildah run --isolation chroot --network host "$ctr" -- sh -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates gcc libc6-dev >/dev/null 2>/tmp/apt.err || { cat /tmp/apt.err >&2; exit 1; }; rm -rf /var/lib/apt/lists/* /tmp/apt.err'
  mnt=$(buildah mount "$ctr")
  mkdir -p "$mnt/usr/local/rust" "$mnt/usr/local/cargo"
  # The toolchain without its 800 MB of HTML docs; rustc finds its libraries relative to itself.
  tar -C "$sysroot" --exclude=./share -c . | tar -C "$mnt/usr/local/rust" --no-same-owner -x
  chown -R 0:0 "$mnt/usr/local/rust"
  buildah umount "$ctr" >/dev/null
  buildah config \
    --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env RUST_VERSION="${version#rustc }" \
    --cmd bash "$ctr"
  buildah run --isolation chroot "$ctr" -- sh -c 'rustc --version && cargo --version && cc --version | head -n 1' \
    | sed 's/^/base-images:   /'
  buildah commit --format docker --quiet --rm "$ctr" "$RUST_IMAGE" >/dev/null
  ctr=""
}

if podman image exists "$DEBIAN_IMAGE"; then
  echo "base-images: $DEBIAN_IMAGE present"
else
  build_debian
  echo "base-images: $DEBIAN_IMAGE built"
fi
if podman image exists "$RUST_IMAGE"; then
  echo "base-images: $RUST_IMAGE present"
else
  build_rust
  echo "base-images: $RUST_IMAGE built"
fi

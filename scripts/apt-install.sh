# Sourced by the scripts that need Debian packages:
#   apt_install PACKAGE...   installs them (as root), or says what is missing.
apt_install() {
    (($#)) || return 0
    if [ "$(id -u)" = 0 ]; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
    else
        echo "missing packages: $* (install them, or run as root)" >&2
        exit 1
    fi
}

# Sourced by bench.sh and pgo.sh: `install_missing PKG...` installs the
# Debian packages given (as root, or through sudo), without letting them
# start their system services (nginx would take port 80): a policy-rc.d
# that refuses every start is in place for the install only.
install_missing() {
    [ "$#" -gt 0 ] || return 0
    echo "installing $* (Debian)" >&2
    local sudo=() policy=/usr/sbin/policy-rc.d placed=0
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod +x "$policy" && placed=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -qq "$@" >/dev/null
    if [ "$placed" = 1 ]; then "${sudo[@]}" rm -f "$policy"; fi
}

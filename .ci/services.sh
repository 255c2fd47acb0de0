#!/usr/bin/env bash
# Make sure the local services the integration tests talk to are up on 127.0.0.1:
# PostgreSQL :5432, MariaDB :3306, Mosquitto :1883. A service whose port already accepts
# connections is left alone; one that does not is started and waited for (bounded).
# Idempotent and quiet on success; exits non-zero naming the service that never came up.
#
#   bash .ci/services.sh                 # all of them
#   bash .ci/services.sh mosquitto       # only the ones named
#
# SERVICES_WAIT (seconds, default 30) bounds the wait for each service.
set -euo pipefail

WAIT="${SERVICES_WAIT:-30}"

port_open() {
    # A real TCP connect to 127.0.0.1:$1, bounded to 2 seconds.
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

start_postgresql() {
    local version
    version="$(ls /etc/postgresql | sort -V | tail -n 1)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
}

start_mariadb() {
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
}

start_mosquitto() {
    mosquitto -d -c /etc/mosquitto/mosquitto.conf
}

ensure() {
    local name="$1" port="$2" log
    if port_open "$port"; then
        return 0
    fi
    log="$(mktemp)"
    # The start command may fail because the server is already starting; the wait decides.
    if ! "start_$name" >"$log" 2>&1; then
        echo "services.sh: starting $name reported an error (waiting for it anyway):" >&2
        sed 's/^/    /' "$log" >&2
    fi
    rm -f "$log"
    SECONDS=0  # whole seconds since here; '>' makes the wait at least $WAIT
    until port_open "$port"; do
        if ((SECONDS > WAIT)); then
            echo "services.sh: $name did not come up on 127.0.0.1:$port within ${WAIT}s" >&2
            return 1
        fi
        sleep 0.2
    done
}

declare -A PORTS=([postgresql]=5432 [mariadb]=3306 [mosquitto]=1883)
if (($# == 0)); then
    set -- postgresql mariadb mosquitto
fi

failed=()
for name in "$@"; do
    if [[ -z "${PORTS[$name]:-}" ]]; then
        echo "services.sh: unknown service '$name' (known: ${!PORTS[*]})" >&2
        exit 2
    fi
    ensure "$name" "${PORTS[$name]}" || failed+=("$name")
done

if ((${#failed[@]})); then
    echo "services.sh: not available: ${failed[*]}" >&2
    exit 1
fi

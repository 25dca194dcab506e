# Set-up shared by scripts/test and scripts/demo. Source it; it defines functions and changes nothing
# until one is called, except that it moves to the repository root and sets ROOT.
#
#   ensure_debian_packages PKG...   apt-get install the ones dpkg does not have (one apt-get update)
#   ensure_venv                     .venv + `pip install -e '.[dev]'`, skipped while pyproject.toml is unchanged
#   ensure_postgres                 exports BUILDSVC_TEST_PG_URL: the one already set if any, else the
#                                   server on 127.0.0.1:5432, else (or with BUILDSVC_TEST_PG_THROWAWAY=1)
#                                   a throwaway cluster, stopped and deleted when the calling script exits
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

VENV="$ROOT/.venv"
PYPROJECT_STAMP="$VENV/.pyproject.sha256"
MACHINE_PG_URL="postgresql://postgres@127.0.0.1:5432/postgres"

say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root for: $*"
    fi
}

is_installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'; }

ensure_debian_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq || die "apt-get update failed"
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# The newest PostgreSQL bin dir: initdb on PATH, else Debian's /usr/lib/postgresql/N/bin.
pg_bindir() {
    local initdb dir
    if initdb="$(command -v initdb)"; then
        dirname "$(readlink -f "$initdb")"
        return 0
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
        if [[ -x "$dir/initdb" ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
        say "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
        rm -f "$PYPROJECT_STAMP"
    fi
    local sum
    sum="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ "$(cat "$PYPROJECT_STAMP" 2>/dev/null)" != "$sum" ]]; then
        say "installing the package and its dev tools into .venv"
        "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e '.[dev]' ||
            die "pip install -e '.[dev]' failed"
        echo "$sum" >"$PYPROJECT_STAMP"
    fi
    # An editable install has no bytecode, and with PYTHONDONTWRITEBYTECODE set (as on some machines)
    # Python never writes it: every command would compile the package again (~0.2 s a process). A
    # wheel install compiles at install time; so do we (only what changed since the last time).
    "$VENV/bin/python" -m compileall -q buildsvc >/dev/null || die "python -m compileall buildsvc failed"
    export VIRTUAL_ENV="$VENV"
    export PATH="$VENV/bin:$PATH"
}

# Throwaway cluster state, cleaned by stop_throwaway_postgres (set as an EXIT trap).
PG_TMP=""
PG_BIN=""

pg_as_owner() {
    # initdb and postgres refuse to run as root: run them as the `postgres` user then.
    if [[ $EUID -eq 0 ]]; then
        (cd "$PG_TMP" && runuser -u postgres -- "$@")
    else
        (cd "$PG_TMP" && "$@")
    fi
}

stop_throwaway_postgres() {
    [[ -n "$PG_TMP" && -d "$PG_TMP" ]] || return 0
    if [[ -f "$PG_TMP/data/postmaster.pid" ]]; then
        pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$PG_TMP"
    PG_TMP=""
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_throwaway_postgres() {
    PG_BIN="$(pg_bindir)" || die "no PostgreSQL server answers on 127.0.0.1:5432 and no initdb is installed"
    if [[ $EUID -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        die "no 'postgres' user to run initdb as (apt-get install postgresql creates it)"
    fi
    PG_TMP="$(mktemp -d /tmp/buildsvc-pg.XXXXXX)"
    trap stop_throwaway_postgres EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    [[ $EUID -eq 0 ]] && chown postgres: "$PG_TMP"
    local port
    port="$(free_port)"
    say "no server on 127.0.0.1:5432: starting a throwaway cluster on port $port in $PG_TMP"
    pg_as_owner "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$PG_TMP/initdb.log" 2>&1 || {
        cat "$PG_TMP/initdb.log" >&2
        die "initdb failed"
    }
    pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_TMP/data" -l "$PG_TMP/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_TMP -c fsync=off" >/dev/null 2>&1 || {
        cat "$PG_TMP/server.log" >&2
        die "pg_ctl start failed"
    }
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 30 || die "throwaway cluster does not answer"
    BUILDSVC_TEST_PG_URL="postgresql://postgres@127.0.0.1:$port/postgres"
}

ensure_postgres() {
    local bin
    bin="$(pg_bindir)" || bin=""
    # The bin dir goes on PATH so tests (tests/support/pgcluster.py) find initdb and pg_ctl too.
    [[ -n "$bin" ]] && export PATH="$PATH:$bin"
    if [[ -n "${BUILDSVC_TEST_PG_URL:-}" ]]; then
        # Chosen by the caller: use it as is, but fail now rather than in every test.
        pg_isready -q -d "$BUILDSVC_TEST_PG_URL" -t 5 || die "BUILDSVC_TEST_PG_URL=$BUILDSVC_TEST_PG_URL does not answer"
    elif [[ "${BUILDSVC_TEST_PG_THROWAWAY:-}" != 1 ]] && command -v pg_isready >/dev/null &&
        pg_isready -q -h 127.0.0.1 -p 5432 -t 3; then
        BUILDSVC_TEST_PG_URL="$MACHINE_PG_URL"
    else
        start_throwaway_postgres
    fi
    export BUILDSVC_TEST_PG_URL
    say "PostgreSQL for the tests: $BUILDSVC_TEST_PG_URL"
}

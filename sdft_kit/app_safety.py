"""What a shared web-app server allows, and what it cleans up (no gradio here).

    Limits               the operator's bounds: the models the Model field may name, steps, batch, sizes
    read_logins(...)     user:password pairs from --auth flags, an --auth-file and SDFT_KIT_AUTH
    check_exposure(...)  refuse to serve beyond this machine without a login, unless --no-auth says so
    make_export_dir()    a temporary folder for the zips the app hands out, named by this process;
                         folders left by processes that are gone are removed first
    BrowserCookie        ASGI middleware: a random, long-lived cookie naming each browser, so that without
                         logins a reload (a new page session) still finds its runs (app_runs.owner_key)

`app.py` passes the logins to gradio's own auth; the page checks every model name and
setting against `Limits` on the server, whatever a browser or an API client sends.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import Config

AUTH_ENV = "SDFT_KIT_AUTH"
EXPORT_PREFIX = "sdft-kit-export-"


@dataclass(frozen=True)
class Limits:
    """Bounds the server enforces on every request. `models`: the only values the Model field may take
    ('embedded' plus what the operator lists with --allow-model)."""

    models: tuple[str, ...] = ("embedded",)
    max_steps: int = 500
    max_batch_size: int = 16
    max_new_tokens: int = 512
    max_upload_mb: int = 20
    max_record_chars: int = 32_000  # prompt + demonstration, about 8k tokens: SmolLM2's context

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 2**20

    def check_model(self, model: str | None) -> str:
        """The model name if the operator allows it. Any other name (a path that exists or not, a Hub id)
        gets the same message, so the field cannot be used to probe the server's files."""
        name = (model or "").strip() or "embedded"
        if name not in self.models:
            raise ValueError(f"this server does not offer that model; choose one of: {', '.join(self.models)} "
                             "(the operator adds models with --allow-model)")
        return name

    def check(self, config: Config) -> Config:
        """The config if it stays within the limits, else a ValueError saying which setting to lower."""
        self.check_model(config.model.model)
        for name, value, limit in (("steps", config.train.steps, self.max_steps),
                                   ("batch size", config.train.batch_size, self.max_batch_size),
                                   ("new tokens per answer", config.rollout.max_new_tokens, self.max_new_tokens)):
            if value > limit:
                raise ValueError(f"{name} {value} is over this server's limit of {limit}; lower it "
                                 "(or train from the CLI)")
        return config


# -- logins ----------------------------------------------------------------------------------
def _login(text: str, where: str) -> tuple[str, str]:
    user, colon, password = text.strip().partition(":")
    if not colon or not user.strip() or not password:
        shown = f"'{user.strip()}:…'" if colon else "a value without ':'"  # never echo a password
        raise ValueError(f"{where}: expected user:password, got {shown}")
    return user.strip(), password


def read_logins(pairs: list[str] | None = None, file: str | Path | None = None,
                env: dict | None = None) -> list[tuple[str, str]]:
    """Logins from `--auth user:password` flags, an `--auth-file` (one user:password a line; blank lines
    and lines starting with # are skipped) and the SDFT_KIT_AUTH variable (user:password, several
    separated by commas). Malformed entries raise ValueError naming where they are, never the password."""
    logins = [_login(pair, "--auth") for pair in pairs or []]
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise ValueError(f"{path}: auth file not found")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                logins.append(_login(line, f"{path}, line {number}"))
    value = (os.environ if env is None else env).get(AUTH_ENV, "")
    logins += [_login(pair, AUTH_ENV) for pair in value.split(",") if pair.strip()]
    return logins


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_exposure(host: str, share: bool, logins: list, no_auth: bool) -> str | None:
    """Whether to serve: None when the app stays on this machine or asks for a login; a warning line when
    --no-auth says to serve the network without one; otherwise a ValueError saying what to add."""
    if (is_loopback(host) and not share) or logins:
        return None
    where = "a public gradio.live link (--share)" if share else f"the network (--host {host})"
    if no_auth:
        return (f"warning: serving on {where} with no login (--no-auth): anyone who reaches it can train on this "
                "machine and download what they train (each browser session sees only its own runs).")
    raise ValueError(f"refusing to serve on {where} without a login: add --auth user:password (or --auth-file FILE, "
                     f"or the {AUTH_ENV} variable), or --no-auth to serve it open on purpose")


# -- temporary export folders ----------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_exports(temp_dir: str | Path | None = None, max_age_s: float = 86_400) -> list[Path]:
    """Remove export folders whose process is gone (their name holds its pid), and unnamed ones older
    than `max_age_s` (left by older versions); returns what was removed."""
    removed = []
    for path in Path(temp_dir or tempfile.gettempdir()).glob(EXPORT_PREFIX + "*"):
        pid = path.name[len(EXPORT_PREFIX):].split("-")[0]
        stale = not _alive(int(pid)) if pid.isdigit() else time.time() - path.stat().st_mtime > max_age_s
        if stale and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def make_export_dir(temp_dir: str | Path | None = None) -> Path:
    """A fresh folder for this process's exports (sdft-kit-export-<pid>-...), after removing stale ones."""
    remove_stale_exports(temp_dir)
    return Path(tempfile.mkdtemp(prefix=f"{EXPORT_PREFIX}{os.getpid()}-", dir=temp_dir))


# -- who a browser is, without logins -------------------------------------------------------
COOKIE = "sdft-kit-browser"
COOKIE_MAX_AGE = 180 * 86_400


def cookie_value(header: str, name: str = COOKIE) -> str | None:
    """The value of cookie `name` in a Cookie header, or None."""
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name and value:
            return value
    return None


class BrowserCookie:
    """ASGI middleware on gradio's app: a request without our cookie gets a random one (HttpOnly, SameSite=Lax,
    180 days), set on the response and already visible to this request. The page's requests then carry it, so
    the app knows a browser across reloads. It names a browser, it does not log anyone in: with logins
    (gradio's auth) the login owns the runs."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = list(scope.get("headers") or [])
        cookie = b"; ".join(value for key, value in headers if key == b"cookie").decode("latin-1")
        if cookie_value(cookie) is not None:
            return await self.app(scope, receive, send)
        value = secrets.token_urlsafe(24)
        joined = (cookie + "; " if cookie else "") + f"{COOKIE}={value}"
        scope = {**scope, "headers": [(k, v) for k, v in headers if k != b"cookie"] + [(b"cookie", joined.encode())]}
        setting = f"{COOKIE}={value}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax".encode()

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", setting)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

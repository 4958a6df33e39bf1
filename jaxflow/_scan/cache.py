r"""JAX's persistent compilation cache, on by default for scans and the CLI.

Compiling the integration engine costs seconds (Kvaerno5 with an exact Hessian: about
4 s on a 2-core CPU) while a chunk of $10^4$ trajectories of Example 1.1 runs in about
0.5 s, so a repeated scan would otherwise spend most of its time compiling.

Where the cache lives, in order of precedence:

1. the `compilation_cache=` argument of `jaxflow.scan` (a path, or `False` for off);
2. the environment variable `JAXFLOW_COMPILATION_CACHE` (a path, or `off`/`0`/`false`);
3. a directory already configured in JAX (`JAX_COMPILATION_CACHE_DIR` or
   `jax.config.update("jax_compilation_cache_dir", ...)`), left as it is;
4. the user cache directory: `$XDG_CACHE_HOME/jaxflow/xla` (default `~/.cache/jaxflow/xla`;
   `~/Library/Caches/jaxflow/xla` on macOS, `%LOCALAPPDATA%\jaxflow\xla` on Windows).

Caveats (JAX's, not ours): the cache is trusted code (anyone who can write it can run
code as you); it grows without bound unless `jax_compilation_cache_max_size` is set; on
some CPUs entries are rejected on reload (jax#38445), in which case nothing is lost but
compilation is paid again.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["default_cache_dir", "enable_compilation_cache", "ENV_VAR"]

ENV_VAR = "JAXFLOW_COMPILATION_CACHE"
_OFF = {"", "0", "off", "false", "no", "none"}


def default_cache_dir() -> Path:
    """The per-user cache directory for compiled XLA programs."""
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    elif os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "jaxflow" / "xla"


def resolve_cache_dir(setting=None) -> str | None:
    """The directory the cache would use for `setting` (see the module docstring); None = off."""
    import jax

    if setting is False:
        return None
    if setting not in (None, True):
        return str(Path(setting).expanduser())
    env = os.environ.get(ENV_VAR)
    if env is not None:
        return None if env.strip().lower() in _OFF else str(Path(env).expanduser())
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return str(configured)
    return str(default_cache_dir())


def enable_compilation_cache(setting=None, *, min_compile_time_s: float = 0.0) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory (None if off).

    **Arguments:**

    - `setting`: `None`/`True` (the default resolution described in the module
      docstring), a path, or `False` (leave the cache off).
    - `min_compile_time_s`: programs that compile faster than this are not cached
      (JAX's default is 1 s; a scan also compiles ~45 small programs of 5–300 ms
      each, ~1.4 s together on a 2-core CPU, so by default every program is cached).

    Safe to call repeatedly and from several threads; a directory is only set when JAX
    has none yet or a different one was asked for explicitly.
    """
    import jax

    path = resolve_cache_dir(setting)
    if path is None:
        return None
    if (jax.config.jax_compilation_cache_dir == path
            and jax.config.jax_persistent_cache_min_compile_time_secs == min_compile_time_s):
        return path  # already on (called again for every chunk by the workers)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # an unwritable cache must never stop a scan
    if jax.config.jax_compilation_cache_dir != path:
        from jax.experimental.compilation_cache import compilation_cache as cc

        cc.set_cache_dir(path)
        cc.reset_cache()  # a cache opened on another directory would be kept otherwise
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return path

"""`import autoprune` and `autoprune --help` stay light: Ray loads only when a search runs."""
from __future__ import annotations

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_import_does_not_load_ray_or_torch():
    mods = _modules_after("import autoprune")
    assert "ray" not in mods and "torch" not in mods


def test_help_does_not_load_ray():
    code = ("import contextlib, io\nfrom autoprune.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass")
    assert "ray" not in _modules_after(code)


def test_public_api_loads_without_ray():
    mods = _modules_after("import autoprune as ap\nfor name in ap.__all__: getattr(ap, name)")
    assert "ray" not in mods and "torch" in mods


def test_the_public_functions_named_like_their_jobs_are_functions_whatever_was_imported_first():
    """``ap.train`` and ``ap.search`` stay the functions after their modules have loaded (no submodule of
    the package carries their names, so importing one never rebinds the package attribute)."""
    code = ("import autoprune as ap; ap.TrainConfig; ap.SearchConfig; import autoprune.task_search; "
            "from autoprune import TrainConfig, train, search, evaluate; "
            "assert callable(train) and callable(search) and callable(evaluate), (train, search); "
            "assert train.__name__ == 'train' and search.__name__ == 'search'")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

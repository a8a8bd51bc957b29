"""Errors that autoprune raises for user mistakes and impossible requests.

Every error derives from :class:`AutopruneError`. ``cli.py`` prints them as a single line on stderr
and exits with status 2; library users can catch the base class.
"""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = [
    "AutopruneError",
    "BudgetError",
    "ConfigError",
    "DataError",
    "ModelError",
    "CheckpointError",
    "PruningError",
    "SearchSpaceError",
    "RunError",
    "close_matches",
]


class AutopruneError(Exception):
    """Base class: a problem the user can fix, reported as one line."""


class ConfigError(AutopruneError):
    """A command-line flag or config value is out of range or malformed."""


class BudgetError(AutopruneError):
    """A budget string is malformed, out of range, or cannot be met."""


class ModelError(AutopruneError):
    """An unknown model name or a model that cannot be built."""


class CheckpointError(AutopruneError):
    """A checkpoint file is missing, unreadable, or does not match the model."""


class DataError(AutopruneError):
    """An unknown dataset or a dataset folder that is missing or empty."""


class PruningError(AutopruneError):
    """A model or layer that the pruning engine cannot handle."""


class SearchSpaceError(AutopruneError):
    """A malformed search-space file."""


class RunError(AutopruneError):
    """A results folder that is missing, finished, or inconsistent."""


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> str:
    """Return a short 'did you mean' list, or the first few choices when nothing is close."""
    choices = sorted(set(choices))
    near = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    shown = near or choices[:n]
    more = "" if near or len(choices) <= n else ", ..."
    return ", ".join(shown) + more

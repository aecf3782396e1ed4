"""Exception types raised by aegis-router.

Every error derives from :class:`AegisRouterError`, so a caller can catch the
whole family at once. Where a standard exception fits the contract better
(``ValueError`` for a bad value, ``TypeError`` for a wrong type), the aegis
type also derives from it.
"""


class AegisRouterError(Exception):
    """Base class of every error raised by aegis-router."""


class UnsupportedModelError(AegisRouterError, ValueError):
    """The model's architecture or sentence-transformers set-up is not supported."""


class TierError(AegisRouterError, ValueError):
    """A tier asks for more layers or dimensions than the loaded model has."""


class CatalogueError(AegisRouterError, ValueError):
    """A catalogue file or entry is invalid: unknown format, missing field, duplicate id."""


class IndexFormatError(AegisRouterError, ValueError):
    """An index on disk is missing, damaged or inconsistent with its manifest."""


class IndexMismatchError(AegisRouterError, ValueError):
    """An index was built with another model than the one it is used with."""


class HeadError(AegisRouterError, ValueError):
    """An exit head does not belong to the index or tier it is used with."""


class MissingExtraError(AegisRouterError, ImportError):
    """An optional dependency is not installed; the message names the pip command."""

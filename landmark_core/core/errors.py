"""Errors that carry a message meant for the user.

The CLI and the dashboard print ``str(error)`` of these as one line; anything
else escaping the library is a bug and is reported as such.
"""


class LandmarkError(Exception):
    """Base class for every error whose message is safe to show a user."""


class ImageError(LandmarkError):
    """An image could not be read: corrupt, truncated, not an image, or too large."""


class DataError(LandmarkError):
    """A dataset folder does not have the expected layout or content."""


class DownloadError(LandmarkError):
    """A download failed or its archive was refused."""


class ArchiveError(DownloadError):
    """A zip archive is malformed or hostile (path escape, symlink, bomb)."""


class ModelError(LandmarkError):
    """A model cannot be built, loaded or trusted."""


class RunError(LandmarkError):
    """A run folder is missing, incomplete or in the wrong state."""


class TrainingCancelled(Exception):
    """Raised inside the training loop to stop it; the engine records the run as cancelled."""

"""The gallery's error type, shared by the gallery and its item stores."""


class GalleryError(ValueError):
    """A gallery operation that cannot be done; the message says why."""

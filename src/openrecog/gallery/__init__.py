"""Galleries of registered examples."""

from openrecog.gallery.gallery import UNKNOWN, Gallery, GalleryError, Hit, RegisterReport

__all__ = ["UNKNOWN", "Gallery", "GalleryError", "Hit", "RegisterReport"]

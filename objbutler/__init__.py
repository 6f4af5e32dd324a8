"""objbutler: an object-store-native dataset library for astronomy."""

from __future__ import annotations

__version__ = "0.1.0"

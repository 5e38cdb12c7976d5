"""A least-recently-used cache bounded by the bytes its values take, not by their count: one decoded photo can
weigh as much as a thousand thumbnails."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ByteLRU:
    """Values by key whose sizes add up to at most ``capacity`` bytes; the least recently used go first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """The bytes its values take now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Keeps ``value`` (``size`` bytes), dropping the least recently used until all fit; a value larger than
        the whole cache is not kept."""
        with self._lock:
            self._drop(key)
            if size > self.capacity:
                return
            self._entries[key] = (value, size)
            self._bytes += size
            while self._bytes > self.capacity:
                self._drop(next(iter(self._entries)))

    def discard(self, matches: Callable[[Hashable], bool]) -> None:
        """Drops every entry whose key ``matches``."""
        with self._lock:
            for key in [key for key in self._entries if matches(key)]:
                self._drop(key)

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

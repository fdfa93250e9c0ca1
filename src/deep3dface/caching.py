"""Caches of what is derived from a model object, held per object and weakly.

``functools.lru_cache`` on a function of a model (or its ``ModelData``) keeps the last few models
alive after their owner lets them go (a full BFM's data is ~190 MB of float64).  ``per_object``
keeps each object's results beside it instead: they go when the object goes.  The cached values
are shared by every caller and are treated as immutable (callers never write into them); a value
must not refer back to its object, or the object would never be freed.
"""
from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from typing import Callable


def per_object(maxsize: int = 4) -> Callable:
    """Decorator: cache ``function(obj, *args)`` per ``obj`` (weakly held, hashed by identity) and
    per hashable ``args``, the last ``maxsize`` argument tuples of each object."""
    def decorate(function: Callable) -> Callable:
        cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        lock = threading.Lock()

        @functools.wraps(function)
        def cached(obj, *args):
            with lock:
                entries = cache.get(obj)
                if entries is not None and args in entries:
                    entries.move_to_end(args)
                    return entries[args]
            value = function(obj, *args)  # outside the lock: two threads may both compute it once
            with lock:
                entries = cache.setdefault(obj, OrderedDict())
                entries[args] = value
                while len(entries) > maxsize:
                    entries.popitem(last=False)
            return value

        cached.cache_clear = cache.clear
        return cached
    return decorate

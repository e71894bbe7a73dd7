"""Utilities on top of the core API, under Ray's names."""

from .actor_pool import ActorPool

__all__ = ["ActorPool"]

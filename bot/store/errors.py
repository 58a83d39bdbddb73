"""What the job store raises."""

from __future__ import annotations

__all__ = ["StoreError", "SpoolFull", "ServerSpoolFull", "PicturesGone"]


class StoreError(Exception):
    """The store could not record something (disk full, permissions, a broken database)."""


class SpoolFull(StoreError):
    """The spool holds more than ``storage.spool_max_mb``."""


class ServerSpoolFull(SpoolFull):
    """One server holds its whole share of the spool (``storage.server_share``) in files that
    cannot be dropped (work still waiting or owed), so it cannot take ``needed`` more bytes.
    Other servers are not refused because of it."""

    def __init__(self, guild_id: int | None, used: int, needed: int, share: int, fraction: float) -> None:
        self.guild_id = guild_id  # None: jobs without a server, which share one bucket
        self.used = used  # bytes the server holds in the spool now
        self.needed = needed  # bytes the refused job or saved style needed
        self.share = share  # bytes the server may hold: fraction of the spool's cap
        self.fraction = fraction
        super().__init__(f"server {guild_id} holds {used} bytes of the spool; {needed} more would pass its share "
                         f"of {share} bytes ({fraction:g} of the spool)")


class PicturesGone(StoreError):
    """A delivered job's pictures are no longer kept (``reuse_s`` passed, or room was needed)."""

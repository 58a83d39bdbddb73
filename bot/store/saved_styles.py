"""Members' saved styles ("Use as my style"): one picture per member and server, kept in
``<spool>/saved/`` until it expires, counted in its server's share of the spool."""

from __future__ import annotations

from bot.store.room import SpoolRoom
from bot.store.schema import transaction
from bot.store.spool import remove, write_file

__all__ = ["SavedStyles"]


class SavedStyles(SpoolRoom):
    """The saved styles' records and files."""

    async def save_style(self, guild_id: int, user_id: int, label: str, data: bytes, ttl_s: float) -> float:
        """Keep ``data`` as the member's style in that server for ``ttl_s``; returns when it
        expires. Replaces an earlier one. It counts in the server's share of the spool; raises
        :class:`ServerSpoolFull` (the server's share is full of files that cannot be dropped, or
        the picture alone is larger than the share), :class:`SpoolFull` or :class:`StoreError`."""
        return await self._run(self._save_style, guild_id, user_id, label, data, ttl_s)

    def _save_style(self, guild_id: int, user_id: int, label: str, data: bytes, ttl_s: float) -> float:
        # A saved style counts in its server's share of the spool, like the server's jobs: saving
        # (free) in one server pushes out that server's oldest evictable files, never another's
        # (unless the whole spool is full, as for a job).
        # Room first (the earlier style is evictable, so it counts as room): a refusal keeps it.
        self._make_room(len(data), guild_id)
        self._forget_style(guild_id, user_id)
        now = self.clock()
        path = self._saved_path(guild_id, user_id)
        with transaction(self.db):  # the record first: a file without one would never be purged
            self.db.execute("INSERT INTO saved_styles (guild_id, user_id, label, saved_at, expires_at, bytes) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (guild_id, user_id, label, now, now + ttl_s, len(data)))
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                write_file(path, data)
            except BaseException:
                remove(path)
                raise
        self._spool_bytes += len(data)
        return now + ttl_s

    async def saved_style_label(self, guild_id: int, user_id: int) -> str | None:
        """The label of the member's saved style in that server (None: none, or expired); reads no file."""
        return await self._run(self._saved_style_label, guild_id, user_id)

    def _saved_style_label(self, guild_id: int, user_id: int) -> str | None:
        row = self.db.execute("SELECT label FROM saved_styles WHERE guild_id = ? AND user_id = ? AND expires_at > ?",
                              (guild_id, user_id, self.clock())).fetchone()
        return row[0] if row is not None else None

    async def saved_style(self, guild_id: int, user_id: int) -> tuple[str, bytes] | None:
        """The member's saved style in that server (its label and picture), None if none or expired."""
        return await self._run(self._saved_style, guild_id, user_id)

    def _saved_style(self, guild_id: int, user_id: int) -> tuple[str, bytes] | None:
        row = self.db.execute("SELECT label, expires_at FROM saved_styles WHERE guild_id = ? AND user_id = ?",
                              (guild_id, user_id)).fetchone()
        if row is None or row["expires_at"] <= self.clock():
            return None
        try:
            return row["label"], self._saved_path(guild_id, user_id).read_bytes()
        except OSError:
            return None

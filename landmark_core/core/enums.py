"""Enums whose members are the strings the files hold (status.json, tag reports): typed in code, plain on disk."""
import enum


class TextEnum(str, enum.Enum):
    """An enum whose members compare equal to, and print as, their string values (what the JSON files store)."""

    def __str__(self) -> str:
        return self.value

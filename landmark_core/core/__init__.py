"""Foundations: one-line errors, atomic files, where artifacts live, safe image reading, the one
resize-and-crop, memory, the drawn demo set and a process's place among training processes."""

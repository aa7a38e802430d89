"""Small shims that let a family's unmodified upstream code run in a tested environment.

Each module here changes nothing on disk and as little as possible in memory,
says in its docstring what differs from the authors' pinned environment, and is
imported only by the family that needs it.
"""

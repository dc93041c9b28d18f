"""The VE runtime: vzctl, vzlist and vzubc.

The API other modules call is :class:`vzpkg.runtime.ve.Runtime` (create, start,
stop, restart, exec, set, destroy, state) over a :class:`vzpkg.runtime.paths.VzPaths`.
"""

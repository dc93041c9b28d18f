"""The bundled runtime: vzctl/vzlist create, start, run and stop VEs from caches.

The API other modules call is :class:`vzpkg.runtime.ve.Runtime` (create, start,
stop, restart, exec, set, destroy, state) over a :class:`vzpkg.runtime.paths.VzPaths`.
"""
